"""A warm runtime: one process that has imported the runtime forks it for each local task.

A local flow task's runtime spends most of its start importing (the runtime, cloudpickle and
what they import); a fork of a process that already did so starts in a few milliseconds. The
worker (``provider.core.local.warm``) starts this server on first use and connects to it over a
Unix socket file in ``$AIRFLOW_HOME/flowtask/runtimes`` (a folder of this user's alone, mode
0700), named after everything that shapes an interpreter at start (executable, working
directory, ``PYTHON*``/locale variables, the runtime's sources), so a fork is what a fresh
``python -m provider.runtime`` would have been, then asks for one run:

    worker -> server   length-prefixed JSON {args, env, cwd} + its stdout and stderr pipes
                       (and its end of a channel, ``provider.runtime.channel``: the fork's
                       ``--channel`` argument is made its descriptor number)
    server -> worker   "pid N"    the forked runtime runs, leading its own process group
                       or "cold {why, refused}": no fork; the task starts as a new interpreter
    server -> worker   "report {imported, preloaded}"  what the fork imported (at its exit)
    server -> worker   "exit C"   its exit code (negative: the signal that ended it)

The fork leads its own process group before its pid is sent, and starts the run only once the
"pid" line is out: a worker that hung up before then never has a run it does not supervise.
The fork replaces its environment with the request's, and ends as a fresh runtime would: the
interpreter finalizes (threads joined, ``atexit``). Lifetimes:

- the worker's end of the connection closing (the task process died) sends SIGTERM to the
  fork's group, SIGKILL after a grace; the server's own death sends it SIGTERM
  (``PR_SET_PDEATHSIG`` through ``FLOWTASK_PARENT_PID``, as for a fresh runtime);
- the server ends when it has run nothing for ``--idle`` seconds, or once its owner (the
  process that supervises the worker's tasks) is gone and no fork of it runs; it removes its
  socket file first, and serves the requests already queued.

Only processes of the server's own user are served (``SO_PEERCRED``).

Generations (``provider.runtime.preload``): a server imports what it is told to preload
(``--preload``) before it listens, on a socket file of its own that it then renames over the
name; with ``--replace`` it then tells the server it replaced to retire (``{"retire": true}``):
that one stops accepting and ends once its forks have. A server answers "cold" to a request
whose environment differs in a variable a preloaded import read, and to every request once a
preloaded file changed on disk (then it stops accepting).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import errno
import fcntl
import gc
import json
import os
import selectors
import signal
import socket
import stat
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from provider.runtime import preload as preloading
from provider.runtime.lifetime import PARENT_PID_ENV, PRELOADED_ENV, START_ENV, signal_group

HEADER = struct.Struct(">I")
MAX_REQUEST = 64 * 2**20
KILL_GRACE_SECONDS = 10.0
RECEIVE_SECONDS = 5.0
FOLDER_MODE = 0o700
REPORT_BYTES = 65536


@dataclass
class Request:
    args: list[str]
    env: dict[str, str]
    cwd: str
    # the worker's stdout and stderr pipes, and its channel (``--channel``) when it has one
    fds: list[int] = field(default_factory=list)
    retire: bool = False  # from the next generation: stop accepting


@dataclass
class _Fork:
    pid: int
    pidfd: int
    conn: socket.socket | None
    report: int  # the read end of the pipe the fork reports its imports on
    kill_at: float | None = None


def encode_request(args: list[str], env: dict[str, str], cwd: str) -> bytes:
    body = json.dumps({"args": args, "env": env, "cwd": cwd}).encode()
    return HEADER.pack(len(body)) + body


def record_path(socket_path: str) -> str:
    """The record of the interpreter shape whose servers listen at ``socket_path``."""
    return socket_path.removesuffix(".sock") + ".json"


def receive_request(conn: socket.socket) -> Request:
    """One request: the header and the pipes arrive first, the rest of the JSON after."""
    data, fds, _, _ = socket.recv_fds(conn, 65536, 3)
    try:
        while len(data) < HEADER.size:
            more = conn.recv(HEADER.size - len(data))
            if not more:
                raise ValueError("a request shorter than its header")
            data += more
        (size,) = HEADER.unpack_from(data)
        if size > MAX_REQUEST:
            raise ValueError(f"a request of {size} bytes")
        body = bytearray(data[HEADER.size :])
        while len(body) < size:
            chunk = conn.recv(min(size - len(body), 1 << 20))
            if not chunk:
                raise ValueError("the request ended early")
            body += chunk
        fields = json.loads(body)
        if fields.get("retire") is True and not fds:
            return Request([], {}, "", retire=True)
        if len(fds) not in (2, 3):
            raise ValueError(f"{len(fds)} pipes instead of 2 (or 3 with a channel)")
        return Request([str(a) for a in fields["args"]], dict(fields["env"]), fields["cwd"], fds)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def peer(conn: socket.socket) -> tuple[int, int]:
    """The pid and the uid of the process at the other end of ``conn`` (``SO_PEERCRED``)."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _ = struct.unpack("3i", creds)
    return pid, uid


