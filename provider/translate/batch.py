"""Translate a flow task's specs into the AWS Batch requests boto3 receives (pure).

What does not change between submissions goes into a job definition named by a hash of its
content (``flowtask-<hash>``), registered once and reused: the image, secrets, ``/dev/shm``,
roles, the task's variables, the store's, and the command, whose per-submission arguments are
``Ref::`` placeholders; the compressed bootstrap rides in a variable of the definition, since
ECS starts no container whose overrides (the command with its parameters substituted among
them) are over 8,192 characters. Each ``SubmitJob`` carries the rest: the placeholders' values
(``parameters``: code package, payload, manifest, chunks), the run's identity, resources,
timeout, retries and tags. The requests here are exactly the keyword arguments of boto3's
``register_job_definition`` and ``submit_job`` (the latter as ``BatchOperator`` sends it).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

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
from provider.translate.batch_array import ChunkJob
from provider.translate.command import store_out_of_reach

JOB_DEFINITION_PREFIX = "flowtask-"
# Every submission overrides these; Fargate needs a pair it offers even in the definition.
DEFINITION_RESOURCES = ({"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "2048"})
HOST_LOST = "Host EC2*"  # the statusReason of an attempt whose instance went away
MIN_ATTEMPT_SECONDS = 60  # Batch refuses a shorter attemptDurationSeconds
# ECS fails a job whose container overrides are longer ("Container Overrides length must be
# at most 8192"); Batch puts the command there with its parameters substituted (ASFHyP3/hyp3
# issue 3041: a job whose long Ref:: parameters filled its definition's command failed so),
# and its own AWS_BATCH_* variables (job id, attempt, queue and compute environment names,
# array index: this many characters at most, names of 128 characters included).
MAX_CONTAINER_OVERRIDES = 8192
BATCH_VARIABLES = 512
MAX_JOB_DEFINITION = 24 * 1024  # bytes of a RegisterJobDefinition request (Batch's quota)
MAX_SUBMIT_JOB = 30 * 1024  # bytes of a SubmitJob request (Batch's quota)
#: The bootstrap's and the runtime's arguments that change between submissions, and the
#: parameter each one's value becomes (no name starts another: Batch's substitution is safe
#: whether it replaces whole arguments or text within them).
PARAMETERS = {
    "--code": "code",
    "--env": "environments",
    "--payload": "payload",
    "--manifest": "manifest",
    "--chunks": "chunks",
    "--chunk": "one_chunk",
}
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
    out_of_reach = store_out_of_reach(store_uri)
    if out_of_reach is not None:  # flowtask's job definitions mount no volume
        raise SpecError(
            "[flow_task] artifact_store",
            store_uri,
            "s3://bucket/prefix in [flow_task] artifact_store (AIRFLOW__FLOW_TASK__ARTIFACT_STORE)",
            f"it must be an s3:// store for Batch ({out_of_reach}; Batch jobs mount no folder)",
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


def parameterized(argv: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """A container's argv as a job definition's command, with ``Ref::<name>`` where a
    per-submission value was, and those values by name; several ``--env`` become one,
    comma-separated (the bootstrap splits it)."""
    template: list[str] = []
    parameters: dict[str, str] = {}
    for flag, value in zip(["", *argv[:-1]], argv, strict=True):
        name = PARAMETERS.get(flag)
        if name is None:
            template.append(value)
        elif name in parameters:  # a second --env: into the first one's value
            parameters[name] += "," + value
            template.pop()
        else:
            parameters[name] = value
            template.append(f"Ref::{name}")
    return template, parameters


def substituted(command: Sequence[str], parameters: Mapping[str, str]) -> list[str]:
    """The command a job runs: its definition's, with each ``Ref::<name>`` argument replaced."""
    return [
        parameters.get(arg[len("Ref::") :], arg) if arg.startswith("Ref::") else arg
        for arg in command
    ]


def definition_environment(
    spec: TaskSpec, *, store_uri: str, env: Mapping[str, str] | None = None
) -> dict[str, str]:
    """``env`` (the store's endpoint and region), the task's variables, then the store, and the
    compressed bootstrap the definition's command runs: the same for every submission."""
    from provider.translate.command import BOOTSTRAP_ENV, packed_bootstrap

    return {
        **(env or {}),
        **spec.environment.env_dict,
        "FLOWTASK_STORE": store_uri,
        "PYTHONUNBUFFERED": "1",
        BOOTSTRAP_ENV: packed_bootstrap(),
    }


def job_definition_request(
    spec: TaskSpec,
    *,
    image: str,
    options: BatchOptions,
    command: Sequence[str] = (),
    environment: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """``register_job_definition`` keyword arguments, named by a hash of their content.

    ``options`` are the task's Batch options laid over the configured defaults; ``command`` (a
    :func:`parameterized` argv) and ``environment`` are the same for every submission.
    """
    container: dict[str, Any] = {
        "image": image,
        "resourceRequirements": [dict(r) for r in DEFINITION_RESOURCES],
    }
    if command:
        container["command"] = list(command)
    if environment:
        container["environment"] = [{"name": k, "value": v} for k, v in sorted(environment.items())]
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
    identity: Mapping[str, Any], *, manifest_key: str, foreach: str | None = None
) -> list[dict[str, str]]:
    """The variables of one submission: the run's identity, where the try's manifest goes, and
    the ``.foreach`` plan the job runs chunks of (a later try finds by them what it reattaches
    to)."""
    variables = {
        f"FLOWTASK_{name.upper()}": str(identity[name])
        for name in ("dag_id", "run_id", "task_id", "map_index", "try_number", "namespace")
    }
    variables["FLOWTASK_MANIFEST"] = manifest_key
    if foreach is not None:
        variables["FLOWTASK_FOREACH"] = foreach
    return [{"name": k, "value": v} for k, v in sorted(variables.items())]


