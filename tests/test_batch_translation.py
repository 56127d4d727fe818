"""Specs -> the AWS Batch requests boto3 receives: golden files, and what each field means.

Golden files live in tests/golden/batch/, one per case: ``{"register_job_definition": ...,
"submit_job": ...}``. Regenerate them with ``FLOWTASK_UPDATE_GOLDEN=1`` after a deliberate
change, and review the diff.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from provider import BatchOptions, Environment, Resources, Retry, SpecError, TaskSpec
from provider.compute.batch import (
    job_definition_request,
    job_name,
    job_tags,
    submit_job_request,
    tag_text,
)
from provider.compute.batch_status import describe_job_failure, job_exit_code, log_streams

GOLDEN = Path(__file__).parent / "golden" / "batch"
IDENTITY = {
    "dag_id": "train_models",
    "run_id": "manual__2026-11-28T00:00:00+00:00",
    "task_id": "fit",
    "map_index": -1,
    "try_number": 1,
    "namespace": "user:alice",
    "tags": ["nightly"],
}
COMMAND = ["python3", "-c", "<bootstrap>", "--", "run"]
MANIFEST = "runs/train_models/manual/fit/-1/1/result.json"
STORE = "s3://flow-artifacts/prod"
ROLE = "arn:aws:iam::123456789012:role/flow-job"
EXECUTION_ROLE = "arn:aws:iam::123456789012:role/flow-execution"
SM = "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db-creds-AbCdEf"
SSM = "arn:aws:ssm:us-east-1:123456789012:parameter/flow/wandb-key"
QUEUE = BatchOptions(queue="flow-spot")
AWS_TAG = re.compile(r"[\w +=.:/@-]*")

MATRIX: dict[str, dict[str, Any]] = {
    "cpu_only": {"resources": Resources(cpu=2)},
    "fractional_cpu_on_ec2": {"resources": Resources(cpu="500m", memory="1.5Gi")},
    "gpus": {"resources": Resources(cpu=8, memory="64Gi", gpu=2, gpu_type="A100")},
    "shared_memory": {"resources": Resources(memory="8Gi", shared_memory="2Gi")},
    "secrets_and_env": {
        "environment": Environment(
            image="ghcr.io/acme/flow:3.11",
            env={"MODE": "fast", "N": 3},
            secrets=[SM, f"{SM}:password::", SSM],
        ),
        "batch": BatchOptions(queue="flow-spot", execution_role_arn=EXECUTION_ROLE),
    },
    "fargate": {
        "resources": Resources(cpu=0.5, memory="2Gi"),
        "batch": BatchOptions(
            queue="flow-fargate",
            platform="FARGATE",
            job_role_arn=ROLE,
            execution_role_arn=EXECUTION_ROLE,
        ),
    },
    "fair_share_and_attempts": {
        "batch": BatchOptions(
            queue="arn:aws:batch:us-east-1:123456789012:job-queue/flow-shared",
            share_identifier="teamA",
            scheduling_priority=90,
            attempts=5,
        )
    },
    "timeout": {"timeout": "1h30m"},
    "timeout_under_batch_minimum": {"timeout": "10s"},
    "tags_aws_refuses": {
        "batch": BatchOptions(queue="flow-spot", tags={"team": "ml", "cost center": "ml/42"}),
        "identity": {
            "namespace": "production:train_models",
            "run_id": "scheduled__2026-11-28T00:00:00+00:00",
            "task_id": "fit.with#odd(chars)",
            "tags": ["exp#42!", "naïve ok", "🚀 launch", "x" * 300],
        },
    },
}


def requests(spec: TaskSpec, identity: dict[str, Any] = IDENTITY) -> dict[str, Any]:
    options = spec.batch if spec.batch.queue else spec.batch.over(QUEUE)
    definition = job_definition_request(
        spec, image=spec.environment.image or "python:3.11-slim", options=options
    )
    submit = submit_job_request(
        spec,
        identity=identity,
        command=COMMAND,
        options=options,
        job_definition=definition["jobDefinitionName"],
        store_uri=STORE,
        manifest_key=MANIFEST,
        env={"AWS_DEFAULT_REGION": "us-east-1"},
    )
    return {"register_job_definition": definition, "submit_job": submit}


@pytest.mark.parametrize("case", sorted(MATRIX))
def test_requests_match_golden(case: str):
    given = dict(MATRIX[case])
    identity = {**IDENTITY, **given.pop("identity", {})}
    rendered = requests(TaskSpec.build(compute="batch", **given), identity)
    golden = GOLDEN / f"{case}.json"
    text = json.dumps(rendered, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    if os.environ.get("FLOWTASK_UPDATE_GOLDEN"):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert text == golden.read_text(), f"{golden} differs; see the module docstring"
    submit = rendered["submit_job"]
    assert len(submit["tags"]) <= 50
    for key, value in submit["tags"].items():
        assert 1 <= len(key) <= 128 and len(value) <= 256, (key, value)
        assert AWS_TAG.fullmatch(key) and AWS_TAG.fullmatch(value), (key, value)
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}", submit["jobName"])


def test_resources_go_to_the_submission_and_the_rest_to_the_definition():
    one = requests(
        TaskSpec.build(compute="batch", resources=Resources(cpu=4, memory="16Gi", gpu=1))
    )
    other = requests(TaskSpec.build(compute="batch", resources=Resources(cpu=1, memory=512)))
    assert one["register_job_definition"] == other["register_job_definition"]
    assert one["submit_job"]["containerOverrides"]["resourceRequirements"] == [
        {"type": "VCPU", "value": "4"},
        {"type": "MEMORY", "value": "16384"},
        {"type": "GPU", "value": "1"},
    ]
    image = requests(TaskSpec.build(compute="batch", environment={"image": "python:3.12-slim"}))
    shm = requests(TaskSpec.build(compute="batch", resources=Resources(shared_memory=64)))
    names = {r["register_job_definition"]["jobDefinitionName"] for r in (one, image, shm)}
    assert len(names) == 3 and all(re.fullmatch(r"flowtask-[0-9a-f]{16}", n) for n in names)


def test_overrides_ecs_would_refuse_are_refused_before_submitting():
    from provider.compute.batch import overrides_length

    fits = requests(TaskSpec.build(compute="batch", environment={"env": {"A": "x" * 2000}}))
    assert overrides_length(fits["submit_job"]) < 8192
    with pytest.raises(SpecError, match=r"come to \d+ characters; ECS starts no container"):
        requests(TaskSpec.build(compute="batch", environment={"env": {"A": "x" * 8192}}))


def test_batch_retries_a_lost_host_only():
    strategy = requests(TaskSpec(compute="batch"))["submit_job"]["retryStrategy"]
    assert strategy == {
        "attempts": 4,  # the first, and Retry(infra=3) more when the host is lost
        "evaluateOnExit": [
            {"onStatusReason": "Host EC2*", "action": "RETRY"},
            {"onReason": "*", "action": "EXIT"},
        ],
    }


def test_retry_infra_sets_how_often_batch_tries_a_lost_host_again():
    spec = TaskSpec(compute="batch", retry=Retry(infra=0))
    assert requests(spec)["submit_job"]["retryStrategy"]["attempts"] == 1
    spec = TaskSpec(compute="batch", retry=Retry(infra=5), batch=BatchOptions(attempts=2))
    assert requests(spec)["submit_job"]["retryStrategy"]["attempts"] == 2  # the options win


def test_the_job_name_is_one_per_task_instance():
    name = job_name(IDENTITY)
    assert name == job_name({**IDENTITY, "try_number": 2})
    assert name != job_name({**IDENTITY, "map_index": 0})
    assert name != job_name({**IDENTITY, "run_id": "manual__2"})
    long = job_name({**IDENTITY, "task_id": "group." + "t" * 300})
    assert long.startswith("flowtask-group-ttt") and len(long) <= 128


def test_tags_are_sanitized_readably_and_never_collide():
    assert tag_text("user:alice", 256) == "user:alice"
    assert tag_text("naïve ok/β", 256) == "naïve ok/β"  # AWS takes letters of any script
    changed = tag_text("exp#42!", 256)
    assert changed.startswith("exp-42-") and len(changed) == len("exp-42-") + 8
    assert tag_text("exp#42?", 256) != changed
    assert len(tag_text("x" * 300, 256)) == 256
    with pytest.raises(SpecError, match=r"flow_tags=.* the job would carry 51"):
        job_tags({**IDENTITY, "tags": [f"t{i}" for i in range(45)]}, BatchOptions())


def _job(status: str, *attempts: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "jobName": "flowtask-fit-abc",
        "jobId": "j-1",
        "status": status,
        "attempts": list(attempts),
        "container": (attempts[-1]["container"] if attempts else {}),
        "retryStrategy": {"attempts": 3},
        **extra,
    }


def _attempt(status_reason: str, **container: Any) -> dict[str, Any]:
    return {"container": container, "statusReason": status_reason}


EXITED = "Essential container in task exited"
HOST = "Host EC2 (instance i-0123456789abcdef0) terminated."


@pytest.mark.parametrize(
    ("job", "expected"),
    [
        (_job("SUCCEEDED", _attempt(EXITED, exitCode=0)), None),
        (_job("RUNNING"), None),
        (
            _job(
                "FAILED",
                _attempt(
                    EXITED,
                    exitCode=137,
                    reason="OutOfMemoryError: Container killed due to memory usage",
                ),
            ),
            "Batch job flowtask-fit-abc (j-1) ran out of memory (limit 16384 MiB); give the task "
            "more with Resources(memory=...)",
        ),
        (
            _job("FAILED", _attempt(HOST), _attempt(HOST), _attempt(HOST)),
            f"Batch job flowtask-fit-abc (j-1) lost its host on its last Batch attempt (3 of 3): "
            f"{HOST}; BatchOptions(attempts=...) sets how often Batch tries again",
        ),
        (
            _job(
                "FAILED",
                _attempt("Job attempt duration exceeded timeout", exitCode=143),
                timeout={"attemptDurationSeconds": 3600},
            ),
            "Batch job flowtask-fit-abc (j-1) ran longer than its Batch timeout "
            "(attemptDurationSeconds=3600, from timeout=) and was stopped",
        ),
        (
            _job("FAILED", _attempt(EXITED, exitCode=2)),
            f"Batch job flowtask-fit-abc (j-1) failed: exit code 2 ({EXITED})",
        ),
        (
            _job(
                "FAILED",
                _attempt(EXITED, reason="CannotStartContainerError: image not found"),
            ),
            "Batch job flowtask-fit-abc (j-1) failed: no exit code "
            "(CannotStartContainerError: image not found)",
        ),
        (
            _job("FAILED", statusReason="does not fit"),
            "Batch job flowtask-fit-abc (j-1) never ran: does not fit",
        ),
    ],
    ids=["succeeded", "running", "oom", "host", "timeout", "exit", "no start", "cancelled"],
)
def test_a_finished_job_is_described_in_words(job: dict[str, Any], expected: str | None):
    assert describe_job_failure(job, memory_mib=16384) == expected


def test_exit_code_and_log_streams_follow_the_attempts():
    job = _job(
        "SUCCEEDED",
        _attempt(HOST, logStreamName="fit/default/a"),
        _attempt(EXITED, exitCode=0, logStreamName="fit/default/b"),
    )
    assert job_exit_code(job) == 0
    assert log_streams(job) == ["fit/default/a", "fit/default/b"]
    assert job_exit_code(_job("FAILED", _attempt(HOST))) is None
    assert log_streams(_job("RUNNABLE")) == []
