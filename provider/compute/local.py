"""Local compute: run the runtime command as a subprocess, streaming its output."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence


def run_local(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    log_line: Callable[[str], None],
) -> int:
    """Run ``argv`` with ``env``, hand each output line to ``log_line``, return the exit code.

    The child gets its own process group; if the caller is interrupted (a task timeout, a kill),
    the whole group is terminated so no orphan keeps running.
    """
    proc = subprocess.Popen(
        list(argv),
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        errors="replace",
        bufsize=1,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            log_line(line.rstrip("\n"))
        return proc.wait()
    except BaseException:
        _terminate_group(proc)
        raise


def _terminate_group(proc: subprocess.Popen[str], grace_seconds: float = 5.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass
