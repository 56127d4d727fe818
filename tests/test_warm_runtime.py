"""The warm runtime: local runs forked from a server that has imported the runtime behave as
runs of a new interpreter do — output, exit codes, environment, kills and lifetimes."""

from __future__ import annotations

import os
import select
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import psutil
import pytest

from provider.core.local.runner import run_local, terminate_group
from provider.core.local.warm import (
    SERVER_LOST,
    WarmProcess,
    WarmRuntimeLost,
    runtime_folder,
    server_environment,
    server_name,
    start_warm,
)
from provider.runtime import Payload
from provider.runtime.lifetime import PARENT_PID_ENV
from provider.runtime.preload import PreloadSettings
from provider.runtime.warm import encode_request, private_folder, socket_address
from provider.store import manifest_key, open_store, payload_key
from provider.translate import runtime_command

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="warm runtimes are Linux's (pidfd, PDEATHSIG)"
)
cloudpickle.register_pickle_by_value(sys.modules[__name__])
IDLE = 60.0


def _wait_for(predicate: Any, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _connected(path: Path) -> socket.socket:
    """A connection to the socket file ``path`` (through its folder: the path may be long)."""
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(socket_address(folder, path.name))
    except OSError:
        conn.close()
        raise
    finally:
        os.close(folder)
    return conn


def _answers(path: Path) -> bool:
    try:
        _connected(path).close()
    except OSError:
        return False
    return True


def _servers(path: Path) -> list[psutil.Process]:
    """The server of the socket file ``path`` (its forks show their own title)."""
    return [p for p in psutil.process_iter(["cmdline"]) if str(path) in (p.info["cmdline"] or [])]


class Warm:
    """A store, and runs of stored payloads through ``run_local`` with warm runtimes on; the
    environment carries a variable of its own, so the server is this test's alone, and an
    Airflow home of its own, where the server's socket file is."""

    def __init__(
        self,
        tmp_path: Path,
        home: str = "home",
        shape: str = "",
        preload: PreloadSettings | None = None,
    ) -> None:
        self.preload = preload or PreloadSettings("off")
        self.store = open_store((tmp_path / "store").as_uri())
        self.env = {
            **os.environ,
            "AIRFLOW_HOME": str(tmp_path / home),
            # shapes the interpreter: a server of its own
            "PYTHONFLOWTASKTEST": shape or uuid.uuid4().hex,
            PARENT_PID_ENV: str(os.getpid()),
        }
        name = server_name(server_environment(self.env), os.getcwd())
        self.socket = runtime_folder(self.env) / f"{name}.sock"
        self.runs = 0

    def command(self, function: Any, *args: Any) -> tuple[list[str], str]:
        self.runs += 1
        key = manifest_key("d", "r", f"t{self.runs}", -1, 1)
        ref = self.store.put_at(
            payload_key(key), Payload(function=function, args=args), by_value=True
        )
        return runtime_command(self.store.root_uri, ref.to_json(), key, python=sys.executable), key

    def run(self, function: Any, *args: Any, **env: str) -> tuple[int, dict, list[str]]:
        argv, key = self.command(function, *args)
        lines: list[str] = []
        code = run_local(
            argv,
            env={**self.env, **env},
            log_line=lines.append,
            log_error=lambda line: lines.append(f"stderr: {line}"),
            warm_idle_seconds=IDLE,
            warm_preload=self.preload,
        )
        return code, self.store.read_manifest(key), lines

    def started(self) -> None:
        """Run once (cold), which starts the server; wait until it answers."""
        code, manifest, _ = self.run(_nothing)
        assert code == 0 and manifest["runtime_start"] == "cold"
        assert _wait_for(lambda: _answers(self.socket), 30), "the warm runtime never answered"

    def server(self) -> psutil.Process:
        (server,) = _servers(self.socket)
        return server

    def stop(self) -> None:
        for server in _servers(self.socket):
            server.kill()


#: Every test of a warm runtime runs with preloading off and on (the server imports these
#: before it forks; the tasks' results must not change).
PRELOADS = {"off": PreloadSettings("off"), "on": PreloadSettings("listed", ("numpy", "pandas"))}


@pytest.fixture(params=sorted(PRELOADS))
def warm(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Warm]:
    runs = Warm(tmp_path, preload=PRELOADS[request.param])
    yield runs
    runs.stop()


def _nothing() -> None:
    return None


def looks_around(tag: str) -> dict:
    print(f"out {tag}")
    print(f"err {tag}", file=sys.stderr)
    return {
        "cwd": os.getcwd(),
        "tag": os.environ.get("FLOW_TEST_TAG"),
        "flowtask": sorted(k for k in os.environ if k.startswith("FLOWTASK")),
        "argv": sys.argv[1:2],
        "leads_group": os.getpgrp() == os.getpid(),
    }


def test_a_warm_run_gives_what_a_cold_run_gives(warm: Warm):
    code, cold, cold_lines = warm.run(looks_around, "a", FLOW_TEST_TAG="first")
    assert code == 0 and cold["runtime_start"] == "cold"
    assert _wait_for(lambda: _answers(warm.socket), 30)
    code, hot, hot_lines = warm.run(looks_around, "a", FLOW_TEST_TAG="second")
    assert code == 0 and hot["runtime_start"] == "warm"
    values = [warm.store.get(m["result"]) for m in (cold, hot)]
    assert values[0] == {**values[1], "tag": "first"}
    assert values[1]["tag"] == "second"  # the request's environment, not the server's
    assert values[1]["flowtask"] == [] and values[1]["leads_group"]
    assert [line for line in hot_lines if " a" in line] == ["out a", "stderr: err a"]
    assert [line for line in cold_lines if " a" in line] == ["out a", "stderr: err a"]
    server = warm.server()
    assert hot["pid"] != server.pid and not _alive(hot["pid"])


def fails() -> None:
    raise KeyError("missing")


def killed() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def test_exit_codes_and_signals_reach_the_worker(warm: Warm):
    warm.started()
    code, manifest, lines = warm.run(fails)
    assert code == 1 and manifest["status"] == "failed" and manifest["runtime_start"] == "warm"
    assert any("KeyError: 'missing'" in line for line in lines)
    argv, _ = warm.command(killed)
    proc = start_warm(argv, warm.env, owner=os.getpid(), idle_seconds=IDLE, preload=warm.preload)
    assert proc is not None
    assert proc.wait(timeout=30) == -signal.SIGKILL  # as Popen says it: the OOM killer's mark


def sleeps_with_a_child(folder: str) -> None:
    child = subprocess.Popen(["sleep", "600"])
    Path(folder, "child.pid").write_text(str(child.pid))
    Path(folder, "runtime.pid").write_text(str(os.getpid()))
    time.sleep(600)


def _sleeping_warm_run(warm: Warm, folder: Path) -> tuple[WarmProcess, str, int]:
    """A warm run of ``sleeps_with_a_child``, once it sleeps: (the fork, its manifest key,
    the pid of the child it started)."""
    warm.started()
    argv, key = warm.command(sleeps_with_a_child, str(folder))
    proc = start_warm(argv, warm.env, owner=os.getpid(), idle_seconds=IDLE, preload=warm.preload)
    assert proc is not None
    pid_file = folder / "runtime.pid"
    assert _wait_for(lambda: pid_file.exists() and pid_file.read_text() != "", 30)  # written
    assert int(pid_file.read_text()) == proc.pid
    return proc, key, int((folder / "child.pid").read_text())


def test_terminating_a_warm_run_stops_it_and_what_it_started(warm: Warm, tmp_path: Path):
    proc, key, child = _sleeping_warm_run(warm, tmp_path)
    terminate_group(proc, grace_seconds=5.0)
    assert proc.returncode == -signal.SIGTERM
    assert _wait_for(lambda: not _alive(child), 5) and not _alive(proc.pid)
    assert warm.store.backend.stat(key) is None


def test_a_warm_run_whose_worker_is_killed_stops(warm: Warm, tmp_path: Path):
    """The worker's end of the connection closes when it dies: the server ends the run."""
    warm.started()
    argv, key = warm.command(sleeps_with_a_child, str(tmp_path))
    worker = f"""
        import os
        from provider.core.local.runner import run_local
        run_local({argv!r}, env={warm.env!r}, log_line=print, warm_idle_seconds={IDLE})
    """
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(worker)])
    assert _wait_for((tmp_path / "runtime.pid").exists, 30)
    runtime = int((tmp_path / "runtime.pid").read_text())
    child = int((tmp_path / "child.pid").read_text())
    server = warm.server()
    assert psutil.Process(runtime).ppid() == server.pid  # a fork, not a new interpreter
    proc.kill()
    proc.wait()
    assert _wait_for(lambda: not _alive(runtime) and not _alive(child), 5)
    assert warm.store.backend.stat(key) is None
    assert server.is_running()  # and it serves the next task
    assert warm.run(_nothing)[1]["runtime_start"] == "warm"


