"""The batch compute target in-process against the local Batch (tests/batch_cluster.py): jobs,
secrets, logs, job definitions, reattaching after a worker restart, and kill.

Artifacts live in the S3 of the same moto server; the harness runs each job's bootstrap and
runtime as a local subprocess, exactly as a container would.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from batch_cluster import LocalBatch

from provider import Environment, TaskSpec
from provider.core.by_value import pickled_by_value
from provider.core.targets.base import Launch
from provider.core.targets.batch_jobs import (
    STOPPED_TAG,
    forget_job_definitions,
    job_definition_arn,
    running_job,
)
from provider.operators.targets import Outcome, TaskRun, compute_target
from provider.operators.targets.batch import batch_operator
from provider.store import ArtifactStore, MissingArtifact, manifest_key, open_store, payload_key

BUCKET = "flow-artifacts"
EXECUTION_ROLE = "arn:aws:iam::123456789012:role/flow-execution"


@pytest.fixture
def store(batch: LocalBatch, monkeypatch: pytest.MonkeyPatch) -> Iterator[ArtifactStore]:
    """flowtask configured for the local Batch, with its store in the same moto's S3."""
    from provider import config

    s3 = batch.client("s3")
    if BUCKET not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        s3.create_bucket(Bucket=BUCKET)
    root = f"s3://{BUCKET}/target-{uuid.uuid4().hex[:8]}"
    for name, value in {
        "AIRFLOW_CONN_AWS_DEFAULT": batch.airflow_connection_json(),
        "AIRFLOW__FLOW_TASK__ARTIFACT_STORE": root,
        "AIRFLOW__FLOW_TASK__BATCH_JOB_QUEUE": batch.queue,
        "AIRFLOW__FLOW_TASK__BATCH_POLL_INTERVAL": "0.05",
    }.items():
        monkeypatch.setenv(name, value)
    config._s3_hook.cache_clear()
    config._open_s3_store.cache_clear()
    forget_job_definitions()
    yield open_store(root, s3_client=s3)
    config._s3_hook.cache_clear()
    config._open_s3_store.cache_clear()


def task_run(
    store: ArtifactStore,
    function: Callable[..., Any],
    *args: Any,
    spec: TaskSpec | None = None,
    try_number: int = 1,
    run_id: str | None = None,
) -> TaskRun:
    """One try of a flow task, its payload stored as the operator stores it."""
    from provider.core.by_value import pickled_by_value
    from provider.runtime import Payload

    run_id = run_id or f"manual__{uuid.uuid4().hex[:8]}"
    identity = {
        "dag_id": "batch_target",
        "run_id": run_id,
        "task_id": function.__name__,
        "map_index": -1,
        "try_number": try_number,
        "namespace": "user:test",
        "tags": ["target"],
    }
    key = manifest_key("batch_target", run_id, function.__name__, -1, try_number)
    with pickled_by_value(function):
        payload = store.put_at(
            payload_key(key),
            Payload(function=function, args=args, identity=identity),
            by_value=True,
        )
    return TaskRun(
        task_id=function.__name__,
        spec=spec or TaskSpec(compute="batch"),
        function=function,
        store=store,
        payload=payload,
        manifest_key=key,
        identity=identity,
        log=logging.getLogger("flowtask.test"),
    )


def launch(run: TaskRun) -> tuple[Any, Outcome]:
    target = compute_target("batch")
    target.check(run.spec)
    target.prepare(run)
    return target, target.run(run, {})


