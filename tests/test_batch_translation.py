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
from provider.compute.batch_array import ChunkJob, chunk_jobs, describe_lost_chunks
from provider.compute.batch_status import (
    describe_job_failure,
    job_exit_code,
    log_location,
    log_streams,
    short_reason,
)
from provider.compute.command import foreach_args

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
PLAN = "runs/train_models/manual/fit/-1/foreach/0123456789abcdef"
PAYLOAD = {"uri": "s3://flow-artifacts/prod/runs/train_models/manual/fit/-1/1/payload.pickle"}
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


def requests(
    spec: TaskSpec, identity: dict[str, Any] = IDENTITY, foreach: ChunkJob | None = None
) -> dict[str, Any]:
    options = spec.batch if spec.batch.queue else spec.batch.over(QUEUE)
    definition = job_definition_request(
        spec, image=spec.environment.image or "python:3.11-slim", options=options
    )
    command = COMMAND  # a foreach job's runs chunks, picked by the array index
    if foreach is not None:
        runtime = foreach_args(STORE, PAYLOAD, foreach.runtime_mode)
        runtime[runtime.index("--python") + 1] = "<the worker's X.Y>"
        command = [*COMMAND[:-1], *runtime]
    submit = submit_job_request(
        spec,
        identity=identity,
        command=command,
        options=options,
        job_definition=definition["jobDefinitionName"],
        store_uri=STORE,
        manifest_key=MANIFEST,
        env={"AWS_DEFAULT_REGION": "us-east-1"},
        foreach=foreach,
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
OOM = "OutOfMemoryError: Container killed due to memory usage"


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


# --- .foreach: array jobs --------------------------------------------------------------------


def test_foreach_requests_match_golden():
    """A foreach over 20 chunks: one array job of the single job's definition and retries."""
    spec = TaskSpec.build(compute="batch", resources=Resources(cpu=2, memory="4Gi"))
    [job] = chunk_jobs(PLAN, range(20))
    rendered = requests(spec, foreach=job)
    golden = GOLDEN / "foreach_array.json"
    text = json.dumps(rendered, indent=2, sort_keys=True) + "\n"
    if os.environ.get("FLOWTASK_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text(), f"{golden} differs; see the module docstring"
    single = requests(spec)
    assert rendered["register_job_definition"] == single["register_job_definition"]
    submit = rendered["submit_job"]
    assert submit["retryStrategy"] == single["submit_job"]["retryStrategy"]
    assert submit["arrayProperties"] == {"size": 20}
    assert submit["containerOverrides"]["command"][-4:] == [
        "--chunk-env",
        "AWS_BATCH_JOB_ARRAY_INDEX",
        "--chunks",
        "0-19",
    ]
    env = {v["name"]: v["value"] for v in submit["containerOverrides"]["environment"]}
    assert env["FLOWTASK_FOREACH"] == PLAN and env["FLOWTASK_MANIFEST"] == MANIFEST


def test_more_than_ten_thousand_chunks_make_several_array_jobs():
    jobs = chunk_jobs(PLAN, range(25_000))
    assert [job.array_size for job in jobs] == [10_000, 10_000, 5_000]
    assert [job.runtime_mode[-1] for job in jobs] == ["0-9999", "10000-19999", "20000-24999"]
    spec = TaskSpec(compute="batch")
    sizes = [requests(spec, foreach=job)["submit_job"]["arrayProperties"] for job in jobs]
    assert sizes == [{"size": 10_000}, {"size": 10_000}, {"size": 5_000}]
    # Batch's arrays hold 2 to 10,000 children: one chunk left over is a plain job.
    *_, last = chunk_jobs(PLAN, range(10_001))
    assert last.array_size is None and last.runtime_mode == ["--chunk", "10000"]
    plain = requests(spec, foreach=last)["submit_job"]
    assert "arrayProperties" not in plain
    assert plain["containerOverrides"]["command"][-2:] == ["--chunk", "10000"]
    assert chunk_jobs(PLAN, []) == []


def test_a_scattered_retry_is_split_so_each_chunk_list_stays_short():
    """A retry of every other chunk would write 10,000 numbers; ECS takes 8,192 characters of
    overrides in all, so the list is split into jobs of at most 512 characters each."""
    from provider.runtime.foreach import format_chunks, parse_chunks

    scattered = list(range(1, 20_000, 2))
    jobs = chunk_jobs(PLAN, scattered)
    texts = [format_chunks(job.chunks) for job in jobs]
    assert all(len(text) <= 512 for text in texts) and max(map(len, texts)) > 500
    assert [chunk for text in texts for chunk in parse_chunks(text)] == scattered
    assert [c for job in chunk_jobs(PLAN, [*range(8), 9, *range(11, 30)]) for c in job.chunks] == [
        *range(8),
        9,
        *range(11, 30),
    ]
    spec = TaskSpec(compute="batch")
    from provider.compute.batch import MAX_CONTAINER_OVERRIDES, overrides_length

    longest = max(jobs, key=lambda job: len(format_chunks(job.chunks)))
    assert overrides_length(requests(spec, foreach=longest)["submit_job"]) < (
        MAX_CONTAINER_OVERRIDES - 5000  # the bootstrap's source (COMMAND's <bootstrap>) fits
    )


def test_lost_chunks_are_described_in_batch_words_a_few_then_counted():
    oom = _attempt(EXITED, exitCode=137, reason="OutOfMemoryError: Container killed")
    detail = _job("FAILED", oom, jobId="j:3", statusReason=EXITED)
    summaries = [
        {"jobId": "j:4", "statusReason": EXITED, "container": {"exitCode": 137, "reason": OOM}},
        {"jobId": "j:5", "statusReason": HOST},
        {"jobId": "j:6", "statusReason": EXITED, "container": {"exitCode": 1}},
        {"jobId": "j:7", "statusReason": EXITED, "container": {"exitCode": 137, "reason": OOM}},
    ]
    lost = [("chunk 3 (items 30-39)", detail)]
    lost += [(f"chunk {i} (items {i}0-{i}9)", s) for i, s in enumerate(summaries, 4)]
    assert describe_lost_chunks(lost, memory_mib=512, shown=2) == (
        "5 Batch children wrote no result: chunk 3 (items 30-39): Batch job flowtask-fit-abc "
        "(j:3) ran out of memory (limit 512 MiB); give the task more with Resources(memory=...); "
        "chunk 4 (items 40-49): out of memory; and 3 more (1 host lost on the last attempt, "
        "1 exit code 1, 1 out of memory)"
    )
    assert describe_lost_chunks([], memory_mib=512) is None
    assert short_reason({"statusReason": "Job attempt duration exceeded timeout"}) == (
        "over the Batch timeout"
    )
    assert short_reason({"statusReason": "flowtask: stopped by Airflow"}) == (
        "flowtask: stopped by Airflow"
    )


def test_the_log_of_a_jobs_last_attempt():
    job = _job(
        "FAILED",
        _attempt(HOST, logStreamName="fit/default/a"),
        _attempt(EXITED, exitCode=1, logStreamName="fit/default/b"),
    )
    assert log_location(job) == ("/aws/batch/job", "fit/default/b")
    job["container"]["logConfiguration"] = {"options": {"awslogs-group": "/flow"}}
    assert log_location(job) == ("/flow", "fit/default/b")
    assert log_location(_job("FAILED")) is None
