"""A real Airflow deployment for tests: api-server, scheduler, dag-processor and triggerer.

``airflow dags test`` runs tasks in-process, with no scheduler, no executor, no Execution API
over HTTP and no task supervisor, so it hides what only a deployment shows. ``Deployment``
starts the four Airflow services as subprocesses in a fresh ``AIRFLOW_HOME`` (everything on
127.0.0.1), and ``AirflowAPI`` drives them through the public REST API the way the UI does.
By default the executor is the LocalExecutor on SQLite; ``executor``, ``database_url`` and
``workers`` make it production-shaped: PostgreSQL, the CeleryExecutor, and Celery workers that
each have their own ``AIRFLOW_HOME`` with their own copy of the DAGs folder (no shared folder:
another machine each).

    with Deployment(home, dags_folder, migrated_db) as deployment:
        api = deployment.api
        api.unpause("my_dag")
        run = api.trigger_like_ui("my_dag", {"flow_tags": ["ui"]})
        assert api.wait_for_run("my_dag", run["dag_run_id"]) == "success"

Everything the services start in turn (executor workers, task supervisors, task processes,
a flow task's ``python -m provider.runtime``) is found again by ``processes()``: as a
descendant, by the working directory it inherits (the service's home) or by an inherited
marker variable (a worker's own value). ``stop()`` terminates the services (SIGTERM, then
SIGKILL), then kills whatever of theirs is still alive and returns it, so a test can fail on
strays; ``stop_worker(name)`` does the same for one Celery worker while the rest runs on.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

AIRFLOW = str(Path(sys.executable).parent / "airflow")
MARKER = "FLOWTASK_TEST_DEPLOYMENT"
USERNAME = "admin"
FINAL_RUN_STATES = frozenset({"success", "failed"})


class DeploymentError(RuntimeError):
    """A service did not start, exited, or a wait timed out; carries the services' log tails."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def deployment_env(
    home: Path,
    dags_folder: Path,
    port: int,
    marker: str,
    *,
    executor: str = "LocalExecutor",
    database_url: str | None = None,
    **extra: str,
) -> dict[str, str]:
    """The environment of every service: a real deployment's settings, scaled down for tests.

    Each name below was checked against ``airflow/config_templates/config.yml`` of the
    installed Airflow (3.3.2). ``database_url`` defaults to SQLite in ``home``.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        {
            MARKER: marker,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": executor,
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": (
                database_url or f"sqlite:///{home / 'airflow.db'}"
            ),
            "AIRFLOW__CORE__XCOM_BACKEND": "provider.xcom.FlowXCom",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            # At most a few task processes at a time: the machine has 2 cores.
            "AIRFLOW__CORE__PARALLELISM": "4",
            # The API server on loopback only; workers reach its Execution API there.
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            # One secret for every service, or tokens one signs another rejects.
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
            # SimpleAuthManager with one admin user whose password we write ourselves.
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USERNAME}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
            # Polling. The dag-processor lists the DAG folder every refresh_interval (300 s)
            # once bundle_refresh_check_interval (5 s) says so; the scheduler sleeps
            # scheduler_idle_sleep_time (1 s) between idle loops. The job heartbeats
            # ([scheduler] scheduler_heartbeat_sec, job_heartbeat_sec) are liveness writes
            # that nothing waits for (perform_heartbeat(only_if_necessary=True)): defaults.
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__BUNDLE_REFRESH_CHECK_INTERVAL": "1",
            "AIRFLOW__DAG_PROCESSOR__PRINT_STATS_INTERVAL": "0",
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5",
            # Airflow loads providers' plugins (flowtask's Flow tabs) only when providers are
            # discovered at start.
            "AIRFLOW__CORE__LAZY_DISCOVER_PROVIDERS": "False",
        }
    )
    if os.environ.get("FLOWTASK_TEST_PRELOAD"):  # as conftest.airflow_env
        env["AIRFLOW__FLOW_TASK__WARM_RUNTIME_PRELOAD"] = os.environ["FLOWTASK_TEST_PRELOAD"]
    env.update(extra)
    return env


def worker_home(home: Path, name: str) -> Path:
    """The ``AIRFLOW_HOME`` of the deployment's worker ``name``: beside ``home``, not in it."""
    return home.with_name(f"{home.name}.{name}")


