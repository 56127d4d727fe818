"""Environments on the worker: ``Environment(pip=[...])`` resolved and built once per
requirements and target, kept in the worker's cache, stored content-addressed and indexed in the
store (so any worker sharing it fetches instead of building: ``environment_index``), and
recorded in the try's launch manifest (which keeps them alive for ``flowtask gc``).

``local`` gets the task's environment as a folder laid in front of the worker's own packages;
``kubernetes`` and ``batch`` get archives the container's bootstrap fetches and unpacks: the
task's, and the runtime's own (boto3 and zstandard, for an ``s3://`` store).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provider.core.environments import index as store_index
from provider.core.environments.cache import ARCHIVE, SITE, EnvironmentCache
from provider.store import ArtifactStore, Reference
from provider.translate.environment import (
    ARCHIVE_ENCODING,
    ARCHIVE_TYPE,
    LOCK_ENCODING,
    LOCK_TYPE,
    EnvironmentFailure,
    Target,
    base_fingerprint,
    environment_id,
    index_key,
    lock_subset,
    locked_packages,
)


@dataclass
class BuiltEnvironment:
    """An environment ready for a try: stored, and (for a local target) unpacked here."""

    env_id: str
    target: Target
    requirements: tuple[str, ...]
    archive: Reference | None  # None: the worker already has everything (local)
    lock: Reference | None
    packages: dict[str, str]
    how: str  # "built", "fetched" (from the store), "cached" (on this worker)
    seconds: float
    folder: Path | None = None
    from_worker: dict[str, str] = field(default_factory=dict)  # local: what the worker has
    hold: int | None = None  # a descriptor keeping the cache entry in use

    def record(self) -> dict[str, Any]:
        """What the launch manifest says of it (its references keep it alive for gc)."""
        document: dict[str, Any] = {
            "id": self.env_id,
            "python": self.target.python,
            "platform": self.target.platform,
            "requirements": list(self.requirements),
            "packages": self.packages,
            "how": self.how,
            "seconds": round(self.seconds, 3),
        }
        if self.from_worker:
            document["from_worker"] = self.from_worker
        if self.archive is not None and self.lock is not None:
            document["archive"] = self.archive.to_json()
            document["lock"] = self.lock.to_json()
        return document

    def describe(self) -> str:
        if self.archive is None and self.target.local:
            have = ", ".join(
                f"{name} {version}" for name, version in sorted(self.from_worker.items())
            )
            return f"the worker's own packages satisfy {list(self.requirements)} ({have})"
        packages = ", ".join(f"{name} {version}" for name, version in sorted(self.packages.items()))
        how = {"built": "built", "fetched": "fetched from the store", "cached": "found cached"}
        return (
            f"environment {self.env_id[:12]} for {self.target.describe()}: {how[self.how]} in "
            f"{self.seconds:.2f}s ({len(self.packages)} packages: {packages or 'none'})"
        )


def default_cache() -> EnvironmentCache:
    from provider import settings

    return EnvironmentCache(
        settings.environment_cache_root(), settings.value("environment_cache_size")
    )


def ensure_environment(
    store: ArtifactStore,
    requirements: tuple[str, ...] | list[str],
    target: Target,
    *,
    cache: EnvironmentCache,
    log: Any,
    runtime: bool = False,
) -> BuiltEnvironment:
    """The environment of ``requirements`` for ``target``: from the worker's cache, else through
    the store's index (fetched), else resolved and built; stored; and for a local target
    unpacked here.

    A stored archive or lock found again is checked and its age renewed as a dedup hit does
    (:meth:`ArtifactStore.reuse`). ``runtime`` builds the runtime's own environment (from the
    worker's installed copies when they fit the target). Raises :class:`EnvironmentFailure`.
    """
    from provider.core.environments import build as uv

    started = time.monotonic()
    requirements = tuple(requirements)
    installed = uv.installed_versions() if target.local else {}
    if target.local:
        base = base_fingerprint(installed.items(), uv.worker_platform_tags())
    else:
        base = "runtime" if runtime else ""
    key = index_key(requirements, target, base)
    with cache.locked(key):
        entry, indexed = _look_up(store, cache, key, target)
        if entry is None:
            lock, from_worker = resolve_layer(requirements, target, installed, runtime, log)
            env_id = environment_id(lock, target)
            archive_ref = lock_ref = None
        else:
            lock, env_id = entry["lock_text"], entry["id"]
            from_worker = entry.get("from_worker", {})
            archive_ref = _ref(entry.get("archive"), store)
            lock_ref = _ref(entry.get("lock"), store)
        if target.local and not lock_packages(lock):  # the worker has it all
            if entry is None:
                cache.write_index(key, {"id": env_id, "lock_text": lock, "packages": {},
                                        "from_worker": from_worker})  # fmt: skip
            return _nothing(env_id, target, requirements, from_worker, started)
        stored = archive_ref is not None and store.reuse(archive_ref)
        how = "cached"
        if not cache.complete(env_id, site=target.local):
            if stored and archive_ref is not None:
                _fetch(store, archive_ref, cache, env_id, site=target.local)
                how = "fetched"
            else:
                _build(lock, target, cache, env_id, requirements, runtime)
                how = "built"
        entry_dir = cache.entry(env_id)
        if archive_ref is None or not stored:
            archive_ref = store.put_file(
                entry_dir / ARCHIVE, type_name=ARCHIVE_TYPE, encoding=ARCHIVE_ENCODING
            )
        if lock_ref is None or not store.reuse(lock_ref):
            lock_ref = store.put_bytes(lock.encode(), type_name=LOCK_TYPE, encoding=LOCK_ENCODING)
        packages = entry["packages"] if entry else _packages(entry_dir / SITE, lock)
        document = {
            "id": env_id,
            "requirements": sorted(requirements),
            "python": target.python,
            "platform": target.platform,
            "lock_text": lock,
            "archive": archive_ref.to_json(),
            "lock": lock_ref.to_json(),
            "packages": packages,
            "from_worker": from_worker,
        }
        _index(store, cache, key, document, entry if indexed else None)
        hold = cache.use(env_id)
        if not target.local:
            shutil.rmtree(entry_dir / SITE, ignore_errors=True)  # the archive is what travels
    dropped = cache.evict(keep={env_id})
    if dropped:
        log.info("environment cache: dropped %s (least recently used)", ", ".join(dropped))
    return BuiltEnvironment(
        env_id=env_id,
        target=target,
        requirements=requirements,
        archive=archive_ref,
        lock=lock_ref,
        packages=packages,
        how=how,
        seconds=time.monotonic() - started,
        folder=entry_dir / SITE if target.local else None,
        from_worker=from_worker,
        hold=hold,
    )


def _look_up(
    store: ArtifactStore, cache: EnvironmentCache, key: str, target: Target
) -> tuple[dict[str, Any] | None, bool]:
    """The index entry of ``key``: this worker's own, else the store's (one GET: another worker
    built it); and whether the store's index is known to hold it."""
    entry = cache.read_index(key)
    if entry is not None:
        return entry, entry.get("indexed_in") == store.root_uri
    entry = store_index.read_entry(store, key, target)
    return entry, entry is not None


