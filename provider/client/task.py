"""A run's tasks and their tries, read from the manifests under ``runs/<dag>/<run>/``."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from provider.client.errors import NoResult, UnknownTask
from provider.store import ArtifactStore, MissingArtifact, is_reference
from provider.store.errors import BadManifest

_READ_THREADS = 16


@dataclass
class TaskLayout:
    """What one task stored in a run: per map index, its tries' files and its XCom manifests."""

    part: str  # the task's key segment
    tries: dict[int, dict[int, set[str]]] = field(default_factory=dict)
    xcom: dict[int, set[str]] = field(default_factory=dict)

    @property
    def map_indexes(self) -> list[int]:
        return sorted(set(self.tries) | set(self.xcom))


def scan_run(store: ArtifactStore, prefix: str) -> dict[str, TaskLayout]:
    """Every task of the run under ``prefix`` from one listing, by key segment."""
    tasks: dict[str, TaskLayout] = {}
    for key in store.backend.list(prefix):
        parts = key[len(prefix) + 1 :].split("/")
        if len(parts) != 4:
            continue
        part, index, middle, name = parts
        try:
            map_index = int(index)
        except ValueError:
            continue
        layout = tasks.setdefault(part, TaskLayout(part))
        if middle == "xcom":
            layout.xcom.setdefault(map_index, set()).add(name)
        elif middle.isdigit():
            layout.tries.setdefault(map_index, {}).setdefault(int(middle), set()).add(name)
    return tasks


def scan_instance(store: ArtifactStore, prefix: str, part: str, map_index: int) -> TaskLayout:
    """One task instance of the run under ``prefix``, from listings of its own folder only: its
    try folders (one delimited listing), then each try's files (in parallel). A ``.foreach``'s
    chunk manifests, kept beside the tries, are never listed."""
    layout = TaskLayout(part)
    base = f"{prefix}/{part}/{map_index}"
    folders = [name for name in store.backend.children(base) if name.isdigit() or name == "xcom"]
    if not folders:
        return layout

    def files(name: str) -> list[str]:
        folder = f"{base}/{name}/"
        found = (key[len(folder) :] for key in store.backend.list(folder.rstrip("/")))
        return [rest for rest in found if "/" not in rest]

    with ThreadPoolExecutor(min(_READ_THREADS, len(folders))) as pool:
        listed = list(pool.map(files, folders))
    for name, names in zip(folders, listed, strict=True):
        if name == "xcom":
            layout.xcom[map_index] = set(names)
        elif names:
            layout.tries.setdefault(map_index, {})[int(name)] = set(names)
    return layout


def task_id_of(store: ArtifactStore, prefix: str, layout: TaskLayout) -> str:
    """The task id a key segment stands for; a shortened (hashed) one is read from a manifest."""
    if "~" not in layout.part:
        return unquote(layout.part)
    for map_index, tries in layout.tries.items():
        for number, names in tries.items():
            for name in ("result.json", "launch.json"):
                if name in names:
                    key = f"{prefix}/{layout.part}/{map_index}/{number}/{name}"
                    task_id = _read(store, key).get("task_id")
                    if isinstance(task_id, str):
                        return task_id
    return unquote(layout.part)


def _read(store: ArtifactStore, key: str) -> dict[str, Any]:
    try:
        return store.read_manifest(key)
    except (MissingArtifact, BadManifest):
        return {}


def _read_all(store: ArtifactStore, keys: list[str]) -> list[dict[str, Any]]:
    return store.in_parallel(lambda key: _read(store, key), keys)


def load(store: ArtifactStore, result: Any) -> Any:
    """A stored result (a reference, or a list / dict of them) as its value; every read checks
    size, SHA-256 and that the reference is inside this store."""
    from provider.runtime.run import resolve_references

    return resolve_references(result, store)


def describe(result: Any) -> tuple[str, int]:
    """A stored result's short description and its size in bytes, without loading it."""
    if is_reference(result):
        return str(result.get("preview") or result.get("type")), int(result.get("size", 0))
    if isinstance(result, list):
        refs = [r for r in result if is_reference(r)]
        return f"list of {len(result)} stored items", sum(int(r.get("size", 0)) for r in refs)
    if isinstance(result, dict):
        refs = [r for r in result.values() if is_reference(r)]
        names = ", ".join(list(result)[:4]) + (", ..." if len(result) > 4 else "")
        size = sum(int(r.get("size", 0)) for r in refs)
        return f"dict of {len(result)} stored values: {names}", size
    return type(result).__name__, 0


