"""Flow tasks under a real deployment: api-server, scheduler, dag-processor and triggerer.

``airflow dags test`` runs a task in the test process itself; a deployment runs it in a task
process under the task supervisor of a LocalExecutor worker, talking to the Execution API
over HTTP, with runs created by the REST API (as the UI does) or by the scheduler (asset
events). One deployment serves the whole module: starting it is the expensive part.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from deployment import Deployment, pid_running

DEPLOY_DAGS = Path(__file__).resolve().parent / "deploy_dags"

# Under `-n 2` all of these tests run on one xdist worker: see ONE_WORKER_MODULES in conftest.py.
pytestmark = [pytest.mark.deployment, pytest.mark.dags_test]


@pytest.fixture(scope="module")
def deployment(
    migrated_db: Path, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Deployment]:
    cache = request.config.cache
    pycache = cache.mkdir("deployment-pycache") if cache is not None else None
    home = tmp_path_factory.mktemp("deployment")
    running = Deployment(home, DEPLOY_DAGS, migrated_db, pycache=pycache)
    with running:  # stops it even if starting fails
        yield running
        strays = running.stop()  # what this stop found; the context's exit finds nothing more
    assert not strays, f"processes outlived the deployment: {strays}"


def result_manifest(deployment: Deployment, dag_id: str, run_id: str, task_id: str) -> dict | None:
    path = deployment.artifacts / "runs" / dag_id / run_id / task_id / "-1" / "1" / "result.json"
    return json.loads(path.read_text()) if path.exists() else None


def failure_lines(log: str, limit: int = 12) -> str:
    """The lines of a task log that say why it failed."""
    words = ("error", "exception", "traceback", "failed")
    lines = [line for line in log.splitlines() if any(w in line.lower() for w in words)]
    return "\n".join(line[:1500] for line in lines[-limit:]) or log[-3000:]


def run_to_end(deployment: Deployment, dag_id: str, form: dict | None = None) -> tuple[str, str]:
    """Unpause ``dag_id``, trigger it from the 'UI', wait: (run_id, final state)."""
    deployment.wait_for_dag(dag_id)
    deployment.api.unpause(dag_id)
    run_id = deployment.api.trigger_like_ui(dag_id, form)["dag_run_id"]
    return run_id, deployment.api.wait_for_run(dag_id, run_id)


def test_plain_tasks_run_and_nothing_listens_beyond_loopback(deployment: Deployment):
    run_id, state = run_to_end(deployment, "deploy_plain")
    api = deployment.api
    assert state == "success", api.task_states("deploy_plain", run_id)
    assert api.task_states("deploy_plain", run_id) == {"numbers": "success", "total": "success"}
    run = api.dag_run("deploy_plain", run_id)
    assert (run["run_type"], run["triggered_by"]) == ("manual", "ui")
    assert run["triggering_user_name"] == api.username
    assert "Done. Returned value was: 6" in api.task_log("deploy_plain", run_id, "total")
    sockets = deployment.listening()
    assert ("127.0.0.1", deployment.port) in {(ip, port) for _, ip, port in sockets}
    assert all(ip == "127.0.0.1" for _, ip, _ in sockets), sockets


@pytest.fixture(scope="module")
def ui_tagged_run(deployment: Deployment) -> tuple[str, str]:
    """deploy_imports_airflow triggered from the 'UI' with tags, run to its end: (run_id,
    state). One run for the tests that check it: runs are the expensive part."""
    dag_id = "deploy_imports_airflow"
    api = deployment.api
    deployment.wait_for_dag(dag_id)
    # What the trigger form reads to draw the fields: none of the flow params is required
    # (a "null" type), and the compute override's empty option has a readable label.
    params = api.dag_details(dag_id)["params"]
    for name in ("flow_tags", "flow_namespace", "flow_compute"):
        assert "null" in params[name]["schema"]["type"], params[name]
    shown = params["flow_compute"]["schema"]["values_display"]
    assert shown["null"] == "each task's own"
    # This deployment has no cluster and no Batch queue: the form says what each needs.
    assert shown["local"] == "local"
    assert shown["kubernetes"] == "kubernetes (needs [flow_task] kubernetes_conn_id)"
    assert shown["batch"] == "batch (needs [flow_task] batch_job_queue or BatchOptions(queue=...))"
    # A trailing Enter in the tags field leaves an empty line: the run ignores it.
    form = {"flow_tags": ["ui", "deploy", ""], "flow_namespace": None}
    return run_to_end(deployment, dag_id, form)


def test_a_flow_task_that_imports_airflow_runs_under_the_scheduler(
    deployment: Deployment, ui_tagged_run: tuple[str, str]
):
    dag_id = "deploy_imports_airflow"
    api = deployment.api
    run_id, state = ui_tagged_run
    log = api.task_log(dag_id, run_id, "hook_name")
    assert state == "success", (
        f"{api.task_states(dag_id, run_id)}; hook_name's log:\n{failure_lines(log)}"
    )
    assert api.task_states(dag_id, run_id) == {"hook_name": "success", "check": "success"}
    manifest = result_manifest(deployment, dag_id, run_id, "hook_name")
    assert manifest is not None
    assert manifest["status"] == "succeeded"
    assert manifest["namespace"] == f"user:{api.username}"
    assert manifest["tags"] == ["ui", "deploy"]


FIND_BY_TAG = """
import json, sys
from provider.client import Flow