def _index(
    store: ArtifactStore,
    cache: EnvironmentCache,
    key: str,
    document: dict[str, Any],
    held: dict[str, Any] | None,
) -> None:
    """Write ``document`` to the store's index (so any worker finds it) unless it ``held`` it
    already, and to this worker's, marked as held by this store."""
    if held is None or {name: held.get(name) for name in document} != document:
        store_index.write_entry(store, key, document)
    cache.write_index(key, {**document, "indexed_in": store.root_uri})


def lock_packages(lock: str) -> list[str]:
    """The package names a lock (uv's, or the runtime layer's description) installs."""
    if lock.startswith("#"):  # the runtime layer: "name==version tags" lines
        return [line.split("==")[0] for line in lock.splitlines()[1:] if line]
    return [p.name for p in locked_packages(lock)]


def resolve_layer(
    requirements: tuple[str, ...],
    target: Target,
    installed: dict[str, str],
    runtime: bool,
    log: Any,
) -> tuple[str, dict[str, str]]:
    """The environment's lock; for a local target only what the worker lacks (and what it
    has at other versions), the rest listed as coming from the worker."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    from provider.core.environments import build as uv

    if runtime and not target.local:
        described = uv.runtime_layer(target)
        if described is not None:
            return described, {}
    if not target.local:
        return uv.resolve(requirements, target), {}
    satisfied = uv.worker_satisfies(requirements)
    if satisfied is not None:  # the worker has it all: no index, no environment
        return "", satisfied
    named = {canonicalize_name(Requirement(line).name) for line in requirements}
    preferred = [f"{n}=={v}" for n, v in sorted(installed.items()) if n not in named]
    try:
        lock = uv.resolve(requirements, target, constraints=preferred)
    except EnvironmentFailure as failure:
        if failure.kind != "unresolvable":
            raise
        log.info("the worker's own versions do not fit %s: resolved without them", requirements)
        lock = uv.resolve(requirements, target)
    packages = locked_packages(lock)
    from_worker = {
        p.name: p.version for p in packages if installed.get(canonicalize_name(p.name)) == p.version
    }
    layer = [p.name for p in packages if p.name not in from_worker]
    return lock_subset(lock, layer), from_worker


def _build(
    lock: str,
    target: Target,
    cache: EnvironmentCache,
    env_id: str,
    requirements: tuple[str, ...],
    runtime: bool,
) -> None:
    """Install the lock into a staged entry, pack it, and move it into place."""
    from provider.core.environments import build as uv

    staging = cache.staging(env_id)
    try:
        site = staging / SITE
        if lock.startswith("#") and runtime:
            if uv.runtime_layer(target, site) is None:
                raise EnvironmentFailure("build", "the worker's runtime packages changed")
        else:
            uv.build(lock, target, site, requirements=requirements)
        uv.pack(site, staging / ARCHIVE)
        cache.finish(staging, env_id)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _fetch(
    store: ArtifactStore, ref: Reference, cache: EnvironmentCache, env_id: str, *, site: bool
) -> None:
    """Fetch a stored archive (hash checked) into a staged entry, unpack it, move it in place."""
    from provider.core.environments import build as uv

    staging = cache.staging(env_id)
    try:
        (staging / ARCHIVE).write_bytes(store.get_bytes(ref))
        if site:
            uv.unpack(staging / ARCHIVE, staging / SITE)
        cache.finish(staging, env_id)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _nothing(
    env_id: str,
    target: Target,
    requirements: tuple[str, ...],
    from_worker: dict[str, str],
    started: float,
) -> BuiltEnvironment:
    return BuiltEnvironment(
        env_id=env_id,
        target=target,
        requirements=requirements,
        archive=None,
        lock=None,
        packages={},
        how="cached",
        seconds=time.monotonic() - started,
        from_worker=from_worker,
    )


def _packages(site: Path, lock: str) -> dict[str, str]:
    """Name -> version of what an environment holds (its dist-info folders)."""
    found = {}
    for dist in sorted(site.glob("*.dist-info")):
        name, _, version = dist.name[: -len(".dist-info")].rpartition("-")
        found[name] = version
    if found or lock.startswith("#"):
        return found
    return {p.name: p.version for p in locked_packages(lock)}


def _ref(document: Any, store: ArtifactStore) -> Reference | None:
    """An indexed reference, in ``store`` (the index outlives a change of artifact store: the
    content, its hash, is what the index knows)."""
    if not isinstance(document, dict):
        return None
    ref = Reference.from_json(document)
    return Reference(store.blob_uri(ref.sha256), ref.sha256, ref.size, ref.type, ref.encoding)


def warn_conflicts(requirements: tuple[str, ...], log: Any) -> None:
    """A requirement the worker's own installed version does not satisfy, named with both
    versions: locally the task gets the environment's, in front of the worker's."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import Requirement

    for line in requirements:
        requirement = Requirement(line)
        try:
            installed = version(requirement.name)
        except PackageNotFoundError:
            continue
        if requirement.specifier and not requirement.specifier.contains(
            installed, prereleases=True
        ):
            log.warning(
                "environment.pip %r conflicts with the worker's %s %s: the task gets the "
                "environment's version, laid in front of the worker's (whose own environment "
                "is unchanged)",
                line,
                requirement.name,
                installed,
            )


