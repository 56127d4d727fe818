"""Resolving and building environments with ``uv``, and packing them (no Airflow).

``resolve`` runs ``uv pip compile`` into a ``pylock.toml``; ``build`` runs ``uv pip install
--target`` from that lock (no resolution: the lock names every file); ``pack`` makes one
``tar.gz`` of the folder. ``runtime_layer`` builds the runtime's own environment (boto3 and
zstandard) from the worker's installed copies when they fit the target, so that needs no index.

Equal locks make equal archives, byte for byte, on any worker: every file gets one fixed time
before its bytecode is compiled (so the bytecode stays valid where the archive is unpacked,
which keeps that time), the bytecode names files relative to the environment and is compiled
with a fixed hash seed, and the archive lists its members in name order with fixed times,
owners and modes, with no time in its gzip header.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path

from provider.translate.environment import (
    RUNTIME_REQUIREMENTS,
    EnvironmentFailure,
    Target,
    lock_without_header,
    uv_common_args,
    uv_failure,
)

UV_TIMEOUT = 1800  # seconds; a resolution or a build that takes longer is stuck
#: The time of every file of a built environment and of every member of its archive:
#: 1980-01-01 UTC, as in the code package.
FIXED_MTIME = 315532800
_UV_CACHE_NOTE = "uv_cache.json"


def uv_bin() -> str:
    """The uv binary the provider depends on."""
    from uv import find_uv_bin

    return str(find_uv_bin())


# What would send the environment's bytecode elsewhere, or keep it from being written.
_BYTECODE_SETTINGS = ("PYTHONPYCACHEPREFIX", "PYTHONDONTWRITEBYTECODE")


def _uv(argv: list[str], env: Mapping[str, str] | None) -> subprocess.CompletedProcess[str]:
    settings = dict(os.environ if env is None else env)
    for name in _BYTECODE_SETTINGS:  # the bytecode belongs in the environment's folder
        settings.pop(name, None)
    return subprocess.run(
        [uv_bin(), *argv],
        env=settings,
        capture_output=True,
        text=True,
        timeout=UV_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )


def resolve(
    requirements: Sequence[str],
    target: Target,
    *,
    constraints: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> str:
    """``uv pip compile`` of ``requirements`` for ``target``: its ``pylock.toml`` (no header).

    ``constraints`` pin what the resolution may pick (a local target prefers the worker's own
    versions). Raises :class:`EnvironmentFailure` with uv's words.
    """
    with tempfile.TemporaryDirectory(prefix="flowtask-resolve-") as tmp:
        folder = Path(tmp)
        (folder / "requirements.in").write_text("\n".join(requirements) + "\n")
        argv = ["pip", "compile", str(folder / "requirements.in"), "--format", "pylock.toml"]
        argv += ["-o", str(folder / "pylock.toml"), "--no-header", "--quiet"]
        if constraints:
            (folder / "constraints.txt").write_text("\n".join(constraints) + "\n")
            argv += ["--constraint", str(folder / "constraints.txt")]
        argv += uv_common_args(target, sys.executable)
        done = _uv(argv, env)
        if done.returncode != 0:
            raise uv_failure(done.stderr + done.stdout, requirements, target, resolving=True)
        return lock_without_header((folder / "pylock.toml").read_text())


def build(
    lock: str,
    target: Target,
    folder: Path,
    *,
    requirements: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> None:
    """Install what ``lock`` names into ``folder`` (``uv pip install --target``), bytecode
    compiled by the worker's interpreter (the target's major.minor): see :func:`settle`."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="flowtask-build-") as tmp:
        lock_file = Path(tmp) / "pylock.toml"  # uv takes only PEP 751 names
        lock_file.write_text(lock)
        argv = ["pip", "install", "-r", str(lock_file), "--target", str(folder), "--quiet"]
        argv += ["--link-mode", "copy"]
        done = _uv(argv + uv_common_args(target, sys.executable), env)
    if done.returncode != 0:
        raise uv_failure(done.stderr + done.stdout, requirements, target, resolving=False)
    settle(folder)