def peer_is_us(conn: socket.socket) -> bool:
    """The process at the other end of ``conn`` runs as this process's user."""
    return peer(conn)[1] == os.getuid()


def private_folder(path: str) -> int:
    """An open descriptor of the folder ``path`` (made if missing) once it is a folder of this
    user's with mode 0700 (a looser mode of its own is tightened); OSError otherwise: a folder
    another user owns is never used."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        os.makedirs(path, mode=FOLDER_MODE, exist_ok=True)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        found = os.fstat(fd)
        if found.st_uid != os.getuid():
            raise PermissionError(errno.EPERM, "the folder belongs to another user", path)
        if stat.S_IMODE(found.st_mode) != FOLDER_MODE:
            os.fchmod(fd, FOLDER_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def socket_address(folder: int, name: str) -> str:
    """The address of the socket file ``name`` in the open folder ``folder``: through
    ``/proc/self/fd`` it is short whatever the folder's path (``sun_path`` holds 107 bytes),
    and it is the folder that was checked."""
    return f"/proc/self/fd/{folder}/{name}"


def _preload() -> None:
    """What every run imports: loaded once here, shared by every fork."""
    import traceback  # noqa: F401  (a failing task prints one)

    import cloudpickle  # noqa: F401  (the payload's functions and classes)

    import provider.runtime.run  # noqa: F401

    try:  # set up while the environment is the server's own (a fork replaces it)
        from setproctitle import getproctitle
    except ImportError:
        return
    getproctitle()


def _preload_for(request: Request) -> None:
    """After a run on S3, what the next one will need too (imports start no thread)."""
    if any(arg.startswith("s3://") for arg in request.args):
        import boto3  # noqa: F401

        import provider.store.s3  # noqa: F401


class Server:
    def __init__(
        self,
        path: str,
        owner: int,
        idle_seconds: float,
        preloaded: preloading.Preloaded | None = None,
        replace: bool = False,
    ) -> None:
        self.idle_seconds = idle_seconds
        self.preloaded = preloaded or preloading.Preloaded()
        self.owner_fd = os.pidfd_open(owner)  # ProcessLookupError: the owner is gone
        folder, self.name = os.path.split(path)
        self.folder = private_folder(folder)  # OSError: not a folder of this user's alone
        self.listener: socket.socket | None = _listen(self.folder, self.name, replace)
        self.inode = os.stat(self.name, dir_fd=self.folder).st_ino
        self.closing = False  # the socket file is gone: serve what is queued, then stop
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ, "accept")
        self.selector.register(self.owner_fd, selectors.EVENT_READ, "owner")
        self.forks: dict[int, _Fork] = {}
        self.idle_since = time.monotonic()

    def serve(self) -> Request | None:
        """Serve until idle or orphaned (returns None); in a fork, return its request."""
        while self.listener is not None or self.forks:
            events = self.selector.select(self._timeout())
            now = time.monotonic()
            if not events and self.closing:
                self._close_listener()  # nothing was queued when the socket file went
            elif not events and not self.forks and now - self.idle_since >= self.idle_seconds:
                self._stop_accepting()
            for key, _ in events:
                if key.data == "accept" and self.listener is not None:
                    request = self._accept()
                    if request is not None:
                        return request  # in the fork
                elif key.data == "owner":
                    self._stop_accepting()
                elif isinstance(key.data, tuple):
                    kind, fork = key.data
                    self._exited(fork) if kind == "exit" else self._client_gone(fork)
            for fork in self.forks.values():
                if fork.kill_at is not None and now >= fork.kill_at:
                    signal_group(fork.pid, signal.SIGKILL)
                    fork.kill_at = None
        return None

    def _timeout(self) -> float | None:
        if self.closing and self.listener is not None:
            return 0.0
        deadlines = [f.kill_at for f in self.forks.values() if f.kill_at is not None]
        if not self.forks and self.listener is not None:
            deadlines.append(self.idle_since + self.idle_seconds)
        return max(0.0, min(deadlines) - time.monotonic()) if deadlines else None

    def _accept(self) -> Request | None:
        assert self.listener is not None
        conn, _ = self.listener.accept()
        try:
            if not peer_is_us(conn):
                conn.close()
                return None
            conn.settimeout(RECEIVE_SECONDS)
            request = receive_request(conn)
        except (OSError, ValueError, KeyError, TypeError):
            conn.close()
            return None
        if request.retire or self._refused(conn, request):
            if request.retire and self._replaced():
                self._stop_accepting()
            conn.close()
            return None
        gate, release = os.pipe()  # the fork starts the run once its worker knows its pid
        report, reporting = os.pipe()  # and reports what it imported as it ends
        before = preloading.top_level(list(sys.modules))
        pid = os.fork()
        if pid == 0:
            os.setpgid(0, 0)
            os.close(release)
            os.close(report)
            self._leave(conn)
            released = os.read(gate, 1)
            os.close(gate)
            if not released:  # its worker was never told of it: it must not run
                os._exit(0)
            preloading.reseed_after_fork()
            roots = preloading.import_roots(os.getcwd())  # the server's path, not the task's
            _REPORTING.update(
                fd=reporting,
                pid=os.getpid(),
                before=before,
                roots=roots,
                modules=self.preloaded.modules,
                writes=self.preloaded.writes,
            )
            return request
        os.close(gate)
        os.close(reporting)
        for fd in request.fds:
            os.close(fd)
        try:
            with contextlib.suppress(ProcessLookupError):  # killed already: its exit tells
                os.setpgid(pid, pid)  # the group exists before anyone is told to signal it
            fork = _Fork(pid, os.pidfd_open(pid), conn, report)
            self.forks[pid] = fork
            self.selector.register(fork.pidfd, selectors.EVENT_READ, ("exit", fork))
            try:
                conn.sendall(f"pid {pid}\n".encode())
                conn.setblocking(False)
                self.selector.register(conn, selectors.EVENT_READ, ("client", fork))
            except OSError:
                self._abandon(fork)  # its gate closes unopened: it ends without running
            else:
                os.write(release, b"\n")
        finally:
            os.close(release)
        _preload_for(request)
        return None

    def _refused(self, conn: socket.socket, request: Request) -> bool:
        """Answer "cold" when a fork would not be what a new interpreter would: a preloaded
        file changed on disk (then stop accepting: the next server imports the new one), or
        the request's environment differs in a variable a preloaded import read."""
        refused: dict[str, list[str]] = {}
        upgraded = preloading.changed(self.preloaded.stamps)
        if upgraded is not None:
            why = f"{upgraded} changed on disk since the warm runtime imported it"
            self._stop_accepting()
        else:
            refused = preloading.differing(self.preloaded, request.env)
            shown = ", ".join(f"{name} (read by {', '.join(refused[name])})" for name in refused)
            why = f"the task sets {shown} at import otherwise than the warm runtime"
        if upgraded is None and not refused:
            return False
        modules = sorted({module for readers in refused.values() for module in readers})
        answer = json.dumps({"why": why, "refused": modules})
        with contextlib.suppress(OSError):
            conn.sendall(f"cold {answer}\n".encode())
        for fd in request.fds:
            os.close(fd)
        return True

    def _replaced(self) -> bool:
        """The socket file is no longer this server's (a new generation took the name)."""
        try:
            return os.stat(self.name, dir_fd=self.folder).st_ino != self.inode
        except OSError:
            return True

    def _exited(self, fork: _Fork) -> None:
        _, status = os.waitpid(fork.pid, 0)
        self.selector.unregister(fork.pidfd)
        os.close(fork.pidfd)
        report = {"preloaded": self.preloaded.modules, **_read_report(fork.report)}
        os.close(fork.report)
        if fork.conn is not None:
            self.selector.unregister(fork.conn)
            try:
                fork.conn.setblocking(True)
                fork.conn.sendall(f"report {json.dumps(report)}\n".encode())
                fork.conn.sendall(f"exit {os.waitstatus_to_exitcode(status)}\n".encode())
            except OSError:
                pass
            fork.conn.close()
            fork.conn = None  # a "client" event in the same batch finds nothing left to end
        del self.forks[fork.pid]
        if not self.forks:
            self.idle_since = time.monotonic()

    def _client_gone(self, fork: _Fork) -> None:
        """The worker closed its end (it only ever reads): its task process is gone."""
        if fork.conn is None:
            return
        try:
            if fork.conn.recv(1):
                return  # a stray byte; the worker says nothing else
        except BlockingIOError:
            return
        except OSError:
            pass
        self._abandon(fork)

    def _abandon(self, fork: _Fork) -> None:
        """No worker waits for this fork any more: end its group (SIGKILL after a grace)."""
        if fork.conn is not None:
            with contextlib.suppress(KeyError):  # not registered when the "pid" line failed
                self.selector.unregister(fork.conn)
            fork.conn.close()
            fork.conn = None
        if signal_group(fork.pid, signal.SIGTERM):
            fork.kill_at = time.monotonic() + KILL_GRACE_SECONDS

    def _stop_accepting(self) -> None:
        """Remove the socket file (no new worker reaches this server) and stop watching the
        owner; the connections already queued are still served (see ``serve``)."""
        if not self.closing:
            self.closing = True
            with contextlib.suppress(OSError):
                if os.stat(self.name, dir_fd=self.folder).st_ino == self.inode:
                    os.unlink(self.name, dir_fd=self.folder)
            self.selector.unregister(self.owner_fd)

    def _close_listener(self) -> None:
        if self.listener is not None:
            self.selector.unregister(self.listener)
            self.listener.close()
            self.listener = None

    def _leave(self, conn: socket.socket) -> None:
        """In the fork: drop everything of the server's."""
        conn.close()
        if self.listener is not None:
            self.listener.close()
        for fork in self.forks.values():
            os.close(fork.pidfd)
            os.close(fork.report)
            if fork.conn is not None:
                fork.conn.close()
        self.selector.close()
        os.close(self.owner_fd)
        os.close(self.folder)


