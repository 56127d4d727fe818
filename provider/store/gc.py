"""Garbage collection: delete blobs that no manifest references, past a grace period.

Safety against concurrent writers: a ``put`` that finds its blob already stored renews the
blob's age when it is older than ``RENEW_AFTER`` (1 h), after checking its SHA-256. So a blob
that a writer is about to reference is never older than 1 h at that moment, and gc with a grace
of at least 1 h never takes it. gc also checks each candidate's age again right before
deleting it: on ``file://`` it renames the blob away first (atomic) and puts it back if it was
renewed since the scan, so no renewal can be lost; on S3 it sends a HEAD right before the
DELETE, and a renewal landing between the two (one round trip) is the one window left. With a
grace below 1 h, run gc only while nothing writes to the store.

A manifest gc cannot read may reference anything: gc then deletes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from provider.store.backend import InterruptedWrite
from provider.store.errors import BadManifest
from provider.store.keys import ENVIRONMENTS_PREFIX, PAYLOAD_NAME
from provider.store.reference import REFERENCE_MARKER
from provider.store.store import ArtifactStore

# Where killed writers leave temp files (file://) or incomplete multipart uploads (S3).
WRITE_PREFIXES = ("data", "runs", "index", ENVIRONMENTS_PREFIX)


@dataclass
class GcReport:
    """What a collection found, and what it deleted (nothing in a dry run)."""

    blobs: int = 0
    referenced: int = 0
    within_grace: int = 0
    unreferenced: list[tuple[str, int]] = field(default_factory=list)  # (key, size)
    deleted: int = 0
    deleted_bytes: int = 0
    renewed: list[str] = field(default_factory=list)  # candidates kept: renewed since the scan
    interrupted: list[InterruptedWrite] = field(default_factory=list)
    interrupted_removed: int = 0
    payloads: list[tuple[str, int]] = field(default_factory=list)  # of finished tries
    payloads_removed: int = 0

    @property
    def unreferenced_bytes(self) -> int:
        return sum(size for _, size in self.unreferenced)

    @property
    def interrupted_bytes(self) -> int:
        return sum(write.size for write in self.interrupted)


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


def live_hashes(store: ArtifactStore) -> set[str]:
    """Hashes every manifest under ``runs/`` references; ``BadManifest`` names unreadable ones."""
    live: set[str] = set()
    bad: list[str] = []
    for key in store.list_manifests("runs"):
        try:
            live.update(referenced_hashes(store.read_manifest(key)))
        except BadManifest as error:
            bad.append(str(error))
    if bad:
        raise BadManifest(
            f"{len(bad)} unreadable manifest(s), deleting nothing (they may reference blobs); "
            "repair or remove them: " + "; ".join(bad)
        )
    return live


def collect_garbage(
    store: ArtifactStore, *, grace: timedelta, delete: bool, now: float | None = None
) -> GcReport:
    """Find (and with ``delete``, remove) blobs no manifest references, older than ``grace``,
    and what interrupted writes left behind, older than ``grace`` too.

    Blobs younger than the grace period are kept even when unreferenced: a task may have stored
    its result and not yet written the manifest that names it. XCom's ``purge`` never deletes
    blobs (they are shared by content); this is how storage is reclaimed.
    """
    store.backend.check_root()
    cutoff = (time.time() if now is None else now) - grace.total_seconds()
    live = live_hashes(store)
    report = GcReport()
    for key, size, modified in store.backend.entries("data"):
        report.blobs += 1
        if key.rsplit("/", 1)[-1] in live:
            report.referenced += 1
        elif modified > cutoff:
            report.within_grace += 1
        else:
            report.unreferenced.append((key, size))
            if delete and store.backend.delete_if_older(key, cutoff):
                report.deleted += 1
                report.deleted_bytes += size
            elif delete:
                report.renewed.append(key)
    _collect_interrupted(store, cutoff, delete, report)
    _collect_payloads(store, cutoff, delete, report)
    return report


def _collect_payloads(store: ArtifactStore, cutoff: float, delete: bool, report: GcReport) -> None:
    """Payloads of finished tries: a worker deletes its try's payload when the try ends, but
    one that died first leaves it behind (with the task's arguments, secrets included)."""
    for key, size, modified in store.backend.entries("runs"):
        if not key.endswith("/" + PAYLOAD_NAME) or modified > cutoff:
            continue
        if store.backend.stat(key.rsplit("/", 1)[0] + "/result.json") is None:
            continue  # the try may still run: its runtime has yet to read the payload
        report.payloads.append((key, size))
        if delete:
            store.backend.delete(key)
            report.payloads_removed += 1


def _collect_interrupted(
    store: ArtifactStore, cutoff: float, delete: bool, report: GcReport
) -> None:
    for write in store.backend.interrupted_writes(WRITE_PREFIXES):
        if write.modified > cutoff:
            continue  # perhaps still being written
        report.interrupted.append(write)
        if delete:
            store.backend.discard(write)
            report.interrupted_removed += 1
