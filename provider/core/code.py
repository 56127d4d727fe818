"""The code package containers fetch: the runtime, cloudpickle and the DAG folder's modules."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from provider.core.targets.base import TaskRun
from provider.store import ArtifactStore, Reference, bytes_reference

CODE_PACKAGE_TYPE = "flowtask.code_package"
CODE_PACKAGE_ENCODING = "zip"


def stored_code_package(run: TaskRun) -> Reference:
    """Build (cached per content) and store (once per content) the try's code package."""
    package = store_code_package(run.store, code_package(run.dag_folder))
    run.log.info("code package: %s (%d bytes)", package.uri, package.size)
    return package


def code_package(dag_folder: Path | None) -> bytes:
    """The runtime, cloudpickle and the modules of the DAG folder, as one zip."""
    from provider.core.code_package import build_code_package

    return build_code_package(dag_folder)


def store_code_package(store: ArtifactStore, package: bytes) -> Reference:
    """Store the code package (once per content); its reference is ``code_reference``'s."""
    return store.put_bytes(package, type_name=CODE_PACKAGE_TYPE, encoding=CODE_PACKAGE_ENCODING)


def code_reference(store_uri: str, package: bytes) -> Reference:
    """The reference the code package has in the store at ``store_uri``, without storing it."""
    return bytes_reference(
        store_uri, package, type_name=CODE_PACKAGE_TYPE, encoding=CODE_PACKAGE_ENCODING
    )


# A code package this worker stored less than this long ago is not stored again: the store
# keeps what ``put`` returned for its gc grace minus an hour (``provider.store.store``).
STORED_FRESH_SECONDS = 1800


def _stored_mark(path: Path, root_uri: str) -> Path:
    """A file beside the local copy whose age is when this worker last stored it there."""
    import hashlib

    store = hashlib.sha256(root_uri.encode()).hexdigest()[:16]
    return path.with_name(f"{path.stem}.stored-{store}")


def _fresh(mark: Path) -> bool:
    import time

    try:
        return time.time() - mark.stat().st_mtime < STORED_FRESH_SECONDS
    except OSError:
        return False


def _store_and_mark(store: ArtifactStore, package: bytes, mark: Path) -> None:
    store_code_package(store, package)
    mark.parent.mkdir(parents=True, exist_ok=True)
    mark.touch()


def local_code_package(run: TaskRun, later: Any = None) -> tuple[Reference, Path]:
    """Store the code package (with ``later``, a ``provider.core.records.Background``, while
    the try runs, unless this worker stored it there within ``STORED_FRESH_SECONDS``), and
    keep a copy on this worker for local runtimes to import from
    (``$AIRFLOW_HOME/flowtask/code/<sha256>.zip``, written once per content)."""
    from provider import settings

    package = code_package(run.dag_folder)
    if later is not None:
        ref = code_reference(run.store.root_uri, package)
    else:
        ref = store_code_package(run.store, package)
    path = settings.airflow_home() / "flowtask" / "code" / f"{ref.sha256}.zip"
    if later is not None:
        stored = _stored_mark(path, run.store.root_uri)
        if not _fresh(stored):
            later.submit(_store_and_mark, run.store, package, stored)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_bytes(package)
        os.replace(tmp, path)
    return ref, path
