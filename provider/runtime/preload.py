"""What a warm runtime imports before it forks, beyond the runtime: the modules its tasks import.

A fork reports the top-level modules it imported (:func:`imported_since`); the worker keeps a
small record per interpreter shape (:class:`Record`, a JSON file beside the server's socket)
and :func:`plan` picks what the next generation of the server preloads. The server imports
them with :func:`preload`, one at a time, and keeps only what a fork can inherit unchanged:

- no module of :data:`DENY` (they initialise devices or runtimes that do not survive a fork);
- no module whose import started a Python thread, nor native threads, except the thread pools
  of :data:`FORK_SAFE_POOLS` (native libraries that make them anew after a fork);
- no module that reads the whole environment at import; the variables a module reads (or
  sets) at import are kept (:attr:`Preloaded.reads`): a task whose own value of one differs
  runs in a new interpreter instead, and what an import set is set again in each fork;
- within a memory budget (the server's resident memory grown by preloading).

A module that fails a check taints the server (it is imported already): :func:`preload` says
which (:class:`Refused`), the server records the verdict and starts again without it.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import importlib
import json
import os
import sys
import threading
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Imports that initialise a device or a runtime that does not survive ``fork``.
DENY: dict[str, str] = {
    **dict.fromkeys(
        ("tensorflow", "jax", "jaxlib", "cupy", "pycuda", "pyopencl", "tensorrt", "mxnet"),
        "initialises devices or thread pools that do not survive a fork",
    ),
    **dict.fromkeys(("paddle", "ray"), "starts a runtime that does not survive a fork"),
    "grpc": "its core is not fork-safe unless GRPC_ENABLE_FORK_SUPPORT is set before import",
    "airflow": "reads its configuration and the task's environment at import",
    "provider": "the runtime's own package",
}
#: Native libraries that start a thread pool as they load and make it anew in a forked child,
#: by the name of their file: OpenBLAS (numpy's, scipy's) shuts its pool down before a fork
#: (``pthread_atfork``) and starts it again on first use; jemalloc, inside pyarrow's libarrow,
#: turns its background thread off in the child. An import that starts native threads is
#: preloaded only when it loaded one of these. tests/test_warm_preload.py computes with each
#: in a fork.
FORK_SAFE_POOLS: dict[str, str] = {
    "openblas": "OpenBLAS",
    "libarrow.so": "jemalloc",
}
DEFAULT_BUDGET_MIB = 512
WANTED_AFTER = 2  # a module imported by this many of the recent tasks is preloaded
RECENT = 20  # how many tasks the record remembers per interpreter shape
MAX_REPORTED = 500


@dataclass(frozen=True)
class PreloadSettings:
    """``[flow_task] warm_runtime_preload`` and ``warm_runtime_preload_mib``: ``auto`` learns
    from the tasks, ``off`` preloads nothing, ``listed`` preloads ``modules``."""

    mode: str = "auto"  # "auto" | "off" | "listed"
    modules: tuple[str, ...] = ()
    budget_mib: int = DEFAULT_BUDGET_MIB


def parse_settings(raw: str, budget: str = str(DEFAULT_BUDGET_MIB)) -> PreloadSettings:
    """``auto``, ``off`` or a comma-separated list of module names; ValueError naming the
    option, the value and the accepted form."""
    try:
        mib = int(budget)
    except ValueError:
        mib = -1
    if mib < 0:
        raise ValueError(
            f"[flow_task] warm_runtime_preload_mib={budget!r} is invalid. Accepted: a "
            "non-negative int of MiB (0 preloads nothing)"
        )
    value = raw.strip()
    if value in ("auto", "off"):
        return PreloadSettings(value, (), mib)
    names = tuple(name.strip() for name in value.split(","))
    bad = [name for name in names if not all(part.isidentifier() for part in name.split("."))]
    if not value or bad:
        raise ValueError(
            f"[flow_task] warm_runtime_preload={raw!r} is invalid: {bad[0]!r} is not a module "
            "name. Accepted: auto, off, or module names separated by commas (numpy,pandas)"
            if bad
            else f"[flow_task] warm_runtime_preload={raw!r} is invalid. Accepted: auto, off, "
            "or module names separated by commas (numpy,pandas)"
        )
    return PreloadSettings("listed", names, mib)


# --- the record of one interpreter shape ----------------------------------------------------


class Record:
    """``<server name>.json`` beside the socket files: what recent tasks imported, which
    modules failed a check (and why), what each cost, and which server is being started.
    Read and written under an exclusive lock on the file."""

    def __init__(self, path: str) -> None:
        self.path = path

    @contextlib.contextmanager
    def edit(self) -> Iterator[dict[str, Any]]:
        """The record's content, written back when the block ends without an error."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "r+") as file:
            fcntl.flock(fd, fcntl.LOCK_EX)
            text = file.read()
            try:
                content = json.loads(text) if text else {}
            except ValueError:
                content = {}  # a record cut short by a crash: start it again
            if not isinstance(content, dict):
                content = {}
            yield content
            file.seek(0)
            file.truncate()
            file.write(json.dumps(content, sort_keys=True))

    def read(self) -> dict[str, Any]:
        with self.edit() as content:
            return dict(content)


