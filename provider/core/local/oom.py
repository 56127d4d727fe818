"""Whether the kernel's out-of-memory killer ended a process: on evidence, not from SIGKILL.

A SIGKILL alone does not say who sent it: the OOM killer, a person, a supervisor. Two records
do, and :class:`OomWatch` reads both, from a process's start to its end:

- its memory cgroup's OOM-kill count: ``oom_kill`` in ``memory.events`` (cgroup v2, which
  counts the cgroup's descendants too) or in ``memory.oom_control`` (cgroup v1, the cgroup the
  victim was in); a count that grew while the process ran is an OOM kill in its cgroup;
- the kernel's log (``/dev/kmsg``, where readable: root or ``CAP_SYSLOG``), which names the
  process the OOM killer chose: ``Killed process <pid>``.

Where neither can be read (no cgroup files in a sandbox, no access to the log), there is no
evidence, and none is claimed.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

_KILLED = re.compile(r"Killed process (\d+) ")


@dataclass
class _Counter:
    path: Path
    count: int


def _oom_kills(path: Path) -> int | None:
    """The ``oom_kill`` count in a ``memory.events`` or ``memory.oom_control`` file."""
    try:
        text = path.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == "oom_kill" and value.strip().isdigit():
            return int(value)
    return None


def _mounts() -> list[tuple[str, str, str, set[str]]]:
    """``(root, mount point, fstype, super options)`` of each cgroup mount of this process."""
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            before, _, after = line.partition(" - ")
            fields, rest = before.split(), after.split()
            if len(fields) >= 5 and len(rest) >= 3 and rest[0] in ("cgroup", "cgroup2"):
                found.append((fields[3], fields[4], rest[0], set(rest[2].split(","))))
    return found


def memory_counter_files(pid: int) -> list[Path]:
    """The files that count OOM kills in the memory cgroup(s) of ``pid``."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return []
    files = []
    for root, point, kind, options in _mounts():
        for line in lines:
            hierarchy, _, rest = line.partition(":")
            controllers, _, path = rest.partition(":")
            if kind == "cgroup2" and hierarchy == "0" and not controllers:
                name = "memory.events"
            elif kind == "cgroup" and "memory" in controllers.split(",") and "memory" in options:
                name = "memory.oom_control"
            else:
                continue
            if root != "/" and not path.startswith(root):
                continue  # a cgroup outside what this mount shows
            inside = path[len(root) :] if root != "/" else path
            candidate = Path(point) / inside.lstrip("/") / name
            if candidate.is_file():
                files.append(candidate)
    return files


@dataclass
class OomWatch:
    """Started when a process starts; :meth:`evidence` when it has died by SIGKILL."""

    pid: int
    counters: list[_Counter] = field(default_factory=list)
    kmsg: int | None = None  # /dev/kmsg, positioned after the records before the start

    @classmethod
    def start(cls, pid: int) -> OomWatch:
        watch = cls(pid)
        for path in memory_counter_files(pid):
            count = _oom_kills(path)
            if count is not None:
                watch.counters.append(_Counter(path, count))
        with contextlib.suppress(OSError):
            fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
            os.lseek(fd, 0, os.SEEK_END)
            watch.kmsg = fd
        return watch

    def evidence(self) -> str | None:
        """What says the OOM killer ended the process since the start, or None."""
        said = self._kernel_log()
        if said is not None:
            return said
        for counter in self.counters:
            now = _oom_kills(counter.path)
            if now is not None and now > counter.count:
                return f"its memory cgroup counted {now - counter.count} OOM kill ({counter.path})"
        return None

    @property
    def can_tell(self) -> bool:
        """Whether anything could show an OOM kill of this process."""
        return bool(self.counters) or self.kmsg is not None

    def _kernel_log(self) -> str | None:
        if self.kmsg is None:
            return None
        while True:
            try:
                record = os.read(self.kmsg, 8192)
            except BlockingIOError:
                return None  # no more records
            except BrokenPipeError:
                continue  # records were overwritten before they were read: go on
            except OSError:
                return None
            if not record:
                return None
            text = record.decode(errors="replace").partition(";")[2]
            found = _KILLED.search(text)
            if found and int(found.group(1)) == self.pid:
                return f"the kernel's log: {text.strip().splitlines()[0][:200]}"

    def close(self) -> None:
        if self.kmsg is not None:
            with contextlib.suppress(OSError):
                os.close(self.kmsg)
            self.kmsg = None
