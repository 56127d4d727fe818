"""Garbage collection: delete blobs that no manifest references, past a grace period."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from provider.store.reference import REFERENCE_MARKER
from provider.store.store import ArtifactStore


@dataclass
class GcReport:
    """What a collection found, and what it deleted (nothing in a dry run)."""

    blobs: int = 0
    referenced: int = 0
    within_grace: int = 0
    unreferenced: list[tuple[str, int]] = field(default_factory=list)  # (key, size)
    deleted: int = 0

    @property
    def unreferenced_bytes(self) -> int:
        return sum(size for _, size in self.unreferenced)


def referenced_hashes(document: Any) -> Iterator[str]:
    """Every artifact reference's sha256 anywhere inside a manifest."""
    stack = [document]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get(REFERENCE_MARKER) == 1 and isinstance(item.get("sha256"), str):
                yield item["sha256"]
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def collect_garbage(
    store: ArtifactStore, *, grace: timedelta, delete: bool, now: float | None = None
) -> GcReport:
    """Find (and with ``delete``, remove) blobs no manifest references, older than ``grace``.

    Blobs younger than the grace period are kept even when unreferenced: a task may have stored
    its result and not yet written the manifest that names it. XCom's ``purge`` never deletes
    blobs (they are shared by content); this is how storage is reclaimed.
    """
    live: set[str] = set()
    for key in store.list_manifests("runs"):
        live.update(referenced_hashes(store.read_manifest(key)))
    cutoff = (time.time() if now is None else now) - grace.total_seconds()
    report = GcReport()
    for key, size, modified in store.backend.entries("data"):
        report.blobs += 1
        if key.rsplit("/", 1)[-1] in live:
            report.referenced += 1
        elif modified > cutoff:
            report.within_grace += 1
        else:
            report.unreferenced.append((key, size))
            if delete:
                store.backend.delete(key)
                report.deleted += 1
    return report
