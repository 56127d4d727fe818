"""The store's index of environments (no Airflow): requirements + target -> environment.

One small JSON document per key (the hash of the normalized requirements, the Python, the
platform and, for a local target, the worker's installed packages: ``index_key``) at
``environments/<key>.json``, so any worker that shares the store finds an environment with one
GET and fetches its archive instead of resolving and building it again. It holds the
environment's id, its lock (text, and its stored reference) and its archive's reference.

gc never deletes an entry, but it does not keep what an entry names either: the launch
manifests of the tries that used an environment do. An entry whose archive gc took is rebuilt
from its lock, to the same bytes (archives are reproducible), and written again. Workers that
build one environment at once store the same blobs (content-addressed) and write the same entry;
the last entry written stays (two resolutions of unpinned requirements far apart may differ:
each try's launch manifest names the environment it used).
"""

from __future__ import annotations

import logging
from typing import Any

from provider.store import ArtifactStore, MissingArtifact, Reference, StoreError
from provider.store.errors import BadManifest
from provider.store.keys import environment_index_key
from provider.translate.environment import Target, environment_id

log = logging.getLogger("provider.environments")

#: What an entry holds (and what a worker's own index keeps of it, plus its own marks).
FIELDS = ("id", "requirements", "python", "platform", "lock_text", "archive", "lock",
          "packages", "from_worker")  # fmt: skip


def read_entry(store: ArtifactStore, key: str, target: Target) -> dict[str, Any] | None:
    """The store's entry for ``key`` (one GET), or None: missing, or not a valid entry for
    ``target`` (logged; the caller builds and writes it again)."""
    name = environment_index_key(key)
    where = f"{store.root_uri}/{name}"
    try:
        document = store.read_manifest(name)
    except MissingArtifact:
        return None
    except BadManifest as error:
        log.warning("ignoring the environment index entry %s: %s", where, error)
        return None
    problem = _invalid(document, target)
    if problem is not None:
        log.warning("ignoring the environment index entry %s: %s", where, problem)
        return None
    return {field: document[field] for field in FIELDS}


def write_entry(store: ArtifactStore, key: str, entry: dict[str, Any]) -> None:
    """Write (or replace) the store's entry for ``key``."""
    store.write_manifest(environment_index_key(key), {name: entry[name] for name in FIELDS})


def _invalid(document: dict[str, Any], target: Target) -> str | None:
    """Why ``document`` is not an entry for ``target``, or None."""
    missing = [name for name in FIELDS if name not in document]
    if missing:
        return f"it lacks {', '.join(missing)}"
    if (document["python"], document["platform"]) != (target.python, target.platform):
        return f"it is for Python {document['python']} on {document['platform']}"
    lock = document["lock_text"]
    if not isinstance(lock, str) or environment_id(lock, target) != document["id"]:
        return f"its id {document['id']!r} is not its lock's"
    try:
        Reference.from_json(document["archive"])
        Reference.from_json(document["lock"])
    except StoreError as error:
        return str(error)
    if not isinstance(document["packages"], dict) or not isinstance(document["from_worker"], dict):
        return "its packages are not name -> version maps"
    return None
