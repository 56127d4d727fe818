"""Flow tasks as AWS Batch jobs, end to end: `airflow dags test` -> BatchOperator -> moto's Batch
API on 127.0.0.1, whose compute environment (tests/batch_cluster.py) runs each job's container
command as a local subprocess -> the artifact store in the same moto server's S3.
"""

from __future__ import annotations

import json
import re
import sqlite3
import statistics
from typing import Any

import pytest
from batch_cluster import HOST_TERMINATED, OOM, LocalBatch
from conftest import BUCKET, DagsTest, s3_client
from reachability import assert_gc_keeps_everything_reachable

from provider.store import ArtifactStore, open_store

pytestmark = pytest.mark.dags_test


def _batch_env(batch: LocalBatch, prefix: str) -> dict[str, str]:
    """Airflow settings for Batch jobs on the local Batch, artifacts in its moto's S3."""
    s3 = batch.client("s3")
    if BUCKET not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        s3.create_bucket(Bucket=BUCKET)
    return {
        "AIRFLOW__FLOW_TASK__ARTIFACT_STORE": f"s3://{BUCKET}/{prefix}",
        "AIRFLOW__FLOW_TASK__BATCH_JOB_QUEUE": batch.queue,
        "AIRFLOW__FLOW_TASK__BATCH_POLL_INTERVAL": "0.2",
        "AIRFLOW_CONN_AWS_DEFAULT": batch.airflow_connection_json(),
    }


def _store(batch: LocalBatch, prefix: str) -> ArtifactStore:
    return open_store(f"s3://{BUCKET}/{prefix}", s3_client=s3_client(batch.endpoint))


def _manifests(store: ArtifactStore, dag_id: str) -> dict[str, list[dict[str, Any]]]:
    tasks: dict[str, list[dict[str, Any]]] = {}
    for key in sorted(store.list_manifests(f"runs/{dag_id}")):
        if key.endswith("/result.json"):
            manifest = store.read_manifest(key)
            tasks.setdefault(manifest["task_id"], []).append(manifest)
    return tasks


def _try_numbers(home: Any, dag_id: str) -> dict[str, list[int]]:
    with sqlite3.connect(home / "airflow.db") as db:
        rows = db.execute(
            "SELECT task_id, try_number FROM task_instance WHERE dag_id = ? ORDER BY map_index",
            (dag_id,),
        ).fetchall()
    found: dict[str, list[int]] = {}
    for task, number in rows:
        found.setdefault(task, []).append(number)
    return found


