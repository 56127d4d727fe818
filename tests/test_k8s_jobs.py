"""The test cluster runs Jobs as a 1.33 Job controller does, and refuses what its API server
refuses (no Airflow: the official client against tests/k8s_cluster.py)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("kmock")
from k8s_cluster import LocalCluster
from kubernetes.client.exceptions import ApiException

INDEX = "batch.kubernetes.io/job-completion-index"


def job(name: str, code: str, **spec: Any) -> dict[str, Any]:
    """An Indexed Job whose pods run ``python -c code`` with the pod's index in ``argv[1]``."""
    container = {
        "name": "base",
        "image": "python:3.11-slim",
        "command": ["python3", "-c", code],
        "args": ["$(JOB_COMPLETION_INDEX)"],
    }
    template = {"spec": {"containers": [container], "restartPolicy": "Never"}}
    body = {"completionMode": "Indexed", "template": template} | spec
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": body}


def wait(read: Callable[[], Any], ready: Callable[[Any], object], seconds: float = 30) -> Any:
    deadline = time.monotonic() + seconds
    while not ready(value := read()):
        assert time.monotonic() < deadline, value
        time.sleep(0.02)
    return value


def conditions(obj: Any) -> list[tuple[str, str, str]]:
    return [(c.type, c.status, c.reason) for c in obj.status.conditions or []]


@pytest.fixture
def old_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path, version="1.28") as c:
        yield c


def test_an_indexed_job_runs_each_index_once_at_most_parallelism_at_a_time(
    cluster: LocalCluster, tmp_path: Path
):
    api = cluster.batch_v1()
    runs = tmp_path / "runs"
    runs.mkdir()
    code = (
        "import os, sys, time\n"
        f"out = {str(runs)!r} + '/' + os.environ['JOB_COMPLETION_INDEX']\n"
        "open(out + '.start', 'w').write(str(time.time()))\n"
        "time.sleep(0.5)\n"
        "open(out + '.end', 'w').write(os.environ['HOSTNAME'])\n"
    )
    body = job("squares", code, completions=5, parallelism=2)
    body["spec"]["template"]["spec"]["containers"][0].pop("args")
    api.create_namespaced_job("default", body)
    done = wait(
        lambda: api.read_namespaced_job_status("squares", "default"),
        lambda j: j.status.completion_time,
    )
    assert (done.status.succeeded, done.status.failed, done.status.active) == (5, 0, 0)
    assert done.status.completed_indexes == "0-4"
    assert conditions(done) == [
        ("SuccessCriteriaMet", "True", "CompletionsReached"),
        ("Complete", "True", "CompletionsReached"),
    ]
    assert done.status.conditions[1].message == "Reached expected number of succeeded pods"
    assert done.spec.backoff_limit == 6 and done.spec.selector.match_labels == {
        "batch.kubernetes.io/controller-uid": done.metadata.uid
    }
    # Each index ran once, as its own hostname; never more than `parallelism` at once.
    assert sorted(p.name for p in runs.glob("*.end")) == [f"{i}.end" for i in range(5)]
    assert {(runs / f"{i}.end").read_text() for i in range(5)} == {f"squares-{i}" for i in range(5)}
    spans = [
        (float((runs / f"{i}.start").read_text()), (runs / f"{i}.end").stat().st_mtime)
        for i in range(5)
    ]
    assert max(sum(s <= t < e for s, e in spans) for t, _ in spans) <= 2
    pods = cluster.core_v1().list_namespaced_pod("default", label_selector="job-name=squares")
    assert len(pods.items) == 5
    for pod in pods.items:
        index = pod.metadata.labels[INDEX]
        assert pod.metadata.annotations[INDEX] == index
        assert pod.metadata.name.startswith(f"squares-{index}-")
        (owner,) = pod.metadata.owner_references
        assert (owner.kind, owner.name, owner.uid, owner.controller) == (
            "Job",
            "squares",
            done.metadata.uid,
            True,
        )
        env = {v.name: v for v in pod.spec.containers[0].env}
        assert env["JOB_COMPLETION_INDEX"].value_from.field_ref.field_path == (
            f"metadata.labels['{INDEX}']"
        )


def test_a_failed_index_is_retried_alone_up_to_backoff_limit_per_index(
    cluster: LocalCluster, tmp_path: Path
):
    api = cluster.batch_v1()
    marker = tmp_path / "index1-failed-once"
    code = (
        "import os, sys\n"
        "index = int(sys.argv[1])\n"
        f"marker = {str(marker)!r}\n"
        "if index == 1 and not os.path.exists(marker):\n"
        "    open(marker, 'w').close(); sys.exit(3)\n"
        "sys.exit(4 if index == 2 else 0)\n"
    )
    api.create_namespaced_job("default", job("flaky", code, completions=3, backoffLimitPerIndex=1))
    failed = wait(
        lambda: api.read_namespaced_job_status("flaky", "default"),
        lambda j: ("Failed", "True", "FailedIndexes") in conditions(j),
    )
    assert conditions(failed) == [
        ("FailureTarget", "True", "FailedIndexes"),
        ("Failed", "True", "FailedIndexes"),
    ]
    assert failed.status.conditions[1].message == "Job has failed indexes"
    assert (failed.status.succeeded, failed.status.failed) == (2, 3)
    assert (failed.status.completed_indexes, failed.status.failed_indexes) == ("0-1", "2")
    assert failed.spec.backoff_limit == 2**31 - 1  # the default with backoffLimitPerIndex
    pods = cluster.core_v1().list_namespaced_pod("default", label_selector="job-name=flaky").items
    tries = sorted(
        (
            p.metadata.labels[INDEX],
            p.metadata.annotations["batch.kubernetes.io/job-index-failure-count"],
        )
        for p in pods
    )
    assert tries == [("0", "0"), ("1", "0"), ("1", "1"), ("2", "0"), ("2", "1")]


