"""FlowJobOperator against the test cluster, without a DAG: its watch and its kill."""

from __future__ import annotations

import re
import threading
import time
from typing import Any

import pytest

pytest.importorskip("kmock")
from k8s_cluster import LocalCluster

from provider.operators.targets.job_operator import FlowJobOperator
from provider.translate.kubernetes_job import JobState


def sleeping_job(cluster: LocalCluster, **kwargs: Any) -> FlowJobOperator:
    """Two pods that sleep for a minute, watched every 0.1 s."""
    return FlowJobOperator(
        task_id="sleepy",
        name="sleepy",
        namespace="default",
        image="python:3.11-slim",
        cmds=["python3", "-c", "import time; time.sleep(60)"],
        config_file=str(cluster.kubeconfig),
        in_cluster=False,
        kubernetes_conn_id=None,
        completion_mode="Indexed",
        completions=2,
        parallelism=2,
        backoff_limit_per_index=0,
        job_poll_interval=0.1,
        schedule_timeout=60,
        **kwargs,
    )


def test_kill_deletes_the_job_and_its_pods(cluster: LocalCluster):
    op = sleeping_job(cluster)
    states: list[JobState] = []
    reports: list[Any] = []
    watch = threading.Thread(target=lambda: reports.append(op.run_indexed(None, states.append)))
    watch.start()
    deadline = time.monotonic() + 30
    while not (states and states[-1].ready == 2):
        assert time.monotonic() < deadline, states[-1:]
        time.sleep(0.05)
    assert len(cluster.jobs()) == 1
    pods = [p["metadata"]["name"] for p in cluster.pods()]
    op.on_kill()  # as Airflow does when the task is marked failed or its worker stops it
    watch.join(30)
    assert not watch.is_alive()
    (report,) = reports
    assert (report.state.finished, report.state.reason) == ("Failed", "Deleted")
    assert cluster.jobs() == [] and cluster.pods() == []  # Foreground: the pods went first
    for name in pods:
        assert cluster.lifetime(name)[1] is not None  # its process ended
    op.on_kill()  # again, as a timeout after a kill does: nothing left, nothing raised


@pytest.mark.parametrize(("version", "per_index"), [("1.28", False), ("1.33", True)])
def test_the_servers_version_decides_backoff_limit_per_index(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, version: str, per_index: bool
):
    from provider.operators.targets.job_operator import server_version
    from provider.translate.kubernetes_job import supports_backoff_limit_per_index

    with LocalCluster(tmp_path, version=version) as cluster:
        monkeypatch.setenv("AIRFLOW_CONN_KUBERNETES_DEFAULT", cluster.airflow_connection_json())
        major, minor = server_version("kubernetes_default")
    assert f"{major}.{minor}" == version
    assert supports_backoff_limit_per_index(major, minor) is per_index


def test_a_job_the_api_server_refuses_is_reported_in_its_words(cluster: LocalCluster):
    op = sleeping_job(cluster)
    op.completions = 100_001  # with backoffLimitPerIndex, the API wants maxFailedIndexes too
    report = op.run_indexed(None, lambda state: None)
    assert report.start_failure is not None
    assert re.fullmatch(
        r'the API server refused job job-sleepy-\w+: Job.batch "job-sleepy-\w+" is invalid: '
        r"spec.maxFailedIndexes: Required value: must be specified when completions is above "
        r"100000",
        report.start_failure,
    ), report.start_failure
    assert cluster.jobs() == [] and cluster.pods() == []
