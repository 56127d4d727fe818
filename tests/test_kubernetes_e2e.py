"""Flow tasks as pods, end to end: `airflow dags test` -> KubernetesPodOperator -> a Kubernetes
API test server (kmock) whose local kubelet runs each pod's command -> moto's S3 for artifacts.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import BUCKET, TEST_DAGS, DagsTest, aws_connection, s3_client
from reachability import assert_gc_keeps_everything_reachable

pytest.importorskip("kmock")  # kmock needs Python >= 3.11
from k8s_cluster import LocalCluster
from k8s_node import Node

from provider.store import ArtifactStore, open_store

pytestmark = pytest.mark.dags_test


def _secret(cluster: LocalCluster, name: str, values: dict[str, str]) -> None:
    from kubernetes.client import models as k8s

    body = k8s.V1Secret(metadata=k8s.V1ObjectMeta(name=name), string_data=values)
    cluster.core_v1().create_namespaced_secret("default", body)


def _cluster_env(cluster: LocalCluster, moto: Any, prefix: str) -> dict[str, str]:
    """Airflow settings for pods on the local cluster with artifacts in moto's S3.

    The pods get the store's endpoint from the AWS connection and its credentials from a
    Kubernetes Secret (``kubernetes_secrets``), as on a real cluster.
    """
    _secret(cluster, "flow-aws", {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "x"})
    return {
        "AIRFLOW__FLOW_TASK__ARTIFACT_STORE": f"s3://{BUCKET}/{prefix}",
        "AIRFLOW__FLOW_TASK__KUBERNETES_SECRETS": "flow-aws,flow-test-env",
        "AIRFLOW_CONN_AWS_DEFAULT": aws_connection(moto.endpoint),
        "AIRFLOW_CONN_KUBERNETES_DEFAULT": cluster.airflow_connection_json(),
    }


def _manifests(store: ArtifactStore, dag_id: str) -> dict[str, list[dict[str, Any]]]:
    tasks: dict[str, list[dict[str, Any]]] = {}
    for key in sorted(store.list_manifests(f"runs/{dag_id}")):
        if key.endswith("/result.json"):
            manifest = store.read_manifest(key)
            tasks.setdefault(manifest["task_id"], []).append(manifest)
    return tasks


def _store(moto: Any, prefix: str) -> ArtifactStore:
    return open_store(f"s3://{BUCKET}/{prefix}", s3_client=s3_client(moto.endpoint))


def test_example_dag_runs_as_pods_passing_data_by_reference(
    dags_test: DagsTest, cluster: LocalCluster, moto: Any
):
    _secret(cluster, "flow-test-env", {"UNUSED": "1"})
    run = dags_test("flow_kubernetes", **_cluster_env(cluster, moto, "e2e-k8s"))
    assert run.returncode == 0, run.output[-8000:]

    tasks = _manifests(_store(moto, "e2e-k8s"), "flow_kubernetes")
    assert {name: len(tries) for name, tries in tasks.items()} == {
        "make_batches": 1,
        "score": 3,
        "summarize": 1,
    }
    store = _store(moto, "e2e-k8s")
    summary = tasks["summarize"][0]["result"]
    assert store.get(summary["batches"]) == 3 and store.get(summary["total"]) > 0

    pods = {pod["metadata"]["annotations"]["flowtask.io/manifest"]: pod for pod in cluster.history}
    assert len(pods) == 5
    for manifests in tasks.values():
        for manifest in manifests:
            assert manifest["status"] == "succeeded" and "bootstrap_seconds" in manifest
    score_pod = next(p for p in cluster.history if p["metadata"]["name"].startswith("score"))
    container = score_pod["spec"]["containers"][0]
    assert container["resources"] == {
        "requests": {"cpu": "1", "memory": "1024Mi"},
        "limits": {"memory": "1024Mi"},
    }
    assert score_pod["spec"]["activeDeadlineSeconds"] == 600
    assert score_pod["metadata"]["labels"]["tag.flowtask.io/k8s"] == "true"
    assert {"secretRef": {"name": "flow-aws"}} in container["envFrom"]
    assert not any(var.get("name") == "AWS_SECRET_ACCESS_KEY" for var in container["env"])
    assert "flow task finished in" in run.output
    said = re.findall(r"flowtask bootstrap: (.*?) \[", run.output)
    assert said and all(re.fullmatch(r"environment \w+ from the (store|cache) \([0-9.]+s\)", line)
                        for line in said), said  # fmt: skip
    assert cluster.pods() == []  # every pod deleted when done
    with sqlite3.connect(run.home / "airflow.db") as db:
        keys = {key for (key,) in db.execute("SELECT DISTINCT key FROM xcom")}
    assert "return_value" in keys and not keys & {"pod_name", "pod_namespace"}, keys
    # The code package the pods fetched is named by each try's launch manifest.
    launches = [key for key in store.backend.list("runs") if key.endswith("/launch.json")]
    packages = {store.read_manifest(key)["code_package"]["sha256"] for key in launches}
    assert len(launches) == 5 and len(packages) == 1
    assert_gc_keeps_everything_reachable(store, {})

    # Bootstrap cost: container start -> the user's function starting.
    for annotation, pod in pods.items():
        manifest = next(
            m
            for ms in tasks.values()
            for m in ms
            if annotation.endswith(
                f"/{m['task_id']}/{m['map_index']}/{m['try_number']}/result.json"
            )
        )
        started = cluster.started_at(pod["metadata"]["name"])
        assert started is not None
        assert 0 < manifest["function_started_at"] - started < 30
        print(
            f"BOOTSTRAP {pod['metadata']['name']}: start -> function "
            f"{manifest['function_started_at'] - started:.3f}s "
            f"(bootstrap {manifest['bootstrap_seconds']:.3f}s)"
        )


def test_retries_and_catch_work_for_pods(
    dags_test: DagsTest, cluster: LocalCluster, moto: Any, tmp_path: Path
):
    marker = tmp_path / "marker"
    # The DAG's hungry task would use more than its 100 MiB limit: here it stays under.
    env = {"FLOW_TEST_MARKER": str(marker), "FLOW_TEST_BALLAST_MIB": "8"}
    _secret(cluster, "flow-test-env", env)
    run = dags_test(
        "flow_failures",
        conf={"flow_compute": "kubernetes"},
        dags_folder=TEST_DAGS,
        **_cluster_env(cluster, moto, "e2e-k8s-failures"),
    )
    assert run.returncode == 0, run.output[-8000:]
    tasks = _manifests(_store(moto, "e2e-k8s-failures"), "flow_failures")
    assert [m["status"] for m in tasks["flaky"]] == ["failed", "succeeded"]
    assert tasks["flaky"][0]["error"]["type"] == "builtins.ConnectionError"
    assert [m["try_number"] for m in tasks["broken"]] == [1, 2]
    names = [pod["metadata"]["name"] for pod in cluster.history]
    assert sum(name.startswith("flaky") for name in names) == 2


def _evict_when_running(cluster: LocalCluster, prefix: str, deadline: float) -> threading.Thread:
    """Evict the first pod named ``prefix-*`` once it runs, as a node under pressure would."""

    def watch() -> None:
        while time.monotonic() < deadline:
            for pod in cluster.pods():
                name = pod["metadata"]["name"]
                if name.startswith(f"{prefix}-") and cluster.started_at(name) is not None:
                    cluster.evict(name)
                    return
            time.sleep(0.2)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_oomkilled_evicted_and_timed_out_pods_fail_with_their_reason(
    dags_test: DagsTest, cluster: LocalCluster, moto: Any
):
    _secret(cluster, "flow-test-env", {"UNUSED": "1"})
    evictor = _evict_when_running(cluster, "evictee", time.monotonic() + 300)
    run = dags_test(
        "flow_k8s_limits", dags_folder=TEST_DAGS, **_cluster_env(cluster, moto, "e2e-k8s-limits")
    )
    evictor.join(1)
    assert run.returncode != 0
    assert (
        "flow task hog failed: pod hog-" in run.output
        and "was OOMKilled: the container went over its memory limit (160Mi)" in run.output
    )
    # Evicted once: submitted again within its one Airflow try, and it succeeded.
    assert re.search(
        r"pod evictee-\S+ was evicted: The node was low on resource: memory\.; submitting the "
        r"pod again \(1 of 3, Retry\(infra=3\)\), within this try",
        run.output,
    )
    assert "AirflowTaskTimeout" in run.output  # sleepy: timeout='10s'
    manifests = _manifests(_store(moto, "e2e-k8s-limits"), "flow_k8s_limits")
    # The killed runtimes wrote nothing: the worker recorded each try with the pod's reason.
    assert {name: [m["status"] for m in tries] for name, tries in manifests.items()} == {
        "hog": ["failed"],
        "caught_hog": ["failed"],
        "after_oom": ["succeeded"],
        "sleepy": ["failed"],
        "evictee": ["succeeded"],
        "grows": ["failed", "succeeded"],
    }
    assert manifests["evictee"][0]["try_number"] == 1
    # Out of memory with 200 MiB; Retry(on_oom="grow") asked for 400 MiB the second time.
    grows = manifests["grows"]
    assert grows[0]["failure_kind"] == "oom" and grows[0]["requested"]["memory_mib"] == 200
    assert grows[1]["requested"]["memory_mib"] == 400
    assert "try 1 ran out of memory with 200 MiB: this try asks for 400 MiB" in run.output
    second = [p for p in cluster.history if p["metadata"]["name"].startswith("grows")][-1]
    assert second["spec"]["containers"][0]["resources"]["limits"]["memory"] == "400Mi"
    assert all(m["written_by"] == "worker" for n in ("hog", "sleepy") for m in manifests[n])
    assert "was OOMKilled" in manifests["hog"][0]["error"]["message"]
    assert "ran longer than its timeout" in manifests["sleepy"][0]["error"]["message"]
    failure = manifests["caught_hog"][0]["failure"]  # kept alive for gc by the manifest
    assert "was OOMKilled" in _store(moto, "e2e-k8s-limits").get(failure).message
    assert_gc_keeps_everything_reachable(_store(moto, "e2e-k8s-limits"), {})
    assert "caught as a Failure: pod caught-hog-" in run.output
    assert cluster.pods() == []  # the timed-out pod was deleted, not left running
    sleepy = next(p for p in cluster.history if p["metadata"]["name"].startswith("sleepy"))
    assert sleepy["spec"]["activeDeadlineSeconds"] == 10
    assert json.loads(sleepy["metadata"]["annotations"]["flowtask.io/tags"]) == []


@pytest.fixture
def gpu_cluster(tmp_path: Path) -> Any:
    """One node with an A100 labelled as GPU feature discovery labels it; a registry without
    ``registry.example/nope:1``."""
    node = Node(
        labels={"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"},
        allocatable={"cpu": "8", "memory": "32Gi", "pods": "110", "nvidia.com/gpu": "1"},
    )
    with LocalCluster(tmp_path, node=node, missing_images={"registry.example/nope:1"}) as c:
        yield c


def test_pods_that_cannot_start_fail_in_seconds_with_the_reason(
    dags_test: DagsTest, gpu_cluster: LocalCluster, moto: Any
):
    _secret(gpu_cluster, "flow-test-env", {"UNUSED": "1"})
    env = _cluster_env(gpu_cluster, moto, "e2e-k8s-pending")
    run = dags_test(
        "flow_k8s_pending",
        dags_folder=TEST_DAGS,
        **env,
        AIRFLOW__FLOW_TASK__KUBERNETES_SCHEDULE_TIMEOUT="3",
    )
    assert run.returncode != 0
    out = run.output
    assert "flow task needs_secret failed: pod needs-secret-" in out
    assert 'cannot start: secret "db-creds" not found' in out
    assert "flow task bad_image failed: pod bad-image-" in out
    assert 'cannot start: image "registry.example/nope:1" cannot be pulled (ErrImagePull)' in out
    assert "flow task no_node failed: pod no-node-" in out
    assert (
        "cannot start: 0/1 nodes are available: 1 node(s) didn't match Pod's node "
        "affinity/selector." in out
    )
    assert "gpu_type='A100' selects nodes labelled nvidia.com/gpu.product=A100" in out
    assert "Waiting up to 3s for a cluster autoscaler" in out  # said while it waited
    manifests = _manifests(_store(moto, "e2e-k8s-pending"), "flow_k8s_pending")
    assert "cannot start" in manifests["needs_secret"][0]["error"]["message"]
    assert gpu_cluster.pods() == []  # every pod deleted
    for pod in gpu_cluster.history:
        name = pod["metadata"]["name"]
        created, ended = gpu_cluster.lifetime(name)
        assert ended is not None
        print(f"PENDING {name}: failed and deleted {ended - created:.1f}s after its creation")
        assert ended - created < 15, name


def _slot_seconds(output: str, task_id: str) -> float:
    """Seconds ``task_id`` ran on the worker in `airflow dags test`, deferrals left out."""
    stamp = r"^(\S+) \[\w+\s*\] "
    began = rf"{stamp}\[DAG TEST\] running task <TaskInstance: [\w.]+\.{task_id} "
    paused = rf"{stamp}Pausing task as DEFERRED\..*task_id={task_id}\b"
    ended = rf"{stamp}\[DAG TEST\] end task task_id={task_id} "
    marks = []
    for kind, pattern in (("+", began), ("-", paused), ("-", ended)):
        for match in re.finditer(pattern, output, re.MULTILINE):
            marks.append((datetime.fromisoformat(match[1]), kind))
    total, since = 0.0, None
    for at, kind in sorted(marks):
        if kind == "+":
            since = at
        elif since is not None:
            total, since = total + (at - since).total_seconds(), None
    return total


def test_a_deferrable_pod_frees_the_worker_slot_while_it_runs(
    dags_test: DagsTest, cluster: LocalCluster, moto: Any
):
    _secret(cluster, "flow-test-env", {"UNUSED": "1"})
    run = dags_test(
        "flow_k8s_deferrable",
        dags_folder=TEST_DAGS,
        **_cluster_env(cluster, moto, "e2e-k8s-deferrable"),
    )
    assert run.returncode != 0  # deferred_failure
    out = run.output
    tasks = _manifests(_store(moto, "e2e-k8s-deferrable"), "flow_k8s_deferrable")
    store = _store(moto, "e2e-k8s-deferrable")
    assert [m["status"] for m in tasks["deferred"]] == ["succeeded"]
    assert store.get(tasks["deferred"][0]["result"]) == "deferred"
    assert [m["status"] for m in tasks["held"]] == ["succeeded"]  # downstream of the deferred one
    assert (
        "flow task deferred_failure failed: builtins.ValueError: the pod's function failed" in out
    )
    assert out.count("runs deferred: the worker slot is free until it ends") == 2
    assert "[base] " in out  # the pod's log, read when the trigger returned
    assert cluster.pods() == []
    deferred, held = _slot_seconds(out, "deferred"), _slot_seconds(out, "held")
    print(f"WORKER SLOT deferred={deferred:.1f}s held={held:.1f}s (each pod sleeps 12s)")
    assert held >= 12 and deferred < held - 8


def _job_pods(cluster: LocalCluster, job: dict[str, Any]) -> list[dict[str, Any]]:
    """The pods the Job controller made for ``job``, in creation order."""
    name = job["metadata"]["name"]
    return [p for p in cluster.history if p["metadata"].get("generateName", "").startswith(name)]


def test_example_flow_foreach_runs_as_one_indexed_job(
    dags_test: DagsTest, cluster: LocalCluster, moto: Any
):
    """2,000 items of `score` as one Indexed Job of 4 pods; `parse` fails items on its first
    try, and the retry's Job runs only the two chunks with failed items, where a malformed
    record fails again and is caught."""
    _secret(cluster, "flow-test-env", {"UNUSED": "1"})
    conf = {"flow_compute": "kubernetes", "n_items": 2000}
    run = dags_test("flow_foreach", conf=conf, **_cluster_env(cluster, moto, "e2e-k8s-foreach"))
    assert run.returncode == 0, run.output[-8000:]
    assert "Returned value was: 2000 items checked" in run.output  # every result, in order
    store = _store(moto, "e2e-k8s-foreach")
    (score,) = _manifests(store, "flow_foreach")["score"]
    foreach = score["foreach"]
    assert (foreach["items"], foreach["chunks"], foreach["chunk_size"]) == (2000, 4, 500)
    assert (foreach["failed"], foreach["failed_items"]) == (0, [])
    # The result's chunk list, in the manifest: what gc keeps while this try's result lives.
    assert [chunk["count"] for chunk in foreach["chunk_results"]] == [500] * 4
    jobs: dict[str, list[dict[str, Any]]] = {}
    for submitted in cluster.job_history:
        jobs.setdefault(submitted["metadata"]["labels"]["flowtask.io/task"], []).append(submitted)
    (job,) = jobs["score"]  # one Job, whatever the number of items
    # parse: a failed item caught, and a retry that ran only the chunks with failed items.
    first, retry = jobs["parse"]
    assert (first["spec"]["completions"], retry["spec"]["completions"]) == (4, 2)
    assert retry["spec"]["template"]["spec"]["containers"][0]["command"][-2:] == ["--chunks", "0,2"]
    assert "100 items in 4 chunks of 25; 2 chunks to run (2 done by an earlier try)" in run.output
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 4, 4)
    assert spec["backoffLimitPerIndex"] == 3  # Retry(infra=3), the default: lost pods run again
    container = spec["template"]["spec"]["containers"][0]
    assert container["command"][-2:] == ["--chunks", "0-3"]
    assert container["resources"]["requests"] == {"cpu": "1", "memory": "512Mi"}
    assert job["metadata"]["labels"]["tag.flowtask.io/example"] == "true"
    pods = _job_pods(cluster, job)
    assert sorted(
        p["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"] for p in pods
    ) == ["0", "1", "2", "3"]
    chunks = [store.read_manifest(k) for k in store.list_manifests(score["foreach"]["prefix"])]
    assert sorted(m["chunk"] for m in chunks) == [0, 1, 2, 3]
    assert len({m["pid"] for m in chunks}) == 4  # each pod ran its own chunk
    assert all(m["ran"] == 500 and m["status"] == "succeeded" for m in chunks)
    assert re.search(r"foreach: 2000/2000 items done, 0 failed", run.output)
    assert (
        f"job {job['metadata']['name']}: 4 pods, 4 at a time (backoffLimitPerIndex=3)" in run.output
    )
    assert cluster.jobs() == [] and cluster.pods() == []  # the Job and its pods deleted when done
    created, deleted = cluster.job_lifetime(job["metadata"]["name"])
    first = min(m["started_at"] for m in chunks)
    last = max(m["finished_at"] for m in chunks)
    assert deleted is not None and created < first < last < deleted
    print(
        f"FOREACH JOB 2000 items in 4 chunks: created -> first chunk started "
        f"{first - created:.2f}s,"
        f" -> last chunk's manifest {last - created:.2f}s, -> deleted {deleted - created:.2f}s"
    )
    assert_gc_keeps_everything_reachable(store, {})


def test_foreach_jobs_retry_an_index_resume_failed_items_catch_and_explain_failures(
    dags_test: DagsTest, cluster: LocalCluster, moto: Any, tmp_path: Path
):
    marker = tmp_path / "calls"
    _secret(cluster, "flow-test-env", {"FLOW_TEST_MARKER": str(marker)})
    run = dags_test(
        "flow_foreach_k8s",
        conf={"flow_compute": "kubernetes"},
        dags_folder=TEST_DAGS,
        **_cluster_env(cluster, moto, "e2e-k8s-foreach-cases"),
    )
    out = run.output
    assert run.returncode != 0  # hog and needs_secret fail
    assert "Returned value was: foreach on kubernetes checked" in out, out[-8000:]
    jobs = {}
    for job in cluster.job_history:
        jobs.setdefault(job["metadata"]["labels"]["flowtask.io/task"], []).append(job)

    # fragile: try 1's Job retried the OOMKilled index alone; try 2 ran one pod for the chunk
    # with the failed item, which re-ran that item only.
    calls = {int(d.name.split("-")[1]): len(list(d.iterdir())) for d in marker.iterdir()}
    assert calls == {0: 1, 1: 1, 2: 2, 3: 1, 4: 1, 5: 2, 6: 1, 7: 1}
    first, second = jobs["fragile"]
    assert first["spec"]["completions"] == 4 and first["spec"]["backoffLimitPerIndex"] == 1
    pods = _job_pods(cluster, first)
    index = "batch.kubernetes.io/job-completion-index"
    assert sorted(p["metadata"]["labels"][index] for p in pods) == ["0", "1", "1", "2", "3"]
    assert second["spec"]["completions"] == 1
    assert second["spec"]["template"]["spec"]["containers"][0]["command"][-1] == "2"
    assert "1 of 8 items failed: [5] builtins.ValueError: item 5 fails on its first call" in out
    assert "8 items in 4 chunks of 2; 1 chunks to run (3 done by an earlier try)" in out

    # hog: an index OOMKilled, with no retry left: its chunk's items ran again, carefully, in a
    # second Job (which found item 4 killing its pod) and a third (which ran item 5); the task
    # fails naming item 4 and why.
    first_hog, careful, rest = jobs["hog"]
    assert rest["spec"]["completions"] == 1
    assert (first_hog["spec"]["completions"], careful["spec"]["completions"]) == (2, 1)
    assert re.search(
        r"flow task hog failed: ForeachFailed: 1 of 6 items failed: \[4\] ProcessDied: the "
        rf"process running item 4 died: job {careful['metadata']['name']} Failed: .*pod "
        rf"{careful['metadata']['name']}-0-\w+ was OOMKilled: the container went over its "
        r"memory limit \(160Mi\)",
        out,
    ), out[-8000:]
    assert "foreach: item 4 killed the process running it" in out
    assert "pod job-hog-" in out and "failed; its last lines:" in out

    # needs_secret: its pods cannot start; the Job fails and is deleted in seconds.
    (secret_job,) = jobs["needs_secret"]
    assert re.search(
        r"flow task needs_secret failed: ForeachFailed: 2 chunks never reported "
        r"\(items 0-0, 1-1\): pod job-needs-secret-\w+-\d-\w+ cannot start: "
        r'secret "no-such-secret" not found;',
        out,
    ), out[-8000:]
    created, deleted = cluster.job_lifetime(secret_job["metadata"]["name"])
    assert deleted is not None and deleted - created < 15
    print(f"FOREACH JOB that cannot start: deleted {deleted - created:.1f}s after its creation")

    manifests = _manifests(_store(moto, "e2e-k8s-foreach-cases"), "flow_foreach_k8s")
    assert [m["status"] for m in manifests["fragile"]] == ["failed", "succeeded"]
    assert [m["status"] for m in manifests["doomed"]] == ["succeeded"]
    assert [m["status"] for m in manifests["hog"]] == ["failed"]
    assert cluster.jobs() == [] and cluster.pods() == []
    assert_gc_keeps_everything_reachable(_store(moto, "e2e-k8s-foreach-cases"), {})


def test_a_pod_gets_its_environment_from_the_store_with_the_index_unreachable(
    dags_test: DagsTest, cluster: LocalCluster, moto: Any, tmp_path: Path
):
    """The worker builds ``ftprobe`` (from a local folder of wheels) for the pod's platform and
    stores it; the pod, whose index URLs point nowhere, fetches it and the runtime's own
    environment (boto3, zstandard) from the store into the node's cache folder. No pip."""
    from wheels import probe_wheels

    from provider.translate.environment import DEFAULT_PLATFORM

    _secret(cluster, "flow-test-env", {"UNUSED": "1"})
    run = dags_test(
        "flow_environment",
        conf={"flow_compute": "kubernetes"},
        dags_folder=TEST_DAGS,
        AIRFLOW__FLOW_TASK__KUBERNETES_ENV_CACHE_PATH="/var/cache/flowtask-env",
        **_cluster_env(cluster, moto, "e2e-k8s-env"),
        **probe_wheels(tmp_path / "wheels"),
    )
    assert run.returncode == 0, run.output[-8000:]
    store = _store(moto, "e2e-k8s-env")
    [manifest] = _manifests(store, "flow_environment")["probe"]
    value = {name: store.get(ref) for name, ref in manifest["result"].items()}
    node_cache = cluster.root / "nodes" / "var" / "cache" / "flowtask-env"
    assert value["value"] == "ftprobe 1.0" and value["file"].startswith(str(node_cache))
    assert [env["from"] for env in manifest["environments"]] == ["store", "store"]

    [pod] = cluster.history
    command = " ".join(pod["spec"]["containers"][0]["command"])
    assert "pip" not in command and command.count("--env ") == 2
    assert {"name": "flowtask-env", "hostPath": {"path": "/var/cache/flowtask-env",
            "type": "DirectoryOrCreate"}} in pod["spec"]["volumes"]  # fmt: skip
    [launch] = [k for k in store.list_manifests("runs/flow_environment") if "launch" in k]
    record = store.read_manifest(launch)
    assert record["environment"]["platform"] == DEFAULT_PLATFORM
    assert record["environment"]["packages"] == {"ftprobe": "1.0"}
    assert record["runtime_environment"]["packages"]["boto3"]
    assert re.search(r"environment: environment \w+ for Python 3\.\d+ on x86_64-manylinux_2_28: "
                     r"built in [0-9.]+s", run.output)  # fmt: skip
    assert_gc_keeps_everything_reachable(store, {})
    for name in ("environment", "runtime_environment"):
        assert store.has(record[name]["archive"]) and store.has(record[name]["lock"])