def test_example_dag_runs_as_batch_jobs_through_a_lost_host_and_an_oom(
    dags_test: DagsTest, batch: LocalBatch
):
    # The first score job to run loses its Spot host at once; Batch must run it again.
    batch.inject("host_termination", job_name="flowtask-score-*")
    run = dags_test("flow_batch", **_batch_env(batch, "e2e-batch"))
    assert run.returncode == 0, run.output[-8000:]

    store = _store(batch, "e2e-batch")
    tasks = _manifests(store, "flow_batch")
    assert {name: [m["status"] for m in tries] for name, tries in tasks.items()} == {
        "make_batches": ["succeeded"],
        "score": ["succeeded"] * 3,
        "fit_in_memory": ["failed"],
        "summarize": ["succeeded"],
    }
    # No Airflow retry was spent: Batch absorbed the lost host, and the OOM was caught.
    assert _try_numbers(run.home, "flow_batch") == {
        "make_batches": [1],
        "score": [1, 1, 1],
        "fit_in_memory": [1],
        "summarize": [1],
    }
    summary = {k: store.get(v) for k, v in tasks["summarize"][0]["result"].items()}
    assert summary["batches"] == 3 and summary["total"] > 0
    assert summary["fit"].startswith("failed: Batch job flowtask-fit_in_memory-")
    assert (
        "ran out of memory (limit 128 MiB); give the task more with Resources(memory=...)"
        in (summary["fit"])
    )
    oom = tasks["fit_in_memory"][0]
    assert oom["written_by"] == "worker" and "ran out of memory" in oom["error"]["message"]
    # Where each try ran, with the CloudWatch log stream Batch gave its last attempt: the
    # task's "CloudWatch log" link (and its Flow tab's) opens it.
    from provider.translate.links import console_links

    for manifest in (tasks["make_batches"][0], oom):
        where = manifest["where"]
        assert where["log_group"] == "/aws/batch/job" and where["log_stream"], where
        assert (
            "#logsV2:log-groups/log-group/%2Faws%2Fbatch%2Fjob/log-events/"
            in (
                console_links({"platform": "batch", "region": "us-east-1", **where})[
                    "CloudWatch log"
                ]
            )
        )

    jobs = {run.job_id: run for run in batch.history}
    assert len(jobs) == 6
    lost = [j for j in jobs.values() if len(j.attempts) == 2]
    assert [j.name.startswith("flowtask-score-") for j in lost] == [True]
    first, second = lost[0].attempts
    assert first["statusReason"] == HOST_TERMINATED and second["container"]["exitCode"] == 0
    [hog] = [j for j in jobs.values() if j.name.startswith("flowtask-fit_in_memory-")]
    [attempt] = hog.attempts  # the retry strategy EXITs on anything but a lost host
    assert attempt["container"]["reason"] == OOM
    assert hog.retry_strategy["attempts"] == 4  # 1 + Retry(infra=3), the default
    assert run.output.count("scoring 1000 values") == 3  # the retried attempt's log too

    # One job definition per distinct content, looked up before registering: make_batches
    # and fit_in_memory share one; score's variables and summarize's /dev/shm make two more.
    client = batch.client("batch")
    names = sorted({r["jobDefinition"] for r in batch.requests})
    ours = [
        client.describe_job_definitions(jobDefinitionName=name, status="ACTIVE")["jobDefinitions"]
        for name in names
    ]
    assert len(names) == 3 and [len(revisions) for revisions in ours] == [1, 1, 1]
    shm = [d for [d] in ours if d["containerProperties"].get("linuxParameters")]
    assert shm[0]["containerProperties"]["linuxParameters"] == {"sharedMemorySize": 256}
    definitions = {d["jobDefinitionName"]: d["containerProperties"] for [d] in ours}
    requests = {r["jobName"]: r for r in batch.requests}
    score = next(r for name, r in requests.items() if name.startswith("flowtask-score-"))
    assert score["containerOverrides"]["resourceRequirements"] == [
        {"type": "VCPU", "value": "2"},
        {"type": "MEMORY", "value": "2048"},
    ]
    assert score["timeout"] == {"attemptDurationSeconds": 600}
    assert score["tags"]["team"] == "ml" and score["tags"]["tag.flowtask.io/batch"] == "true"
    assert {"name": "FLOW_SCALE", "value": "2"} in definitions[score["jobDefinition"]][
        "environment"
    ]
    assert all(d["command"][:2] == ["python3", "-c"] for d in definitions.values())
    assert not any("command" in r["containerOverrides"] for r in batch.requests)
    assert not any("AWS_SECRET_ACCESS_KEY" in json.dumps(r) for r in batch.requests)
    assert not any("AWS_SECRET_ACCESS_KEY" in json.dumps(d) for d in definitions.values())
    assert_gc_keeps_everything_reachable(store, {})

    # Submit -> the function starting, per job (the lost host's includes its second attempt).
    waits = []
    for job in jobs.values():
        manifest = store.read_manifest(job.environment["FLOWTASK_MANIFEST"])
        if "function_started_at" in manifest:
            created = batch.describe(job.job_id)["createdAt"] / 1000
            waits.append(manifest["function_started_at"] - created)
    sizes = sorted(len(json.dumps(r)) for r in batch.requests)
    overrides = sorted(job.ecs_overrides for job in batch.jobs)
    print(
        f"BATCH submit -> function: median {statistics.median(waits):.3f}s over {len(waits)} "
        f"jobs ({', '.join(f'{w:.2f}' for w in sorted(waits))}); SubmitJob {sizes} bytes; "
        f"ECS overrides {overrides} characters"
    )
    assert len(waits) == 5 and 0 < statistics.median(waits) < 30