def remember(content: dict[str, Any], event: dict[str, list[str]]) -> None:
    """Add one task's event (``{"imported": [...]}`` or ``{"refused": [...]}``)."""
    content["recent"] = [*content.get("recent", []), event][-RECENT:]


def plan(content: Mapping[str, Any], settings: PreloadSettings) -> list[str]:
    """What the next server of this shape preloads, in order: by how many recent tasks
    imported them (listed ones in their order); none that failed a check, and within the
    budget by each module's known cost."""
    if settings.mode == "off" or settings.budget_mib <= 0:
        return []
    verdicts = content.get("verdicts", {})
    recent = content.get("recent", [])
    refused = Counter(name for event in recent for name in event.get("refused", ()))
    if settings.mode == "listed":  # in the order listed
        counts: Counter[str] = Counter(
            {name: RECENT + len(settings.modules) - i for i, name in enumerate(settings.modules)}
        )
    else:
        counts = Counter(name for event in recent for name in event.get("imported", ()))

    def fit(name: str) -> bool:
        return name not in DENY and name not in verdicts and refused[name] < WANTED_AFTER

    names = sorted(
        (name for name, count in counts.items() if count >= WANTED_AFTER and fit(name)),
        key=lambda name: (-counts[name], name),
    )
    costs = content.get("costs", {})
    chosen, spent = [], 0.0
    for name in names:
        cost = float(costs.get(name, 0.0))
        if spent + cost <= settings.budget_mib:
            chosen.append(name)
            spent += cost
    return chosen


def excluded_for_cause(content: Mapping[str, Any], modules: Sequence[str]) -> list[str]:
    """Those of ``modules`` that the record now keeps out (a verdict, or refused tasks)."""
    recent = content.get("recent", [])
    refused = Counter(name for event in recent for name in event.get("refused", ()))
    verdicts = content.get("verdicts", {})
    return [m for m in modules if m in verdicts or refused[m] >= WANTED_AFTER]


# --- in a fork: what it imported ------------------------------------------------------------


def top_level(names: Sequence[str] | set[str]) -> set[str]:
    return {name.partition(".")[0] for name in names}


def import_roots(cwd: str) -> tuple[str, ...]:
    """Where an installed module comes from: this interpreter's path, less the working
    directory (``python -m`` puts it first; its modules are no installation)."""
    here = os.path.realpath(cwd)
    roots = {os.path.realpath(entry) for entry in sys.path if entry}
    return tuple(sorted(root + os.sep for root in roots if root != here))


def _origin(module: Any) -> str | None:
    path = getattr(module, "__file__", None)
    if path is None:
        locations = list(getattr(module, "__path__", None) or ())
        path = locations[0] if locations else None
    return os.path.realpath(path) if isinstance(path, str) else None


def imported_since(before: set[str], roots: tuple[str, ...]) -> list[str]:
    """Top-level modules imported since ``before`` (top-level names) that an installation
    provides (under ``roots``): not the standard library, not the DAG folder's code package,
    not a private accelerator module (``_cffi_backend``: its package imports it)."""
    found: set[str] = set()
    for name in top_level(list(sys.modules)) - before:
        if name.startswith("_") or name in sys.stdlib_module_names or name in DENY:
            continue
        origin = _origin(sys.modules.get(name))
        if origin is not None and origin.startswith(roots):
            found.add(name)
    return sorted(found)[:MAX_REPORTED]


def note_imports(preloaded: Sequence[str]) -> set[str]:
    """From now on, the preloaded modules an ``import`` statement asks for (they are loaded
    already, so nothing else tells): what the task uses of them. Returns the set it fills."""
    watched, used = frozenset(preloaded), set[str]()
    if not watched:
        return used
    original = builtins.__import__

    def noting(name: str, *args: Any, **kwargs: Any) -> Any:
        top = name.partition(".")[0]
        if top in watched and not (args[3:4] and args[3]):  # absolute imports only
            used.add(top)
        return original(name, *args, **kwargs)

    builtins.__import__ = noting
    return used


def reseed_after_fork() -> None:
    """Random state a library seeded from the OS as it was imported: in a fork it is the
    server's, the same in every fork. A new interpreter seeds its own; so does a fork.
    (Python's ``random`` reseeds itself after a fork.)"""
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None and hasattr(numpy_random, "seed"):
        numpy_random.seed()


# --- in the server: importing -----------------------------------------------------------------


