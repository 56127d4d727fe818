"""A real Airflow deployment for tests: api-server, scheduler, dag-processor and triggerer.

``airflow dags test`` runs tasks in-process, with no scheduler, no executor, no Execution API
over HTTP and no task supervisor, so it hides what only a deployment shows. ``Deployment``
starts the four Airflow services as subprocesses in a fresh ``AIRFLOW_HOME`` (LocalExecutor on
SQLite, everything on 127.0.0.1), and ``AirflowAPI`` drives them through the public REST API
the way the UI does.

    with Deployment(home, dags_folder, migrated_db) as deployment:
        api = deployment.api
        api.unpause("my_dag")
        run = api.trigger_like_ui("my_dag", {"flow_tags": ["ui"]})
        assert api.wait_for_run("my_dag", run["dag_run_id"]) == "success"

Everything the services start in turn (executor workers, task supervisors, task processes,
a flow task's ``python -m provider.runtime``) is found again by ``processes()``: as a
descendant, by the working directory it inherits (the home) or by an inherited marker
variable. ``stop()`` terminates the services (SIGTERM, then SIGKILL), then kills whatever of
theirs is still alive and returns it, so a test can fail on strays.
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
from collections.abc import Callable, Iterable, Mapping
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
    home: Path, dags_folder: Path, port: int, marker: str, **extra: str
) -> dict[str, str]:
    """The environment of every service: a real deployment's settings, scaled down for tests.

    Each name below was checked against ``airflow/config_templates/config.yml`` of the
    installed Airflow (3.3.2).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        {
            MARKER: marker,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
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
    env.update(extra)
    return env


@dataclass
class Service:
    name: str
    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Deployment:
    """Airflow's services in ``home``, parsing ``dags_folder``; a context manager.

    ``migrated_db`` is an ``airflow.db`` that ``airflow db migrate`` made (copied, not used).
    ``pycache`` is a directory for the services' bytecode (``PYTHONPYCACHEPREFIX``), kept
    between sessions. ``start()`` returns once the public API and the Execution API answer
    and the admin user has a token; ``wait_for_dag`` then waits for a DAG to be parsed.
    """

    home: Path
    dags_folder: Path
    migrated_db: Path
    triggerer: bool = True
    env_extra: Mapping[str, str] = field(default_factory=dict)
    startup_timeout: float = 240.0
    pycache: Path | None = None
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
        shutil.copy(self.migrated_db, self.home / "airflow.db")
        self.passwords = {USERNAME: self.password}
        self.passwords.update({name: secrets.token_urlsafe(16) for name in self.users})
        (self.home / "passwords.json").write_text(json.dumps(self.passwords))
        self.port = free_port()
        self.env = deployment_env(
            self.home, self.dags_folder, self.port, self.marker, **dict(self.env_extra)
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
            service = Service(name, argv, self.home / f"{name}.log")
            with service.log.open("wb") as log:
                service.proc = subprocess.Popen(
                    argv,
                    env=self.env,
                    cwd=self.home,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self.services.append(service)
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
        self.startup_seconds = time.monotonic() - started

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
        for service in self.services:
            if service.proc is not None and service.proc.poll() is not None:
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

    # -- processes ---------------------------------------------------------------------------

    def processes(self) -> list[psutil.Process]:
        """Every live process of this deployment: the services and all they started.

        A process is ours if it descends from a service, or works in the deployment's home
        (the services' working directory, inherited by everything they start), or carries
        the marker variable. Orphans are no longer descendants, and ``setproctitle`` (the
        api-server, executor workers, task supervisors) overwrites the memory that
        ``/proc/PID/environ`` shows, so no single test finds them all.
        """
        found: dict[int, psutil.Process] = {}
        for service in self.services:
            if service.proc is None or service.proc.poll() is not None:
                continue
            try:
                root = psutil.Process(service.proc.pid)
                for proc in [root, *root.children(recursive=True)]:
                    found[proc.pid] = proc
            except psutil.NoSuchProcess:
                continue
        home = str(self.home)
        for proc in psutil.process_iter():
            if proc.pid == os.getpid() or proc.pid in found:
                continue
            try:
                if proc.cwd() == home or proc.environ().get(MARKER) == self.marker:
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

    def stop(self, grace: float = 15.0) -> list[str]:
        """SIGTERM the services, SIGKILL what is left of them, then every process of theirs.

        Returns (and adds to ``strays``) the processes still alive once the services had
        stopped: children that outlived their service's shutdown. Idempotent.
        """
        if self._api is not None:
            self._api.close()  # an open keep-alive connection slows the api-server's exit
        running = [s.proc for s in self.services if s.proc is not None and s.proc.poll() is None]
        before = self.processes()
        for proc in running:
            _signal(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for proc in running:
            _killpg(proc.pid, signal.SIGKILL)  # each service leads its own process group
            proc.wait()
        services = {proc.pid for proc in running}
        candidates = {p.pid: p for p in [*before, *self.processes()] if p.pid not in services}
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


def _check(response: httpx.Response) -> None:
    if response.is_error:
        raise DeploymentError(
            f"{response.request.method} {response.request.url} -> {response.status_code}: "
            f"{response.text[:2000]}"
        )