def _listen(folder: int, name: str, replace: bool = False) -> socket.socket:
    """A listening socket file ``name`` in ``folder``, mode 0700, bound under a name of its
    own and renamed over ``name``. When a server already answers at ``name``: OSError, or with
    ``replace`` that server is told to retire once the name is this one's. A file that a killed
    server left behind is replaced. Servers of a folder take its lock to bind, so two never
    replace each other's file unknowingly."""
    address = socket_address(folder, name)
    own = f"{name}.{os.getpid()}.new"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old: socket.socket | None = None
    fcntl.flock(folder, fcntl.LOCK_EX)
    umask = os.umask(0o077)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(own, dir_fd=folder)
        listener.bind(socket_address(folder, own))
        listener.listen(64)
        old = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if old.connect_ex(address) != 0:
            old.close()
            old = None
        elif not replace:
            raise OSError(errno.EADDRINUSE, "another server answers: it serves this name", name)
        os.rename(own, name, src_dir_fd=folder, dst_dir_fd=folder)
        if old is not None:  # it stops accepting once it sees that the name is no longer its
            body = json.dumps({"retire": True}).encode()
            with contextlib.suppress(OSError):
                old.sendall(HEADER.pack(len(body)) + body)
    except BaseException:
        listener.close()
        with contextlib.suppress(OSError):
            os.unlink(own, dir_fd=folder)
        raise
    finally:
        if old is not None:
            old.close()
        os.umask(umask)
        fcntl.flock(folder, fcntl.LOCK_UN)
    return listener


