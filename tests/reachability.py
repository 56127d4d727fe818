"""After runs, ``flowtask gc`` with no grace period must delete nothing anything still reaches."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path
from typing import Any

from provider.store import ArtifactStore, open_store
from provider.store.gc import collect_garbage, referenced_hashes
from provider.store.keys import blob_key


def assert_gc_keeps_everything_reachable(
    store: ArtifactStore | Path, xcom_values: dict[str, Any]
) -> None:
    """Collect with grace 0, then read every blob a manifest or an XCom row refers to."""
    if isinstance(store, Path):
        store = open_store(store.as_uri())
    collect_garbage(store, grace=timedelta(0), delete=True)
    wanted: dict[str, str] = {}
    for key in store.list_manifests("runs"):
        for sha in referenced_hashes(store.read_manifest(key)):
            wanted.setdefault(sha, key)
    for name, value in xcom_values.items():
        for sha in referenced_hashes(value):
            wanted.setdefault(sha, f"XCom {name}")
    assert wanted, "the runs referenced nothing: the check would prove nothing"
    for sha, owner in wanted.items():
        data = store.backend.read_bytes(blob_key(sha))
        assert hashlib.sha256(data).hexdigest() == sha, f"{sha} of {owner} is damaged"


def assert_environments_kept(store: ArtifactStore) -> None:
    """After gc: the store's environment index entries are all there, and every archive and
    lock they name is stored intact (the tries that used them name them)."""
    from provider.store.keys import ENVIRONMENTS_PREFIX

    entries = list(store.list_manifests(ENVIRONMENTS_PREFIX))
    assert entries, "no environment index entry: the check would prove nothing"
    for key in entries:
        named = list(referenced_hashes(store.read_manifest(key)))
        assert len(named) == 2, f"{key} names {named}, not an archive and a lock"
        for sha in named:
            data = store.backend.read_bytes(blob_key(sha))
            assert hashlib.sha256(data).hexdigest() == sha, f"{sha} of {key} is damaged"
