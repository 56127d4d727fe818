"""Out of memory on evidence: a process the kernel OOM-killed against one killed by hand."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
from memory_cgroup import MemoryCgroup

from provider.core.local.oom import OomWatch

ALLOCATE = """
import sys
sys.stdin.readline()                    # moved into its cgroup and watched: go
ballast = bytearray(int(sys.argv[1]) << 20)
ballast[::4096] = b"x" * len(ballast[::4096])   # every page written, so resident
"""


@pytest.fixture
def cgroup() -> Iterator[MemoryCgroup]:
    try:
        made = MemoryCgroup.make(limit_mib=64)
    except OSError as exc:
        pytest.skip(f"cannot make a memory cgroup with a limit here: {exc}")
    yield made
    made.remove()


def _started(cgroup: MemoryCgroup | None, mib: int) -> tuple[subprocess.Popen, OomWatch]:
    proc = subprocess.Popen([sys.executable, "-c", ALLOCATE, str(mib)], stdin=subprocess.PIPE)
    if cgroup is not None:
        cgroup.add(proc.pid)
    return proc, OomWatch.start(proc.pid)


def _go(proc: subprocess.Popen) -> int:
    assert proc.stdin is not None
    proc.stdin.write(b"go\n")
    proc.stdin.close()
    return proc.wait(timeout=60)


def test_a_process_over_its_cgroups_limit_is_an_oom_kill_on_record(cgroup: MemoryCgroup):
    """Each record says so on its own: the kernel's log names the process, and the cgroup's
    OOM-kill count grew."""
    proc, watch = _started(cgroup, mib=512)
    counter_only = OomWatch.start(proc.pid)
    counter_only.close()  # no kernel log: the cgroup's count alone
    try:
        assert watch.can_tell and counter_only.can_tell
        assert _go(proc) == -signal.SIGKILL
        evidence, counted = watch.evidence(), counter_only.evidence()
    finally:
        watch.close()
    assert evidence is not None, "the kernel OOM-killed it, and nothing says so"
    assert counted is not None and counted.startswith("its memory cgroup counted 1 OOM kill")
    if os.access("/dev/kmsg", os.R_OK):
        assert evidence.startswith("the kernel's log: ") and f"process {proc.pid} " in evidence


def test_a_process_killed_by_hand_is_no_oom_kill(cgroup: MemoryCgroup):
    """In the same cgroup, where an OOM kill would be counted: none was."""
    proc, watch = _started(cgroup, mib=1)
    try:
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
        assert watch.can_tell and watch.evidence() is None
    finally:
        watch.close()


def test_a_process_killed_by_hand_outside_any_limit_is_no_oom_kill():
    proc, watch = _started(None, mib=1)
    try:
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
        assert watch.evidence() is None
    finally:
        watch.close()