_REPORTING: dict[str, Any] = {}  # in a fork: where it reports its imports, and from what


def _report_imports() -> None:
    """At a fork's exit (its last ``atexit`` handler): the modules it imported."""
    fd = _REPORTING.pop("fd", None)
    if fd is None or _REPORTING.get("pid") != os.getpid():  # a child the task forked
        return
    found = preloading.imported_since(_REPORTING["before"], _REPORTING["roots"])
    imported = sorted({*found, *_REPORTING.get("used", ())})
    with contextlib.suppress(OSError):
        os.write(fd, json.dumps({"imported": imported}).encode()[:REPORT_BYTES])
    os.close(fd)


def _read_report(fd: int) -> dict[str, Any]:
    """What the fork that ended wrote on its report pipe (nothing when it was killed)."""
    os.set_blocking(fd, False)
    data = b""
    with contextlib.suppress(OSError):
        while len(data) < REPORT_BYTES and (chunk := os.read(fd, REPORT_BYTES)):
            data += chunk
    try:
        found = json.loads(data)
    except ValueError:
        return {}
    imported = found.get("imported") if isinstance(found, dict) else None
    if not isinstance(imported, list) or not all(isinstance(n, str) for n in imported):
        return {}
    return {"imported": imported}


def become(request: Request) -> list[str]:
    """In a fork: take the request's pipes, directory and environment; the runtime's args."""
    with open(os.devnull, "rb") as null:
        os.dup2(null.fileno(), 0)
    out, err, *channel = request.fds
    os.dup2(out, 1)
    os.dup2(err, 2)
    os.close(out)
    os.close(err)
    if channel and "--channel" in request.args:  # the worker named its own descriptor
        request.args[request.args.index("--channel") + 1] = str(channel[0])
    os.chdir(request.cwd)
    os.environ.clear()
    os.environ.update(request.env)
    for name, value in _REPORTING.get("writes", {}).items():  # as the preloaded imports did
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    os.environ[PARENT_PID_ENV] = str(os.getppid())  # the server: its death ends this run
    os.environ[START_ENV] = "warm"
    os.environ[PRELOADED_ENV] = ",".join(_REPORTING.get("modules", ()))
    time.tzset()
    _REPORTING["used"] = preloading.note_imports(_REPORTING.get("modules", ()))
    atexit.register(_report_imports)  # the first registered, the last to run
    sys.argv[1:] = request.args
    _retitle(f"{sys.executable} -m provider.runtime {request.args[0]} (a fork of {os.getppid()})")
    return request.args


