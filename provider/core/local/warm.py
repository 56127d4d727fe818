"""The worker's side of the warm runtime (``provider/runtime/warm.py``): a local task's runtime
forked from a server that has already imported it, instead of a new interpreter.

:func:`start_warm` returns a process object that :func:`provider.core.local.runner.run_local`
streams, waits for and kills as it does a ``Popen`` — or ``None`` when the run should start
cold: warm runtimes are off, this is not Linux, the command is not the runtime's, the socket
folder is not this user's alone, or no server answers yet (then one is started in the
background for the tasks that follow). Once a server has the whole request, the run never
starts cold (unless the server answers "cold" before forking anything): a server that ends
before reporting the run raises :class:`WarmRuntimeLost`.

Each fork reports the top-level modules it imported; the worker adds them to the record of the
interpreter shape (``provider.runtime.preload``) and, once recent tasks import a module the
server has not preloaded, starts the next generation of the server with it (in the background:
the current one serves until the new one has imported everything and takes the name).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provider.runtime.preload import (
    PreloadSettings,
    Record,
    excluded_for_cause,
    plan,
    remember,
)
from provider.runtime.warm import (
    encode_request,
    peer,
    private_folder,
    record_path,
    socket_address,
)

CONNECT_SECONDS = 5.0
SERVER_LOST = 255  # the server ended without reporting the run's exit code (``lost`` says how)
ENDED_SECONDS = 1.0  # how long a lost server's end is waited for, to tell how it ended
LEARN = PreloadSettings()  # preload what recent tasks imported
RUNTIME_SOURCES = ("runtime", "store", "compat")  # what a server has imported of this package
_STARTED: list[subprocess.Popen[bytes]] = []  # servers this process started (reaped here)


#: Variables native libraries read as they load (a preloaded numpy's OpenBLAS sizes its
#: thread pool from them, pyarrow picks its allocator): a server preloads under the task's
#: own values, or does not serve it. (What Python code reads at import, the server notes.)
THREAD_VARIABLES = ("OMP_", "OPENBLAS_", "MKL_", "GOTO_", "KMP_", "BLIS_", "NUMEXPR_", "ARROW_")


def _shapes_interpreter(name: str) -> bool:
    """Variables that a process reads as it starts (and so a fork cannot take later): Python's,
    the locale's, and the dynamic loader's and C library's (``LD_LIBRARY_PATH`` decides where
    a CUDA library that the task imports later is found), and those native libraries read as
    they load (:data:`THREAD_VARIABLES`)."""
    prefixes = ("PYTHON", "LC_", "LD_", "GLIBC_", "MALLOC_", *THREAD_VARIABLES)
    return name.startswith(prefixes) or name in (
        "LANG",
        "LANGUAGE",
        "PATH",
        "HOME",
        "VECLIB_MAXIMUM_THREADS",
        "CUDA_VISIBLE_DEVICES",
    )


def server_environment(env: Mapping[str, str]) -> dict[str, str]:
    return {name: value for name, value in env.items() if _shapes_interpreter(name)}


def _code_stamp() -> list[tuple[str, int, int]]:
    """The interpreter's binary and the runtime's sources as they are on disk now: a server
    started before an upgrade is not the one a new interpreter would be."""
    package = Path(__file__).resolve().parents[2]  # provider/
    paths = [Path(os.path.realpath(sys.executable)), package / "__init__.py"]
    for folder in RUNTIME_SOURCES:
        paths += sorted((package / folder).glob("*.py"))
    stamps = []
    for path in paths:
        stat = path.stat()
        stamps.append((str(path), stat.st_mtime_ns, stat.st_size))
    return stamps


def server_name(server_env: Mapping[str, str], cwd: str) -> str:
    """The name of the server whose forks are what ``python -m provider.runtime`` started
    with this environment in ``cwd`` would be, for this user, interpreter and runtime code."""
    import cloudpickle  # the server's: a worker that has not imported it yet names it too

    pickler = cloudpickle.__version__
    shape = (os.getuid(), sys.executable, sys.version, pickler, cwd, sorted(server_env.items()))
    digest = hashlib.sha256(repr((shape, _code_stamp())).encode())
    return "flowtask-runtime-" + digest.hexdigest()[:32]


def runtime_folder(env: Mapping[str, str]) -> Path:
    """Where the servers' socket files are: ``$AIRFLOW_HOME/flowtask/runtimes`` of the run's
    environment. A file system, not a network namespace, scopes them: two containers sharing
    a network (``hostNetwork``, two workers in one pod) never reach each other's server."""
    home = Path(env.get("AIRFLOW_HOME") or Path.home() / "airflow").expanduser().resolve()
    return home / "flowtask" / "runtimes"