def test_what_boto3_gets_is_the_request():
    """BatchOperator, given operator_kwargs(request), sends exactly the request."""
    from types import SimpleNamespace

    from test_batch_translation import MATRIX, requests

    from provider.operators.targets.batch import batch_operator
    from provider.translate.batch import operator_kwargs

    spec = TaskSpec.build(
        compute="batch", timeout="2h", batch=MATRIX["fair_share_and_attempts"]["batch"]
    )
    request = requests(spec)["submit_job"]
    op = batch_operator("fit", request)
    sent: list[dict[str, Any]] = []
    client = SimpleNamespace(submit_job=lambda **kwargs: sent.append(kwargs) or {"jobId": "j"})
    op.__dict__["hook"] = SimpleNamespace(client=client, conn_region_name="", conn_partition="")
    op.submit_job(None)
    assert sent == [request]
    assert operator_kwargs(request)["submit_job_timeout"] == 7200


def test_the_submit_request_does_not_grow_with_the_payload(store: ArtifactStore):
    """Only the payload's reference travels in SubmitJob: its size field's digits aside, a
    100-byte and a 20 MB payload (incompressible: the store keeps it as it is) make requests
    of one size."""
    from provider.core.code import code_package, code_reference
    from provider.operators.targets.batch import batch_requests
    from provider.translate.batch import overrides_length

    run = task_run(store, slow, 1)
    code = code_reference(store.root_uri, code_package(None))
    sizes = {}
    for label, value in (("small", b"x" * 100), ("large", random.Random(0).randbytes(20 * 2**20))):
        payload = store.put_at(payload_key(run.manifest_key), value).to_json()
        launch = Launch(store.root_uri, code, payload, run.manifest_key, run.identity)
        definition, request = batch_requests(run.spec, launch)
        sizes[label] = (len(json.dumps(request).encode()), len(str(payload["size"])))
    (small, small_digits), (large, large_digits) = sizes["small"], sizes["large"]
    print(
        f"SubmitJob request: {small} bytes (small payload), {large} bytes (20 MB payload); "
        f"container overrides (ECS's count) {overrides_length(definition, request)} characters"
    )
    assert large - small == large_digits - small_digits
    assert large < 30 * 1024  # Batch's limit on a SubmitJob request


def greet(name: str) -> str:
    import os

    print(f"hello {name} from attempt {os.environ['AWS_BATCH_JOB_ATTEMPT']}")
    return f"{name}:{os.environ['PASSWORD']}:{os.environ['TOKEN']}:{os.environ['MODE']}"


def test_a_task_runs_as_a_job_with_its_secrets_env_and_logs(
    batch: LocalBatch, store: ArtifactStore, capfd: pytest.CaptureFixture[str]
):
    secrets = batch.client("secretsmanager")
    unique = uuid.uuid4().hex[:6]
    arn = secrets.create_secret(Name=f"db-{unique}", SecretString='{"password": "pw-7c1e9b"}')[
        "ARN"
    ]
    batch.client("ssm").put_parameter(Name=f"/{unique}/token", Value="tok", Type="SecureString")
    token = f"arn:aws:ssm:{batch.region}:{batch.account_id}:parameter/{unique}/token"
    spec = TaskSpec.build(
        compute="batch",
        environment=Environment(env={"MODE": "fast"}, secrets=[f"{arn}:password::", token]),
        batch={"execution_role_arn": EXECUTION_ROLE},
    )
    target, outcome = launch(task_run(store, greet, "ada", spec=spec))

    assert outcome.exit_code == 0 and outcome.failure is None
    manifest = store.read_manifest(outcome.manifest_key)
    assert manifest["status"] == "succeeded"
    assert store.get(manifest["result"]) == "ada:pw-7c1e9b:tok:fast"
    [request] = batch.requests
    assert request == target._request  # exactly what flowtask translated, through BatchOperator
    [job] = batch.history
    assert job.environment["FLOWTASK_MANIFEST"] == outcome.manifest_key
    assert "pw-7c1e9b" not in str(request) + str(target._definition)  # references only
    assert "] hello ada from attempt 1" in capfd.readouterr().out  # CloudWatch, as logged


def variables_seen(names: list[str]) -> dict[str, Any]:
    import os

    return {
        "lengths": [len(name) + len(os.environ[name]) for name in names],
        "bootstrap_left": "FLOWTASK_BOOTSTRAP" in os.environ,
    }