@dataclass(frozen=True)
class CeleryWorker:
    """An ``airflow celery worker`` as if on a machine of its own: its own ``AIRFLOW_HOME``
    (``<home>.<name>``), holding its own copy of the DAGs folder, its own Celery hostname, the
    queues it consumes, and variables of its own (``env``, laid over the deployment's)."""

    name: str
    queues: tuple[str, ...] = ("default",)
    env: Mapping[str, str] = field(default_factory=dict)
    concurrency: int = 2


@dataclass
class Service:
    name: str
    argv: list[str]
    log: Path
    home: Path  # its working directory (and AIRFLOW_HOME), inherited by what it starts
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def marker(self) -> str:
        return self.env.get(MARKER, "")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.text().splitlines()[-lines:]) or "(no log)"


@dataclass
class Deployment:
    """Airflow's services in ``home``, parsing ``dags_folder``; a context manager.

    ``migrated_db`` is an ``airflow.db`` that ``airflow db migrate`` made (copied, not used);
    with ``database_url`` (a migrated database, e.g. PostgreSQL) it is not needed. ``workers``
    start as Celery workers (``executor="CeleryExecutor"``; the broker comes in ``env_extra``).
    ``pycache`` is a directory for the services' bytecode (``PYTHONPYCACHEPREFIX``), kept
    between sessions. ``start()`` returns once the public API and the Execution API answer,
    the admin user has a token and every worker is ready; ``wait_for_dag`` then waits for a
    DAG to be parsed.
    """

    home: Path
    dags_folder: Path
    migrated_db: Path | None = None
    triggerer: bool = True
    env_extra: Mapping[str, str] = field(default_factory=dict)
    startup_timeout: float = 240.0
    pycache: Path | None = None
    executor: str = "LocalExecutor"
    database_url: str | None = None
    workers: Sequence[CeleryWorker] = ()
    # More SimpleAuthManager users, name -> role ("" for none: no access to any DAG); their
    # passwords are in ``passwords``.
    users: Mapping[str, str] = field(default_factory=dict)

    port: int = field(init=False, default=0)
    marker: str = field(init=False, default_factory=lambda: uuid.uuid4().hex)
    password: str = field(init=False, default_factory=lambda: secrets.token_urlsafe(16))
    passwords: dict[str, str] = field(init=False, default_factory=dict)
    services: list[Service] = field(init=False, default_factory=list)
    env: dict[str, str] = field(init=False, default_factory=dict)
    strays: list[str] = field(init=False, default_factory=list)
    stopped: set[str] = field(init=False, default_factory=set)  # services stopped on purpose
    overdue: list[str] = field(init=False, default_factory=list)  # SIGKILLed after the grace
    startup_seconds: float = field(init=False, default=0.0)
    _api: AirflowAPI | None = field(init=False, default=None)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def artifacts(self) -> Path:
        return self.home / "flow_artifacts"

    @property
    def api(self) -> AirflowAPI:
        if self._api is None:
            raise DeploymentError("the deployment is not started")
        return self._api

    def worker_home(self, name: str) -> Path:
        return worker_home(self.home, name)

    def service(self, name: str) -> Service:
        for service in self.services:
            if service.name == name:
                return service
        raise DeploymentError(f"no service {name!r}: {[s.name for s in self.services]}")

    def __enter__(self) -> Deployment:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- start -------------------------------------------------------------------------------

    def start(self) -> None:
        started = time.monotonic()
        self.home.mkdir(parents=True, exist_ok=True)
        if self.database_url is None:
            if self.migrated_db is None:
                raise DeploymentError("a deployment needs migrated_db or database_url")
            shutil.copy(self.migrated_db, self.home / "airflow.db")
        self.passwords = {USERNAME: self.password}
        self.passwords.update({name: secrets.token_urlsafe(16) for name in self.users})
        (self.home / "passwords.json").write_text(json.dumps(self.passwords))
        self.port = free_port()
        self.env = deployment_env(
            self.home,
            self.dags_folder,
            self.port,
            self.marker,
            executor=self.executor,
            database_url=self.database_url,
            **dict(self.env_extra),
        )
        if self.users:
            self.env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] = ",".join(
                [f"{USERNAME}:admin", *(f"{name}:{role}" for name, role in self.users.items())]
            )
        if self.pycache is not None:
            # Each service imports most of Airflow: compiling it again in every process (as
            # PYTHONDONTWRITEBYTECODE=1 makes it) cost the four ~18 s of CPU more here.
            self.env.pop("PYTHONDONTWRITEBYTECODE", None)
            self.env["PYTHONPYCACHEPREFIX"] = str(self.pycache)
        commands = {
            "api-server": [AIRFLOW, "api-server"],
            "scheduler": [AIRFLOW, "scheduler", "--skip-serve-logs"],
            "dag-processor": [AIRFLOW, "dag-processor"],
        }
        if self.triggerer:
            commands["triggerer"] = [AIRFLOW, "triggerer", "--skip-serve-logs"]
        for name, argv in commands.items():
            self._launch(Service(name, argv, self.home / f"{name}.log", self.home, self.env))
        for worker in self.workers:
            self._launch(self._worker_service(worker))
        self._api = AirflowAPI(self.url, USERNAME, self.password)
        self.wait_until(
            lambda: self._answers("/api/v2/monitor/health"),
            "the api-server to answer /api/v2/monitor/health",
        )
        # The first Execution API request takes the api-server 15-20 s of CPU here (and
        # blocks its one worker meanwhile): pay it now, not in a task supervisor's first call,
        # which times out after [workers] execution_api_timeout (5 s) and retries.
        self.wait_until(
            lambda: self._answers("/execution/health", timeout=self.startup_timeout),
            "the Execution API to answer /execution/health",
        )
        self._api.login()
        for worker in self.workers:
            service = self.service(worker.name)
            # Celery logs "<hostname> ready." once the worker consumes its queues.
            self.wait_until(lambda s=service: " ready." in s.text(), f"{worker.name} to be ready")
        self.startup_seconds = time.monotonic() - started

    def _worker_service(self, worker: CeleryWorker) -> Service:
        """A worker's home, its own copy of the DAGs folder (as an image or a git-sync gives a
        machine its own), and its environment: the deployment's, with its own home, DAGs
        folder and marker, and ``worker.env`` over them."""
        home = self.worker_home(worker.name)
        home.mkdir(parents=True, exist_ok=True)
        dags = home / "dags"
        shutil.rmtree(dags, ignore_errors=True)
        shutil.copytree(self.dags_folder, dags, ignore=shutil.ignore_patterns("__pycache__"))
        env = {
            **self.env,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            MARKER: f"{self.marker}.{worker.name}",
            **dict(worker.env),
        }
        argv = [AIRFLOW, "celery", "worker", "--celery-hostname", f"{worker.name}@{self.marker}"]
        argv += ["--queues", ",".join(worker.queues), "--concurrency", str(worker.concurrency)]
        # Task logs stay in the worker's home: one log server port for two workers on one
        # machine cannot work, and the tests read the files (worker_task_log).
        argv += ["--skip-serve-logs", "--without-mingle", "--without-gossip"]
        return Service(worker.name, argv, home / "worker.log", home, env)

    def _launch(self, service: Service) -> None:
        with service.log.open("wb") as log:
            service.proc = subprocess.Popen(
                service.argv,
                env=service.env,
                cwd=service.home,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # each service leads its own process group
            )
        self.services.append(service)

    def _answers(self, path: str, timeout: float = 5.0) -> bool:
        try:
            return httpx.get(f"{self.url}{path}", timeout=timeout).status_code == 200
        except httpx.TransportError:
            return False

    def wait_until(
        self, ready: Callable[[], Any], what: str, timeout: float | None = None, every: float = 0.5
    ) -> Any:
        """Poll ``ready`` until it returns something truthy; fail with the services' logs."""
        deadline = time.monotonic() + (self.startup_timeout if timeout is None else timeout)
        while True:
            self.check_alive()
            value = ready()
            if value:
                return value
            if time.monotonic() > deadline:
                raise DeploymentError(f"timed out waiting for {what}\n{self.log_tails()}")
            time.sleep(every)

    def check_alive(self) -> None:
        """Every service that was not stopped on purpose still runs."""
        for service in self.services:
            if service.proc is not None and service.proc.poll() is not None:
                if service.name in self.stopped:
                    continue
                raise DeploymentError(
                    f"airflow {service.name} exited with {service.proc.returncode}\n"
                    f"{self.log_tails()}"
                )

    def log_tails(self, lines: int = 40) -> str:
        return "\n".join(f"--- {s.name} ({s.log}) ---\n{s.tail(lines)}" for s in self.services)

    def wait_for_dag(self, dag_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Wait until the dag-processor has parsed ``dag_id`` and the API serves it."""

        def parsed() -> dict[str, Any] | None:
            dag = self.api.get_dag(dag_id)
            if dag is None:
                errors = self.api.import_errors()
                if errors:
                    raise DeploymentError(f"DAG files failed to import: {errors}")
            return dag

        return self.wait_until(parsed, f"DAG {dag_id} to be parsed", timeout, every=1.0)

    def worker_task_log(
        self, dag_id: str, run_id: str, task_id: str, try_number: int = 1, map_index: int = -1
    ) -> str:
        """A task try's log as the worker that ran it wrote it (workers serve no logs here)."""
        parts = [f"dag_id={dag_id}", f"run_id={run_id}", f"task_id={task_id}"]
        if map_index >= 0:
            parts.append(f"map_index={map_index}")
        texts = []
        for worker in self.workers:
            path = self.worker_home(worker.name).joinpath("logs", *parts)
            path = path / f"attempt={try_number}.log"
            if path.exists():
                lines = [
                    _file_log_line(line) for line in path.read_text(errors="replace").splitlines()
                ]
                texts.append(f"--- {worker.name}: {path} ---\n" + "\n".join(lines))
        return "\n".join(texts) or f"(no worker wrote a log of {'/'.join(parts)} try {try_number})"

    # -- processes ---------------------------------------------------------------------------

    def processes(self, *names: str) -> list[psutil.Process]:
        """Every live process of the named services (default: all) and all they started.

        A process is a service's if it descends from it, or works in its home (its working
        directory, inherited by everything it starts), or carries its marker variable.
        Orphans are no longer descendants, and ``setproctitle`` (the api-server, executor
        workers, task supervisors) overwrites the memory that ``/proc/PID/environ`` shows, so
        no single test finds them all. The api-server, scheduler, dag-processor and triggerer
        share the deployment's home and marker; each worker has its own.
        """
        services = [s for s in self.services if not names or s.name in names]
        found: dict[int, psutil.Process] = {}
        for service in services:
            if not service.running:
                continue
            assert service.proc is not None
            try:
                root = psutil.Process(service.proc.pid)
                for proc in [root, *root.children(recursive=True)]:
                    found[proc.pid] = proc
            except psutil.NoSuchProcess:
                continue
        homes = {str(s.home) for s in services}
        markers = {s.marker for s in services}
        for proc in psutil.process_iter():
            if proc.pid == os.getpid() or proc.pid in found:
                continue
            try:
                if proc.cwd() in homes or proc.environ().get(MARKER) in markers:
                    found[proc.pid] = proc
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return [proc for proc in found.values() if _running(proc)]

    def listening(self) -> list[tuple[str, str, int]]:
        """(process name, address, port) of every listening TCP socket of the deployment."""
        sockets = []
        for proc in self.processes():
            try:
                for conn in proc.net_connections(kind="inet"):
                    if conn.status == psutil.CONN_LISTEN:
                        sockets.append(
                            (" ".join(proc.cmdline()[:3]), conn.laddr.ip, conn.laddr.port)
                        )
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return sockets

    # -- stop --------------------------------------------------------------------------------

    def stop_worker(self, name: str, grace: float = 15.0) -> list[str]:
        """Stop one worker as a machine's shutdown does: SIGTERM to its whole process group,
        SIGKILL to the group after ``grace`` seconds. Returns the processes of the worker still
        alive after that (killed then; ``strays`` keeps them too). The rest runs on."""
        if name not in {w.name for w in self.workers}:
            raise DeploymentError(f"no worker {name!r}: {[w.name for w in self.workers]}")
        return self._stop([self.service(name)], grace, group=True)

    def stop(self, grace: float = 15.0) -> list[str]:
        """SIGTERM the services, SIGKILL what is left of them, then every process of theirs.

        Returns (and adds to ``strays``) the processes still alive once the services had
        stopped: children that outlived their service's shutdown. Idempotent.
        """
        if self._api is not None:
            self._api.close()  # an open keep-alive connection slows the api-server's exit
        return self._stop(self.services, grace, group=False)

    def _stop(self, services: Sequence[Service], grace: float, *, group: bool) -> list[str]:
        names = [s.name for s in services]
        self.stopped.update(names)
        running = [s for s in services if s.proc is not None and s.proc.poll() is None]
        before = self.processes(*names)
        for service in running:
            assert service.proc is not None
            (_killpg if group else _signal)(service.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for service in running:
            assert service.proc is not None
            try:
                service.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.overdue.append(service.name)
        for service in running:
            assert service.proc is not None
            _killpg(service.proc.pid, signal.SIGKILL)  # each service leads its own group
            service.proc.wait()
        pids = {service.proc.pid for service in running if service.proc is not None}
        after = self.processes(*names)  # what works in their homes or carries their markers
        candidates = {p.pid: p for p in [*before, *after] if p.pid not in pids}
        leftovers = _wait_gone(candidates.values(), 3.0)
        strays = []
        for proc in leftovers:
            try:
                strays.append(f"pid {proc.pid}: {' '.join(proc.cmdline())[:300]}")
                proc.terminate()
            except psutil.NoSuchProcess:
                continue
        for proc in _wait_gone(leftovers, 5.0):
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                continue
        self.strays.extend(strays)
        return strays


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _killpg(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _wait_gone(procs: Iterable[psutil.Process], timeout: float) -> list[psutil.Process]:
    """The processes still alive (and not zombies) after ``timeout`` seconds."""
    _, alive = psutil.wait_procs(list(procs), timeout=timeout)
    out = []
    for proc in alive:
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc)
        except psutil.NoSuchProcess:
            continue
    return out


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def pid_running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie has finished running)."""
    try:
        return _running(psutil.Process(pid))
    except psutil.NoSuchProcess:
        return False


class AirflowAPI:
    """The few calls of Airflow's public REST API (``/api/v2``) the tests need.

    Authentication is SimpleAuthManager's ``POST /auth/token`` with a user name and password;
    the token goes in ``Authorization: Bearer``.
    """

    def __init__(self, url: str, username: str, password: str) -> None:
        self.url = url
        self.username = username
        self.password = password
        self.client = httpx.Client(base_url=url, timeout=30)

    def close(self) -> None:
        self.client.close()

    def login(self) -> str:
        response = self.client.post(
            "/auth/token", json={"username": self.username, "password": self.password}
        )
        _check(response)
        token = response.json()["access_token"]
        self.client.headers["Authorization"] = f"Bearer {token}"
        return token

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self.client.request(method, f"/api/v2{path}", **kwargs)
        _check(response)
        return response

    # -- DAGs --------------------------------------------------------------------------------

    def get_dag(self, dag_id: str) -> dict[str, Any] | None:
        response = self.client.get(f"/api/v2/dags/{dag_id}")
        if response.status_code == 404:
            return None
        _check(response)
        return response.json()

    def dag_details(self, dag_id: str) -> dict[str, Any]:
        return self.request("GET", f"/dags/{dag_id}/details").json()

    def import_errors(self) -> list[dict[str, Any]]:
        return self.request("GET", "/importErrors").json()["import_errors"]

    def unpause(self, dag_id: str) -> None:
        self.request("PATCH", f"/dags/{dag_id}", json={"is_paused": False})

    # -- runs --------------------------------------------------------------------------------

    def ui_trigger_body(self, dag_id: str, form: Mapping[str, Any] | None = None) -> dict:
        """The body the React trigger form of Airflow 3.3.2 posts for ``form``'s field values.

        The form loads the DAG's params from ``GET /api/v2/dags/{dag_id}/details`` and keeps
        one value per param, starting from the param's default; it posts every one of them as
        ``conf`` (an emptied text field as ``null``, an untouched empty list as ``[]``).
        Read from the shipped bundle ``airflow/ui/dist/assets/index-*.js``: the trigger
        mutation sends ``{conf, dag_run_id, data_interval_end, data_interval_start,
        logical_date, note, partition_key}`` with undefined keys dropped by JSON.
        """
        params = self.dag_details(dag_id).get("params") or {}
        conf = {name: param.get("value") for name, param in params.items()}
        conf.update(form or {})
        return {
            "conf": conf,
            "data_interval_end": None,
            "data_interval_start": None,
            # The form pre-fills "now" for a DAG that is not partitioned; a user who clears it
            # sends null, and the server then leaves the run without a logical date.
            "logical_date": None,
            "partition_key": None,
        }

    def trigger_like_ui(self, dag_id: str, form: Mapping[str, Any] | None = None) -> dict:
        """Trigger ``dag_id`` as the UI's trigger form does; returns the new run."""
        body = self.ui_trigger_body(dag_id, form)
        # The UI's requests carry a Referer, which makes the run's triggered_by "ui".
        headers = {"Referer": f"{self.url}/dags/{dag_id}"}
        return self.request("POST", f"/dags/{dag_id}/dagRuns", json=body, headers=headers).json()

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}").json()

    def dag_runs(self, dag_id: str) -> list[dict[str, Any]]:
        return self.request("GET", f"/dags/{dag_id}/dagRuns").json()["dag_runs"]

    def wait_for_run(
        self, dag_id: str, run_id: str, timeout: float = 120.0, every: float = 1.0
    ) -> str:
        """The run's final state (``success`` or ``failed``); raises on a timeout."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.dag_run(dag_id, run_id)["state"]
            if state in FINAL_RUN_STATES:
                return state
            if time.monotonic() > deadline:
                raise DeploymentError(
                    f"run {dag_id}/{run_id} still {state} after {timeout:.0f}s; tasks: "
                    f"{self.task_states(dag_id, run_id)}"
                )
            time.sleep(every)

    # -- task instances ----------------------------------------------------------------------

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances"
        return self.request("GET", path).json()["task_instances"]

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        return {
            ti["task_id"] if ti["map_index"] < 0 else f"{ti['task_id']}[{ti['map_index']}]": ti[
                "state"
            ]
            for ti in self.task_instances(dag_id, run_id)
        }

    def task_instance(self, dag_id: str, run_id: str, task_id: str) -> dict[str, Any]:
        return self.request(
            "GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}"
        ).json()

    def set_task_state(self, dag_id: str, run_id: str, task_id: str, state: str) -> list[dict]:
        """Mark a task instance ``failed``, ``success`` or ``skipped`` (as the UI's buttons do)."""
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}"
        response = self.request("PATCH", path, json={"new_state": state})
        return response.json()["task_instances"]

    def task_log(
        self, dag_id: str, run_id: str, task_id: str, try_number: int = 1, map_index: int = -1
    ) -> str:
        """The text of one task try's log, one line per structured log message."""
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}"
        response = self.request(
            "GET",
            path,
            params={"full_content": True, "map_index": map_index},
            headers={"Accept": "application/json"},
        )
        return "\n".join(_log_line(entry) for entry in response.json()["content"])

    def xcom_entry(
        self, dag_id: str, run_id: str, task_id: str, key: str = "return_value"
    ) -> dict[str, Any]:
        """An XCom entry as the UI's XCom tab reads it (the row's value as stored)."""
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}"
        return self.request("GET", path).json()

    # -- assets ------------------------------------------------------------------------------

    def asset_id(self, uri: str) -> int:
        assets = self.request("GET", "/assets", params={"uri_pattern": uri}).json()["assets"]
        matching = [a["id"] for a in assets if a["uri"] == uri]
        if not matching:
            raise DeploymentError(f"no asset {uri!r} among {[a['uri'] for a in assets]}")
        return int(matching[0])

    def create_asset_event(self, uri: str, extra: Mapping[str, Any] | None = None) -> dict:
        body = {"asset_id": self.asset_id(uri), "extra": dict(extra or {})}
        return self.request("POST", "/assets/events", json=body).json()


# What every line of a task's log carries; left out of the text ``task_log`` returns.
_LOG_CONTEXT = frozenset(
    {"event", "timestamp", "level", "logger", "error_detail", "filename", "lineno"}
    | {"ti_id", "dag_id", "task_id", "run_id", "map_index", "try_number"}
)


def _log_line(entry: Any) -> str:
    if not isinstance(entry, dict):
        return str(entry)
    line = f"{entry.get('level', '')} {entry.get('event', '')}".strip()
    rest = {k: v for k, v in entry.items() if k not in _LOG_CONTEXT}
    if rest:
        line += " " + json.dumps(rest, default=str)
    for error in entry.get("error_detail") or []:
        line += f"\n    {error.get('exc_type')}: {error.get('exc_value')}"
    return line


def _file_log_line(line: str) -> str:
    """A line of a task log file (one JSON object each) as ``task_log`` shows it."""
    try:
        entry = json.loads(line)
    except ValueError:
        return line
    return _log_line(entry)


def _check(response: httpx.Response) -> None:
    if response.is_error:
        raise DeploymentError(
            f"{response.request.method} {response.request.url} -> {response.status_code}: "
            f"{response.text[:2000]}"
        )
