"""Flow tasks in a deployment shaped as production runs it: PostgreSQL as the metadata database,
the CeleryExecutor with Redis as its broker, the api-server, scheduler, dag-processor and
triggerer, and two Celery workers with their own ``AIRFLOW_HOME`` and their own copy of the DAGs
folder, sharing no folder (two machines); the artifact store on S3 (moto).

Worker A consumes the queues ``default`` and ``worker_a`` and has a package index (a folder of
wheels); worker B consumes ``default`` and ``worker_b`` and reaches no package index (uv is
offline, its index a closed loopback port). One deployment serves the module and the tests run
in file order: the last ones stop a worker, then everything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import AIRFLOW, BUCKET, airflow_env, aws_connection, s3_client
from deployment import CeleryWorker, Deployment, free_port, worker_home
from machine_services import PostgresDatabase, RedisKeys, require_services
from wheels import probe_wheels

from provider.store import MissingArtifact, open_store
from provider.store.keys import manifest_key

CELERY_DAGS = Path(__file__).resolve().parent / "celery_dags"
FLOWTASK = str(Path(sys.executable).parent / "flowtask")
WORKERS = ("worker-a", "worker-b")
TAGS = ["celery", "two-workers"]

# Under `-n 2` all of these tests run on one xdist worker: see ONE_WORKER_MODULES in conftest.py.
pytestmark = [pytest.mark.deployment, pytest.mark.dags_test]


@dataclass
class Production:
    deployment: Deployment
    store: Any  # the artifact store, s3://flow-artifacts/<prefix of this session>
    client_env: dict[str, str]  # a laptop's: the store's credentials and nothing of Airflow
    workdirs: Path

    def home(self, worker: str) -> str:
        return str(self.deployment.worker_home(worker))

    def worker_at(self, home: str | None) -> str:
        """The worker whose AIRFLOW_HOME is ``home``."""
        for worker in WORKERS:
            if home == self.home(worker):
                return worker
        raise AssertionError(f"{home!r} is no worker's home ({WORKERS})")

    def manifest(
        self, dag_id: str, run_id: str, task_id: str, try_number: int = 1, name: str = "result"
    ) -> dict[str, Any] | None:
        try:
            return dict(
                self.store.read_manifest(
                    manifest_key(dag_id, run_id, task_id, -1, try_number, name)
                )
            )
        except MissingArtifact:
            return None

    def run(
        self, dag_id: str, name: str, timeout: float = 180.0, **form: Any
    ) -> tuple[str, str, Path]:
        """Trigger ``dag_id`` as the UI does with a work folder of the test's: (run_id, final
        state, the folder)."""
        workdir = self.workdirs / name
        workdir.mkdir()
        run_id = self.trigger(dag_id, workdir, **form)
        return run_id, self.deployment.api.wait_for_run(dag_id, run_id, timeout=timeout), workdir

    def trigger(self, dag_id: str, workdir: Path, **form: Any) -> str:
        deployment = self.deployment
        deployment.wait_for_dag(dag_id)
        deployment.api.unpause(dag_id)
        return str(
            deployment.api.trigger_like_ui(dag_id, {"workdir": str(workdir), **form})["dag_run_id"]
        )

    def explain(self, dag_id: str, run_id: str, *task_ids: str, tries: int = 1) -> str:
        """The task states and the ends of the workers' logs of ``task_ids``' tries, for a
        failed assertion."""
        logs = [
            self.deployment.worker_task_log(dag_id, run_id, task_id, number)[-3000:]
            for task_id in task_ids
            for number in range(1, tries + 1)
        ]
        return f"{self.deployment.api.task_states(dag_id, run_id)}\n" + "\n".join(logs)


@pytest.fixture(scope="module")
def production(
    moto: Any, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Production]:
    require_services()
    database = PostgresDatabase().create()
    broker = RedisKeys()
    try:
        home = tmp_path_factory.mktemp("celery")
        migrate = subprocess.run(
            [AIRFLOW, "db", "migrate"],
            env=airflow_env(home, CELERY_DAGS, AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=database.url),
            capture_output=True,
            text=True,
        )
        assert migrate.returncode == 0, migrate.stdout[-3000:] + migrate.stderr[-3000:]
        root = f"s3://{BUCKET}/celery-{database.name}"
        shared = {
            "AIRFLOW__FLOW_TASK__ARTIFACT_STORE": root,
            "AIRFLOW_CONN_AWS_DEFAULT": aws_connection(moto.endpoint),
            "AIRFLOW__CELERY__BROKER_URL": broker.url,
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{database.url}",
            # Every key of this deployment's broker under its own prefix (kombu's option).
            "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX": broker.prefix,
            "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": "3600",
            # A running .foreach chunk keeps each item's result as it finishes (default: every
            # 5 s), so "only the unfinished items run again" is exact, not up to 5 s of items.
            "AIRFLOW__FLOW_TASK__FOREACH_CHECKPOINT_SECONDS": "0",
            # A worker that dies without a word: its task is failed (and retried) this soon.
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "60",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
        }
        a_home, b_home = worker_home(home, "worker-a"), worker_home(home, "worker-b")
        worker_a = {
            "HOME": str(a_home),  # a machine's own: nothing under ~ is shared (uv's cache)
            "UV_CACHE_DIR": str(a_home / "uv-cache"),
            **probe_wheels(tmp_path_factory.mktemp("index-a")),  # A's package index
        }
        worker_b = {
            "HOME": str(b_home),
            "UV_CACHE_DIR": str(b_home / "uv-cache"),
            "UV_INDEX_URL": f"http://127.0.0.1:{free_port()}/simple",  # nothing listens there
            "UV_OFFLINE": "1",
            "UV_HTTP_RETRIES": "0",
        }
        cache = getattr(request.config, "cache", None)
        deployment = Deployment(
            home,
            CELERY_DAGS,
            executor="CeleryExecutor",
            database_url=database.url,
            workers=[
                CeleryWorker("worker-a", ("default", "worker_a"), worker_a),
                CeleryWorker("worker-b", ("default", "worker_b"), worker_b),
            ],
            env_extra=shared,
            pycache=cache.mkdir("deployment-pycache") if cache is not None else None,
        )
        client_env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "AWS"))}
        client_env.update(
            AIRFLOW__FLOW_TASK__ARTIFACT_STORE=root,
            AWS_ENDPOINT_URL_S3=moto.endpoint,
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION="us-east-1",
            FLOWTASK_S3_ADDRESSING_STYLE="path",
        )
        with deployment:  # stops it even if starting fails
            yield Production(
                deployment,
                open_store(root, s3_client=s3_client(moto.endpoint)),
                client_env,
                tmp_path_factory.mktemp("workdirs"),
            )
            strays = deployment.stop()  # what this stop found; the context's exit finds nothing
        assert not strays, f"processes outlived the deployment: {strays}"
    finally:
        database.drop()
        broker.delete()


def test_without_postgresql_or_redis_ci_fails_and_a_developer_is_told_what_to_start(
    monkeypatch: pytest.MonkeyPatch,
):
    import machine_services

    monkeypatch.setattr(machine_services, "PG_PORT", free_port())  # nothing listens there
    monkeypatch.setattr(machine_services, "REDIS_PORT", free_port())
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception) as failed:
        require_services()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception) as skipped:
        require_services()
    for outcome in (failed, skipped):
        message = str(outcome.value)
        assert f"PostgreSQL does not answer at 127.0.0.1:{machine_services.PG_PORT}" in message
        assert f"Redis does not answer at 127.0.0.1:{machine_services.REDIS_PORT}" in message
        assert all(command in message for command in machine_services.START_COMMANDS.values())


def reports(workdir: Path) -> dict[str, dict[str, Any]]:
    return {p.name.removesuffix(".json"): json.loads(p.read_text()) for p in workdir.glob("*.json")}


# -- warm runtimes ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def warm_run(production: Production) -> tuple[str, str, Path]:
    """celery_warm triggered with tags, run to its end: two flow tasks on each worker."""
    return production.run("celery_warm", "warm", flow_tags=TAGS)


def test_each_workers_warm_runtime_serves_its_own_tasks(
    production: Production, warm_run: tuple[str, str, Path]
):
    run_id, state, workdir = warm_run
    tasks = ["a_first", "a_second", "b_first", "b_second"]
    assert state == "success", production.explain("celery_warm", run_id, *tasks)
    found = reports(workdir)
    servers = {}
    for worker, letter in zip(WORKERS, "ab", strict=True):
        home = production.home(worker)
        first, second = found[f"{letter}_first"], found[f"{letter}_second"]
        assert (first["home"], second["home"]) == (home, home), (worker, found)  # its queue's
        manifest = production.manifest("celery_warm", run_id, f"{letter}_second")
        assert manifest is not None and manifest["runtime_start"] == "warm", manifest
        # The second runtime is a fork of a warm runtime of its own worker: the server works
        # in that worker's home, and ends with the worker's process that started it (its owner).
        server = psutil.Process(second["ppid"])
        argv = server.cmdline()
        assert argv[1:4] == ["-m", "provider.runtime", "serve"], argv
        assert server.cwd() == home
        owner = int(argv[argv.index("--owner") + 1])
        ours = {p.pid for p in production.deployment.processes(worker)}
        assert owner in ours and server.pid in ours, (worker, owner, argv)
        servers[worker] = server.pid
    assert servers["worker-a"] != servers["worker-b"]


# -- environments ----------------------------------------------------------------------------


def test_an_environment_built_on_one_worker_runs_on_the_other_from_the_store(
    production: Production,
):
    """A builds ``ftprobe`` from its index and stores it; B, with no index, fetches it."""
    run_id, state, workdir = production.run("celery_environment", "environment")
    found = reports(workdir)
    assert state == "success", production.explain("celery_environment", run_id, "build", "use")
    assert production.worker_at(found["build"]["home"]) == "worker-a"
    assert production.worker_at(found["use"]["home"]) == "worker-b"
    assert found["build"]["value"] == found["use"]["value"] == "ftprobe 1.0"
    built = production.manifest("celery_environment", run_id, "build", name="launch")
    used = production.manifest("celery_environment", run_id, "use", name="launch")
    assert built is not None and used is not None
    assert built["environment"]["how"] == "built", built["environment"]
    assert used["environment"]["how"] == "fetched", used["environment"]
    assert used["environment"]["id"] == built["environment"]["id"]
    assert used["environment"]["archive"] == built["environment"]["archive"]
    # B laid the archive A stored in front of its own packages, in its own home.
    assert found["use"]["file"].startswith(production.home("worker-b")), found["use"]


# -- runs found by tag -----------------------------------------------------------------------

FIND_BY_TAG = """
import json, sys
from provider.client import Flow