def test_an_older_api_server_drops_backoff_limit_per_index_and_backoff_limit_fails_the_job(
    old_cluster: LocalCluster,
):
    api = old_cluster.batch_v1()
    code = "import sys, time\nif sys.argv[1] == '0': sys.exit(1)\ntime.sleep(60)\n"
    body = job("strict", code, completions=3, parallelism=3, backoffLimit=0)
    body["spec"]["backoffLimitPerIndex"] = 2
    created = api.create_namespaced_job("default", body)
    assert created.spec.backoff_limit_per_index is None  # dropped, as by a 1.28 API server
    failed = wait(
        lambda: api.read_namespaced_job_status("strict", "default"),
        lambda j: ("Failed", "True", "BackoffLimitExceeded") in conditions(j),
    )
    assert failed.status.conditions[0].type == "FailureTarget"
    assert failed.status.conditions[1].message == "Job has reached the specified backoff limit"
    assert failed.status.active == 0  # the running pods were deleted


# Pods that take a second to stop after SIGTERM, so what is deleted first can be seen.
SLOW_TO_STOP = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: (time.sleep(1), sys.exit(0)))\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)


def _ready(cluster: LocalCluster, pods: list[dict[str, Any]]) -> bool:
    """Both pods run with their SIGTERM handler in place (Running comes before the interpreter
    has read the script: a SIGTERM then would end a pod at once)."""
    try:
        return len(pods) == 2 and all("ready" in cluster.logs(p["metadata"]["name"]) for p in pods)
    except KeyError:  # not picked up by the kubelet yet
        return False


@pytest.mark.parametrize(
    ("policy", "job_gone_first", "pods_left"),
    [("Background", True, 0), ("Foreground", False, 0), (None, True, 2)],
)
def test_deleting_a_job_honours_its_propagation_policy(
    cluster: LocalCluster, policy: str | None, job_gone_first: bool, pods_left: int
):
    api = cluster.batch_v1()
    api.create_namespaced_job("default", job("sleepy", SLOW_TO_STOP, completions=2, parallelism=2))
    wait(cluster.pods, lambda pods: _ready(cluster, pods))
    api.delete_namespaced_job("sleepy", "default", propagation_policy=policy)
    assert len(cluster.pods()) == 2  # still stopping (or, orphaned, running on)
    if job_gone_first:
        assert cluster.jobs() == []
    else:  # Foreground: the Job waits, marked for deletion, until its pods are gone
        (marked,) = cluster.jobs()
        assert marked["metadata"]["deletionTimestamp"]
        assert marked["metadata"]["finalizers"] == ["foregroundDeletion"]
    wait(cluster.pods, lambda pods: len(pods) == pods_left, seconds=10)
    wait(cluster.jobs, lambda jobs: jobs == [], seconds=10)
    if pods_left:  # batch/v1's default is Orphan: the pods run on, owned by nobody
        assert all(not p["metadata"].get("ownerReferences") for p in cluster.pods())
        for pod in cluster.pods():
            cluster.core_v1().delete_namespaced_pod(
                pod["metadata"]["name"], "default", grace_period_seconds=0
            )


@pytest.mark.parametrize(
    ("spec", "name", "message"),
    [
        (
            {"completions": None},
            "j",
            "spec.completions: Required value: when completion mode is Indexed",
        ),
        (
            {"completionMode": "NonIndexed", "backoffLimitPerIndex": 1},
            "j",
            "spec.backoffLimitPerIndex: Invalid value: 1: requires indexed completion mode",
        ),
        ({"restartPolicy": "Always"}, "j", "spec.template.spec.restartPolicy: Required value"),
        (
            {"completions": 100},
            "x" * 61,
            "will not able to create pod with invalid DNS label: " + "x" * 61 + "-99",
        ),
        ({"bogus": 1}, "j", "Additional properties are not allowed ('bogus' was unexpected)"),
    ],
)
def test_the_api_server_refuses_jobs_a_real_one_refuses(
    cluster: LocalCluster, spec: dict[str, Any], name: str, message: str
):
    body = job(name, "pass", completions=1)
    if "restartPolicy" in spec:
        body["spec"]["template"]["spec"]["restartPolicy"] = spec.pop("restartPolicy")
    body["spec"] |= spec
    body["spec"] = {k: v for k, v in body["spec"].items() if v is not None}
    with pytest.raises(ApiException) as refused:
        cluster.batch_v1().create_namespaced_job("default", body)
    assert refused.value.status == 422, refused.value.body
    assert f'Job.batch \\"{name}\\" is invalid' in refused.value.body
    assert message in refused.value.body
    assert cluster.jobs() == [] and cluster.pods() == []