def test_a_run_ends_with_its_server_and_the_error_names_it(warm: Warm, tmp_path: Path):
    """The task's error says the warm runtime died, with its pid and signal: never a bare
    exit code 255 (the worker's internal mark of an unknown exit)."""
    proc, _, child = _sleeping_warm_run(warm, tmp_path)
    server = warm.server()
    server.kill()
    assert proc.wait(timeout=10) == SERVER_LOST
    assert proc.lost == (
        f"the warm runtime serving this task died (pid {server.pid}, killed by SIGKILL) while "
        f"the task ran; the task's process (pid {proc.pid}) was stopped with it and reported "
        "no exit code"
    )
    assert _wait_for(lambda: not _alive(proc.pid) and not _alive(child), 5)
    # The socket file the killed server left is replaced by the next server.
    assert warm.socket.exists() and not _answers(warm.socket)
    warm.started()
    assert warm.run(_nothing)[1]["runtime_start"] == "warm"


def kills_its_server_and_sleeps(folder: str) -> None:
    Path(folder, "runtime.pid").write_text(str(os.getpid()))
    os.kill(os.getppid(), signal.SIGKILL)
    time.sleep(600)


def test_run_local_raises_what_ended_a_run_whose_server_died(warm: Warm, tmp_path: Path):
    warm.started()
    server = warm.server()
    with pytest.raises(WarmRuntimeLost) as lost:
        warm.run(kills_its_server_and_sleeps, str(tmp_path))
    runtime = int((tmp_path / "runtime.pid").read_text())
    assert str(lost.value).startswith(
        f"the warm runtime serving this task died (pid {server.pid}, killed by SIGKILL) while "
        f"the task ran; the task's process (pid {runtime}) was stopped with it"
    )
    assert "code 255" not in str(lost.value)
    assert _wait_for(lambda: not _alive(runtime), 5)


