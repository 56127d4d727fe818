"""The worker's side of the warm runtime (``provider/runtime/warm.py``): a local task's runtime
forked from a server that has already imported it, instead of a new interpreter.

:func:`start_warm` returns a process object that :func:`provider.compute.local.run_local`
streams, waits for and kills as it does a ``Popen`` — or ``None`` when the run should start
cold: warm runtimes are off, this is not Linux, the command is not the runtime's, or no server
answers yet (then one is started in the background for the tasks that follow).
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from provider.runtime.warm import encode_request, peer_is_us

CONNECT_SECONDS = 5.0
SERVER_LOST = 255  # the server ended without reporting the run's exit code
RUNTIME_SOURCES = ("runtime", "store")  # what a server has imported of this package
_STARTED: list[subprocess.Popen[bytes]] = []  # servers this process started (reaped here)


def _shapes_interpreter(name: str) -> bool:
    """Variables that a process reads as it starts (and so a fork cannot take later): Python's,
    the locale's, and the dynamic loader's and C library's (``LD_LIBRARY_PATH`` decides where
    a CUDA library that the task imports later is found)."""
    return name.startswith(("PYTHON", "LC_", "LD_", "GLIBC_", "MALLOC_")) or name in (
        "LANG",
        "LANGUAGE",
        "PATH",
        "HOME",
    )


def server_environment(env: Mapping[str, str]) -> dict[str, str]:
    return {name: value for name, value in env.items() if _shapes_interpreter(name)}


def _code_stamp() -> list[tuple[str, int, int]]:
    """The interpreter's binary and the runtime's sources as they are on disk now: a server
    started before an upgrade is not the one a new interpreter would be."""
    package = Path(__file__).resolve().parent.parent
    paths = [Path(os.path.realpath(sys.executable)), package / "__init__.py"]
    for folder in RUNTIME_SOURCES:
        paths += sorted((package / folder).glob("*.py"))
    stamps = []
    for path in paths:
        stat = path.stat()
        stamps.append((str(path), stat.st_mtime_ns, stat.st_size))
    return stamps


def server_name(server_env: Mapping[str, str], cwd: str) -> str:
    """The socket of the server whose forks are what ``python -m provider.runtime`` started
    with this environment in ``cwd`` would be, for this user, interpreter and runtime code."""
    pickler = getattr(sys.modules.get("cloudpickle"), "__version__", "")
    shape = (os.getuid(), sys.executable, sys.version, pickler, cwd, sorted(server_env.items()))
    digest = hashlib.sha256(repr((shape, _code_stamp())).encode())
    return "flowtask-runtime-" + digest.hexdigest()[:32]


class WarmProcess:
    """A forked runtime, as much of ``subprocess.Popen`` as the local runner uses."""

    def __init__(
        self, conn: socket.socket, pid: int, stdout: int, stderr: int, pending: bytes = b""
    ) -> None:
        self._conn: socket.socket | None = conn
        self._pending = pending  # what the server said after the pid
        self.pid = pid
        self.stdout = os.fdopen(stdout, "rb", buffering=0)
        self.stderr = os.fdopen(stderr, "rb", buffering=0)
        self.returncode: int | None = None

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
        try:
            while b"\n" not in self._pending:
                chunk = self._conn.recv(64)
                if not chunk:
                    self._done(SERVER_LOST)
                    return
                self._pending += chunk
        except (BlockingIOError, TimeoutError):
            return
        except OSError:
            self._done(SERVER_LOST)
            return
        word, _, value = self._pending.partition(b"\n")[0].partition(b" ")
        known = word == b"exit" and value.removeprefix(b"-").isdigit()
        self._done(int(value) if known else SERVER_LOST)

    def _done(self, code: int) -> None:
        self.returncode = code
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def start_warm(
    argv: Sequence[str], env: Mapping[str, str], *, owner: int, idle_seconds: float
) -> WarmProcess | None:
    """Fork ``argv`` (a ``python -m provider.runtime`` command) from a warm runtime."""
    if idle_seconds <= 0 or not sys.platform.startswith("linux"):
        return None
    if list(argv[:3]) != [sys.executable, "-m", "provider.runtime"] or argv[3:4] == ["serve"]:
        return None
    _STARTED[:] = [server for server in _STARTED if server.poll() is None]
    cwd = os.getcwd()
    shape = server_environment(env)
    name = server_name(shape, cwd)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(CONNECT_SECONDS)
    try:
        conn.connect("\0" + name)
    except OSError:  # none yet (refused), or one that cannot answer
        conn.close()
        _start_server(name, shape, cwd, owner, idle_seconds)
        return None
    if not peer_is_us(conn):  # another user's process holds the name: never tell it the task
        conn.close()
        return None
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    try:
        request = encode_request(list(argv[3:]), dict(env), cwd)
        sent = socket.send_fds(conn, [request], [out_write, err_write])
        if sent < len(request):  # an empty send fails once a quick run's server hung up
            conn.sendall(request[sent:])
        os.close(out_write)
        os.close(err_write)
        out_write = err_write = -1
        reply = b""
        while b"\n" not in reply:
            chunk = conn.recv(64)
            if not chunk:
                raise ConnectionError("the warm runtime closed the connection")
            reply += chunk
        line, _, after = reply.partition(b"\n")  # a quick run's "exit" may follow at once
        word, _, pid = line.partition(b" ")
        if word != b"pid" or not pid.isdigit():
            raise ConnectionError(f"the warm runtime answered {reply!r}")
    except (OSError, ValueError):  # closing the connection ends a fork that may have begun
        conn.close()
        for fd in (out_read, err_read, out_write, err_write):
            if fd >= 0:
                os.close(fd)
        return None
    return WarmProcess(conn, int(pid), out_read, err_read, after)


def _start_server(
    name: str, env: Mapping[str, str], cwd: str, owner: int, idle_seconds: float
) -> None:
    """In the background: the first task on a worker starts cold, the next ones warm."""
    argv = [sys.executable, "-m", "provider.runtime", "serve", "--name", name]
    argv += ["--owner", str(owner), "--idle", str(idle_seconds)]
    _STARTED.append(
        subprocess.Popen(
            argv,
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # out of the task's process group: it serves later tasks
        )
    )
