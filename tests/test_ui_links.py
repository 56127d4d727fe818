"""Links from a try's Flow tab and its operator links to the pod's or the Batch job's console."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from provider.operators.links import BatchJobLink, BatchLogLink, PodLink, console_links
from provider.store import manifest_key, open_store


def test_a_pod_links_to_the_configured_console_and_a_batch_job_to_aws(monkeypatch):
    pod = {"platform": "kubernetes", "pod": "fit-x7k2", "namespace": "ml jobs"}
    assert console_links(pod) == {}  # no console configured: no link
    monkeypatch.setenv(
        "AIRFLOW__FLOW_TASK__KUBERNETES_POD_URL", "https://k8s.example/ns/{namespace}/pods/{pod}"
    )
    assert console_links(pod) == {"Pod": "https://k8s.example/ns/ml%20jobs/pods/fit-x7k2"}
    job = {"platform": "batch", "batch_job_id": "8f1e-aa", "region": "eu-west-1"}
    assert console_links(job) == {
        "Batch job": "https://console.aws.amazon.com/batch/home?region=eu-west-1"
        "#jobs/detail/8f1e-aa"
    }
    logged = {**job, "log_group": "/aws/batch/job", "log_stream": "flowtask-x/default/ab12"}
    assert console_links(logged)["CloudWatch log"] == (
        "https://console.aws.amazon.com/cloudwatch/home?region=eu-west-1#logsV2:log-groups/"
        "log-group/%2Faws%2Fbatch%2Fjob/log-events/flowtask-x%2Fdefault%2Fab12"
    )
    assert console_links({"platform": "local", "host": "vm", "pid": 1}) == {}


@pytest.mark.parametrize("link", [PodLink(), BatchJobLink(), BatchLogLink()])
def test_operator_links_read_where_the_try_ran(monkeypatch, tmp_path, link):
    store = open_store(tmp_path.as_uri())
    monkeypatch.setenv("AIRFLOW__FLOW_TASK__ARTIFACT_STORE", tmp_path.as_uri())
    monkeypatch.setenv("AIRFLOW__FLOW_TASK__KUBERNETES_POD_URL", "https://k8s/{namespace}/{pod}")
    ti = SimpleNamespace(dag_id="d", run_id="r", task_id="t", map_index=-1, try_number=2)
    assert link.get_link(None, ti_key=ti) == ""  # no manifest yet
    where = (
        {"platform": "kubernetes", "pod": "p", "namespace": "n"}
        if isinstance(link, PodLink)
        else {
            "platform": "batch",
            "batch_job_id": "j",
            "region": "us-east-1",
            "log_group": "/aws/batch/job",
            "log_stream": "def/default/task",
        }
    )
    store.write_manifest(manifest_key("d", "r", "t", -1, 2), {"status": "failed", "where": where})
    assert link.get_link(None, ti_key=ti).startswith("https://")