class Try:
    """One try of one task instance: its status, failure and usage, from its manifests."""

    def __init__(
        self,
        store: ArtifactStore,
        task_id: str,
        map_index: int,
        number: int,
        manifest: dict,
        launch_key: str | None = None,
    ) -> None:
        self._store = store
        self.task_id = task_id
        self.map_index = map_index
        self.number = number
        self.manifest = manifest
        self._launch_key = launch_key  # the worker's launch manifest, when the result's differs

    @property
    def status(self) -> str:
        """``succeeded``, ``failed``, or ``running`` (launched, no result manifest yet)."""
        return str(self.manifest.get("status") or "running")

    @property
    def error(self) -> dict[str, str] | None:
        """``{"type", "message"}`` of a failed try."""
        return self.manifest.get("error")

    @property
    def exit_code(self) -> int | None:
        return self.manifest.get("exit_code")

    @property
    def compute(self) -> str | None:
        return self.manifest.get("compute")

    @property
    def started_at(self) -> float | None:
        return self.manifest.get("started_at") or self.manifest.get("launched_at")

    @property
    def finished_at(self) -> float | None:
        return self.manifest.get("finished_at")

    @property
    def usage(self) -> dict[str, float]:
        """What the runtime measured: ``seconds``, ``function_seconds``, ``peak_rss_mib``,
        ``cpu_seconds``, ``wall_seconds`` (and ``gpu_memory_mib`` where it could see it)."""
        names = ("seconds", "function_seconds", "peak_rss_mib", "bootstrap_seconds")
        found = {name: self.manifest[name] for name in names if name in self.manifest}
        return {**found, **(self.manifest.get("usage") or {})}

    @property
    def requested(self) -> dict[str, Any]:
        """What the try asked for: ``cpu`` (cores), ``memory_mib``, ``gpu``. A result manifest
        that does not say (a ``.foreach``'s, gathered by the worker) leaves it to the launch
        manifest, which every launched try has."""
        asked = self.manifest.get("requested")
        if asked is None and self._launch_key is not None:
            asked = _read(self._store, self._launch_key).get("requested")
        return dict(asked or {})

    @property
    def result(self) -> Any:
        """The stored result's reference(s), not loaded; None unless the try succeeded."""
        return self.manifest.get("result") if self.status == "succeeded" else None

    @property
    def failure(self) -> Any:
        """The ``provider.Failure`` a failed try stored (type, message, traceback), loaded."""
        ref = self.manifest.get("failure")
        return self._store.get(ref) if ref else None

    @property
    def data(self) -> Any:
        if self.status != "succeeded":
            raise NoResult(f"{self._name()} did not succeed ({self.status})")
        return load(self._store, self.manifest.get("result"))

    def _name(self) -> str:
        index = f"[{self.map_index}]" if self.map_index >= 0 else ""
        return f"try {self.number} of task {self.task_id}{index}"

    def __repr__(self) -> str:
        where = f"{self.task_id!r}, map_index={self.map_index}, number={self.number}"
        return f"Try({where}, status={self.status!r})"


