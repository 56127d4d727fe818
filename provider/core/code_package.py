"""The code package: what a container needs to run a flow task besides Python itself.

A zip of the flowtask runtime (``provider`` without its Airflow layers), cloudpickle and every
module of the DAG folder, built byte-for-byte reproducibly so equal code has one content address
and is stored once. The container's bootstrap puts the zip on ``sys.path``.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import cloudpickle

import provider

# What runs where the work runs: the runtime, the store, the specs, and the one compat module
# the store uses (botocore's; the others are the worker's).
RUNTIME_PARTS = (
    "__init__.py",
    "specs",
    "store",
    "runtime",
    "compat/__init__.py",
    "compat/botocore.py",
)
_EPOCH = (1980, 1, 1, 0, 0, 0)
_SKIPPED = {"__pycache__", "site-packages", "node_modules"}

Entry = tuple[str, str, int, int]  # (name in the zip, path on disk, size, mtime_ns)


def _python_files(root: Path, arcroot: str) -> Iterator[tuple[str, Path]]:
    if root.is_file():
        yield arcroot, root
        return
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" not in path.parts:
            yield f"{arcroot}/{path.relative_to(root).as_posix()}", path


def _dag_folder_files(root: Path) -> Iterator[tuple[str, Path]]:
    """Every module under the DAG folder, under the name it imports by (the folder is on
    ``sys.path`` in Airflow's processes); hidden folders and caches are skipped."""
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if any(part.startswith(".") or part in _SKIPPED for part in relative.parts[:-1]):
            continue
        name = relative.as_posix()
        if not name.startswith(("provider/", "cloudpickle/")):
            yield name, path


@lru_cache(maxsize=1)
def _runtime_entries() -> tuple[Entry, ...]:
    """The installed runtime and cloudpickle: read once per process (they do not change under
    a running worker)."""
    found: dict[str, Path] = {}
    provider_root = Path(provider.__file__).parent
    for part in RUNTIME_PARTS:
        found.update(_python_files(provider_root / part, f"provider/{part}"))
    found.update(_python_files(Path(cloudpickle.__file__).parent, "cloudpickle"))
    return _stat_entries(found)


def _stat_entries(found: dict[str, Path]) -> tuple[Entry, ...]:
    entries = []
    for name, path in found.items():
        stat = path.stat()
        entries.append((name, str(path), stat.st_size, stat.st_mtime_ns))
    return tuple(entries)


def package_entries(dag_folder: Path | None = None) -> tuple[Entry, ...]:
    """What goes into the package, with the sizes and times that make it a cache key."""
    entries = {entry[0]: entry for entry in _runtime_entries()}
    if dag_folder is not None:
        found = dict(_dag_folder_files(dag_folder.resolve()))
        entries.update((entry[0], entry) for entry in _stat_entries(found))
    return tuple(entries[name] for name in sorted(entries))


@lru_cache(maxsize=8)
def _build(entries: tuple[Entry, ...]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as package:
        for name, path, _size, _mtime in entries:
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            package.writestr(info, Path(path).read_bytes())
    return buffer.getvalue()


def build_code_package(dag_folder: Path | None = None) -> bytes:
    """The zip of the runtime plus every module of ``dag_folder``; equal content, equal bytes.

    Helpers imported lazily inside a task, and classes of values handed over from plain
    tasks, import where the task runs as they do on the worker.
    """
    return _build(package_entries(dag_folder))