def test_example_flow_foreach_runs_as_array_jobs_through_a_lost_host_a_caught_item_and_a_retry(
    dags_test: DagsTest, batch: LocalBatch
):
    """`.foreach` on Batch: 10,000 items of `score` as one array job of 20 children (the first
    to start loses its Spot host: Batch runs that child again); `parse` fails items on its first
    try, and the retry re-runs only the two chunks with failed items, where a malformed record
    fails again and is caught."""
    batch.inject("host_termination", job_name="flowtask-score-*", after=0.2)
    run = dags_test("flow_foreach", conf={"flow_compute": "batch"}, **_batch_env(batch, "fe"))
    assert run.returncode == 0, run.output[-8000:]
    store = _store(batch, "fe")
    tasks = _manifests(store, "flow_foreach")
    assert _try_numbers(run.home, "flow_foreach") == {
        "list_items": [1],
        "score": [1],  # the lost host cost no Airflow retry
        "summarize": [1],
        "parse": [2],
        "check": [1],
    }
    assert [m["status"] for m in tasks["parse"]] == ["failed", "succeeded"]
    assert (
        "2 of 100 items failed: [13] builtins.ValueError" in tasks["parse"][0]["error"]["message"]
    )

    def submitted(task: str) -> list[dict[str, Any]]:
        return [r for r in batch.requests if r["jobName"].startswith(f"flowtask-{task}-")]

    [score] = submitted("score")
    assert score["arrayProperties"] == {"size": 20} and score["parameters"]["chunks"] == "0-19"
    first, retry = submitted("parse")
    assert (first["arrayProperties"], retry["arrayProperties"]) == ({"size": 4}, {"size": 2})
    assert retry["parameters"]["chunks"] == "0,2"
    assert retry["jobDefinition"] == first["jobDefinition"]  # the same content, registered once
    assert "100 items in 4 chunks of 25; 2 chunks to run (2 done by an earlier try)" in run.output

    children = [job for job in batch.history if job.name == score["jobName"]]
    assert sorted(job.array_index for job in children) == list(range(20))
    [lost] = [job for job in children if len(job.attempts) > 1]
    assert lost.attempts[0]["statusReason"] == HOST_TERMINATED
    plan = tasks["score"][0]["foreach"]
    chunks = [store.read_manifest(f"{plan['prefix']}/{c:06d}.json") for c in range(20)]
    assert all(c["ran"] == 500 and c["status"] == "succeeded" for c in chunks)
    parse_plan = tasks["parse"][1]["foreach"]["prefix"]
    reran = {c: store.read_manifest(f"{parse_plan}/{c:06d}.json") for c in range(4)}
    assert {c: (m["try_number"], m["ran"]) for c, m in reran.items()} == {
        0: (2, 1),  # r13 alone, failed again: caught
        1: (1, 25),
        2: (2, 1),  # r60 alone, healed
        3: (1, 25),
    }
    assert re.search(r"foreach: \d+/10000 items done, 0 failed", run.output)
    assert re.search(r"Batch children: .*20 SUCCEEDED \(1 jobs\)", run.output)
    # One child's CloudWatch log is followed: parse's first, whose chunk holds r13.
    assert "] flowtask foreach: item 13 failed:" in run.output
    assert_gc_keeps_everything_reachable(store, {})

    # Submit -> the first child running, its function starting, and the last chunk's manifest.
    [parent] = [job for job in batch.jobs if job.job_name == score["jobName"] and job.children]
    created = batch.describe(parent.job_id)["createdAt"] / 1000
    running = min(job.attempts[0]["startedAt"] for job in children) / 1000 - created
    function = min(c["started_at"] for c in chunks) - created
    last = max(c["finished_at"] for c in chunks) - created
    print(
        f"BATCH FOREACH 10000 items, 20 chunks: submit -> first child RUNNING {running:.2f}s, "
        f"its function {function:.2f}s, last chunk manifest {last:.2f}s; SubmitJob "
        f"{len(json.dumps(score))} bytes"
    )


def test_a_job_gets_its_environment_from_the_store_with_the_index_unreachable(
    dags_test: DagsTest, batch: LocalBatch, tmp_path: Any
):
    """The worker builds ``ftprobe`` for the job's platform and stores it; the job, whose index
    URLs point nowhere, fetches it and the runtime's own environment from the store. No pip."""
    from conftest import TEST_DAGS
    from wheels import probe_wheels

    run = dags_test(
        "flow_environment",
        conf={"flow_compute": "batch"},
        dags_folder=TEST_DAGS,
        **_batch_env(batch, "e2e-batch-env"),
        **probe_wheels(tmp_path / "wheels"),
    )
    assert run.returncode == 0, run.output[-8000:]
    store = _store(batch, "e2e-batch-env")
    [manifest] = _manifests(store, "flow_environment")["probe"]
    value = {name: store.get(ref) for name, ref in manifest["result"].items()}
    assert value["value"] == "ftprobe 1.0"
    assert [env["from"] for env in manifest["environments"]] == ["store", "store"]
    assert value["pythonpath"].split(":")[0].endswith(manifest["environments"][0]["sha256"])

    [request] = batch.requests
    command = json.dumps(request) + json.dumps(batch.client("batch").describe_job_definitions())
    assert "pip install" not in command and "--pip" not in command
    assert_gc_keeps_everything_reachable(store, {})


def test_a_file_store_fails_a_batch_task_at_once_before_anything_is_registered(
    dags_test: DagsTest, batch: LocalBatch
):
    """Job definitions mount no volume, so no Batch container can read a ``file://`` store:
    the try fails at once (``flaky`` has two retries and spends none), one line naming the
    setting, and nothing reaches Batch."""
    from conftest import TEST_DAGS

    def definitions() -> int:
        found = batch.client("batch").describe_job_definitions(status="ACTIVE")
        return len(found["jobDefinitions"])

    before = definitions()
    env = {k: v for k, v in _batch_env(batch, "unused").items() if "ARTIFACT_STORE" not in k}
    run = dags_test("flow_failures", conf={"flow_compute": "batch"}, dags_folder=TEST_DAGS, **env)
    assert run.returncode != 0
    store = (run.home / "flow_artifacts").as_uri()
    line = next(line for line in run.output.splitlines() if "flow task flaky cannot run" in line)
    assert (
        f"flow task flaky cannot run: [flow_task] artifact_store='{store}' is invalid: it must "
        "be an s3:// store for Batch" in line
    )
    assert _try_numbers(run.home, "flow_failures")["flaky"] == [1]
    assert batch.requests == [] and definitions() == before
