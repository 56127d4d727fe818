"""Translate a flow task's specs into the AWS Batch requests boto3 receives (pure).

Batch cannot change a job's image, secrets, ``/dev/shm`` or roles per submission, so those go
into a job definition named by a hash of its content (``flowtask-<hash>``), registered once and
reused; everything else (resources, command, environment, timeout, retries, tags) goes into
each ``SubmitJob``. The requests here are exactly the keyword arguments of boto3's
``register_job_definition`` and ``submit_job`` (the latter as ``BatchOperator`` sends it).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from provider.compute.batch_array import ChunkJob
from provider.specs import (
    BatchOptions,
    Resources,
    SpecError,
    TaskSpec,
    check_batch_env,
    check_fargate,
    check_secrets_for,
    secret_variables,
)
from provider.specs.batch import MAX_TAG_KEY, MAX_TAG_VALUE, MAX_TAGS

JOB_DEFINITION_PREFIX = "flowtask-"
# Every submission overrides these; Fargate needs a pair it offers even in the definition.
DEFINITION_RESOURCES = ({"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "2048"})
HOST_LOST = "Host EC2*"  # the statusReason of an attempt whose instance went away
MIN_ATTEMPT_SECONDS = 60  # Batch refuses a shorter attemptDurationSeconds
# ECS fails a job whose container overrides are longer ("Container Overrides length must be
# at most 8192"); the bootstrap command alone takes about 5 KB of it.
MAX_CONTAINER_OVERRIDES = 8192
TAG_PREFIX = "flowtask.io/"
RUN_TAG_PREFIX = f"tag.{TAG_PREFIX}"
_TAG_BAD = re.compile(r"[^\w +=.:/@-]+")
_JOB_NAME_BAD = re.compile(r"[^A-Za-z0-9_-]+")


def check_batch(spec: TaskSpec, options: BatchOptions, store_uri: str) -> None:
    """What Batch would refuse of ``spec`` with ``options`` (the task's over the configured
    defaults) and the artifact store at ``store_uri``, as a SpecError: what parse time could
    not know, such as the queue."""
    check_secrets_for("batch", spec.environment.secrets)
    check_batch_env(spec.environment)
    if not options.queue:
        raise SpecError(
            "batch.queue",
            None,
            "BatchOptions(queue='flow-spot') on the task, or [flow_task] batch_job_queue",
            "no job queue is set anywhere",
        )
    if not store_uri.startswith("s3://"):
        # flowtask's job definitions mount no volume: no container could read a folder.
        raise SpecError(
            "[flow_task] artifact_store",
            store_uri,
            "s3://bucket/prefix in [flow_task] artifact_store (AIRFLOW__FLOW_TASK__ARTIFACT_STORE)",
            "it must be an s3:// store for Batch: flowtask's job definitions mount no volume, "
            "so no Batch container can read it",
        )
    if options.fargate:
        check_fargate(spec.resources)
    needs_role = "Fargate" if options.fargate else "secrets" if spec.environment.secrets else None
    if needs_role and not options.execution_role_arn:
        raise SpecError(
            "batch.execution_role_arn",
            None,
            "BatchOptions(execution_role_arn='arn:aws:iam::123456789012:role/...') or "
            "[flow_task] batch_execution_role_arn",
            f"{needs_role} needs an execution role to start the job",
        )


def _digest(text: str, size: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:size]


def tag_text(text: str, limit: int) -> str:
    """``text`` when AWS accepts it as a tag key or value of at most ``limit`` characters, else
    a readable, unique stand-in ending in 8 hex digits of its SHA-256 (as pod labels do)."""
    if len(text) <= limit and not _TAG_BAD.search(text):
        return text
    digest = _digest(text, 8)
    readable = _TAG_BAD.sub("-", text).strip("- ")[: limit - len(digest) - 1].rstrip("- ")
    return f"{readable}-{digest}" if readable else digest


def job_tags(identity: Mapping[str, Any], options: BatchOptions) -> dict[str, str]:
    """The options' tags, then the run's identity and one ``tag.flowtask.io/<tag>`` per run tag.

    Raises SpecError when they come to more than Batch's 50.
    """
    tags = dict(options.tags)
    for name in ("dag_id", "task_id", "run_id", "namespace", "map_index", "try_number"):
        key = TAG_PREFIX + name.replace("_id", "").replace("_", "-")
        tags[key] = tag_text(str(identity[name]), MAX_TAG_VALUE)
    for tag in identity["tags"]:
        tags[RUN_TAG_PREFIX + tag_text(tag, MAX_TAG_KEY - len(RUN_TAG_PREFIX))] = "true"
    if len(tags) > MAX_TAGS:
        raise SpecError(
            "flow_tags",
            list(identity["tags"]),
            f"at most {MAX_TAGS} tags on a Batch job, flowtask's identity and BatchOptions.tags "
            "included",
            f"the job would carry {len(tags)}",
        )
    return tags


def job_name(identity: Mapping[str, Any]) -> str:
    """The same name for every try of one task instance: ``flowtask-<task>-<12 hex>``.

    The hash covers DAG, run, task and map index, so a job can be found again by name.
    """
    key = json.dumps([identity[k] for k in ("dag_id", "run_id", "task_id", "map_index")])
    readable = _JOB_NAME_BAD.sub("-", str(identity["task_id"]))[:100].strip("-") or "task"
    return f"{JOB_DEFINITION_PREFIX}{readable}-{_digest(key, 12)}"


def vcpus(resources: Resources, options: BatchOptions) -> str:
    """EC2 reserves whole vCPUs (at least one); Fargate takes its own fractions."""
    cpu = float(resources.cpu)
    if options.fargate:
        return f"{cpu:g}"
    return str(max(1, math.ceil(cpu)))


def job_definition_request(spec: TaskSpec, *, image: str, options: BatchOptions) -> dict[str, Any]:
    """``register_job_definition`` keyword arguments, named by a hash of their content.

    ``options`` are the task's Batch options laid over the configured defaults.
    """
    container: dict[str, Any] = {
        "image": image,
        "resourceRequirements": [dict(r) for r in DEFINITION_RESOURCES],
    }
    if options.job_role_arn:
        container["jobRoleArn"] = options.job_role_arn
    if options.execution_role_arn:
        container["executionRoleArn"] = options.execution_role_arn
    secrets = secret_variables(spec.environment.secrets)
    if secrets:
        container["secrets"] = [{"name": k, "valueFrom": v} for k, v in sorted(secrets.items())]
    if spec.resources.shared_memory is not None:
        container["linuxParameters"] = {"sharedMemorySize": spec.resources.shared_memory}
    content = {
        "type": "container",
        "platformCapabilities": [options.platform or "EC2"],
        "propagateTags": True,
        "containerProperties": container,
    }
    name = JOB_DEFINITION_PREFIX + _digest(json.dumps(content, sort_keys=True), 16)
    return {"jobDefinitionName": name, **content}


def retry_strategy(attempts: int) -> dict[str, Any]:
    """Batch retries a lost host (a Spot reclaim) and nothing else: Airflow retries the rest."""
    return {
        "attempts": attempts,
        "evaluateOnExit": [
            {"onStatusReason": HOST_LOST, "action": "RETRY"},
            {"onReason": "*", "action": "EXIT"},
        ],
    }


def job_environment(
    spec: TaskSpec,
    identity: Mapping[str, Any],
    *,
    store_uri: str,
    manifest_key: str,
    env: Mapping[str, str] | None = None,
    foreach: str | None = None,
) -> list[dict[str, str]]:
    """``env`` (the store's endpoint and region), the task's variables, then the identity (and
    the ``.foreach`` plan the job runs chunks of, so a later try knows what it reattaches to)."""
    variables = {**(env or {}), **spec.environment.env_dict}
    for name in ("dag_id", "run_id", "task_id", "map_index", "try_number", "namespace"):
        variables[f"FLOWTASK_{name.upper()}"] = str(identity[name])
    variables |= {
        "FLOWTASK_STORE": store_uri,
        "FLOWTASK_MANIFEST": manifest_key,
        "PYTHONUNBUFFERED": "1",
    }
    if foreach is not None:
        variables["FLOWTASK_FOREACH"] = foreach
    return [{"name": k, "value": v} for k, v in sorted(variables.items())]


def submit_job_request(
    spec: TaskSpec,
    *,
    identity: Mapping[str, Any],
    command: Sequence[str],
    options: BatchOptions,
    job_definition: str,
    store_uri: str,
    manifest_key: str,
    env: Mapping[str, str] | None = None,
    foreach: ChunkJob | None = None,
) -> dict[str, Any]:
    """``submit_job`` keyword arguments, as ``BatchOperator`` sends them (``parameters`` too).

    ``spec`` and ``options`` have passed :func:`check_batch`. With ``foreach`` (whose
    ``runtime_mode`` is in ``command``) it is an array job of its chunks, or a plain job of one.
    """
    resources = spec.resources
    requirements = [
        {"type": "VCPU", "value": vcpus(resources, options)},
        {"type": "MEMORY", "value": str(resources.memory)},
    ]
    if resources.gpu:
        requirements.append({"type": "GPU", "value": str(resources.gpu)})
    variables = job_environment(
        spec,
        identity,
        store_uri=store_uri,
        manifest_key=manifest_key,
        env=env,
        foreach=None if foreach is None else foreach.prefix,
    )
    request: dict[str, Any] = {
        "jobName": job_name(identity),
        "jobQueue": options.queue,
        "jobDefinition": job_definition,
        "parameters": {},
        "tags": job_tags(identity, options),
        "containerOverrides": {
            "command": list(command),
            "environment": variables,
            "resourceRequirements": requirements,
        },
        # A lost host is tried again Retry(infra=...) times, unless BatchOptions says otherwise.
        "retryStrategy": retry_strategy(options.attempts or 1 + spec.retry.infra),
    }
    if foreach is not None and foreach.array_size is not None:
        request["arrayProperties"] = {"size": foreach.array_size}
    if options.share_identifier is not None:
        request["shareIdentifier"] = options.share_identifier
    if options.scheduling_priority is not None:
        request["schedulingPriorityOverride"] = options.scheduling_priority
    if spec.timeout is not None:
        seconds = max(MIN_ATTEMPT_SECONDS, math.ceil(spec.timeout.total_seconds()))
        request["timeout"] = {"attemptDurationSeconds": seconds}
    size = overrides_length(request)
    if size > MAX_CONTAINER_OVERRIDES:
        raise SpecError(
            "environment",
            spec.environment,
            "fewer or shorter env values and pip requirements (large values belong in secrets, "
            "in the image, or in the task's arguments)",
            f"the job's command, variables and resources come to {size} characters; ECS "
            f"starts no container whose overrides are over {MAX_CONTAINER_OVERRIDES}",
        )
    return request


def overrides_length(request: Mapping[str, Any]) -> int:
    """The length of a submission's ``containerOverrides``, as compact JSON."""
    return len(json.dumps(request["containerOverrides"], separators=(",", ":")))


_OPERATOR_NAMES = {
    "jobName": "job_name",
    "jobQueue": "job_queue",
    "jobDefinition": "job_definition",
    "arrayProperties": "array_properties",
    "parameters": "parameters",
    "tags": "tags",
    "containerOverrides": "container_overrides",
    "retryStrategy": "retry_strategy",
    "shareIdentifier": "share_identifier",
    "schedulingPriorityOverride": "scheduling_priority_override",
}


def operator_kwargs(request: Mapping[str, Any]) -> dict[str, Any]:
    """The ``BatchOperator`` keyword arguments that make it send ``request`` to ``submit_job``."""
    kwargs = {_OPERATOR_NAMES[k]: v for k, v in request.items() if k != "timeout"}
    if "timeout" in request:
        kwargs["submit_job_timeout"] = request["timeout"]["attemptDurationSeconds"]
    return kwargs