(run,) = Flow("deploy_imports_airflow").runs(tags=["ui", "deploy"])  # namespace user:$FLOWTASK_USER
print(json.dumps({
    "run_id": run.run_id, "namespace": run.namespace, "tags": run.tags, "status": run.status,
    "tasks": run.task_ids, "hook_name": run["hook_name"].data,
    "airflow": sorted(m for m in sys.modules if m.split(".")[0] == "airflow"),
}))
"""


def test_a_run_triggered_from_the_ui_is_found_by_tag_from_plain_python(
    deployment: Deployment, ui_tagged_run: tuple[str, str]
):
    from provider.client import Flow

    run_id, state = ui_tagged_run
    assert state == "success"
    store = deployment.artifacts.as_uri()
    # The dag-processor runs the record_run_state callback once the scheduler saw the run end.
    deployment.wait_until(
        lambda: Flow("deploy_imports_airflow", store)[run_id].finished,
        "the run's end in the run index",
        timeout=60,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(AIRFLOW__FLOW_TASK__ARTIFACT_STORE=store, FLOWTASK_USER=deployment.api.username)
    proc = subprocess.run(
        [sys.executable, "-c", FIND_BY_TAG], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    assert found["hook_name"].startswith("FSHook from airflow 3.")  # the artifact, loaded
    assert found == {
        "run_id": run_id,
        "namespace": f"user:{deployment.api.username}",
        "tags": ["ui", "deploy"],
        "status": "success",
        "tasks": ["hook_name"],
        "hook_name": found["hook_name"],
        "airflow": [],
    }


def test_marking_a_running_flow_task_failed_stops_its_runtime(
    deployment: Deployment, ui_tagged_run: tuple[str, str], tmp_path: Path
):
    """After an earlier flow task (ui_tagged_run) the runtime is a fork of the warm runtime
    that task started: the kill reaches the fork in another task process's session."""
    dag_id = "deploy_kill"
    deployment.wait_for_dag(dag_id)
    api = deployment.api
    api.unpause(dag_id)
    run_id = api.trigger_like_ui(dag_id, {"workdir": str(tmp_path)})["dag_run_id"]
    pid_file = tmp_path / "runtime.pid"
    deployment.wait_until(pid_file.exists, "the flow task's runtime to start", timeout=120)
    pid = int(pid_file.read_text())
    assert pid_running(pid)
    server = psutil.Process(pid).parent()
    assert server is not None and "serve" in server.cmdline(), "the runtime did not start warm"
    marked = time.monotonic()
    api.set_task_state(dag_id, run_id, "sleeper", "failed")
    try:
        while pid_running(pid) and time.monotonic() - marked < 15:
            time.sleep(0.5)
        log = api.task_log(dag_id, run_id, "sleeper")
        assert not pid_running(pid), (
            f"the runtime (pid {pid}) still runs {time.monotonic() - marked:.0f}s after its "
            f"task was marked failed; the task's log ends:\n{log[-3000:]}"
        )
    finally:
        if pid_running(pid):  # today's orphan: stop it so it cannot finish later
            psutil.Process(pid).kill()
    assert not (tmp_path / "finished").exists()
    manifest = result_manifest(deployment, dag_id, run_id, "sleeper")
    assert manifest is None or manifest["status"] != "succeeded", manifest
    assert api.wait_for_run(dag_id, run_id) == "failed"