def _retitle(title: str) -> None:
    """What ``ps`` shows: a run, not its server (with setproctitle, an Airflow dependency)."""
    try:
        from setproctitle import setproctitle
    except ImportError:
        return
    setproctitle(title)


def _preload_modules(args: argparse.Namespace) -> preloading.Preloaded:
    """Import ``--preload``; a module that fails a check is recorded (its verdict and cost)
    and this server starts again without it (it is loaded here already)."""
    modules = [name for name in args.preload.split(",") if name]
    record = preloading.Record(record_path(args.socket))
    done = preloading.Preloaded()
    try:
        preloading.preload(modules, args.preload_mib, preloading.import_roots(os.getcwd()), done)
    except preloading.Refused as refused:
        with contextlib.suppress(OSError), record.edit() as content:
            content.setdefault("verdicts", {})[refused.module] = refused.verdict
            if refused.cost_mib:
                content.setdefault("costs", {})[refused.module] = round(refused.cost_mib, 1)
        order = [name for name in modules if name != refused.module]
        argv = [sys.executable, "-m", "provider.runtime", "serve", "--socket", args.socket]
        argv += ["--owner", str(args.owner), "--idle", str(args.idle), "--preload"]
        argv += [",".join(order), "--preload-mib", str(args.preload_mib)]
        os.execv(sys.executable, argv + (["--replace"] if args.replace else []))
    if done.costs:
        with contextlib.suppress(OSError), record.edit() as content:
            content.setdefault("costs", {}).update(done.costs)
    return done


def _ready(args: argparse.Namespace, serving: preloading.Preloaded | None) -> None:
    """Clear this server's "starting" mark in the record (the name is its, or another's);
    when it serves, say what it preloaded."""
    with contextlib.suppress(OSError), preloading.Record(record_path(args.socket)).edit() as found:
        if found.get("starting", {}).get("pid") == os.getpid():
            del found["starting"]
        if serving is not None:
            found["serving"] = {"pid": os.getpid(), "preloaded": serving.modules}


def serve(argv: list[str]) -> list[str] | None:
    """``serve --socket PATH --owner PID --idle S [--preload M,N --preload-mib B --replace]``:
    None when the server ends; in a fork, the runtime arguments to run."""
    parser = argparse.ArgumentParser(prog="python -m provider.runtime serve")
    parser.add_argument("--socket", required=True, help="the socket file, in a 0700 folder")
    parser.add_argument("--owner", type=int, required=True, help="end once this pid is gone")
    parser.add_argument("--idle", type=float, required=True, help="end after this many idle s")
    parser.add_argument("--preload", default="", help="modules to import before forking")
    parser.add_argument("--preload-mib", type=float, default=preloading.DEFAULT_BUDGET_MIB)
    parser.add_argument("--replace", action="store_true", help="retire the server answering")
    args = parser.parse_args(argv)
    try:
        os.close(os.pidfd_open(args.owner))  # before importing anything: is there a point
        os.close(private_folder(os.path.dirname(args.socket)))
    except OSError:  # the owner is gone, or the folder is not ours
        return None
    _preload()
    preloaded = _preload_modules(args)
    try:
        server = Server(args.socket, args.owner, args.idle, preloaded, args.replace)
    except OSError:  # another server listens, the folder is not ours, or the owner is gone
        _ready(args, None)
        return None
    _ready(args, preloaded)
    gc.freeze()  # what is loaded now stays shared with the forks (no copy on collection)
    request = server.serve()
    return None if request is None else become(request)
