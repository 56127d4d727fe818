"""Local compute: run the runtime command as a subprocess, streaming its output.

The child gets its own process group (a session). Whatever ends the run — the runtime exiting,
a task timeout, a kill — ends the whole group, so nothing the task started outlives it: a
background process the function left behind is stopped when the runtime exits, and the worker
stops waiting for output once the runtime itself is gone.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Protocol

from provider.runtime.lifetime import signal_group

if TYPE_CHECKING:
    from provider.runtime.preload import PreloadSettings

LogLine = Callable[[str], None]
MAX_LINE = 1024 * 1024  # a line longer than this is logged in pieces


class RuntimeProcess(Protocol):
    """What the runner needs of a process: a ``subprocess.Popen``, or a fork of the warm
    runtime (``provider.core.local.warm.WarmProcess``). It leads its own process group."""

    @property
    def pid(self) -> int: ...

    @property
    def stdout(self) -> IO[bytes] | None: ...

    @property
    def stderr(self) -> IO[bytes] | None: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...


class _Lines:
    """Bytes in, whole decoded lines out."""

    def __init__(self, emit: LogLine) -> None:
        self._emit = emit
        self._pending = b""

    def feed(self, chunk: bytes) -> None:
        *lines, self._pending = (self._pending + chunk).split(b"\n")
        for line in lines:
            self._emit(line.decode(errors="replace"))
        while len(self._pending) > MAX_LINE:
            self._emit(self._pending[:MAX_LINE].decode(errors="replace"))
            self._pending = self._pending[MAX_LINE:]

    def close(self) -> None:
        if self._pending:
            self._emit(self._pending.decode(errors="replace"))
            self._pending = b""


def run_local(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    log_line: LogLine,
    log_error: LogLine | None = None,
    on_start: Callable[[RuntimeProcess], None] | None = None,
    grace_seconds: float = 5.0,
    warm_idle_seconds: float = 0.0,
    warm_preload: PreloadSettings | None = None,
    channel: int | None = None,
) -> int:
    """Run ``argv`` with ``env``; hand stdout lines to ``log_line`` and stderr lines to
    ``log_error`` (default: ``log_line``); return the exit code.

    ``on_start`` receives the process (so a kill from elsewhere can reach it with
    :func:`terminate_group`). If the caller is interrupted (a task timeout, a kill), the whole
    group is terminated before the interruption goes on. With ``warm_idle_seconds``, a runtime
    command is forked from a warm runtime when one serves (``provider.core.local.warm``); a warm
    runtime that ends without reporting the run raises ``WarmRuntimeLost``, naming it;
    ``warm_preload`` says what warm runtimes import before forking (default: learn it).
    ``channel`` is a descriptor the runtime inherits (its end of ``provider.runtime.channel``;
    ``argv`` names it), which the caller closes once the runtime has started.
    """
    proc: RuntimeProcess | None = None
    if warm_idle_seconds > 0:
        from provider.core.local.warm import start_warm
        from provider.runtime.preload import PreloadSettings

        proc = start_warm(
            argv,
            env,
            owner=os.getppid(),
            idle_seconds=warm_idle_seconds,
            preload=warm_preload or PreloadSettings(),
            note=log_line,
            channel=channel,
        )
    if proc is None:
        proc = subprocess.Popen(
            list(argv),
            env=dict(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            pass_fds=() if channel is None else (channel,),
        )
    try:
        if on_start is not None:
            on_start(proc)
        _pump(proc, _Lines(log_line), _Lines(log_error or log_line), grace_seconds)
        code = proc.wait()
    except BaseException:
        terminate_group(proc, grace_seconds)
        raise
    finally:
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    lost = getattr(proc, "lost", None)  # a warm runtime that died under the run
    if lost:
        from provider.core.local.warm import WarmRuntimeLost

        raise WarmRuntimeLost(lost)
    return code


def _pump(proc: RuntimeProcess, out: _Lines, err: _Lines, grace_seconds: float) -> None:
    """Stream both pipes until they close; once the child exits, end what it left running."""
    assert proc.stdout is not None and proc.stderr is not None
    streams = {proc.stdout.fileno(): out, proc.stderr.fileno(): err}
    exited_at: float | None = None
    with selectors.DefaultSelector() as selector:
        for fd in streams:
            os.set_blocking(fd, False)
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            for key, _ in selector.select(timeout=0.1):
                fd = int(key.fd)
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                if chunk:
                    streams[fd].feed(chunk)
                else:
                    selector.unregister(fd)
                    streams[fd].close()
            if proc.poll() is None:
                continue
            if exited_at is None:  # leftover children hold the pipes open: stop them
                exited_at = time.monotonic()
                signal_group(proc.pid, signal.SIGTERM)
            elif time.monotonic() - exited_at > grace_seconds:
                signal_group(proc.pid, signal.SIGKILL)
                if time.monotonic() - exited_at > 2 * grace_seconds:
                    break  # something left the group and keeps the pipes: stop reading
    for lines in streams.values():
        lines.close()


def terminate_group(proc: RuntimeProcess, grace_seconds: float = 5.0) -> None:
    """SIGTERM the child's whole process group, then SIGKILL what is left after the grace."""
    if not signal_group(proc.pid, signal.SIGTERM):
        return
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None and not _group_alive(proc.pid):
            return
        time.sleep(0.02)
    signal_group(proc.pid, signal.SIGKILL)
    proc.wait()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


# The task supervisor blocks the metadata database in the task process by pointing these at
# a fake URL, and passes private variables to it; none of that belongs to the runtime, which
# must be able to `import airflow` like any process outside a task.
_BLOCKED_DB_URL = "airflow-db-not-allowed:"
_SUPERVISOR_PRIVATE = ("_AIRFLOW", "__AIRFLOW")


def runtime_environment(base: Mapping[str, str], extra: Mapping[str, str] = {}) -> dict[str, str]:
    """``base`` (the worker's environment) without the task supervisor's, plus ``extra``."""
    env = {
        name: value
        for name, value in base.items()
        if not name.startswith(_SUPERVISOR_PRIVATE) and not value.startswith(_BLOCKED_DB_URL)
    }
    env.update(extra or {})
    return env
