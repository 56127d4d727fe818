"""A run's try manifests in one object, each with the version it was read at: one GET instead of
one per try for whoever opens a big run (the UI's run tab), on stores whose listings name
versions (S3's ETags).

``runs/<dag>/<run>/rollup.json`` holds ``{"version": 1, "manifests": {key: [version, text]}}``
for the run's ``<task>/<map_index>/<try>/<name>.json`` manifests. It is never the truth: a
reader lists the run (which it does anyway) and uses an entry only when the listing names that
very version, so an entry of a manifest rewritten since, or deleted, is never used, and a
manifest missing from it is read. Any writer may replace it at any time (the last one wins);
two writers racing lose nothing but entries, read again by the next reader. The manifests are
kept as text, so ``gc`` (which reads every manifest under ``runs/``) finds no references in it:
what keeps a blob is the try's own manifest.

Written at the end of a big fan-out's tries (:func:`refresh`: at most once per
``REFRESH_SECONDS`` a run, by one writer at a time, reading only the manifests it lacks), at the
run's end (``record_run_state`` calls :func:`build`), and by a reader that had to read many
manifests the rollup lacked.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

from provider.store.errors import MissingArtifact
from provider.store.store import ArtifactStore

log = logging.getLogger("provider.store")

NAME = "rollup.json"
MIN_MANIFESTS = 100  # a run with fewer is read in a few parallel rounds: no rollup
REFRESH_SECONDS = 30.0  # a try's end brings a rollup older than this up to date
CLAIM_SECONDS = 300.0  # a refresher's claim older than this (its writer died) is taken over
CLAIM = "rollup-claim.json"
_THREADS = 16

Entries = dict[str, tuple[str, bytes]]  # key -> (version, body)


def rollup_key(prefix: str) -> str:
    return f"{prefix}/{NAME}"


def is_try_manifest(prefix: str, key: str) -> bool:
    """Whether ``key`` is a try's manifest of the run under ``prefix`` (what a rollup holds)."""
    parts = key[len(prefix) + 1 :].split("/")
    return key.startswith(prefix + "/") and len(parts) == 4 and parts[3].endswith(".json")


def listed_versions(store: ArtifactStore, prefix: str) -> dict[str, str] | None:
    """Every key under ``prefix`` with its version, from one listing; None where the store's
    listings do not name versions (a folder: its reads are cheap)."""
    versions = getattr(store.backend, "versions", None)
    return None if versions is None else dict(versions(prefix))


def read(store: ArtifactStore, prefix: str) -> Entries:
    """The run's rollup, or nothing (none written, or not one this version reads)."""
    try:
        document = json.loads(store.backend.read_bytes(rollup_key(prefix)))
        manifests = document["manifests"] if document.get("version") == 1 else {}
        return {
            key: (str(version), text.encode())
            for key, (version, text) in manifests.items()
            if is_try_manifest(prefix, key) and isinstance(text, str)
        }
    except MissingArtifact:
        return {}
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        log.warning("%s is not a rollup this version reads (%s); ignoring it", prefix, error)
        return {}


def write(store: ArtifactStore, prefix: str, entries: Mapping[str, tuple[str, bytes]]) -> None:
    """Replace the run's rollup by ``entries`` (try manifests only)."""
    manifests: dict[str, list[str]] = {}
    for key, (version, body) in sorted(entries.items()):
        if is_try_manifest(prefix, key):
            try:
                manifests[key] = [version, body.decode()]
            except UnicodeDecodeError:  # not a manifest anyone can read: left to its readers
                continue
    document = json.dumps({"version": 1, "manifests": manifests}, separators=(",", ":"))
    store.backend.write_bytes(rollup_key(prefix), document.encode())


def build(store: ArtifactStore, prefix: str) -> int:
    """Write the rollup of the run under ``prefix`` from its manifests as they are now (those
    the rollup holds at their listed version are not read again); returns how many it holds
    (0: none written: the store lists no versions, or the run is small)."""
    if getattr(store.backend, "versions", None) is None:
        return 0
    return _build(store, prefix)


def refresh(store: ArtifactStore, prefix: str, *, older_than: float = REFRESH_SECONDS) -> int:
    """At a try's end: bring the run's rollup up to date unless it is younger than
    ``older_than`` (one HEAD), or another writer is at it (a claim written conditionally, as
    the run index's compaction claims its log). Returns how many it holds (0: not written)."""
    if getattr(store.backend, "versions", None) is None:
        return 0
    found = store.backend.stat(rollup_key(prefix))
    if found is not None and store.clock() - found.modified < older_than:
        return 0
    claim = f"{prefix}/{CLAIM}"
    held = store.backend.stat(claim)
    if held is not None and store.clock() - held.modified < CLAIM_SECONDS:
        return 0
    version = None if held is None else store.backend.version(claim)
    if not store.backend.write_if_version(claim, b"{}", version):
        return 0
    try:
        return _build(store, prefix)
    finally:
        store.backend.delete(claim)


def _build(store: ArtifactStore, prefix: str) -> int:
    versions = listed_versions(store, prefix)
    if versions is None:
        return 0
    keys = [key for key in versions if is_try_manifest(prefix, key)]
    if len(keys) < MIN_MANIFESTS:
        return 0
    known = read(store, prefix)
    current = {key: known[key] for key in keys if key in known and known[key][0] == versions[key]}
    keys = [key for key in keys if key not in current]

    def fetch(key: str) -> tuple[str, tuple[str, bytes]] | None:
        try:
            body, version = store.backend.read_versioned(key)
        except MissingArtifact:  # deleted since the listing
            return None
        return key, (version, bytes(body))

    with ThreadPoolExecutor(_THREADS) as pool:
        found = [entry for entry in pool.map(fetch, keys) if entry is not None]
    current.update(found)
    write(store, prefix, current)
    return len(current)
