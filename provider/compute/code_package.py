"""The code package: what a container needs to run a flow task besides Python itself.

A zip of the flowtask runtime (``provider`` without its Airflow layers), cloudpickle and the DAG
folder's own modules, built byte-for-byte reproducibly so equal code has one content address
and is stored once. The container's bootstrap puts the zip on ``sys.path``.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path
from types import ModuleType

import cloudpickle

import provider

RUNTIME_PARTS = ("__init__.py", "specs", "store", "runtime")
_EPOCH = (1980, 1, 1, 0, 0, 0)

Entry = tuple[str, str, int, int]  # (name in the zip, path on disk, size, mtime_ns)


def _python_files(root: Path, arcroot: str) -> Iterator[tuple[str, Path]]:
    if root.is_file():
        yield arcroot, root
        return
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" not in path.parts:
            yield f"{arcroot}/{path.relative_to(root).as_posix()}", path


def module_entry(module: ModuleType) -> tuple[str, Path] | None:
    """The zip name under which ``module`` imports by its own name, or None when it cannot.

    A DAG file is imported under a made-up module name (it travels pickled by value instead);
    a helper module ``helpers.io`` at ``<dags>/helpers/io.py`` is ``helpers/io.py``.
    """
    file = getattr(module, "__file__", None)
    if not file or not file.endswith(".py"):
        return None
    path = Path(file).resolve()
    parts = module.__name__.split(".")
    if path.name == "__init__.py":
        parts.append("__init__")
    name = "/".join(parts) + ".py"
    return (name, path) if path.as_posix().endswith("/" + name) else None


def package_entries(modules: Iterable[ModuleType] = ()) -> tuple[Entry, ...]:
    """What goes into the package, with the sizes and times that make it a cache key."""
    found: dict[str, Path] = {}
    provider_root = Path(provider.__file__).parent
    for part in RUNTIME_PARTS:
        found.update(_python_files(provider_root / part, f"provider/{part}"))
    found.update(_python_files(Path(cloudpickle.__file__).parent, "cloudpickle"))
    for module in modules:
        entry = module_entry(module)
        if entry is not None and not entry[0].startswith(("provider/", "cloudpickle/")):
            found[entry[0]] = entry[1]
    entries = []
    for name, path in sorted(found.items()):
        stat = path.stat()
        entries.append((name, str(path), stat.st_size, stat.st_mtime_ns))
    return tuple(entries)


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


def build_code_package(modules: Iterable[ModuleType] = ()) -> bytes:
    """The zip for the runtime plus ``modules``; equal content gives equal bytes."""
    return _build(package_entries(modules))