def settle(folder: Path) -> None:
    """Make a built folder the same wherever it was built, and compile its bytecode.

    uv's lock file of the folder goes, and so does its cache note of each distribution installed
    from a local file (``uv_cache.json``: that file's time); every file and folder gets
    :data:`FIXED_MTIME`; then the worker's interpreter compiles every module (files that do not
    compile stay source only, as pip leaves them) with a fixed hash seed (set and frozenset
    constants keep one order) and file names relative to ``folder`` (an import puts the real
    path back).
    """
    (folder / ".lock").unlink(missing_ok=True)
    for note in folder.glob(f"*.dist-info/{_UV_CACHE_NOTE}"):
        note.unlink()
        record = note.parent / "RECORD"
        if record.is_file():
            listed = f"{note.parent.name}/{_UV_CACHE_NOTE},"
            lines = record.read_text().splitlines(keepends=True)
            record.write_text("".join(line for line in lines if not line.startswith(listed)))
    for path in (folder, *folder.rglob("*")):
        os.utime(path, (FIXED_MTIME, FIXED_MTIME), follow_symlinks=False)
    settings = {k: v for k, v in os.environ.items() if k not in _BYTECODE_SETTINGS}
    settings["PYTHONHASHSEED"] = "0"
    argv = [sys.executable, "-m", "compileall", "-q", "-f", "-j", "0", "-s", str(folder)]
    subprocess.run(
        [*argv, str(folder)],
        env=settings,
        capture_output=True,
        timeout=UV_TIMEOUT,
        stdin=subprocess.DEVNULL,
        check=False,  # a module that does not compile is imported from its source
    )


def pack(folder: Path, archive: Path) -> None:
    """One ``tar.gz`` of ``folder``'s contents, reproducible: members in name order, each with
    :data:`FIXED_MTIME`, owner root and mode 0755 (folders, executables) or 0644; no time and
    no file name in the gzip header."""

    def entries(root: Path) -> Iterator[Path]:
        yield from sorted(root.rglob("*"))

    with (
        open(archive, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0) as zipped,
        tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for path in entries(folder):
            info = tar.gettarinfo(str(path), arcname=path.relative_to(folder).as_posix())
            info.mtime = FIXED_MTIME
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if not info.issym():
                info.mode = 0o755 if info.isdir() or info.mode & 0o111 else 0o644
            if info.isfile():
                with open(path, "rb") as data:
                    tar.addfile(info, data)
            else:
                tar.addfile(info)


def unpack(archive: Path, folder: Path) -> None:
    """Extract a packed environment (only regular files, folders and links inside it)."""
    with tarfile.open(archive, "r:gz") as tar:
        if sys.version_info >= (3, 12):
            tar.extractall(folder, filter="data")
        else:  # pragma: no cover - the data filter came with 3.12 (and some 3.10/3.11 patches)
            for member in tar.getmembers():
                name = member.name
                if name.startswith("/") or ".." in name.split("/") or member.isdev():
                    raise EnvironmentFailure("build", f"{archive}: unsafe member {name!r}")
            tar.extractall(folder)


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


# The runtime's own environment ------------------------------------------------------------


def installed_versions() -> dict[str, str]:
    """The worker's installed distributions: canonical name -> version."""
    from packaging.utils import canonicalize_name

    found: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(canonicalize_name(name), dist.version)
    return found


def worker_platform_tags() -> str:
    """What a resolution for the worker's interpreter depends on besides its version: its ABI
    and the platforms its wheels may be built for (``manylinux_2_36_x86_64`` and older: they
    name its C library)."""
    from packaging.tags import platform_tags, sys_tags

    first = next(iter(sys_tags()))
    return f"{first.interpreter}-{first.abi} " + " ".join(sorted(set(platform_tags())))


def worker_satisfies(requirements: Sequence[str]) -> dict[str, str] | None:
    """Name -> version of the worker's installed distributions that satisfy ``requirements`` and
    everything they need (markers evaluated, extras followed); None when anything is missing or
    at a version outside a specifier. A local target needs no environment (and no index) then."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    found: dict[str, str] = {}
    todo = [(Requirement(line), "") for line in requirements]
    seen: set[tuple[str, str]] = set()
    while todo:
        requirement, extra = todo.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(requirement.name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            return None
        if not requirement.specifier.contains(dist.version, prereleases=True):
            return None
        found[name] = dist.version
        for wanted in ("", *sorted(requirement.extras)):
            if (name, wanted) in seen:
                continue
            seen.add((name, wanted))
            todo += [(Requirement(line), wanted) for line in dist.requires or []]
    return found


def _closure(names: Sequence[str]) -> list[metadata.Distribution]:
    """The installed distributions ``names`` need, their dependencies' too (markers evaluated,
    extras left out)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: dict[str, metadata.Distribution] = {}
    todo = list(names)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        dist = metadata.distribution(name)
        seen[name] = dist
        for line in dist.requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return [seen[name] for name in sorted(seen)]


