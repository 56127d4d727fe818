"""After runs, ``flowtask gc`` with no grace period must delete nothing anything still reaches."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

from provider.store import ArtifactStore, Reference, codec, compression, is_reference, open_store
from provider.store.gc import collect_garbage, referenced_hashes
from provider.store.keys import blob_key
from provider.store.store import CHUNKS_ENCODING


def assert_gc_keeps_everything_reachable(
    store: ArtifactStore | Path, xcom_values: dict[str, Any]
) -> None:
    """Collect with grace 0, then read every blob a manifest or an XCom row refers to, and
    every blob those blobs refer to in turn (a ``.foreach``'s chunk list, a list of
    references): gc must keep all of them."""
    if isinstance(store, Path):
        store = open_store(store.as_uri())
    collect_garbage(store, grace=timedelta(0), delete=True)
    todo: list[tuple[dict[str, Any], str]] = []
    for key in store.list_manifests("runs"):
        todo.extend((ref, key) for ref in _references(store.read_manifest(key)))
    for name, value in xcom_values.items():
        todo.extend((ref, f"XCom {name}") for ref in _references(value))
    assert todo, "the runs referenced nothing: the check would prove nothing"
    seen: set[str] = set()
    while todo:
        ref, owner = todo.pop()
        sha = ref["sha256"]
        if sha in seen:
            continue
        seen.add(sha)
        data = store.backend.read_bytes(blob_key(sha))
        assert hashlib.sha256(data).hexdigest() == sha, f"{sha} of {owner} is damaged"
        inner = f"{owner} -> {sha[:12]}"
        if ref["encoding"] == CHUNKS_ENCODING:
            todo.extend((r, inner) for r in _references(json.loads(data)))
        elif ref["encoding"] in (codec.ENCODING, compression.ENCODING):
            todo.extend((r, inner) for r in _references(store.get(ref)))


def _references(value: Any) -> list[dict[str, Any]]:
    """Every reference (as JSON) anywhere inside a value: dicts, lists, tuples, objects'
    fields are not looked into (a reference is plain data wherever flowtask keeps one)."""
    found, stack, seen = [], [value], set()
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, Reference):
            found.append(item.to_json())
        elif isinstance(item, dict):
            if is_reference(item):
                found.append(item)
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return found


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