def test_an_asset_triggered_run_gets_the_production_namespace(
    deployment: Deployment, ui_tagged_run: tuple[str, str]
):
    """After an earlier flow task (ui_tagged_run), the consumer's runtime starts warm."""
    consumer = "deploy_asset_consumer"
    deployment.wait_for_dag(consumer)
    deployment.api.unpause(consumer)
    _, state = run_to_end(deployment, "deploy_asset_producer")
    assert state == "success"
    api = deployment.api
    runs = deployment.wait_until(
        lambda: api.dag_runs(consumer), "the asset event to trigger the consumer", timeout=60
    )
    (run,) = runs
    assert run["run_type"] == "asset_triggered"
    run_id = run["dag_run_id"]
    state = api.wait_for_run(consumer, run_id)
    log = api.task_log(consumer, run_id, "consume")
    assert state == "success", f"consume's log:\n{failure_lines(log)}"
    manifest = result_manifest(deployment, consumer, run_id, "consume")
    assert manifest is not None and manifest["status"] == "succeeded"
    assert manifest["namespace"] == f"production:{consumer}", (
        f"run_type={run['run_type']}, triggering_user_name={run['triggering_user_name']}"
    )
    assert manifest["runtime_start"] == "warm"


def test_a_caught_failure_is_previewed_in_the_xcom_view_and_logged_once(deployment: Deployment):
    """A blank namespace typed into the form is no namespace: the run is the user's."""
    dag_id = "deploy_caught"
    api = deployment.api
    run_id, state = run_to_end(deployment, dag_id, {"flow_namespace": "   "})
    log = api.task_log(dag_id, run_id, "load")
    assert state == "success", f"{api.task_states(dag_id, run_id)}; load's log:\n{log[-3000:]}"
    assert api.task_states(dag_id, run_id) == {"load": "success", "report": "success"}
    value = api.xcom_entry(dag_id, run_id, "load")["value"]
    value = json.loads(value) if isinstance(value, str) else value
    assert value["preview"] == "Failure: KeyError 'missing-column'", value
    caught = [line for line in log.splitlines() if "caught as a Failure" in line]
    assert len(caught) == 1 and caught[0].startswith("warning "), caught
    assert "builtins.KeyError: 'missing-column'" in caught[0]
    manifest = result_manifest(deployment, dag_id, run_id, "load")
    assert manifest is not None and manifest["namespace"] == f"user:{api.username}"


def test_a_target_with_no_cluster_fails_at_once_and_a_spaced_namespace_is_found(
    deployment: Deployment, ui_tagged_run: tuple[str, str]
):
    """The trigger form's compute override set to kubernetes, which this deployment has not
    configured: the task fails before it launches, saying what to set, and the run is on
    record in the namespace typed with spaces around it, found without them."""
    from provider.client import Flow

    dag_id = "deploy_imports_airflow"
    api = deployment.api
    form = {"flow_compute": "kubernetes", "flow_namespace": " team:x "}
    run_id, state = run_to_end(deployment, dag_id, form)
    assert state == "failed"
    log = api.task_log(dag_id, run_id, "hook_name")
    assert (
        "flow task hook_name cannot run: compute='kubernetes': no Kubernetes cluster is "
        "configured: set [flow_task] kubernetes_conn_id to an Airflow Kubernetes connection"
    ) in log, failure_lines(log)
    assert "ConfigException" not in log
    assert api.task_instance(dag_id, run_id, "hook_name")["try_number"] == 1
    manifest = result_manifest(deployment, dag_id, run_id, "hook_name")
    assert manifest is not None and manifest["namespace"] == "team:x"
    assert (manifest["status"], manifest["written_by"]) == ("failed", "worker")
    flow = Flow(dag_id, deployment.artifacts.as_uri())
    (run,) = flow.runs(namespace="team:x")
    assert run.run_id == run_id
    deployment.wait_until(lambda: flow[run_id].status == "failed", "the run's end", timeout=60)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "FLOWTASK"))}
    flowtask = str(Path(sys.executable).parent / "flowtask")
    store = deployment.artifacts.as_uri()
    proc = subprocess.run(
        [flowtask, "runs", dag_id, "--namespace", "team:x", "--store", store, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert [r["run_id"] for r in json.loads(proc.stdout)["runs"]] == [run_id]


def test_stopping_the_deployment_leaves_no_process_behind(deployment: Deployment):
    assert deployment.processes()
    strays = deployment.stop()
    assert strays == []
    assert deployment.processes() == []
