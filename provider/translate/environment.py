"""Execution environments for ``Environment(pip=[...])``: targets, locks and identities (pure).

An environment is resolved once on the worker with ``uv`` for the **target** the task runs on
(a Python major.minor and a platform), built into a folder with ``uv pip install --target``,
packed as one archive and stored content-addressed. Its identity is the hash of its lock (uv's
``pylock.toml``), the Python and the platform. Nothing here runs uv or touches a disk: see
``provider.core.environments.build``.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from provider.specs.platforms import ARCHES, DEFAULT_PLATFORM, target_platform

__all__ = ["DEFAULT_PLATFORM", "Target", "target_platform"]

#: Where a pod's environments are unpacked: an emptyDir, or the node path of
#: ``[flow_task] kubernetes_env_cache_path``, mounted here.
POD_ENV_CACHE = "/flowtask/env"
ARCHIVE_TYPE = "flowtask.environment"
ARCHIVE_ENCODING = "tar.gz"
LOCK_TYPE = "flowtask.environment_lock"
LOCK_ENCODING = "pylock.toml"
RUNTIME_REQUIREMENTS = ("boto3", "zstandard")  # what the runtime needs besides the stdlib


@dataclass(frozen=True)
class Target:
    """Where an environment runs: a Python ``X.Y`` and a platform.

    ``local`` is the worker itself: uv resolves for its interpreter, and the environment holds
    only what the worker's own environment lacks (it is laid in front of it).
    """

    python: str
    platform: str
    local: bool = False

    @property
    def arch(self) -> str:
        """``x86_64`` or ``aarch64`` (of a local target: the worker's machine)."""
        if self.local:
            import platform

            return ARCHES.get(platform.machine().lower(), platform.machine())
        return self.platform.split("-", 1)[0]

    def describe(self) -> str:
        where = "the worker" if self.local else self.platform
        return f"Python {self.python} on {where}"


def worker_target() -> Target:
    """The worker's own Python and platform (``compute="local"``)."""
    import sysconfig

    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    return Target(python=python, platform=sysconfig.get_platform(), local=True)


def remote_target(platform: str) -> Target:
    """A pod's or job's target: the worker's Python major.minor (the bootstrap insists on it)
    and ``platform``."""
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    return Target(python=python, platform=target_platform(platform))


def _digest(document: Any) -> str:
    text = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def index_key(requirements: Sequence[str], target: Target, base: str = "") -> str:
    """Requirements + target (+ the worker's packages, for a local target) -> the key of the
    worker's index and of the store's. The order of the requirements does not matter."""
    return _digest(
        {
            "requirements": sorted(requirements),
            "python": target.python,
            "platform": target.platform,
            "local": target.local,
            "base": base,
        }
    )


def base_fingerprint(installed: Iterable[tuple[str, str]], platform_tags: str = "") -> str:
    """The worker's installed distributions and its interpreter's ABI and platform tags (which
    name its C library), as one hash: a local environment is laid over those distributions, and
    resolved for that interpreter."""
    packages = sorted({f"{name}=={version}" for name, version in installed})
    return _digest({"packages": packages, "tags": platform_tags})


def environment_id(lock: str, target: Target) -> str:
    """An environment's identity: its lock, its Python and its platform."""
    return _digest({"lock": lock, "python": target.python, "platform": target.platform})[:32]


@dataclass(frozen=True)
class Locked:
    """One package of a lock: its name, version, and the wheel file it installs from."""

    name: str
    version: str
    wheel: str | None  # the file name; None for a source distribution

    @property
    def tags(self) -> list[str]:
        """The wheel's compatibility tags (``cp311-cp311-manylinux_2_17_aarch64``, ...)."""
        if self.wheel is None:
            return []
        python, abi, platforms = self.wheel[: -len(".whl")].split("-")[-3:]
        return [
            f"{p}-{a}-{plat}"
            for p in python.split(".")
            for a in abi.split(".")
            for plat in platforms.split(".")
        ]


def _toml(text: str) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    return tomllib.loads(text)


def locked_packages(lock: str) -> list[Locked]:
    """The packages of a ``pylock.toml``, in its order."""
    packages = []
    for package in _toml(lock).get("packages", []):
        wheels = package.get("wheels") or []
        wheel = wheels[0]["url"].rsplit("/", 1)[-1] if wheels else None
        packages.append(Locked(package["name"], str(package.get("version", "")), wheel))
    return packages


_BLOCK = "\n[[packages]]\n"


def lock_without_header(lock: str) -> str:
    """uv's ``pylock.toml`` without its comment header (which names the command that made it)."""
    lines = lock.splitlines(keepends=True)
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    return "".join(lines).lstrip("\n")


def lock_subset(lock: str, names: Iterable[str]) -> str:
    """The lock with only the packages named (uv's own layout: one ``[[packages]]`` block each)."""
    from packaging.utils import canonicalize_name

    keep = {canonicalize_name(name) for name in names}
    head, *blocks = lock.split(_BLOCK)
    kept = [
        block
        for block in blocks
        if canonicalize_name(_toml(block).get("name", "")) in keep  # each block is a table
    ]
    return _BLOCK.join([head, *kept]) if kept else head


class EnvironmentFailure(ValueError):
    """An environment that cannot be resolved or built; ``kind`` says why: ``unresolvable``,
    ``index`` (no package index reachable), ``no_wheel`` (none for the target platform) or
    ``build``. A retry cannot fix it."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


_NO_WHEEL = re.compile(r"Because (\S+?)(?:[=<>!~].*?)? has no wheels with a matching platform tag")
_NO_USABLE = re.compile(r"Because (\S+?)(?:[=<>!~].*?)? has no usable wheels")
_UNREACHABLE = (
    "error sending request",
    "Failed to fetch",
    "dns error",
    "tcp connect error",
    "Connection refused",
    "operation timed out",
    "Could not connect",
)


def uv_failure(
    output: str, requirements: Sequence[str], target: Target, *, resolving: bool
) -> EnvironmentFailure:
    """uv's error output as an :class:`EnvironmentFailure` that names the requirement(s), the
    target and uv's own words."""
    said = "\n".join(line for line in output.strip().splitlines() if line.strip())[-2000:]
    listed = ", ".join(repr(r) for r in requirements)
    wheel = _NO_WHEEL.search(output) or _NO_USABLE.search(output)
    if wheel is not None:
        return EnvironmentFailure(
            "no_wheel",
            f"environment.pip: {wheel[1]} has no wheel for {target.describe()} (requirements "
            f"{listed}); pick a version with such a wheel, or another target_platform. "
            f"uv said:\n{said}",
        )
    if "No solution found" in output or "not found in the package registry" in output:
        return EnvironmentFailure(
            "unresolvable",
            f"environment.pip: {listed} cannot be resolved for {target.describe()}. "
            f"uv said:\n{said}",
        )
    if any(mark in output for mark in _UNREACHABLE):
        doing = "resolving" if resolving else "downloading"
        return EnvironmentFailure(
            "index",
            f"environment.pip: no package index reachable while {doing} {listed} for "
            f"{target.describe()} (uv's index settings: UV_INDEX_URL, UV_EXTRA_INDEX_URL, "
            f"UV_FIND_LINKS, pip.conf/uv.toml). uv said:\n{said}",
        )
    return EnvironmentFailure(
        "build",
        f"environment.pip: uv could not {'resolve' if resolving else 'install'} {listed} for "
        f"{target.describe()}. uv said:\n{said}",
    )


def uv_common_args(target: Target, python: str) -> list[str]:
    """What selects the target in a ``uv pip compile`` or ``uv pip install``: the worker's own
    interpreter for a local target; else a Python version and platform, with wheels only (a
    wheel built on the worker is built for the worker, not for the target)."""
    if target.local:
        return ["--python", python]
    return [
        "--python",
        python,
        "--python-version",
        target.python,
        "--python-platform",
        target.platform,
        "--no-build",
    ]


def bootstrap_env_arg(key: str, size: int) -> str:
    """An environment archive as the bootstrap's ``--env`` takes it: ``KEY:SIZE``."""
    return f"{key}:{size}"


def env_cache_volume(node_path: str | None) -> tuple[Any, Any]:
    """The volume a pod unpacks its environments into, mounted at :data:`POD_ENV_CACHE`: the
    node folder ``node_path`` (shared by the node's pods), else an emptyDir of its own."""
    from kubernetes.client import models as k8s

    name = "flowtask-env"
    if node_path:
        source = k8s.V1HostPathVolumeSource(path=node_path, type="DirectoryOrCreate")
        volume = k8s.V1Volume(name=name, host_path=source)
    else:
        volume = k8s.V1Volume(name=name, empty_dir=k8s.V1EmptyDirVolumeSource())
    return volume, k8s.V1VolumeMount(name=name, mount_path=POD_ENV_CACHE)
