"""A child memory cgroup with a limit, for tests where the kernel really OOM-kills a process.

Made under this process's own memory cgroup (cgroup v2 or v1), which needs write access to it
(root, or a delegated cgroup); ``MemoryCgroup.make`` says why it cannot, for a skip.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from provider.core.local.oom import memory_counter_files


@dataclass
class MemoryCgroup:
    path: Path
    version: int

    @classmethod
    def make(cls, limit_mib: int) -> MemoryCgroup:
        """A new cgroup limited to ``limit_mib`` of memory and no swap; ``OSError`` saying why
        not (no memory cgroup to read, no right to make one)."""
        files = memory_counter_files(os.getpid())
        if not files:
            raise OSError("this process has no memory cgroup whose OOM kills can be read")
        parent = files[0].parent
        version = 2 if files[0].name == "memory.events" else 1
        path = parent / f"flowtask-test-{uuid.uuid4().hex[:12]}"
        path.mkdir()
        cgroup = cls(path, version)
        try:
            limit = str(limit_mib << 20)
            if version == 2:
                (path / "memory.max").write_text(limit)
                with contextlib.suppress(OSError):  # no swap accounting: nothing to turn off
                    (path / "memory.swap.max").write_text("0")
            else:
                (path / "memory.limit_in_bytes").write_text(limit)
                with contextlib.suppress(OSError):
                    (path / "memory.memsw.limit_in_bytes").write_text(limit)
        except OSError:
            cgroup.remove()
            raise
        return cgroup

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def enter(self) -> None:
        """Move the calling process in (a ``preexec_fn``: the child then starts inside)."""
        self.add(os.getpid())

    def remove(self, timeout: float = 10.0) -> None:
        """Remove it once the processes in it are gone."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:  # still busy: its last processes are exiting
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
