"""Specs -> the AWS Batch requests boto3 receives: golden files, and what each field means.

Golden files live in tests/golden/batch/, one per case: ``{"register_job_definition": ...,
"submit_job": ...}``. Regenerate them with ``FLOWTASK_UPDATE_GOLDEN=1`` after a deliberate
change, and review the diff.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from provider import BatchOptions, Environment, Resources, Retry, SpecError, TaskSpec
from provider.translate.batch import (
    MAX_CONTAINER_OVERRIDES,
    PARAMETERS,
    batch_job,
    job_name,
    job_tags,
    overrides_length,
    parameterized,
    substituted,
    tag_text,
)
from provider.translate.batch_array import ChunkJob, chunk_jobs, describe_lost_chunks
from provider.translate.batch_status import (
    describe_job_failure,
    job_exit_code,
    log_location,
    log_streams,
    short_reason,
)
from provider.translate.command import foreach_args

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
MANIFEST = "runs/train_models/manual/fit/-1/1/result.json"
PLAN = "runs/train_models/manual/fit/-1/foreach/0123456789abcdef"
PAYLOAD = {"uri": "s3://flow-artifacts/prod/runs/train_models/manual/fit/-1/1/payload.pickle"}
STORE = "s3://flow-artifacts/prod"
CODE = "data/ab/" + "ab" * 32 + ":47000"
RUN = ["run", "--store", STORE, "--payload", json.dumps(PAYLOAD), "--manifest", MANIFEST]
#: A container's argv as the batch target builds it (its -c program, the bootstrap's launcher).
ARGV = [
    *("python3", "-c", "<launcher>", "--python", "3.11", "--store", STORE, "--code", CODE),
    *("--", *RUN, "--python", "3.11"),
]
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
    spec: TaskSpec,
    identity: dict[str, Any] = IDENTITY,
    foreach: ChunkJob | None = None,
    bootstrap: str | None = "<the compressed bootstrap>",
) -> dict[str, Any]:
    """The requests of ``spec``; golden files hold a stand-in for the compressed bootstrap
    (``bootstrap=None``: the real one)."""
    options = spec.batch if spec.batch.queue else spec.batch.over(QUEUE)
    argv = ARGV  # a foreach job's runs chunks, picked by the array index
    if foreach is not None:
        runtime = foreach_args(STORE, PAYLOAD, foreach.runtime_mode)
        runtime[runtime.index("--python") + 1] = "3.11"
        argv = [*ARGV[: ARGV.index("--") + 1], *runtime]
    with (
        mock.patch("provider.translate.command.packed_bootstrap", return_value=bootstrap)
        if bootstrap
        else contextlib.nullcontext()
    ):
        definition, submit = batch_job(
            spec,
            argv=argv,
            image=spec.environment.image or "python:3.11-slim",
            options=options,
            identity=identity,
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


def _variables(count: int, size: int) -> dict[str, str]:
    """``count`` variables of ``size`` characters, name and value."""
    return {f"VAR_{i:02d}": "x" * (size - len(f"VAR_{i:02d}")) for i in range(count)}


def test_what_does_not_change_between_submissions_is_in_the_definition():
    """The bootstrap, the task's variables and the store's are the job definition's; the
    submission carries the placeholders' values, the run's identity and the resources, and
    ECS's count of its overrides stays far from 8,192 with 40 variables of 100 characters."""
    spec = TaskSpec.build(compute="batch", environment=Environment(env=_variables(40, 100)))
    rendered = requests(spec, bootstrap=None)
    definition, submit = rendered["register_job_definition"], rendered["submit_job"]
    container = definition["containerProperties"]
    static = {v["name"]: v["value"] for v in container["environment"]}
    assert _variables(40, 100).items() <= static.items()
    assert len(static["FLOWTASK_BOOTSTRAP"]) > 5000 and static["FLOWTASK_STORE"] == STORE
    assert static["AWS_DEFAULT_REGION"] == "us-east-1"
    overrides = submit["containerOverrides"]
    assert set(overrides) == {"environment", "resourceRequirements"}  # no command: the definition's
    assert [v["name"] for v in overrides["environment"]] == [
        *("FLOWTASK_DAG_ID", "FLOWTASK_MANIFEST", "FLOWTASK_MAP_INDEX", "FLOWTASK_NAMESPACE"),
        *("FLOWTASK_RUN_ID", "FLOWTASK_TASK_ID", "FLOWTASK_TRY_NUMBER"),
    ]
    assert substituted(container["command"], submit["parameters"]) == ARGV
    size = overrides_length(definition, submit)
    print(f"ECS overrides: {size} characters with 40 variables of 100 characters in the task")
    assert size < 2000
    alone = requests(TaskSpec.build(compute="batch"), bootstrap=None)
    assert overrides_length(alone["register_job_definition"], alone["submit_job"]) == size


