"""The runtime ends when it is told to, and when the worker that started it dies.

A local runtime runs in its own process group (the worker starts it in a new session), so
neither Airflow's supervisor nor a shell reaches it by signalling the worker's group. Two rules
keep it from outliving its task:

- SIGTERM ends the runtime together with everything it started (its process group);
- with ``FLOWTASK_PARENT_PID`` set (the local runner sets it), the kernel sends SIGTERM when
  that parent dies, even by SIGKILL (Linux ``PR_SET_PDEATHSIG``); a parent already gone by the
  time this runs ends the runtime at once.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

PARENT_PID_ENV = "FLOWTASK_PARENT_PID"
START_ENV = "FLOWTASK_RUNTIME_START"  # "warm" in a fork of the warm runtime (runtime/warm.py)
PRELOADED_ENV = "FLOWTASK_RUNTIME_PRELOADED"  # in a fork: what its server preloaded, "a,b"
_PR_SET_PDEATHSIG = 1


def _stop_group(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if os.getpgrp() == os.getpid():  # the group is ours alone: end it, this process included
        os.killpg(os.getpgrp(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGTERM)


def signal_group(pgid: int, sig: signal.Signals) -> bool:
    """Send ``sig`` to process group ``pgid``; False when no such group (or not ours) is left."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def stop_group_on_sigterm() -> None:
    """On SIGTERM, end this process and, when it leads its process group, the whole group."""
    signal.signal(signal.SIGTERM, _stop_group)


def end_with_parent() -> None:
    """Ask the kernel for SIGTERM when the parent named in ``FLOWTASK_PARENT_PID`` dies."""
    raw = os.environ.pop(PARENT_PID_ENV, "")
    if not raw.isdigit():
        return
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != int(raw):  # the parent died before the request was in place
        _stop_group(signal.SIGTERM, None)
