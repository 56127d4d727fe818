"""The local AWS Batch (tests/batch_cluster.py): through boto3, and through Airflow's BatchOperator.

Every job here is a short ``python -c`` run by the harness as a local subprocess.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import timedelta
from typing import Any
from unittest import mock

import pytest
from batch_cluster import EXITED, HOST_TERMINATED, MAX_RESOURCE, OOM, TIMED_OUT, LocalBatch
from botocore.exceptions import ClientError

# The retry strategy AWS's documentation gives for "retry on a Spot reclaim, exit otherwise".
SPOT_ONLY = {
    "attempts": 3,
    "evaluateOnExit": [
        {"onStatusReason": "Host EC2*", "action": "RETRY"},
        {"onReason": "*", "action": "EXIT"},
    ],
}
# Prints its attempt number; the first attempt then runs long enough to be interrupted.
ATTEMPT = (
    "import os, time\n"
    "attempt = os.environ['AWS_BATCH_JOB_ATTEMPT']\n"
    "print('attempt', attempt)\n"
    "time.sleep(10 if attempt == '1' else 0.2)\n"
)


def python(code: str) -> list[str]:
    return ["python", "-u", "-c", code]


def submit(batch: LocalBatch, code: str, **request: Any) -> str:
    """Register a job definition running ``python -c code`` and submit a job of it."""
    name = request.pop("jobName", f"job-{uuid.uuid4().hex[:8]}")
    definition = request.pop("definition", {})
    batch.register(name, python(code), **definition)
    response = batch.client("batch").submit_job(
        jobName=name, jobQueue=batch.queue, jobDefinition=name, **request
    )
    return str(response["jobId"])


def wait_until(predicate: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_job_runs_with_its_environment_and_logs_to_cloudwatch(batch):
    batch.client("secretsmanager").create_secret(Name="db", SecretString='{"password": "pw"}')
    arn = batch.client("secretsmanager").describe_secret(SecretId="db")["ARN"]
    batch.client("ssm").put_parameter(Name="/flow/token", Value="tok", Type="SecureString")
    code = (
        "import json, os\n"
        "print('hello from batch')\n"
        "names = ['FROM_DEF', 'BOTH', 'FROM_OVERRIDE', 'PASSWORD', 'TOKEN', 'AWS_BATCH_JOB_ID',\n"
        "         'AWS_BATCH_JOB_ATTEMPT', 'AWS_BATCH_JQ_NAME', 'AWS_BATCH_CE_NAME']\n"
        "print(json.dumps({n: os.environ.get(n) for n in names}))\n"
        "print('array index' in os.environ)\n"
    )
    definition = {
        "environment": [{"name": "FROM_DEF", "value": "d"}, {"name": "BOTH", "value": "def"}],
        "secrets": [
            {"name": "PASSWORD", "valueFrom": f"{arn}:password::"},
            {"name": "TOKEN", "valueFrom": "/flow/token"},
        ],
    }
    overrides = {
        "environment": [{"name": "BOTH", "value": "over"}, {"name": "FROM_OVERRIDE", "value": "o"}],
        "resourceRequirements": [
            {"type": "MEMORY", "value": "1024"},
            {"type": "GPU", "value": "1"},
        ],
    }
    job_id = submit(batch, code, definition=definition, containerOverrides=overrides)
    job = batch.wait(job_id)

    assert job["status"] == "SUCCEEDED"
    assert job["statusReason"] == EXITED
    assert job["container"]["exitCode"] == 0
    assert "reason" not in job["container"]
    assert job["createdAt"] <= job["startedAt"] <= job["stoppedAt"]
    [attempt] = job["attempts"]
    stream = job["container"]["logStreamName"]
    task_id = job["container"]["taskArn"].rsplit("/", 1)[1]
    assert stream == attempt["container"]["logStreamName"] == f"{job['jobName']}/default/{task_id}"
    assert attempt["container"]["exitCode"] == 0
    assert attempt["statusReason"] == EXITED
    assert {"name": "BOTH", "value": "over"} in job["container"]["environment"]
    assert {"type": "GPU", "value": "1"} in job["container"]["resourceRequirements"]

    first, seen, no_index = batch.logs(stream)
    assert first == "hello from batch"
    assert json.loads(seen) == {
        "FROM_DEF": "d",
        "BOTH": "over",
        "FROM_OVERRIDE": "o",
        "PASSWORD": "pw",
        "TOKEN": "tok",
        "AWS_BATCH_JOB_ID": job_id,
        "AWS_BATCH_JOB_ATTEMPT": "1",
        "AWS_BATCH_JQ_NAME": batch.queue,
        "AWS_BATCH_CE_NAME": batch.compute_environment,
    }
    assert no_index == "False"

    run = batch.run_of(job_id)
    assert run.statuses == [
        "SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED"
    ]  # fmt: skip
    assert run.resources == {"VCPU": "1", "MEMORY": "1024", "GPU": "1"}
    assert run.command == python(code)
    assert run.environment["AWS_BATCH_JOB_ID"] == job_id


def test_a_failing_command_fails_the_job_with_its_exit_code(batch):
    # A job definition may name its own log group and stream prefix (BatchOperator reads them).
    options = {"awslogs-group": "/flow/tasks", "awslogs-stream-prefix": "flow"}
    definition = {"logConfiguration": {"logDriver": "awslogs", "options": options}}
    job = batch.wait(submit(batch, "import sys; print('bad'); sys.exit(3)", definition=definition))
    assert job["status"] == "FAILED"
    assert job["statusReason"] == EXITED
    assert job["container"]["exitCode"] == 3
    [attempt] = job["attempts"]
    assert attempt["container"]["exitCode"] == 3
    assert "reason" not in attempt["container"]
    assert job["container"]["logStreamName"].startswith("flow/default/")
    assert batch.logs(job["container"]["logStreamName"], group="/flow/tasks") == ["bad"]


def test_a_job_over_its_memory_is_killed_as_out_of_memory(batch):
    code = (
        "import time\n"
        "chunks = []\n"
        "for i in range(40):\n"
        "    chunks.append(bytearray(10 * 2**20))\n"
        "    print('allocated', 10 * (i + 1), 'MiB')\n"
        "    time.sleep(0.02)\n"
    )
    overrides = {"resourceRequirements": [{"type": "MEMORY", "value": "100"}]}
    job = batch.wait(submit(batch, code, containerOverrides=overrides))
    assert job["status"] == "FAILED"
    assert job["statusReason"] == EXITED
    assert job["container"]["exitCode"] == 137
    assert job["container"]["reason"] == OOM
    [attempt] = job["attempts"]
    assert attempt["container"]["reason"] == OOM
    logs = batch.logs(job["container"]["logStreamName"])
    assert logs[0] == "allocated 10 MiB"
    assert "allocated 400 MiB" not in logs


def test_an_attempt_over_its_timeout_is_stopped_and_not_retried(batch):
    batch.timeout_scale = 1 / 60  # AWS's minimum timeout, 60 s, lasts 1 s here
    code = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: (print('got SIGTERM'), sys.exit(143)))\n"
        "print('working')\n"
        "time.sleep(30)\n"
    )
    job_id = submit(
        batch, code, timeout={"attemptDurationSeconds": 60}, retryStrategy={"attempts": 2}
    )
    job = batch.wait(job_id)
    assert job["status"] == "FAILED"
    assert job["statusReason"] == TIMED_OUT
    [attempt] = job["attempts"]  # AWS does not retry a job stopped for its timeout
    assert attempt["statusReason"] == TIMED_OUT
    assert attempt["container"]["exitCode"] == 143
    assert 0.9 < (attempt["stoppedAt"] - attempt["startedAt"]) / 1000 < 5
    assert batch.logs(job["container"]["logStreamName"]) == ["working", "got SIGTERM"]

    with pytest.raises(ClientError, match="at least 60"):
        submit(batch, "pass", timeout={"attemptDurationSeconds": 30})


def test_a_host_termination_is_retried_by_the_spot_retry_strategy(batch):
    name = f"spot-{uuid.uuid4().hex[:8]}"
    batch.inject("host_termination", job_name=name, after=1)
    job = batch.wait(submit(batch, ATTEMPT, jobName=name, retryStrategy=SPOT_ONLY))

    assert job["status"] == "SUCCEEDED"
    first, second = job["attempts"]
    assert first["statusReason"] == HOST_TERMINATED
    assert "exitCode" not in first["container"]
    assert second["statusReason"] == EXITED
    assert second["container"]["exitCode"] == 0
    assert first["stoppedAt"] <= second["startedAt"]
    assert first["container"]["logStreamName"] != second["container"]["logStreamName"]
    assert batch.logs(first["container"]["logStreamName"]) == ["attempt 1"]
    assert batch.logs(second["container"]["logStreamName"]) == ["attempt 2"]
    assert batch.run_of(job["jobId"]).statuses[3:] == [
        "STARTING", "RUNNING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED"
    ]  # fmt: skip


def test_a_fault_can_name_jobs_by_a_prefix(batch):
    batch.inject("oom", job_name="other-*")
    batch.inject("host_termination", job_name="glob-*")
    job = batch.wait(submit(batch, "pass", jobName=f"glob-{uuid.uuid4().hex[:8]}"))
    [attempt] = job["attempts"]  # no retryStrategy: one attempt
    assert attempt["statusReason"] == HOST_TERMINATED
    assert [fault.job_name for fault in batch.faults] == ["other-*"]


def test_the_spot_retry_strategy_does_not_retry_an_ordinary_failure(batch):
    job = batch.wait(submit(batch, "raise SystemExit(1)", retryStrategy=SPOT_ONLY))
    assert job["status"] == "FAILED"
    [attempt] = job["attempts"]
    assert attempt["container"]["exitCode"] == 1


def test_without_rules_an_injected_oom_is_retried_while_attempts_remain(batch):
    batch.inject("oom", after=0.2)
    job = batch.wait(submit(batch, "import time; time.sleep(0.5)", retryStrategy={"attempts": 2}))
    assert job["status"] == "SUCCEEDED"
    first, second = job["attempts"]
    assert (first["container"]["exitCode"], first["container"]["reason"]) == (137, OOM)
    assert second["container"]["exitCode"] == 0


def test_terminate_job_stops_the_process_with_sigterm_then_sigkill(batch):
    batch.stop_grace = 0.3
    code = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: print('ignoring SIGTERM'))\n"
        "print('ready')\n"
        "time.sleep(60)\n"
    )
    client = batch.client("batch")
    job_id = submit(batch, code)
    wait_until(lambda: batch.describe(job_id)["status"] == "RUNNING")
    stream = batch.describe(job_id)["container"]["logStreamName"]
    wait_until(lambda: batch.logs(stream) == ["ready"])
    # ListJobs lists RUNNING jobs unless asked for another status or given a filter.
    assert [j["jobId"] for j in client.list_jobs(jobQueue=batch.queue)["jobSummaryList"]] == [
        job_id
    ]
    client.cancel_job(jobId=job_id, reason="too late to cancel")  # a no-op once it runs
    client.terminate_job(jobId=job_id, reason="stopped by the test")
    job = batch.wait(job_id)
    assert job["status"] == "FAILED"
    assert job["statusReason"] == "stopped by the test"
    assert job["isTerminated"] is True
    assert job["container"]["exitCode"] == 137
    assert batch.logs(stream) == ["ready", "ignoring SIGTERM"]
    assert list(batch.running()) == []
    assert client.list_jobs(jobQueue=batch.queue)["jobSummaryList"] == []
    name = job["jobName"]
    listed = client.list_jobs(
        jobQueue=batch.queue, filters=[{"name": "JOB_NAME", "values": [name.upper()]}]
    )["jobSummaryList"]
    assert [(j["jobId"], j["status"], j["container"]) for j in listed] == [
        (job_id, "FAILED", {"exitCode": 137})
    ]


def test_a_job_bigger_than_the_compute_environment_stays_runnable_until_cancelled(batch):
    overrides = {"resourceRequirements": [{"type": "VCPU", "value": "64"}]}
    job_id = submit(batch, "print('never')", containerOverrides=overrides)
    wait_until(lambda: batch.describe(job_id).get("statusReason") == MAX_RESOURCE)
    assert batch.describe(job_id)["status"] == "RUNNABLE"
    batch.client("batch").cancel_job(jobId=job_id, reason="does not fit")
    job = batch.wait(job_id)
    assert (job["status"], job["statusReason"], job["isCancelled"]) == (
        "FAILED",
        "does not fit",
        True,
    )
    assert job["attempts"] == []


def test_an_array_job_runs_its_children_two_at_a_time(batch):
    code = (
        "import os, time; print('index', os.environ['AWS_BATCH_JOB_ARRAY_INDEX']); time.sleep(0.3)"
    )
    parent_id = submit(batch, code, arrayProperties={"size": 5})
    parent_statuses = set()
    while (parent := batch.describe(parent_id))["status"] not in ("SUCCEEDED", "FAILED"):
        parent_statuses.add(parent["status"])
        time.sleep(0.05)
    assert parent_statuses <= {"SUBMITTED", "PENDING"}  # a parent is never RUNNING
    assert parent["status"] == "SUCCEEDED"
    assert parent["arrayProperties"]["size"] == 5
    assert parent["arrayProperties"]["statusSummary"]["SUCCEEDED"] == 5
    assert parent["attempts"] == []

    listed = batch.client("batch").list_jobs(arrayJobId=parent_id, jobStatus="SUCCEEDED")
    ids = sorted(j["jobId"] for j in listed["jobSummaryList"])
    assert ids == [f"{parent_id}:{i}" for i in range(5)]
    children = batch.client("batch").describe_jobs(jobs=ids)["jobs"]
    for i, child in enumerate(sorted(children, key=lambda c: c["jobId"])):
        assert child["arrayProperties"] == {"index": i}
        assert child["status"] == "SUCCEEDED"
        assert batch.logs(child["container"]["logStreamName"]) == [f"index {i}"]
        assert batch.run_of(child["jobId"]).statuses[0] == "PENDING"  # spawned PENDING
    spans = [(c["attempts"][0]["startedAt"], c["attempts"][0]["stoppedAt"]) for c in children]
    most = max(sum(s <= t < e for s, e in spans) for t, _ in spans)
    assert most == 2


def test_an_array_job_fails_once_all_children_ended_if_one_failed(batch):
    code = (
        "import os, sys, time\n"
        "time.sleep(0.2)\n"
        "sys.exit(int(os.environ['AWS_BATCH_JOB_ARRAY_INDEX']))\n"
    )
    parent = batch.wait(submit(batch, code, arrayProperties={"size": 2}))
    assert parent["status"] == "FAILED"
    summary = parent["arrayProperties"]["statusSummary"]
    assert (summary["SUCCEEDED"], summary["FAILED"]) == (1, 1)


# --- through Airflow's BatchOperator (amazon provider 9.39) -------------------------------------


@pytest.fixture
def operator(batch, monkeypatch):
    """A factory of BatchOperators on the local Batch, with polling delays cut to ~50 ms."""
    from airflow.providers.amazon.aws.hooks.batch_client import BatchClientHook
    from airflow.providers.amazon.aws.operators.batch import BatchOperator

    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", batch.airflow_connection_json())
    monkeypatch.setattr(BatchClientHook, "DEFAULT_DELAY_MIN", 0)
    monkeypatch.setattr(BatchClientHook, "DEFAULT_DELAY_MAX", 0.05)
    # Between status checks the hook waits exponential_delay(n), up to minutes: not here.
    monkeypatch.setattr(BatchClientHook, "exponential_delay", staticmethod(lambda tries: 0.05))

    def make(code: str, **kwargs: Any) -> BatchOperator:
        name = f"op-{uuid.uuid4().hex[:8]}"
        batch.register(name, python(code))
        return BatchOperator(
            task_id="batch",
            job_name=name,
            job_definition=name,
            job_queue=batch.queue,
            awslogs_enabled=True,
            awslogs_fetch_interval=timedelta(seconds=0.1),
            poll_interval=0,
            **kwargs,
        )

    return make


def _run(op: Any) -> tuple[Any, list[str]]:
    """Execute ``op`` as a worker would (minus Airflow's task runner); return its result and
    what it logged."""
    lines: list[str] = []
    context = {"ti": mock.MagicMock()}
    with mock.patch.object(type(op), "log", mock.PropertyMock()) as log:
        log.return_value.info.side_effect = lambda msg, *args: lines.append(str(msg) % args)
        log.return_value.log.side_effect = lambda level, msg, *args: lines.append(msg % args)
        try:
            return op.execute(context), lines
        except Exception as e:
            return e, lines


def test_batch_operator_waits_for_the_job_and_streams_its_logs(batch, operator):
    code = "import time\nfor i in range(3):\n    print('line', i)\n    time.sleep(0.2)"
    op = operator(code, container_overrides={"environment": [{"name": "X", "value": "1"}]})
    job_id, lines = _run(op)
    assert batch.describe(job_id)["status"] == "SUCCEEDED"
    [run] = batch.history
    assert run.environment["X"] == "1"
    streamed = [line.split("] ", 1)[1] for line in lines if line.startswith("[")]
    assert streamed == ["line 0", "line 1", "line 2"]


def test_batch_operator_raises_with_the_reason_when_the_job_fails(batch, operator):
    from airflow.sdk.exceptions import AirflowException

    overrides = {"resourceRequirements": [{"type": "MEMORY", "value": "100"}]}
    op = operator("x = bytearray(400 * 2**20)", container_overrides=overrides)
    error, _ = _run(op)
    assert isinstance(error, AirflowException)
    job_id = batch.history[0].job_id
    assert str(error).startswith(f"AWS Batch job ({job_id}) failed: ")
    assert OOM in str(error)  # the whole job description, reprinted


def test_batch_operator_streams_only_the_attempt_it_first_saw_running(batch, operator):
    """9.39 picks the log stream once, at the first RUNNING: a retried job's later attempts
    are not streamed (a flow-task integration has to read ``attempts`` itself)."""
    batch.inject("host_termination", after=1)
    job_id, lines = _run(operator(ATTEMPT, retry_strategy=SPOT_ONLY))
    assert len(batch.describe(job_id)["attempts"]) == 2
    streamed = [line.split("] ", 1)[1] for line in lines if line.startswith("[")]
    assert streamed == ["attempt 1"]


def test_batch_operator_does_not_reattach_to_its_job_id(batch, operator):
    """``job_id=`` is overwritten by a new SubmitJob: an Airflow retry starts a new job."""
    first, _ = _run(operator("print('one')"))
    second, _ = _run(operator("print('two')", job_id=first))
    assert second != first
    assert len(batch.requests) == 2


def test_parameters_fill_the_placeholders_of_the_definitions_command(batch):
    """The submission's parameters over the definition's defaults; a placeholder without a
    value stays as written, as Batch leaves it."""
    name = f"job-{uuid.uuid4().hex[:8]}"
    code = "import sys; print(' '.join(sys.argv[1:]))"
    batch.client("batch").register_job_definition(
        jobDefinitionName=name,
        type="container",
        parameters={"greeting": "hello", "name": "nobody"},
        containerProperties={
            "image": "python:3.11-slim",
            "command": ["python", "-c", code, "Ref::greeting", "Ref::name", "Ref::unset"],
            "resourceRequirements": [
                {"type": "VCPU", "value": "1"},
                {"type": "MEMORY", "value": "512"},
            ],
        },
    )
    job_id = batch.client("batch").submit_job(
        jobName=name, jobQueue=batch.queue, jobDefinition=name, parameters={"name": "ada"}
    )["jobId"]
    job = batch.wait(job_id)
    assert job["status"] == "SUCCEEDED"
    assert job["parameters"] == {"greeting": "hello", "name": "ada"}
    assert job["container"]["command"][-3:] == ["hello", "ada", "Ref::unset"]
    assert batch.logs(job["container"]["logStreamName"]) == ["hello ada Ref::unset"]


def test_a_job_whose_overrides_ecs_cannot_take_fails_without_starting(batch):
    """ECS takes 8,192 characters of overrides per container: the command with its parameters
    substituted is among them, the definition's variables are not."""
    from batch_cluster import OVERRIDES_TOO_LONG

    big = "x" * 8200
    name = f"job-{uuid.uuid4().hex[:8]}"
    batch.register(name, [*python("print('ran')"), "Ref::big"])
    client = batch.client("batch")
    job_id = client.submit_job(
        jobName=name, jobQueue=batch.queue, jobDefinition=name, parameters={"big": big}
    )["jobId"]
    job = batch.wait(job_id)
    assert (job["status"], job["statusReason"], job["attempts"]) == (
        "FAILED",
        OVERRIDES_TOO_LONG,
        [],
    )
    assert "STARTING" not in batch.run_of(job_id).statuses
    in_definition = {"environment": [{"name": "BIG", "value": big}]}
    job_id = submit(batch, "import os; print(len(os.environ['BIG']))", definition=in_definition)
    job = batch.wait(job_id)
    assert job["status"] == "SUCCEEDED"
    assert batch.logs(job["container"]["logStreamName"]) == ["8200"]


def test_requests_over_batchs_quotas_are_refused(batch):
    """RegisterJobDefinition takes 24 KiB, SubmitJob 30 KiB."""
    variables = [{"name": f"V{i}", "value": "x" * 1000} for i in range(25)]
    with pytest.raises(ClientError, match="Job definition size must be at most 24 KiB"):
        batch.register(f"job-{uuid.uuid4().hex[:8]}", python("pass"), environment=variables)
    name = f"job-{uuid.uuid4().hex[:8]}"
    batch.register(name, python("pass"))
    with pytest.raises(ClientError, match="Job size must be less than 30 KiB, got 31 KiB"):
        batch.client("batch").submit_job(
            jobName=name,
            jobQueue=batch.queue,
            jobDefinition=name,
            parameters={f"p{i}": "x" * 1000 for i in range(31)},
        )
    assert batch.requests == []