def test_what_batch_or_ecs_would_refuse_is_refused_before_submitting_with_the_numbers():
    too_many = TaskSpec.build(compute="batch", environment={"env": _variables(200, 100)})
    with pytest.raises(SpecError) as refused:
        requests(too_many, bootstrap=None)
    assert refused.value.field == "environment.env"
    assert re.search(
        r"the job definition comes to \d+ bytes, \d+ of them the task's variables; Batch "
        r"registers none over 24576",
        str(refused.value),
    )
    long = {**IDENTITY, "namespace": "team:" + "n" * 8000}
    with pytest.raises(SpecError) as refused:
        requests(TaskSpec.build(compute="batch"), long)
    assert refused.value.field == "batch job"
    assert re.search(
        r"come to \d+ characters \(Batch's own variables counted as 512\); ECS starts no "
        r"container whose overrides are over 8192",
        str(refused.value),
    )


def test_every_per_submission_value_is_a_parameter_whatever_batch_substitutes():
    """The definition's command holds no payload, manifest, code package, environment or
    chunk list, only ``Ref::`` placeholders, each a whole argument; no parameter's name starts
    another's, so a substitution within arguments (moto's, the harness's) gives the same."""
    from batch_cluster import substitute

    names = sorted(PARAMETERS.values())
    assert not [(a, b) for a in names for b in names if a != b and b.startswith(a)]
    archives = ["data/cd/" + "cd" * 32 + ":10", "data/ef/" + "ef" * 32 + ":20"]
    with_envs = [*ARGV[:10], "--env", archives[0], "--env", archives[1], *ARGV[10:]]
    for job in (None, *chunk_jobs(PLAN, [0, 1, 2, 7]), *chunk_jobs(PLAN, [5])):
        for argv in (ARGV, with_envs):
            if job is not None:
                runtime = foreach_args(STORE, PAYLOAD, job.runtime_mode)
                argv = [*argv[: argv.index("--") + 1], *runtime]
            template, parameters = parameterized(argv)
            assert all(a == "Ref::" + n for a in template if "Ref::" in a for n in [a[5:]])
            text = json.dumps(template)
            assert not any(v in text for v in (CODE, MANIFEST, PAYLOAD["uri"], *archives))
            joined = substituted(template, parameters)
            assert [substitute(arg, parameters) for arg in template] == joined
            if argv is with_envs:  # one --env, comma-separated: the bootstrap splits it
                assert parameters["environments"] == ",".join(archives)
                argv = [*argv[:10], "--env", ",".join(archives), *argv[14:]]
            assert joined == argv


def test_a_job_definition_serves_every_task_of_the_same_content():
    base = {"environment": Environment(image="python:3.11-slim", env={"MODE": "fast"})}
    one = requests(TaskSpec.build(compute="batch", resources=Resources(cpu=4), **base))
    other = requests(
        TaskSpec.build(compute="batch", timeout="1h", **base), {**IDENTITY, "task_id": "b"}
    )
    assert one["register_job_definition"] == other["register_job_definition"]
    changed = requests(TaskSpec.build(compute="batch", environment={"env": {"MODE": "slow"}}))
    assert (
        changed["register_job_definition"]["jobDefinitionName"]
        != (one["register_job_definition"]["jobDefinitionName"])
    )


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
    definition = rendered["register_job_definition"]
    assert (
        definition["containerProperties"]["image"]
        == (single["register_job_definition"]["containerProperties"]["image"])
    )
    submit = rendered["submit_job"]
    assert submit["retryStrategy"] == single["submit_job"]["retryStrategy"]
    assert submit["arrayProperties"] == {"size": 20}
    assert definition["containerProperties"]["command"][-4:] == [
        "--chunk-env",
        "AWS_BATCH_JOB_ARRAY_INDEX",
        "--chunks",
        "Ref::chunks",
    ]
    assert submit["parameters"]["chunks"] == "0-19"
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
    plain = requests(spec, foreach=last)
    assert "arrayProperties" not in plain["submit_job"]
    command = plain["register_job_definition"]["containerProperties"]["command"]
    assert command[-2:] == ["--chunk", "Ref::one_chunk"]
    assert plain["submit_job"]["parameters"]["one_chunk"] == "10000"
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
    longest = max(jobs, key=lambda job: len(format_chunks(job.chunks)))
    rendered = requests(spec, foreach=longest, bootstrap=None)
    size = overrides_length(rendered["register_job_definition"], rendered["submit_job"])
    assert size < MAX_CONTAINER_OVERRIDES / 4


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
