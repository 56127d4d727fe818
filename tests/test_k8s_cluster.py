"""The local test cluster (tests/k8s_cluster.py) driven by the real KubernetesPodOperator.

Each test writes a one-task DAG and runs it with `airflow dags test` in a subprocess, against a
LocalCluster served from this process.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
from conftest import DagRunResult, DagsTest

pytest.importorskip("kmock")
from k8s_cluster import LocalCluster

DAG = """
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk import DAG
from kubernetes.client import models as k8s

with DAG({dag_id!r}, schedule=None, catchup=False):
    KubernetesPodOperator(
        task_id="pod",
        name={dag_id!r},
        namespace="default",
        image="python:3.11-slim",
        cmds=["python", "-c", {code!r}],
        in_cluster=False,
        get_logs=True,
        on_finish_action="delete_pod",
        startup_timeout_seconds=30,
        startup_check_interval_seconds=0.2,
        log_events_on_failure=True,
        {options}
    )
"""


def run_pod(
    dags_test: DagsTest,
    cluster: LocalCluster,
    folder: Path,
    dag_id: str,
    code: str,
    options: str = "",
    via_connection: bool = False,
) -> DagRunResult:
    """Run a DAG of one KubernetesPodOperator running ``python -c code`` on ``cluster``."""
    folder.mkdir(exist_ok=True)
    env = {}
    if via_connection:
        env["AIRFLOW_CONN_KUBERNETES_DEFAULT"] = cluster.airflow_connection_json()
    else:
        options = f"config_file={str(cluster.kubeconfig)!r},\n        {options}"
    dag = DAG.format(dag_id=dag_id, code=code, options=options)
    (folder / f"{dag_id}.py").write_text(dag)
    return dags_test(dag_id, dags_folder=folder, **env)


@pytest.mark.dags_test
def test_pod_succeeds_and_its_logs_are_streamed(dags_test, cluster, tmp_path):
    code = (
        "import os, time\n"
        "print('hello from', os.environ['HOSTNAME'], flush=True)\n"
        "print('working', flush=True)\n"
        "time.sleep(3)\n"
        "print('goodbye', flush=True)\n"
    )
    run = run_pod(dags_test, cluster, tmp_path / "dags", "k8s_ok", code, via_connection=True)
    assert run.returncode == 0, run.output[-5000:]
    [pod] = cluster.history
    name = pod["metadata"]["name"]
    assert pod["spec"]["containers"][0]["image"] == "python:3.11-slim"
    assert pod["metadata"]["labels"]["dag_id"] == "k8s_ok"
    assert cluster.started_at(name) is not None
    assert cluster.pods() == []  # on_finish_action="delete_pod"

    def logged_at(message: str) -> datetime:
        match = re.search(rf"^(\S+) \[info\s*\] \[base\] {message}\b", run.output, re.MULTILINE)
        assert match, run.output[-5000:]
        return datetime.fromisoformat(match[1])

    # KPO logs a line once the next one arrives: "hello" came while the pod ran, not at its end.
    assert (logged_at("goodbye") - logged_at(f"hello from {name}")).total_seconds() > 1


@pytest.mark.dags_test
def test_active_deadline_fails_the_pod_with_deadline_exceeded(dags_test, cluster, tmp_path):
    code = "import time; print('sleeping', flush=True); time.sleep(300)"
    started = time.monotonic()
    run = run_pod(
        dags_test, cluster, tmp_path / "dags", "k8s_deadline", code, "active_deadline_seconds=2,"
    )
    assert run.returncode != 0
    assert "Pod phase: Failed, reason: DeadlineExceeded" in run.output, run.output[-5000:]
    assert "[base] sleeping" in run.output
    assert "Pod was active on the node longer than the specified deadline" in run.output
    assert time.monotonic() - started < 150  # far from the pod's 300 s sleep
    assert cluster.history[0]["spec"]["activeDeadlineSeconds"] == 2


def test_kubelet_through_the_client(cluster, tmp_path):
    """Without Airflow: log options, eviction, deletion, and a missing Secret."""
    from kubernetes.client import models as k8s

    api = cluster.core_v1()

    def create(name: str, code: str, **container) -> None:
        base = k8s.V1Container(name="base", command=["python3", "-c", code], **container)
        pod = k8s.V1Pod(metadata=k8s.V1ObjectMeta(name=name), spec=k8s.V1PodSpec(containers=[base]))
        api.create_namespaced_pod("default", pod)

    def wait(name: str, ready: Callable[[k8s.V1PodStatus], object]) -> k8s.V1PodStatus:
        deadline = time.monotonic() + 20
        while not ready(status := api.read_namespaced_pod(name, "default").status):
            assert time.monotonic() < deadline, status
            time.sleep(0.02)
        return status

    def log(name: str, **params) -> str:  # (the client's own str decoding gives "b'...'")
        response = api.read_namespaced_pod_log(name, "default", _preload_content=False, **params)
        return response.data.decode()

    # stdout is block-buffered (as in a container): "a" and "c" come out at exit, after "b".
    create("lines", "import sys; print('a'); print('b', file=sys.stderr, flush=True); print('c')")
    wait("lines", lambda status: status.phase == "Succeeded")
    assert log("lines") == cluster.logs("lines") == "b\na\nc\n"
    assert log("lines", tail_lines=1) == "c\n"
    stamped = log("lines", timestamps=True).splitlines()
    assert len(stamped) == 3
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:]{8}\.\d{9}Z [abc]", line) for line in stamped)

    create("evicted", "import time; time.sleep(60)")
    wait("evicted", lambda status: status.phase == "Running")
    cluster.evict("evicted")
    status = api.read_namespaced_pod("evicted", "default").status
    assert (status.phase, status.reason) == ("Failed", "Evicted")
    assert status.message == "The node was low on resource: memory."
    assert status.container_statuses[0].state.terminated.exit_code == 137

    # Deleting a running pod kills its whole process group: here a `sleep` that it started.
    pid_file = tmp_path / "sleep.pid"
    code = (
        "import os, subprocess, sys, time\n"
        "open(sys.argv[1] + '.tmp', 'w').write(str(subprocess.Popen(['sleep', '60']).pid))\n"
        "os.rename(sys.argv[1] + '.tmp', sys.argv[1])\n"
        "time.sleep(60)\n"
    )
    create("deleted", code, args=[str(pid_file)])
    wait("deleted", lambda status: status.phase == "Running" and pid_file.exists())
    api.delete_namespaced_pod("deleted", "default")

    def sleep_is_alive() -> bool:
        try:  # a zombie (killed, not yet reaped by init) counts as dead
            stat = Path(f"/proc/{pid_file.read_text()}/stat").read_text()
        except FileNotFoundError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] != "Z"

    def names() -> list[str]:
        return sorted(pod["metadata"]["name"] for pod in cluster.pods())

    # Deletion is graceful: the pod goes once its processes have stopped, as on a real cluster.
    deadline = time.monotonic() + 5
    while sleep_is_alive() or names() != ["evicted", "lines"]:
        assert time.monotonic() < deadline, names()
        time.sleep(0.02)

    # A missing Secret keeps the pod Pending, as a real kubelet does.
    ref = k8s.V1SecretKeySelector(name="missing", key="token")
    env = [k8s.V1EnvVar(name="TOKEN", value_from=k8s.V1EnvVarSource(secret_key_ref=ref))]
    create("no-secret", "print('never')", env=env)

    def waiting_reason(status: k8s.V1PodStatus) -> str | None:
        waiting = status.container_statuses and status.container_statuses[0].state.waiting
        return waiting.reason if waiting and waiting.reason != "ContainerCreating" else None

    status = wait("no-secret", waiting_reason)
    assert (status.phase, waiting_reason(status)) == ("Pending", "CreateContainerConfigError")
    assert cluster.started_at("no-secret") is None

    # Names and labels a real API server refuses are refused here too (422 Invalid).
    from kubernetes.client.exceptions import ApiException

    with pytest.raises(ApiException) as refused:
        create("make_batches-x", "pass")
    assert refused.value.status == 422 and "RFC 1123" in str(refused.value.body)
    assert "make_batches-x" not in {p["metadata"]["name"] for p in cluster.pods()}