class _Watched(os._Environ[str]):
    """``os.environ`` while a module is imported: what it reads and writes is noted."""

    def __getitem__(self, key: str) -> str:
        _WATCH.reads.add(key)
        return super().__getitem__(key)

    def __setitem__(self, key: str, value: str) -> None:
        _WATCH.writes.add(key)
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        _WATCH.writes.add(key)
        super().__delitem__(key)

    def __iter__(self) -> Iterator[str]:
        _WATCH.whole = True
        return super().__iter__()


@dataclass
class _Watch:
    reads: set[str] = field(default_factory=set)
    writes: set[str] = field(default_factory=set)
    whole: bool = False


_WATCH = _Watch()


@contextlib.contextmanager
def watching_environment() -> Iterator[_Watch]:
    """Note the environment variables read and set (through ``os.environ``) meanwhile."""
    global _WATCH
    _WATCH = _Watch()
    kind = os.environ.__class__
    os.environ.__class__ = _Watched
    try:
        yield _WATCH
    finally:
        os.environ.__class__ = kind


def native_libraries() -> set[str]:
    """The shared libraries mapped into this process."""
    with open("/proc/self/maps") as maps:
        return {line.split()[-1] for line in maps if ".so" in line.rpartition("/")[2]}


def os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def resident_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@dataclass
class Preloaded:
    """What a server preloaded: the modules, the variables their imports read (with the
    server's values, None for unset, and who read them), the files to watch for an upgrade,
    and the resident memory it cost."""

    modules: list[str] = field(default_factory=list)
    reads: dict[str, str | None] = field(default_factory=dict)
    readers: dict[str, list[str]] = field(default_factory=dict)
    stamps: dict[str, tuple[int, int]] = field(default_factory=dict)
    costs: dict[str, float] = field(default_factory=dict)
    writes: dict[str, str | None] = field(default_factory=dict)  # what imports set (None: unset)


@dataclass
class Refused(Exception):
    """``module`` failed a check (``verdict``) and is loaded already: start again without it."""

    module: str
    verdict: str
    cost_mib: float = 0.0


def stamp(path: str) -> tuple[int, int] | None:
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_mtime_ns, found.st_size


def preload(
    modules: Sequence[str], budget_mib: float, roots: tuple[str, ...], done: Preloaded
) -> Preloaded:
    """Import ``modules`` into this process, adding to ``done``; :class:`Refused` at the
    first one that fails a check (the process is no longer fit to fork from)."""
    base = resident_mib() - sum(done.costs.values())
    for name in modules:
        if name in DENY:
            raise Refused(name, f"denied: {DENY[name]}")
        if name in sys.modules:  # what an earlier one imported: preloaded too
            if name not in done.modules:
                done.modules.append(name)
            continue
        before = top_level(list(sys.modules))
        environment, libraries = dict(os.environ), native_libraries()
        python_threads, native_threads = threading.active_count(), os_threads()
        resident = resident_mib()
        with watching_environment() as watch:
            try:
                importlib.import_module(name)
            except (Exception, SystemExit) as exc:  # whatever it raised, it is not loaded
                raise Refused(name, f"failed to import: {type(exc).__name__}: {exc}") from None
        cost = resident_mib() - resident
        new = top_level(list(sys.modules)) - before
        if threading.active_count() > python_threads:
            raise Refused(name, "started a Python thread at import", cost)
        pools = {
            pool
            for path in native_libraries() - libraries
            for key, pool in FORK_SAFE_POOLS.items()
            if key in os.path.basename(path)
        }
        if os_threads() > native_threads and not pools:
            raise Refused(name, "started native threads at import", cost)
        if watch.whole:
            raise Refused(name, "reads the whole environment at import", cost)
        if resident_mib() - base > budget_mib:
            raise Refused(name, f"over the preload budget of {budget_mib:g} MiB", cost)
        origin = _origin(sys.modules.get(name))
        if origin is None or not origin.startswith(roots):
            raise Refused(name, "not an installed module (found in the working directory)")
        for variable in sorted(watch.reads | watch.writes):  # as they were before it
            done.reads.setdefault(variable, environment.get(variable))
            done.readers.setdefault(variable, []).append(name)
        for variable in sorted(watch.writes):
            done.writes[variable] = os.environ.get(variable)
        for top in sorted(new):
            path = _origin(sys.modules.get(top))
            found = stamp(path) if path else None
            if path and found:
                done.stamps[path] = found
        done.modules.append(name)
        done.costs[name] = round(cost, 1)
    return done


def changed(stamps: Mapping[str, tuple[int, int]]) -> str | None:
    """The first preloaded file that is no longer what was imported (an upgrade), or None."""
    for path, was in stamps.items():
        if stamp(path) != tuple(was):
            return path
    return None


def differing(preloaded: Preloaded, env: Mapping[str, str]) -> dict[str, list[str]]:
    """Variables a preloaded import read whose value in ``env`` differs from the server's,
    with the modules that read them."""
    return {
        name: preloaded.readers.get(name, [])
        for name, value in preloaded.reads.items()
        if env.get(name) != value
    }