(run,) = Flow("celery_warm").runs(tags=["celery", "two-workers"])  # namespace user:$FLOWTASK_USER
print(json.dumps({
    "run_id": run.run_id, "namespace": run.namespace, "tags": run.tags, "status": run.status,
    "tasks": run.task_ids, "b_second": run["b_second"].data["home"],
    "airflow": sorted(m for m in sys.modules if m.split(".")[0] == "airflow"),
}))
"""


def test_runs_triggered_with_tags_are_found_by_the_client_and_the_cli(
    production: Production, warm_run: tuple[str, str, Path]
):
    from provider.client import Flow

    run_id, state, _ = warm_run
    assert state == "success"
    username = production.deployment.api.username
    # The dag-processor runs the record_run_state callback once the scheduler saw the run end.
    production.deployment.wait_until(
        lambda: Flow("celery_warm", production.store)[run_id].finished,
        "the run's end in the run index",
        timeout=60,
    )
    env = {**production.client_env, "FLOWTASK_USER": username}
    proc = subprocess.run(
        [sys.executable, "-c", FIND_BY_TAG], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {
        "run_id": run_id,
        "namespace": f"user:{username}",
        "tags": TAGS,
        "status": "success",
        "tasks": ["a_first", "a_second", "b_first", "b_second"],
        "b_second": production.home("worker-b"),  # the result, loaded
        "airflow": [],
    }
    cli = subprocess.run(
        [FLOWTASK, "runs", "celery_warm", "--tag", "two-workers", "--json"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    (listed,) = json.loads(cli.stdout)["runs"]  # `runs --json`: {namespace, runs, hint}
    assert (listed["run_id"], listed["tags"], listed["status"]) == (run_id, TAGS, "success")
    shown = subprocess.run(
        [FLOWTASK, "show", "celery_warm", run_id],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert f"user:{username}" in shown.stdout and "celery, two-workers" in shown.stdout
    assert all(task in shown.stdout for task in ("a_first", "a_second", "b_first", "b_second"))


# -- a worker stopped mid-run ----------------------------------------------------------------


@dataclass
class Stopped:
    run_id: str
    state: str
    workdir: Path
    worker: str  # the worker that ran try 1 and was stopped
    before: list[str]  # its processes just before the stop
    strays: list[str]  # its processes still alive after its shutdown
    left: list[str]  # its processes found after that


@pytest.fixture(scope="module")
def foreach_stopped(production: Production) -> Stopped:
    """celery_foreach's try 1 runs until item 4 waits; its worker is then stopped (SIGTERM to
    its process group, SIGKILL after 15 s) and the retry runs on the one left."""
    deployment = production.deployment
    workdir = production.workdirs / "foreach"
    workdir.mkdir()
    calls = workdir / "calls"
    run_id = production.trigger("celery_foreach", workdir)

    def waiting() -> Path | None:
        done = {p.name.split("-")[0] for p in calls.glob("*-1-*.end")}
        waits = list(calls.glob("4-1-*.start"))
        return waits[0] if waits and done >= {"0", "1", "2", "3"} else None

    item_4 = deployment.wait_until(waiting, "try 1 to reach item 4", timeout=180)
    worker = production.worker_at(item_4.read_text())
    before = _cmdlines(deployment.processes(worker))
    strays = deployment.stop_worker(worker)
    left = _cmdlines(deployment.processes(worker))
    state = deployment.api.wait_for_run("celery_foreach", run_id, timeout=180)
    return Stopped(run_id, state, workdir, worker, before, strays, left)


def _cmdlines(processes: list[psutil.Process]) -> list[str]:
    found = []
    for proc in processes:
        try:
            found.append(" ".join(proc.cmdline()))
        except psutil.NoSuchProcess:
            continue
    return found


def test_a_foreach_stopped_on_one_worker_resumes_on_the_other(
    production: Production, foreach_stopped: Stopped
):
    """Try 1 finished items 0-3 and was stopped in item 4; try 2, on the other worker, runs
    only items 4-8 (their results and 0-3's make the list ``total`` checks)."""
    stopped = foreach_stopped
    explain = production.explain("celery_foreach", stopped.run_id, "item_call", tries=2)
    assert stopped.state == "success", explain
    other = next(w for w in WORKERS if w != stopped.worker)
    calls: dict[int, list[int]] = {}
    for start in sorted((stopped.workdir / "calls").glob("*.start")):
        item, try_number, _ = start.name.removesuffix(".start").split("-")
        calls.setdefault(int(try_number), []).append(int(item))
        expected = stopped.worker if try_number == "1" else other
        assert production.worker_at(start.read_text()) == expected, (start.name, expected)
    assert sorted(calls[1]) == [0, 1, 2, 3, 4], calls
    assert sorted(calls[2]) == [4, 5, 6, 7, 8], f"try 2 ran {sorted(calls[2])}\n{explain}"
    ti = production.deployment.api.task_instance("celery_foreach", stopped.run_id, "item_call")
    assert ti["try_number"] == 2


def test_stopping_a_worker_leaves_no_process(foreach_stopped: Stopped):
    """Its task process, the runtimes of the .foreach and its warm runtime included."""
    before = foreach_stopped.before
    assert any(" -m provider.runtime serve " in argv for argv in before), before  # warm
    assert any(" -m provider.runtime foreach " in argv for argv in before), before
    assert foreach_stopped.strays == [], foreach_stopped.strays
    assert foreach_stopped.left == [], foreach_stopped.left


def test_stopping_the_deployment_leaves_no_process_behind(production: Production):
    deployment = production.deployment
    assert deployment.processes()
    strays = deployment.stop()
    assert strays == []
    assert deployment.processes() == []