class Task:
    """A task of a run: ``data`` is the result of its latest successful try.

    A mapped task (``.expand``) holds one instance per map index: ``task[3].data``, or iterate
    over ``task``; ``task.data`` of a mapped task refuses to load every instance at once.
    """

    def __init__(
        self,
        store: ArtifactStore,
        prefix: str,
        task_id: str,
        layout: TaskLayout,
        map_index: int | None = None,
    ) -> None:
        self._store = store
        self._prefix = prefix  # the run's
        self._layout = layout
        self.task_id = task_id
        self.mapped = any(index >= 0 for index in layout.map_indexes)
        if map_index is None and not self.mapped:
            map_index = -1
        self.map_index = map_index  # None: every instance of a mapped task
        self._tries: list[Try] | None = None

    @property
    def pathspec(self) -> str:
        return self.task_id if self.map_index in (None, -1) else f"{self.task_id}[{self.map_index}]"

    def __getitem__(self, map_index: int) -> Task:
        indexes = self._layout.map_indexes
        if not self.mapped:
            raise UnknownTask(f"task {self.task_id!r} is not mapped: use its data directly")
        if map_index not in indexes:
            raise UnknownTask(
                f"task {self.task_id!r} stored nothing for map index {map_index}; "
                f"it has map indexes {_ranges(indexes)}"
            )
        return Task(self._store, self._prefix, self.task_id, self._layout, map_index)

    def __iter__(self) -> Iterator[Task]:
        """The instances of a mapped task by map index (an unmapped task: itself)."""
        if self.map_index is not None:
            yield self
            return
        for index in self._layout.map_indexes:
            yield self[index]

    def __len__(self) -> int:
        return 1 if self.map_index is not None else len(self._layout.map_indexes)

    @property
    def tries(self) -> list[Try]:
        """Every recorded try, by map index then try number."""
        if self._tries is None:
            indexes = self._layout.map_indexes if self.map_index is None else [self.map_index]
            spots = [
                (index, number, names)
                for index in indexes
                for number, names in sorted(self._layout.tries.get(index, {}).items())
            ]
            keys = [
                f"{self._prefix}/{self._layout.part}/{index}/{number}/"
                + ("result.json" if "result.json" in names else "launch.json")
                for index, number, names in spots
            ]
            manifests = _read_all(self._store, keys)
            base = f"{self._prefix}/{self._layout.part}"
            self._tries = [
                Try(
                    self._store,
                    self.task_id,
                    index,
                    number,
                    manifest,
                    f"{base}/{index}/{number}/launch.json"
                    if {"launch.json", "result.json"} <= names
                    else None,
                )
                for (index, number, names), manifest in zip(spots, manifests, strict=True)
            ]
        return self._tries

    @property
    def latest_try(self) -> Try | None:
        return self._instance_tries()[-1] if self._instance_tries() else None

    @property
    def successful(self) -> bool:
        return any(t.status == "succeeded" for t in self._instance_tries())

    def _instance(self) -> int:
        """This instance's map index; a mapped task as a whole has none."""
        if self.map_index is None:
            raise TypeError(
                f"task {self.task_id!r} is mapped ({len(self)} instances): use task[i] "
                "or iterate over it"
            )
        return self.map_index

    def _instance_tries(self) -> list[Try]:
        self._instance()
        return self.tries

    @property
    def reference(self) -> Any:
        """The stored result of the latest successful try, as references (nothing loaded): a
        reference dict (``uri``, ``sha256``, ``size``, ``type``, ...), or a list / dict of them.

        A plain ``@task`` has no tries: its value stored by ``FlowXCom`` is used, if any.
        """
        index = self._instance()
        succeeded = [t for t in self.tries if t.status == "succeeded"]
        if succeeded:
            return succeeded[-1].result
        if not self.tries and "return_value.json" in self._layout.xcom.get(index, ()):
            key = f"{self._prefix}/{self._layout.part}/{index}/xcom/return_value.json"
            return _read(self._store, key).get("value")
        raise NoResult(self._no_result())

    def _no_result(self) -> str:
        tries = self.tries
        if not tries:
            return (
                f"task {self.pathspec!r} stored no result: a plain @task's value is in the store "
                "only with the FlowXCom backend, and small JSON values stay in Airflow's XCom table"
            )
        last = tries[-1]
        why = f": {last.error['type']}: {last.error['message']}" if last.error else ""
        return f"task {self.pathspec!r} has no successful try; try {last.number} {last.status}{why}"

    @property
    def data(self) -> Any:
        """The result of the latest successful try, loaded through the store (size and SHA-256
        checked); ``NoResult`` when there is none."""
        return load(self._store, self.reference)

    def __repr__(self) -> str:
        return f"Task({self.pathspec!r})"


def _ranges(indexes: list[int]) -> str:
    if indexes and indexes == list(range(indexes[0], indexes[-1] + 1)):
        return f"{indexes[0]}..{indexes[-1]}"
    return ", ".join(map(str, indexes))
