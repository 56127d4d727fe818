"""The worker's cache of environments under ``$AIRFLOW_HOME/flowtask/environments`` (no Airflow).

``index/<key>.json`` maps requirements + target to an environment (its id, lock, stored
archive and packages), so a second run resolves nothing; ``envs/<id>/`` holds a built
environment (``site/``, the unpacked folder a local runtime puts in front of its ``sys.path``,
and ``environment.tar.gz``), so a second run downloads nothing. Entries are dropped least
recently used first once the cache is over its size; one a local try is using (a shared lock
on its ``.in-use``) is never dropped. Per-key file locks keep concurrent workers from
resolving or building the same environment twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ARCHIVE = "environment.tar.gz"
SITE = "site"
COMPLETE = ".complete"  # written last: the entry's size in bytes
IN_USE = ".in-use"


class EnvironmentCache:
    """Index and built environments under ``root``, at most ``max_bytes`` of them."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes

    def entry(self, env_id: str) -> Path:
        return self.root / "envs" / env_id

    @contextlib.contextmanager
    def locked(self, key: str) -> Iterator[None]:
        """Hold the lock of one index key: one resolution and build at a time."""
        path = self.root / "locks" / f"{key}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def read_index(self, key: str) -> dict[str, Any] | None:
        try:
            document = json.loads((self.root / "index" / f"{key}.json").read_text())
        except (OSError, ValueError):
            return None
        return document if isinstance(document, dict) else None

    def write_index(self, key: str, document: dict[str, Any]) -> None:
        _write_atomic(self.root / "index" / f"{key}.json", json.dumps(document, indent=1))

    def complete(self, env_id: str, *, site: bool) -> bool:
        """Whether the entry is fully built (and unpacked, with ``site``)."""
        entry = self.entry(env_id)
        return (entry / COMPLETE).exists() and (not site or (entry / SITE).is_dir())

    def finish(self, staging: Path, env_id: str) -> Path:
        """Move a staged entry (``site/`` and/or the archive) into place, atomically."""
        size = sum(p.stat().st_size for p in staging.rglob("*") if p.is_file())
        (staging / COMPLETE).write_text(str(size))
        entry = self.entry(env_id)
        entry.parent.mkdir(parents=True, exist_ok=True)
        if entry.exists():
            shutil.rmtree(entry)
        os.rename(staging, entry)
        return entry

    def staging(self, env_id: str) -> Path:
        path = self.root / "envs" / f".{env_id}.tmp-{os.getpid()}-{time.time_ns()}"
        path.mkdir(parents=True)
        return path

    def use(self, env_id: str) -> int:
        """Mark the entry used now; return a descriptor holding it in use until closed."""
        entry = self.entry(env_id)
        marker = entry / IN_USE
        fd = os.open(marker, os.O_RDONLY | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_SH)
        os.utime(marker)
        return fd

    def evict(self, keep: set[str]) -> list[str]:
        """Drop least recently used entries until the cache fits; return the ids dropped."""
        entries = []
        for entry in (self.root / "envs").glob("*"):
            if entry.name.startswith(".") or not (entry / COMPLETE).exists():
                continue
            try:
                size = int((entry / COMPLETE).read_text() or 0)
            except (OSError, ValueError):
                size = 0
            marker = entry / IN_USE
            used = marker.stat().st_mtime if marker.exists() else entry.stat().st_mtime
            entries.append((used, size, entry))
        total = sum(size for _, size, _ in entries)
        dropped = []
        for _, size, entry in sorted(entries):
            if total <= self.max_bytes:
                break
            if entry.name in keep or not _free(entry / IN_USE):
                continue
            shutil.rmtree(entry, ignore_errors=True)
            total -= size
            dropped.append(entry.name)
        return dropped


def _free(marker: Path) -> bool:
    """Whether no try holds the entry in use (nobody holds its shared lock)."""
    if not marker.exists():
        return True
    fd = os.open(marker, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