class WarmRuntimeLost(RuntimeError):
    """A warm runtime took a task's request and ended (or hung up) without reporting its run:
    the try fails rather than start the task a second time."""


class WarmProcess:
    """A forked runtime, as much of ``subprocess.Popen`` as the local runner uses. ``lost``
    says, in words, how its server ended when that left its exit code unknown."""

    def __init__(
        self,
        conn: socket.socket,
        pid: int,
        stdout: int,
        stderr: int,
        server: int,
        pending: bytes = b"",
        learn: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self._conn: socket.socket | None = conn
        self._pending = pending  # what the server said after the pid
        self._server = server  # the server's pid
        self._learn = learn
        self.pid = pid
        self.stdout = os.fdopen(stdout, "rb", buffering=0)
        self.stderr = os.fdopen(stderr, "rb", buffering=0)
        self.returncode: int | None = None
        self.lost: str | None = None
        self.report: dict[str, Any] | None = None  # what the fork imported, what was preloaded

    def poll(self) -> int | None:
        if self.returncode is None:
            self._read(timeout=0.0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self._read(timeout)
        if self.returncode is None:
            raise subprocess.TimeoutExpired(f"warm runtime {self.pid}", timeout or 0.0)
        return self.returncode

    def _read(self, timeout: float | None) -> None:
        assert self._conn is not None
        self._conn.settimeout(timeout)
        while True:
            try:
                while b"\n" not in self._pending:
                    chunk = self._conn.recv(4096)
                    if not chunk:
                        self._lose(None)
                        return
                    self._pending += chunk
            except (BlockingIOError, TimeoutError):
                return
            except OSError:
                self._lose(None)
                return
            line, _, self._pending = self._pending.partition(b"\n")
            word, _, value = line.partition(b" ")
            if word == b"report":
                self._reported(value)
            elif word == b"exit" and value.removeprefix(b"-").isdigit():
                self._done(int(value))
                return
            else:
                self._lose(line)
                return

    def _reported(self, value: bytes) -> None:
        try:
            report = json.loads(value)
        except ValueError:
            return
        if isinstance(report, dict):
            self.report = report
            if self._learn is not None and isinstance(report.get("imported"), list):
                self._learn(report)

    def _lose(self, answer: bytes | None) -> None:
        if answer is None:
            server = _ending(self._server)
        else:
            server = f"(pid {self._server}) answered {answer!r}"
        self.lost = (
            f"the warm runtime serving this task {server} while the task ran; the task's "
            f"process (pid {self.pid}) was stopped with it and reported no exit code"
        )
        self._done(SERVER_LOST)

    def _done(self, code: int) -> None:
        self.returncode = code
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _ending(pid: int) -> str:
    """How the server ``pid`` that has just dropped a connection ended: "died (pid N, killed
    by SIGKILL)" (as its parent sees it, when this process started it), "died (pid N)", or
    "closed the connection (pid N)" while it lives on (its socket closes as it dies, a moment
    before it has ended)."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return f"died (pid {pid})"
    try:
        ended, _, _ = select.select([pidfd], [], [], ENDED_SECONDS)
    finally:
        os.close(pidfd)
    if not ended:
        return f"closed the connection (pid {pid})"
    for server in _STARTED:
        if server.pid == pid and server.poll() is not None:
            return f"died (pid {pid}, {_exit_words(server.returncode)})"
    return f"died (pid {pid})"


def _exit_words(code: int) -> str:
    if code >= 0:
        return f"exit code {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


@dataclass(frozen=True)
class _Shape:
    """One interpreter shape's servers: where they listen, how they start, what they learn."""

    path: Path  # the socket file
    env: dict[str, str]  # what the server is started with (``server_environment``)
    cwd: str
    owner: int
    idle_seconds: float
    preload: PreloadSettings

    @property
    def record(self) -> Record:
        return Record(record_path(str(self.path)))

    def start(self) -> None:
        """No server answers: start one, unless one is being started."""
        try:
            with self.record.edit() as content:
                self._launch(content, replace=False)
        except (OSError, ValueError, KeyError, TypeError):  # learning never fails a task
            return

    def learn(self, report: Mapping[str, Any]) -> None:
        """A fork's imports: into the record; the next generation once what recent tasks
        import is not what the serving server preloaded (or it preloaded what failed since)."""
        if self.preload.mode == "off":
            return
        serving = [str(name) for name in report.get("preloaded", [])]
        try:
            with self.record.edit() as content:
                remember(content, {"imported": [str(n) for n in report["imported"]]})
                if _running(content.get("serving"), self.path):  # perhaps a newer one
                    serving = [str(name) for name in content["serving"]["preloaded"]]
                missing = set(plan(content, self.preload)) - set(serving)
                if missing or excluded_for_cause(content, serving):
                    self._launch(content, replace=True)
        except (OSError, ValueError, KeyError, TypeError):  # learning never fails a task
            return

    def _launch(self, content: dict[str, Any], replace: bool) -> None:
        if not _running(content.get("starting"), self.path):
            modules = plan(content, self.preload)
            server = _start_server(self, modules, replace)
            content["starting"] = {"pid": server.pid, "preload": modules}

    def refused(self, modules: Sequence[str]) -> None:
        """A server answered "cold" because of what ``modules`` read at import."""
        if modules:
            with contextlib.suppress(OSError), self.record.edit() as content:
                remember(content, {"refused": list(modules)})


def _running(mark: Any, path: Path) -> bool:
    """The server of ``path`` that ``mark`` names (``{"pid": N}``) still runs."""
    if not isinstance(mark, dict) or not isinstance(mark.get("pid"), int):
        return False
    try:
        with open(f"/proc/{mark['pid']}/cmdline", "rb") as cmdline:
            return str(path).encode() in cmdline.read().split(b"\0")
    except OSError:
        return False


def start_warm(
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    owner: int,
    idle_seconds: float,
    preload: PreloadSettings = LEARN,
    note: Callable[[str], None] | None = None,
    channel: int | None = None,
) -> WarmProcess | None:
    """Fork ``argv`` (a ``python -m provider.runtime`` command) from a warm runtime; None:
    start it cold (``note`` hears why, when a server said). Raises :class:`WarmRuntimeLost`
    when a server took the request and ended before reporting the run (starting it cold then
    could run the task twice)."""
    if idle_seconds <= 0 or not sys.platform.startswith("linux"):
        return None
    if list(argv[:3]) != [sys.executable, "-m", "provider.runtime"] or argv[3:4] == ["serve"]:
        return None
    _STARTED[:] = [server for server in _STARTED if server.poll() is None]
    cwd = os.getcwd()
    server_env = server_environment(env)
    path = runtime_folder(env) / f"{server_name(server_env, cwd)}.sock"
    shape = _Shape(path, server_env, cwd, owner, idle_seconds, preload)
    try:
        folder = private_folder(str(path.parent))
    except OSError:  # not a folder of this user's alone: no server there is told a task
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(CONNECT_SECONDS)
    try:
        conn.connect(socket_address(folder, path.name))
        server, uid = peer(conn)
    except OSError:  # none yet (no file, or one a killed server left), or one that cannot answer
        conn.close()
        shape.start()
        return None
    finally:
        os.close(folder)
    if uid != os.getuid():  # another user's process listens: never tell it the task
        conn.close()
        return None
    return _request(conn, server, argv, env, shape, note, channel)


def _request(
    conn: socket.socket,
    server: int,
    argv: Sequence[str],
    env: Mapping[str, str],
    shape: _Shape,
    note: Callable[[str], None] | None = None,
    channel: int | None = None,
) -> WarmProcess | None:
    """Send the request with the pipes (and the ``channel``, which stays the caller's);
    read the fork's pid. None when the request did not all go out (no fork can begin) or the
    server answered "cold" (it forked nothing); WarmRuntimeLost when it did go out and no pid
    came back."""
    cwd = shape.cwd
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    ours = [out_read, err_read]
    try:
        request = encode_request(list(argv[3:]), dict(env), cwd)
        fds = [out_write, err_write] + ([channel] if channel is not None else [])
        sent = socket.send_fds(conn, [request], fds)
        if sent < len(request):  # an empty send fails once a quick run's server hung up
            conn.sendall(request[sent:])
    except OSError:  # the server never has the whole request: the run starts cold
        _close(conn, ours)
        return None
    except BaseException:
        _close(conn, ours)
        raise
    finally:
        os.close(out_write)
        os.close(err_write)
    try:
        conn.settimeout(None)  # the pid comes once the server has forked: wait while it lives
        line, after = _first_line(conn)
    except OSError as exc:  # closing the connection ends a fork that may have begun, unrun
        ending = _ending(server)
        _close(conn, ours)
        raise WarmRuntimeLost(
            f"the warm runtime {ending} after it took the task's request, before it started "
            "the task: the try fails rather than risk running the task twice"
        ) from exc
    except BaseException:
        _close(conn, ours)
        raise
    word, _, pid = line.partition(b" ")
    if word == b"cold":  # it forked nothing: the task starts as a new interpreter
        _close(conn, ours)
        _answered_cold(pid, shape, note)
        return None
    if word != b"pid" or not pid.isdigit():
        _close(conn, ours)
        raise WarmRuntimeLost(
            f"the warm runtime (pid {server}) answered {line!r} to the task's request: "
            "the try fails rather than risk running the task twice"
        )
    return WarmProcess(conn, int(pid), out_read, err_read, server, after, shape.learn)


def _answered_cold(answer: bytes, shape: _Shape, note: Callable[[str], None] | None) -> None:
    try:
        found = json.loads(answer)
        why, refused = str(found["why"]), [str(name) for name in found["refused"]]
    except (ValueError, KeyError, TypeError):
        why, refused = answer.decode(errors="replace"), []
    if note is not None:
        note(f"flowtask: started as a new interpreter, not a fork of the warm runtime: {why}")
    shape.refused(refused)


def _first_line(conn: socket.socket) -> tuple[bytes, bytes]:
    """The server's first line, and what came after it (a quick run's "exit" may follow)."""
    reply = b""
    while b"\n" not in reply:
        chunk = conn.recv(64)
        if not chunk:
            raise ConnectionError("the warm runtime closed the connection")
        reply += chunk
    line, _, after = reply.partition(b"\n")
    return line, after


def _close(conn: socket.socket, fds: Sequence[int]) -> None:
    conn.close()
    for fd in fds:
        os.close(fd)


def _start_server(shape: _Shape, modules: Sequence[str], replace: bool) -> subprocess.Popen[bytes]:
    """In the background: the first task on a worker starts cold, the next ones warm; with
    ``replace``, the next generation, which takes the name once it has imported ``modules``."""
    argv = [sys.executable, "-m", "provider.runtime", "serve", "--socket", str(shape.path)]
    argv += ["--owner", str(shape.owner), "--idle", str(shape.idle_seconds)]
    argv += ["--preload", ",".join(modules), "--preload-mib", str(shape.preload.budget_mib)]
    server = subprocess.Popen(
        argv + (["--replace"] if replace else []),
        env=dict(shape.env),
        cwd=shape.cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # out of the task's process group: it serves later tasks
    )
    _STARTED.append(server)
    return server