def submit_job_request(
    spec: TaskSpec,
    *,
    identity: Mapping[str, Any],
    parameters: Mapping[str, str],
    options: BatchOptions,
    job_definition: str,
    manifest_key: str,
    foreach: ChunkJob | None = None,
) -> dict[str, Any]:
    """``submit_job`` keyword arguments, as ``BatchOperator`` sends them.

    ``spec`` and ``options`` have passed :func:`check_batch`; ``parameters`` fill the
    definition's command. With ``foreach`` (whose ``runtime_mode`` is in the command) it is an
    array job of its chunks, or a plain job of one.
    """
    resources = spec.resources
    requirements = [
        {"type": "VCPU", "value": vcpus(resources, options)},
        {"type": "MEMORY", "value": str(resources.memory)},
    ]
    if resources.gpu:
        requirements.append({"type": "GPU", "value": str(resources.gpu)})
    variables = job_environment(
        identity, manifest_key=manifest_key, foreach=None if foreach is None else foreach.prefix
    )
    request: dict[str, Any] = {
        "jobName": job_name(identity),
        "jobQueue": options.queue,
        "jobDefinition": job_definition,
        "parameters": dict(parameters),
        "tags": job_tags(identity, options),
        "containerOverrides": {"environment": variables, "resourceRequirements": requirements},
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
    return request


def batch_job(
    spec: TaskSpec,
    *,
    argv: Sequence[str],
    image: str,
    options: BatchOptions,
    identity: Mapping[str, Any],
    store_uri: str,
    manifest_key: str,
    env: Mapping[str, str] | None = None,
    foreach: ChunkJob | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The job definition and the submission that run ``argv`` (the container's command, its
    ``-c`` program :func:`~provider.translate.command.bootstrap_launcher`), checked against what
    Batch and ECS take."""
    command, parameters = parameterized(argv)
    definition = job_definition_request(
        spec,
        image=image,
        options=options,
        command=command,
        environment=definition_environment(spec, store_uri=store_uri, env=env),
    )
    request = submit_job_request(
        spec,
        identity=identity,
        parameters=parameters,
        options=options,
        job_definition=definition["jobDefinitionName"],
        manifest_key=manifest_key,
        foreach=foreach,
    )
    check_sizes(spec, definition, request)
    return definition, request


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _compact_length(value: Any) -> int:
    """Bytes of ``value`` as compact JSON, as Batch's request quotas count."""
    return len(_compact(value).encode())


def check_sizes(spec: TaskSpec, definition: Mapping[str, Any], request: Mapping[str, Any]) -> None:
    """Refuse, with the numbers, what Batch or ECS would: a job definition over 24 KiB (the
    task's variables are in it), a submission over 30 KiB, container overrides over 8,192."""
    size = _compact_length(definition)
    if size > MAX_JOB_DEFINITION:
        variables = _compact_length(spec.environment.env_dict)
        raise SpecError(
            "environment.env",
            spec.environment,
            "fewer or shorter env values (large values belong in secrets, in the image, or in "
            "the task's arguments)",
            f"the job definition comes to {size} bytes, {variables} of them the task's "
            f"variables; Batch registers none over {MAX_JOB_DEFINITION}",
        )
    size = _compact_length(request)
    if size > MAX_SUBMIT_JOB:
        raise SpecError(
            "batch job",
            request["jobName"],
            "shorter run ids, tags and task ids",
            f"the job's submission comes to {size} bytes; Batch takes none over {MAX_SUBMIT_JOB}",
        )
    size = overrides_length(definition, request)
    if size > MAX_CONTAINER_OVERRIDES:
        raise SpecError(
            "batch job",
            request["jobName"],
            "shorter run ids, task ids and namespaces, or a shorter artifact store URI",
            f"the job's command with its parameters, variables and resources come to {size} "
            f"characters (Batch's own variables counted as {BATCH_VARIABLES}); ECS starts no "
            f"container whose overrides are over {MAX_CONTAINER_OVERRIDES}",
        )


def overrides_length(definition: Mapping[str, Any], request: Mapping[str, Any]) -> int:
    """What ECS counts of a job's container overrides, as compact JSON: the definition's
    command with the submission's parameters substituted, the submission's variables and
    resources, and :data:`BATCH_VARIABLES` for Batch's own."""
    overrides = request["containerOverrides"]
    command = definition["containerProperties"].get("command") or []
    counted = {
        "command": substituted(command, request.get("parameters") or {}),
        "environment": overrides.get("environment") or [],
        "resourceRequirements": overrides.get("resourceRequirements") or [],
    }
    return len(_compact(counted)) + BATCH_VARIABLES


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


def ignored_by_batch(spec: TaskSpec) -> list[str]:
    """What the task asks for that a Batch job does not set, each in a sentence that says how
    to get it instead."""
    resources, said = spec.resources, []
    if resources.disk is not None:
        said.append(
            f"resources.disk={resources.disk} MiB is not set per job on EC2: the compute "
            "environment's launch template sizes the disk; route the task to a queue whose "
            "instances have enough"
        )
    if resources.gpu_type is not None:
        said.append(
            f"resources.gpu_type={resources.gpu_type!r} is not set per job on Batch: the "
            "instance types of the queue's compute environment decide; choose the queue with "
            "BatchOptions(queue=...)"
        )
    return said


def batch_options(spec: TaskSpec) -> BatchOptions:
    """The task's Batch options laid over the ``[flow_task] batch_*`` defaults."""
    from provider import settings

    return spec.batch.over(settings.batch_defaults())