def counts(folder: str) -> None:
    with open(Path(folder, "runs"), "a") as runs:
        runs.write(f"{os.getpid()}\n")


class _DeafAfterConnect(socket.socket):
    """A worker's connection that stops reading once connected: the server's "pid" line
    finds it hung up (as after a receive timeout or a kill), deterministically."""

    def connect(self, address: Any) -> None:
        super().connect(address)
        self.shutdown(socket.SHUT_RD)


def test_a_worker_that_hangs_up_before_the_pid_never_runs_the_task_twice(
    warm: Warm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Once the server has the request, the try never starts the task cold: it fails, saying
    so, and the fork begun for it never runs; the retry runs the task, once."""
    warm.started()
    server = warm.server()
    with monkeypatch.context() as patched:
        patched.setattr(socket, "socket", _DeafAfterConnect)
        with pytest.raises(WarmRuntimeLost) as lost:
            warm.run(counts, str(tmp_path))
    assert str(lost.value) == (
        f"the warm runtime closed the connection (pid {server.pid}) after it took the task's "
        "request, before it started the task: the try fails rather than risk running the task "
        "twice"
    )
    assert _wait_for(lambda: not server.children(), 10), "the fork begun for it still runs"
    assert not (tmp_path / "runs").exists()  # neither the fork nor a cold run ran it
    code, manifest, _ = warm.run(counts, str(tmp_path))  # the retry
    assert code == 0 and manifest["runtime_start"] == "warm"
    assert len((tmp_path / "runs").read_text().split()) == 1
    assert server.children() == []


def test_a_fork_whose_worker_hung_up_before_its_pid_never_runs(warm: Warm, tmp_path: Path):
    """The server's side alone: the fork leads its group before its pid is sent and waits for
    the pid to be out, so a hang-up ends it before it runs anything (it once escaped the kill,
    running the task unwatched, until it had called setsid)."""
    warm.started()
    server = warm.server()
    argv, _ = warm.command(counts, str(tmp_path))
    for _ in range(5):
        out_read, out_write = os.pipe()
        with _connected(warm.socket) as conn:
            conn.shutdown(socket.SHUT_RD)
            request = encode_request(argv[3:], warm.env, os.getcwd())
            socket.send_fds(conn, [request], [out_write, out_write])
            os.close(out_write)
        # Every copy of the pipe closes once the fork has ended (or run, once it escaped).
        assert select.select([out_read], [], [], 10)[0] and os.read(out_read, 1) == b""
        os.close(out_read)
    assert _wait_for(lambda: not server.children(), 10)
    assert not (tmp_path / "runs").exists()


def parent() -> int:
    return os.getppid()


def test_workers_with_different_airflow_homes_never_share_a_warm_runtime(tmp_path: Path):
    """Two workers of one image in one network namespace (hostNetwork, two in a pod) once
    computed one abstract socket name: a task of one forked in the other's file system. The
    socket is a file in the worker's $AIRFLOW_HOME, in a folder of its user's alone."""
    first, second = Warm(tmp_path, "home1", "shared"), Warm(tmp_path, "home2", "shared")
    try:
        first.started()
        second.started()  # cold: the first worker's server is not this worker's
        for runs in (first, second):
            server = runs.server()
            code, manifest, _ = runs.run(parent)
            assert code == 0 and manifest["runtime_start"] == "warm"
            assert runs.store.get(manifest["result"]) == server.pid
            home = Path(runs.env["AIRFLOW_HOME"]).resolve()
            assert runs.socket.parent == home / "flowtask" / "runtimes"
            assert os.stat(runs.socket).st_mode == stat.S_IFSOCK | 0o700
            assert os.stat(runs.socket.parent).st_mode == stat.S_IFDIR | 0o700
        assert first.server().pid != second.server().pid
    finally:
        first.stop()
        second.stop()


def _serve(path: Path, owner: int, idle: float) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "provider.runtime", "serve", "--socket", str(path)]
    return subprocess.Popen([*argv, "--owner", str(owner), "--idle", str(idle)])


def test_a_server_ends_when_idle_and_when_its_owner_is_gone(tmp_path: Path):
    owner = subprocess.Popen(["sleep", "600"])
    try:
        path = tmp_path / "runtimes" / "a.sock"
        idle = _serve(path, owner.pid, 0.5)
        assert idle.wait(timeout=30) == 0  # nothing to run for half a second: it ends
        assert not path.exists()  # and takes its socket file with it
        orphaned = _serve(path, owner.pid, 600)
        assert _wait_for(lambda: _answers(path), 30)
        twin = _serve(path, owner.pid, 600)  # a second server for the same file steps aside
        assert twin.wait(timeout=30) == 0 and orphaned.poll() is None and _answers(path)
        owner.kill()
        assert orphaned.wait(timeout=10) == 0 and not path.exists()
    finally:
        owner.kill()


def test_a_request_queued_as_its_server_stops_is_served(warm: Warm, tmp_path: Path):
    """A worker never starts a task cold once the server has its request, so a server that
    stops (its owner gone, or idle) serves what is already queued: it removes its socket file
    first, and closes its socket only once nothing is queued."""
    owner = subprocess.Popen(["sleep", "600"])
    path = tmp_path / "runtimes" / "a.sock"
    server = _serve(path, owner.pid, 600)
    try:
        assert _wait_for(lambda: _answers(path), 30)
        server.send_signal(signal.SIGSTOP)  # the request is queued as the owner goes
        owner.kill()
        owner.wait()
        argv, _ = warm.command(counts, str(tmp_path))
        out_read, out_write = os.pipe()
        with _connected(path) as conn:
            request = encode_request(argv[3:], warm.env, os.getcwd())
            socket.send_fds(conn, [request], [out_write, out_write])
            os.close(out_write)
            server.send_signal(signal.SIGCONT)
            conn.settimeout(30)
            assert conn.recv(64).startswith(b"pid ")
            assert select.select([out_read], [], [], 30)[0] and os.read(out_read, 1) == b""
        os.close(out_read)
        assert server.wait(timeout=30) == 0 and not path.exists()
        assert len((tmp_path / "runs").read_text().split()) == 1
    finally:
        owner.kill()
        server.kill()


def test_the_server_name_follows_what_shapes_an_interpreter():
    env = {"PATH": "/usr/bin", "LANG": "C.UTF-8", "AIRFLOW_HOME": "/a", "TOKEN": "x"}
    shape = server_environment(env)
    assert shape == {"PATH": "/usr/bin", "LANG": "C.UTF-8"}
    base = server_name(shape, "/work")
    assert server_name(server_environment({**env, "TOKEN": "y"}), "/work") == base
    assert server_name({**shape, "PYTHONHASHSEED": "0"}, "/work") != base
    cuda = server_environment({**env, "LD_LIBRARY_PATH": "/usr/local/cuda/lib64"})
    assert server_name(cuda, "/work") != base  # the loader reads it once, as a process starts
    assert server_name(shape, "/elsewhere") != base
    assert runtime_folder(env) == Path("/a/flowtask/runtimes")


def test_warm_runtimes_can_be_turned_off_and_a_bad_value_is_named(monkeypatch):
    from provider import settings

    monkeypatch.setenv("AIRFLOW__FLOW_TASK__WARM_RUNTIME_IDLE", "0")
    assert settings.value("warm_runtime_idle") == 0
    assert (
        start_warm([sys.executable, "-m", "provider.runtime", "run"], {}, owner=1, idle_seconds=0)
        is None
    )
    monkeypatch.setenv("AIRFLOW__FLOW_TASK__WARM_RUNTIME_IDLE", "soon")
    with pytest.raises(ValueError, match=r"warm_runtime_idle='soon' is invalid. Accepted: seconds"):
        settings.value("warm_runtime_idle")


NOBODY = 65534


def _python_for_nobody() -> str:
    """An interpreter another user may run (the test's may sit in root's home)."""
    if os.getuid() != 0:
        pytest.skip("needs root to run a process as another user")
    for python in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"):
        try:
            subprocess.run([python, "-S", "-c", "pass"], user=NOBODY, check=True, timeout=30)
        except (OSError, subprocess.CalledProcessError):
            continue
        return python
    pytest.skip("no Python that another user may run")


SQUATTER = """
import socket, sys
server = socket.socket(fileno=int(sys.argv[1]))  # bound by root, listening as this user
server.listen(1)
print("listening", flush=True)
server.settimeout(20)
conn, _ = server.accept()
conn.settimeout(2)
try:
    print("told", len(conn.recv(65536)), flush=True)
except OSError:
    print("told 0", flush=True)
"""


def test_a_socket_held_by_another_user_is_never_told_the_task(warm: Warm):
    """The request carries the task's environment (its secrets): only our own server gets it."""
    python = _python_for_nobody()
    folder = private_folder(str(warm.socket.parent))
    bound = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bound.bind(socket_address(folder, warm.socket.name))
    os.close(folder)
    squatter = subprocess.Popen(
        [python, "-S", "-c", SQUATTER, str(bound.fileno())],
        user=NOBODY,
        pass_fds=[bound.fileno()],
        stdout=subprocess.PIPE,
        text=True,
    )
    bound.close()
    assert squatter.stdout is not None and squatter.stdout.readline() == "listening\n"
    argv, _ = warm.command(_nothing)
    assert (
        start_warm(argv, warm.env, owner=os.getpid(), idle_seconds=IDLE, preload=warm.preload)
        is None
    )
    assert squatter.communicate(timeout=30)[0] == "told 0\n"


def test_a_socket_folder_of_another_user_is_never_used(warm: Warm):
    """A folder another user owns (and could have filled) is not trusted: the task starts
    cold and no server starts there; a folder of ours open to others is closed first."""
    if os.getuid() != 0:
        pytest.skip("needs root to give a folder to another user")
    warm.socket.parent.mkdir(parents=True)
    os.chown(warm.socket.parent, NOBODY, NOBODY)
    argv, _ = warm.command(_nothing)
    assert (
        start_warm(argv, warm.env, owner=os.getpid(), idle_seconds=IDLE, preload=warm.preload)
        is None
    )
    assert list(warm.socket.parent.iterdir()) == [] and _servers(warm.socket) == []
    os.chown(warm.socket.parent, os.getuid(), os.getgid())
    warm.socket.parent.chmod(0o755)
    warm.started()
    assert stat.S_IMODE(os.stat(warm.socket.parent).st_mode) == 0o700


STRANGER = """
import socket, sys
conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
conn.connect(sys.argv[1])
conn.settimeout(10)
try:
    conn.sendall(bytes.fromhex(sys.argv[2]))
    print("answer", repr(conn.recv(64)), flush=True)
except OSError:
    print("answer b''", flush=True)  # closed before the request was in
"""


def test_a_server_serves_no_other_user(warm: Warm, tmp_path: Path):
    """The folder keeps other users out; were it opened to one, the server refuses them."""
    python = _python_for_nobody()
    warm.started()
    marker = tmp_path / "ran"
    argv, _ = warm.command(Path.write_text, marker, "a stranger's task")
    request = encode_request(argv[3:], {"PATH": os.environ["PATH"]}, "/").hex()
    folder = os.open(warm.socket.parent, os.O_RDONLY | os.O_DIRECTORY)
    warm.socket.parent.chmod(0o711)
    warm.socket.chmod(0o777)
    try:
        stranger = subprocess.run(
            [python, "-S", "-c", STRANGER, socket_address(folder, warm.socket.name), request],
            user=NOBODY,
            pass_fds=[folder],
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        warm.socket.parent.chmod(0o700)
        os.close(folder)
    assert stranger.stdout == "answer b''\n", stranger.stderr
    assert not marker.exists()


def test_a_run_that_ends_before_its_pid_is_read_is_not_run_again(warm: Warm):
    """The server may say "pid" and "exit" in one breath: the worker reads both, and does not
    take the pair for a broken answer (which would start the task again, cold)."""
    import threading

    from provider.runtime.warm import receive_request

    folder = private_folder(str(warm.socket.parent))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_address(folder, warm.socket.name))
    os.close(folder)
    listener.listen(1)

    def answer_at_once() -> None:
        conn, _ = listener.accept()
        for fd in receive_request(conn).fds:
            os.close(fd)
        conn.sendall(b"pid 4242\nexit 3\n")
        conn.close()

    server = threading.Thread(target=answer_at_once)
    server.start()
    try:
        argv, _ = warm.command(_nothing)
        proc = start_warm(
            argv, warm.env, owner=os.getpid(), idle_seconds=IDLE, preload=warm.preload
        )
        assert proc is not None and proc.pid == 4242
        assert proc.wait(timeout=10) == 3
    finally:
        server.join(timeout=10)
        listener.close()