def test_a_task_with_40_variables_of_100_characters_runs_as_a_job(
    batch: LocalBatch, store: ArtifactStore
):
    """Its variables are in the job definition with the bootstrap; the submission's overrides
    are the run's identity, the placeholders' values and the resources: far from the 8,192
    characters ECS takes, as the harness counts them and as flowtask does."""
    from provider.translate.batch import overrides_length

    env = {f"VAR_{i:02d}": f"{uuid.uuid4().hex}" + "x" * (94 - 32) for i in range(40)}
    assert {len(name) + len(value) for name, value in env.items()} == {100}
    spec = TaskSpec.build(compute="batch", environment=Environment(env=env))
    target, outcome = launch(task_run(store, variables_seen, sorted(env), spec=spec))

    assert outcome.exit_code == 0 and outcome.failure is None, outcome
    seen = store.get(store.read_manifest(outcome.manifest_key)["result"])
    assert seen == {"lengths": [100] * 40, "bootstrap_left": False}
    [job] = batch.jobs
    ours = overrides_length(target._definition, target._request)
    print(
        f"BATCH 40 variables of 100 characters: ECS overrides {job.ecs_overrides} characters "
        f"(flowtask's count, Batch's variables reserved: {ours})"
    )
    assert job.ecs_overrides < ours < 2500
    assert "VAR_00" not in json.dumps(target._request)


def square(x: int) -> int:
    return x * x


def test_two_tasks_of_the_same_content_register_one_job_definition(
    batch: LocalBatch, store: ArtifactStore, caplog: pytest.LogCaptureFixture
):
    """Same image, variables and secrets: one registration, whatever the function, resources
    or timeout; a new worker process finds it and registers nothing."""
    from provider import Resources

    env = Environment(image="python:3.11-slim", env={"RUN": uuid.uuid4().hex})  # new content
    first = TaskSpec.build(compute="batch", environment=env)
    second = TaskSpec.build(compute="batch", environment=env, resources=Resources(cpu=2))
    caplog.set_level(logging.INFO, logger="flowtask.test")
    for function, spec in ((slow, first), (square, second)):
        _, outcome = launch(task_run(store, function, 0, spec=spec))
        assert outcome.exit_code == 0, outcome
    forget_job_definitions()
    _, outcome = launch(task_run(store, square, 3, spec=first))
    assert (
        outcome.exit_code == 0
        and store.get(store.read_manifest(outcome.manifest_key)["result"]) == 9
    )
    [name] = {r["jobDefinition"] for r in batch.requests}
    found = batch.client("batch").describe_job_definitions(jobDefinitionName=name)
    assert len(found["jobDefinitions"]) == 1
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("job definition")]
    assert [line.rsplit(" ", 1)[1] for line in said] == ["(registered)", "(found)", "(found)"]