def _wheel_tags(dist: metadata.Distribution) -> list[str]:
    text = dist.read_text("WHEEL") or ""
    return [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Tag:")]


def fits(tags: Sequence[str], target: Target) -> bool:
    """Whether a wheel with these tags runs on ``target`` (a Linux platform)."""
    python = "cp" + target.python.replace(".", "")
    arch = target.arch
    musl = "musl" in target.platform
    glibc = (2, 17)
    if "manylinux_2_" in target.platform:
        glibc = (2, int(target.platform.rsplit("_", 1)[1]))
    for tag in tags:
        interpreter, abi, platform = tag.split("-")
        stable = abi == "abi3" and interpreter.startswith("cp3")
        if interpreter not in (python, "py3", "py2.py3", f"py{python[2:]}") and not stable:
            continue
        if platform == "any":
            return True
        if not platform.endswith("_" + arch):
            continue
        stem = platform[: -len(arch) - 1]
        legacy = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
        if stem in legacy and not musl and legacy[stem] <= glibc:
            return True
        if stem.startswith("manylinux_") and not musl:
            major, minor = (int(x) for x in stem.split("_")[1:3])
            if (major, minor) <= glibc:
                return True
        if stem.startswith("musllinux_") and musl:
            return True
    return False


#: The AWS services the runtime calls (S3, and STS for web-identity credentials): botocore's
#: models of the 400 others are four fifths of its files, and every pod would unpack them.
RUNTIME_SERVICES = ("s3", "sts")


def _unused_service(parts: tuple[str, ...]) -> bool:
    """Whether a file is botocore's model of a service the runtime never calls."""
    return len(parts) > 3 and parts[:2] == ("botocore", "data") and parts[2] not in RUNTIME_SERVICES


def runtime_requirements() -> list[str]:
    """The runtime's own needs, pinned to the worker's versions (pods run the same store code)."""
    return [f"{name}=={metadata.version(name)}" for name in RUNTIME_REQUIREMENTS]


def runtime_layer(target: Target, folder: Path | None = None) -> str | None:
    """Copy the worker's installed boto3, zstandard and their dependencies into ``folder`` when
    every one of them runs on ``target``; return a lock-like description of what was copied
    (its identity), or None when something does not fit (resolve and build with uv then).
    Without ``folder`` only the description."""
    dists = _closure(RUNTIME_REQUIREMENTS)
    described = []
    for dist in dists:
        tags = _wheel_tags(dist)
        if not tags or not fits(tags, target):
            return None
        described.append(f"{dist.metadata['Name']}=={dist.version} {' '.join(sorted(tags))}")
    header = (
        "# the worker's installed files (no index needed); botocore's models of "
        f"{', '.join(RUNTIME_SERVICES)} only\n"
    )
    if folder is None:
        return header + "\n".join(described) + "\n"
    folder.mkdir(parents=True, exist_ok=True)
    for dist in dists:
        root = Path(str(dist.locate_file(""))).resolve()
        for file in dist.files or []:
            source = Path(str(dist.locate_file(file))).resolve()
            if not source.is_relative_to(root) or source.suffix == ".pyc" or not source.is_file():
                continue  # scripts outside site-packages; bytecode of the worker's own
            relative = source.relative_to(root)
            if _unused_service(relative.parts):
                continue
            dest = folder / relative
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest)
    settle(folder)
    return header + "\n".join(described) + "\n"