# --- what each target gets ----------------------------------------------------------------


@dataclass
class TaskEnvironments:
    """A try's environments: the task's (``Environment(pip=...)``) and the runtime's own."""

    task: BuiltEnvironment | None = None
    runtime: BuiltEnvironment | None = None

    def records(self) -> dict[str, Any]:
        """For the launch manifest."""
        found: dict[str, Any] = {}
        if self.task is not None:
            found["environment"] = self.task.record()
        if self.runtime is not None:
            found["runtime_environment"] = self.runtime.record()
        return found

    @property
    def archives(self) -> list[Reference]:
        """What a container's bootstrap fetches, in ``sys.path`` order."""
        built = (self.task, self.runtime)
        return [env.archive for env in built if env is not None and env.archive is not None]

    @property
    def arch(self) -> str | None:
        built = self.task or self.runtime
        return None if built is None else built.target.arch

    @property
    def pythonpath(self) -> str | None:
        """A local runtime's ``PYTHONPATH``: the task's environment in front."""
        folder = self.task.folder if self.task is not None else None
        return None if folder is None else str(folder)


def task_environments(run: Any, *, local: bool, platform: str | None = None) -> TaskEnvironments:
    """Resolve, build and store what a try of ``run`` needs (on this worker, ``local``, or in
    a container of ``platform``); ``CannotRun`` when that cannot work, before anything is
    launched."""
    from provider import settings
    from provider.core.environments.build import runtime_requirements
    from provider.core.errors import CannotRun
    from provider.translate.environment import remote_target, worker_target

    requirements = tuple(run.spec.environment.pip)
    cache = default_cache()
    found = TaskEnvironments()
    try:
        if local:
            if requirements:
                warn_conflicts(requirements, run.log)
                found.task = ensure_environment(
                    run.store, requirements, worker_target(), cache=cache, log=run.log
                )
        else:
            target = remote_target(platform or settings.value("target_platform"))
            if requirements:
                found.task = ensure_environment(
                    run.store, requirements, target, cache=cache, log=run.log
                )
            if run.store.root_uri.startswith("s3://"):
                found.runtime = ensure_environment(
                    run.store,
                    runtime_requirements(),
                    target,
                    cache=cache,
                    log=run.log,
                    runtime=True,
                )
    except EnvironmentFailure as exc:
        raise CannotRun(str(exc)) from None
    for name, built in (("environment", found.task), ("runtime environment", found.runtime)):
        if built is not None:
            run.log.info("%s: %s", name, built.describe())
    return found


def hold_released(found: TaskEnvironments) -> None:
    """Let the cache drop the try's environments again (when the try ends)."""
    for built in (found.task, found.runtime):
        if built is not None and built.hold is not None:
            os.close(built.hold)
            built.hold = None


@dataclass
class ContainerEnvironments:
    """What a container's bootstrap gets: the archives (in ``sys.path`` order) and the machine
    they were built for; kept in a deferred try's state to rebuild the same command."""

    archives: list[Reference]
    arch: str | None
    found: TaskEnvironments | None = None

    def records(self) -> dict[str, Any]:
        return {} if self.found is None else self.found.records()

    def state(self) -> dict[str, Any]:
        return {"archives": [ref.to_json() for ref in self.archives], "arch": self.arch}

    @classmethod
    def from_state(cls, state: Any) -> ContainerEnvironments:
        state = state or {}
        archives = [Reference.from_json(ref) for ref in state.get("archives", [])]
        return cls(archives, state.get("arch"))


def container_environments(run: Any, platform: str | None) -> ContainerEnvironments:
    """Build and store a container try's environments (see :func:`task_environments`)."""
    found = task_environments(run, local=False, platform=platform)
    return ContainerEnvironments(found.archives, found.arch, found)