def test_job_definitions_are_looked_up_before_registering(batch: LocalBatch):
    client = batch.client("batch")
    name = f"flowtask-test-{uuid.uuid4().hex[:8]}"
    request = {
        "jobDefinitionName": name,
        "type": "container",
        "containerProperties": {
            "image": "python:3.11-slim",
            "resourceRequirements": [
                {"type": "VCPU", "value": "1"},
                {"type": "MEMORY", "value": "512"},
            ],
        },
    }
    results: list[tuple[str, bool]] = []
    threads = [
        threading.Thread(target=lambda: results.append(job_definition_arn(client, request)))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(registered for _, registered in results) == [False, False, False, True]
    assert len({arn for arn, _ in results}) == 1
    forget_job_definitions()  # a new worker process: finds it, registers nothing
    assert job_definition_arn(client, request) == (results[0][0], False)
    found = client.describe_job_definitions(jobDefinitionName=name, status="ACTIVE")
    assert len(found["jobDefinitions"]) == 1


def attempt() -> str:
    import os

    print(f"running attempt {os.environ['AWS_BATCH_JOB_ATTEMPT']}")
    return os.environ["AWS_BATCH_JOB_ATTEMPT"]


def test_a_lost_host_is_retried_by_batch_and_every_attempt_is_logged(
    batch: LocalBatch, store: ArtifactStore, capfd: pytest.CaptureFixture[str]
):
    batch.inject("host_termination", job_name="flowtask-attempt-*", after=0.5)
    _, outcome = launch(task_run(store, attempt))

    assert outcome.exit_code == 0 and outcome.failure is None
    assert store.get(store.read_manifest(outcome.manifest_key)["result"]) == "2"
    [job] = batch.history
    first, second = job.attempts  # Batch retried the lost host; Airflow saw one try
    assert first["statusReason"].startswith("Host EC2") and second["container"]["exitCode"] == 0
    out = capfd.readouterr().out
    assert "Batch started another attempt; its log stream" in out
    assert "] running attempt 2" in out


def slow(seconds: float) -> str:
    import time

    time.sleep(seconds)
    return "slept"


def test_a_later_try_reattaches_to_the_job_a_dead_worker_left_running(
    batch: LocalBatch, store: ArtifactStore
):
    # The compute environment is full: jobs wait RUNNABLE until the test frees it.
    batch.slots.acquire()
    batch.slots.acquire()
    try:
        # Try 1 submits, and its worker dies without watching the job.
        first = task_run(store, slow, 0.2, run_id="manual__reattach")
        dead = compute_target("batch")
        dead.prepare(first)
        op = batch_operator("slow", dead._request)
        job_definition_arn(op.hook.client, dead._definition)
        op.submit_job({})
        # Try 2 finds that job by its name and waits for it instead of submitting another.
        second = task_run(store, slow, 0.2, try_number=2, run_id="manual__reattach")
        target = compute_target("batch")
        target.check(second.spec)
        target.prepare(second)
        outcomes: list[Outcome] = []
        watcher = threading.Thread(target=lambda: outcomes.append(target.run(second, {})))
        watcher.start()
        deadline = time.monotonic() + 30
        while getattr(target._operator, "job_id", None) is None and len(batch.requests) == 1:
            assert time.monotonic() < deadline, "try 2 neither reattached nor submitted"
            time.sleep(0.02)
    finally:
        batch.slots.release()
        batch.slots.release()
    watcher.join(30)

    assert len(batch.requests) == 1
    assert target._operator.job_id == op.job_id
    [outcome] = outcomes
    assert outcome.manifest_key == first.manifest_key and outcome.exit_code == 0
    assert store.get(store.read_manifest(first.manifest_key)["result"]) == "slept"
    with pytest.raises(MissingArtifact):  # the dead try's payload is gone with its job
        store.get(first.payload)


def test_kill_terminates_the_job_and_no_later_try_reattaches_to_it(
    batch: LocalBatch, store: ArtifactStore
):
    run = task_run(store, slow, 60)
    target = compute_target("batch")
    target.prepare(run)
    outcomes: list[Outcome] = []
    watcher = threading.Thread(target=lambda: outcomes.append(target.run(run, {})))
    watcher.start()
    deadline = time.monotonic() + 20
    while not (batch.jobs and batch.jobs[0].status == "RUNNING"):
        assert time.monotonic() < deadline, "the job did not start"
        time.sleep(0.02)
    target.kill()
    job = batch.describe(target._operator.job_id)
    assert job["tags"][STOPPED_TAG] == "true"
    assert running_job(batch.client("batch"), batch.queue, job["jobName"], store) is None
    watcher.join(20)
    [outcome] = outcomes
    assert outcome.failure is not None and "stopped by Airflow" in outcome.failure
    assert batch.describe(job["jobId"])["status"] == "FAILED"


class _Jobs:
    """A Batch client whose jobs are given; records what is asked of it."""

    def __init__(self, *jobs: dict[str, Any], tagging: Exception | None = None) -> None:
        self.jobs, self.tagging, self.calls = list(jobs), tagging, []

    def list_jobs(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("list_jobs", kwargs))
        return {"jobSummaryList": [{"jobId": j["jobId"], "status": j["status"]} for j in self.jobs]}

    def describe_jobs(self, jobs: list[str]) -> dict[str, Any]:
        return {"jobs": [j for j in self.jobs if j["jobId"] in jobs]}

    def terminate_job(self, **kwargs: Any) -> None:
        self.calls.append(("terminate_job", kwargs))

    def tag_resource(self, **kwargs: Any) -> None:
        if self.tagging is not None:
            raise self.tagging
        self.calls.append(("tag_resource", kwargs))


def _job(job_id: str, status: str, manifest: str, created: int, **tags: str) -> dict[str, Any]:
    env = [{"name": "FLOWTASK_MANIFEST", "value": manifest}]
    return {
        "jobId": job_id,
        "jobArn": f"arn:aws:batch:us-east-1:123456789012:job/{job_id}",
        "status": status,
        "createdAt": created,
        "tags": tags,
        "container": {"environment": env, "command": ["python3", "--payload", "not json"]},
    }


def test_only_an_active_unstopped_job_whose_try_never_ended_is_reattached(tmp_path: Any):
    store = open_store((tmp_path / "store").as_uri())
    store.write_manifest("runs/d/r/t/-1/3/result.json", {"status": "failed"})
    client = _Jobs(
        _job("done", "SUCCEEDED", "runs/d/r/t/-1/1/result.json", 1),
        _job("stopping", "RUNNING", "runs/d/r/t/-1/4/result.json", 5, **{STOPPED_TAG: "true"}),
        _job("ended-try", "RUNNING", "runs/d/r/t/-1/3/result.json", 4),
        _job("older", "RUNNABLE", "runs/d/r/t/-1/1/result.json", 2),
        _job("left", "STARTING", "runs/d/r/t/-1/2/result.json", 3),
    )
    found = running_job(client, "q", "flowtask-t-abc", store)
    assert found is not None and (found.job_id, found.manifest_key, found.payload) == (
        "left",
        "runs/d/r/t/-1/2/result.json",
        None,
    )
    assert client.calls == [
        (
            "list_jobs",
            {"jobQueue": "q", "filters": [{"name": "JOB_NAME", "values": ["flowtask-t-abc"]}]},
        )
    ]
    assert running_job(_Jobs(), "q", "flowtask-t-abc", store) is None


def test_a_job_that_cannot_be_tagged_is_still_terminated():
    from provider.core.targets.batch_jobs import mark_stopped

    client = _Jobs(_job("j", "RUNNING", "m", 1), tagging=RuntimeError("AccessDenied"))
    assert mark_stopped(client, "j", "why") == "RuntimeError: AccessDenied"
    assert client.calls == [("terminate_job", {"jobId": "j", "reason": "why"})]
    tagged = _Jobs(_job("j", "RUNNING", "m", 1))
    assert mark_stopped(tagged, "j", "why") is None
    assert tagged.calls[-1] == (
        "tag_resource",
        {
            "resourceArn": "arn:aws:batch:us-east-1:123456789012:job/j",
            "tags": {STOPPED_TAG: "true"},
        },
    )


# --- .foreach: array jobs ------------------------------------------------------------------


def foreach_run(
    store: ArtifactStore,
    function: Callable[..., Any],
    items: list[Any],
    chunk_size: int,
    *,
    spec: TaskSpec | None = None,
    try_number: int = 1,
    run_id: str | None = None,
) -> TaskRun:
    """One try of a ``.foreach`` flow task over ``items``, its payload and plan stored as the
    operator stores them."""
    from provider.runtime.foreach import ForeachPlan

    run = task_run(store, function, spec=spec, try_number=try_number, run_id=run_id)
    plan = ForeachPlan(
        argument="item",
        items=store.put(items).to_json(),
        length=len(items),
        chunk_size=chunk_size,
        prefix=f"{run.manifest_key.rsplit('/', 2)[0]}/foreach/plan",
    )
    payload = store.get(run.payload)
    with pickled_by_value(function):
        ref = store.put_at(
            payload_key(run.manifest_key),
            dataclasses.replace(payload, foreach=plan),
            by_value=True,
        )
    return dataclasses.replace(run, payload=ref, foreach=plan)


def results(store: ArtifactStore, plan: Any) -> list[Any]:
    from provider.runtime.foreach import load_chunk_results

    values = []
    for chunk in range(plan.chunks):
        manifest = store.read_manifest(plan.chunk_key(chunk))
        values += load_chunk_results(store, manifest["result"])
    return values


def double(item: int) -> int:
    import os

    print(f"doubling {item} on attempt {os.environ['AWS_BATCH_JOB_ATTEMPT']}")
    return 2 * item


def test_a_foreach_is_one_array_job_whose_children_batch_retries_alone(
    batch: LocalBatch,
    store: ArtifactStore,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
):
    """Four chunks, one array job of the single job's definition and retry strategy: the first
    child to start loses its host (Batch runs it again), the second runs out of memory (no
    manifest: the outcome names Batch's reason)."""
    from provider.core.foreach import gather
    from provider.core.targets import batch_foreach
    from provider.operators.targets.batch import batch_requests

    monkeypatch.setattr(batch_foreach, "PROGRESS_EVERY", 0.0)
    batch.inject("host_termination", job_name="flowtask-double-*", after=0.3)
    batch.inject("oom", job_name="flowtask-double-*")
    run = foreach_run(store, double, list(range(8)), chunk_size=2)
    target = compute_target("batch")
    target.check(run.spec)
    target.prepare(run)
    with caplog.at_level(logging.INFO, logger="flowtask.test"):
        outcome = target.run_foreach(run, [0, 1, 2, 3], {})

    [request] = batch.requests
    assert request["arrayProperties"] == {"size": 4} and request["parameters"]["chunks"] == "0-3"
    command = batch.history[0].command  # as the harness ran it: the parameters substituted
    assert command[command.index("--") + 1] == "foreach"
    assert command[-4:] == ["--chunk-env", "AWS_BATCH_JOB_ARRAY_INDEX", "--chunks", "0-3"]
    single, _ = batch_requests(run.spec, target._launch)
    array = target._definition
    assert request["jobDefinition"] == array["jobDefinitionName"] != single["jobDefinitionName"]
    ours, theirs = (  # the single job's, but for the command's runtime arguments
        {k: v for k, v in d["containerProperties"].items() if k != "command"}
        for d in (array, single)
    )
    assert ours == theirs
    assert request["retryStrategy"]["evaluateOnExit"][0] == {
        "onStatusReason": "Host EC2*",
        "action": "RETRY",
    }
    children = sorted(batch.history, key=lambda job: job.array_index or 0)
    assert [child.array_index for child in children] == [0, 1, 2, 3]
    attempts = sorted(len(child.attempts) for child in children)
    assert attempts == [1, 1, 1, 2]  # the lost host: that child alone, by Batch
    [oom] = [child for child in children if child.status == "FAILED"]
    assert outcome.failure == (
        f"1 Batch child wrote no result: chunk {oom.array_index} (items "
        f"{2 * oom.array_index}-{2 * oom.array_index + 1}): Batch job "
        f"{request['jobName']} ({oom.job_id}) ran out of memory (limit 4096 MiB); give the "
        "task more with Resources(memory=...)"
    )
    done = [c for c in range(4) if c != oom.array_index]
    for chunk in done:
        manifest = store.read_manifest(run.foreach.chunk_key(chunk))
        assert store.get(manifest["result"]) == [4 * chunk, 4 * chunk + 2]
    log = caplog.text
    assert "foreach: 6/8 items done, 0 failed" in log
    assert re.search(r"Batch children: (\d+ \w+, )*3 SUCCEEDED, 1 FAILED \(1 jobs\)", log)
    assert f"the end of the log of Batch child {oom.job_id}" in log
    # Child 0's CloudWatch log is followed live; which child the injected fault hits depends
    # on which starts first: a child killed for memory may end before its first line.
    followed = capfd.readouterr().out
    assert "] doubling" in followed or oom.array_index == 0, followed[-2000:]
    # The try's error, as the operator gathers it, says why in Batch's words.
    manifest = gather(
        store,
        run.foreach,
        run.manifest_key,
        run.identity,
        catching=False,
        started=0.0,
        unreported=outcome.failure,
    )
    assert manifest["error"]["message"] == (
        f"1 chunks never reported (items {2 * oom.array_index}-{2 * oom.array_index + 1}): "
        f"{outcome.failure}; a retry re-runs only these"
    )


def chunks_of(request: dict[str, Any]) -> list[str]:
    """The chunks a submitted job runs, as its command says after Batch's substitution."""
    parameters = request["parameters"]
    if "one_chunk" in parameters:
        return ["--chunk", parameters["one_chunk"]]
    return ["--chunks", parameters["chunks"]]


def test_max_parallel_keeps_that_many_chunks_in_flight(batch: LocalBatch, store: ArtifactStore):
    """Batch has no per-array concurrency knob: under max_parallel=1 each chunk is submitted
    when the one before it ended (a plain job each)."""
    spec = TaskSpec.build(compute="batch", foreach={"max_parallel": 1})
    run = foreach_run(store, double, list(range(3)), chunk_size=1, spec=spec)
    target = compute_target("batch")
    target.prepare(run)
    outcome = target.run_foreach(run, [0, 1, 2], {})

    assert outcome.failure is None and results(store, run.foreach) == [0, 2, 4]
    assert [chunks_of(r) for r in batch.requests] == [
        ["--chunk", "0"],
        ["--chunk", "1"],
        ["--chunk", "2"],
    ]
    assert not any("arrayProperties" in r for r in batch.requests)
    jobs = [batch.run_of(job.job_id) for job in target._watch.jobs]
    for earlier, later in itertools.pairwise(jobs):
        assert earlier.attempts[-1]["stoppedAt"] <= batch.describe(later.job_id)["createdAt"]


def test_a_later_try_reattaches_to_the_array_job_a_dead_worker_left_and_runs_the_rest(
    batch: LocalBatch, store: ArtifactStore
):
    """Try 1 submitted chunks 0-1 (of 0-2) and died; try 2 watches that array job instead of
    submitting another, and submits only chunk 2."""
    from provider.operators.targets.batch import batch_requests
    from provider.translate.batch_array import ChunkJob

    batch.slots.acquire()  # the compute environment is full until try 2 watches
    batch.slots.acquire()
    try:
        first = foreach_run(store, double, [1, 2, 3], chunk_size=1, run_id="manual__again")
        dead = compute_target("batch")
        dead.prepare(first)
        _, request = batch_requests(
            first.spec, dead._launch, foreach=ChunkJob(first.foreach.prefix, (0, 1))
        )
        op = batch_operator("double", request)
        job_definition_arn(op.hook.client, dead._definition)
        op.submit_job({})
        second = foreach_run(
            store, double, [1, 2, 3], chunk_size=1, try_number=2, run_id="manual__again"
        )
        target = compute_target("batch")
        target.prepare(second)
        outcomes: list[Outcome] = []
        watcher = threading.Thread(
            target=lambda: outcomes.append(target.run_foreach(second, [0, 1, 2], {}))
        )
        watcher.start()
        deadline = time.monotonic() + 30
        while len(batch.requests) < 2:
            assert time.monotonic() < deadline, "try 2 submitted nothing"
            time.sleep(0.02)
    finally:
        batch.slots.release()
        batch.slots.release()
    watcher.join(60)

    [outcome] = outcomes
    assert outcome.failure is None and results(store, second.foreach) == [2, 4, 6]
    assert [chunks_of(r) for r in batch.requests] == [
        ["--chunks", "0-1"],
        ["--chunk", "2"],
    ]
    assert target._watch.jobs[0].job_id == op.job_id  # watched, not submitted again
    with pytest.raises(MissingArtifact):  # the dead try's payload is gone with its job
        store.get(first.payload)


def test_kill_terminates_every_child_and_no_later_try_reattaches(
    batch: LocalBatch, store: ArtifactStore
):
    from provider.core.targets.batch_jobs import running_jobs

    run = foreach_run(store, slow, [60, 60, 60], chunk_size=1)
    target = compute_target("batch")
    target.prepare(run)
    outcomes: list[Outcome] = []
    watcher = threading.Thread(
        target=lambda: outcomes.append(target.run_foreach(run, [0, 1, 2], {}))
    )
    watcher.start()
    deadline = time.monotonic() + 30
    while sum(job.status == "RUNNING" for job in batch.jobs) < 2:
        assert time.monotonic() < deadline, "the children did not start"
        time.sleep(0.02)
    target.kill()
    [parent] = [job for job in batch.jobs if job.children]
    assert batch.describe(parent.job_id)["tags"][STOPPED_TAG] == "true"
    assert running_jobs(batch.client("batch"), batch.queue, parent.job_name, store) == []
    watcher.join(30)
    [outcome] = outcomes
    assert outcome.failure is not None
    assert outcome.failure.startswith("3 Batch children wrote no result: chunk 0 (item 0): ")
    assert "stopped by Airflow" in outcome.failure
    assert {batch.describe(f"{parent.job_id}:{i}")["status"] for i in range(3)} == {"FAILED"}


def test_a_foreach_over_no_items_prepares_without_a_job(batch: LocalBatch, store: ArtifactStore):
    run = foreach_run(store, double, [], chunk_size=1)
    target = compute_target("batch")
    target.prepare(run)
    assert "arrayProperties" not in target._request and batch.requests == []


def test_a_chunk_counts_as_reported_once_this_try_wrote_its_manifest(tmp_path: Any):
    """A retry's chunk still has the manifest of the try before (with its failed items): it is
    answered only once rewritten, so a child that dies on the retry is not taken for done."""
    from provider.core.targets.batch_foreach import ChunkReports
    from provider.runtime.foreach import ForeachPlan

    store = open_store((tmp_path / "store").as_uri())
    plan = ForeachPlan("item", {}, 6, 2, "runs/d/r/t/-1/foreach/p")
    failed = {"status": "failed", "failed": [{"index": 3}]}
    store.write_manifest(plan.chunk_key(1), {"finished_at": 1.0, **failed})
    reports = ChunkReports(store, plan, [1, 2])
    reports.refresh()
    assert reports.answered == {}
    store.write_manifest(plan.chunk_key(2), {"status": "running", "failed": []})  # checkpoint
    reports.refresh()
    assert reports.answered == {}
    done = {"status": "succeeded", "failed": []}
    store.write_manifest(plan.chunk_key(2), {"finished_at": 5.0, **done})
    store.write_manifest(plan.chunk_key(0), {"finished_at": 5.0, **done})  # not ours
    reports.refresh()
    assert reports.answered == {2: 0}
    store.write_manifest(plan.chunk_key(1), {"finished_at": 6.0, **failed})
    reports.refresh()
    assert reports.answered == {1: 1, 2: 0} and reports.failed_items == 1
