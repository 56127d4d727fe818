"""``.foreach``: one task that runs a function over many items, a chunk of items at a time.

The items are one artifact, written once: a slice per chunk (``item_slices``), or an upstream's
list (or dict, whose ``(key, value)`` pairs are the items) too large to store again. A chunk ``c``
covers items ``[c * chunk_size, (c + 1) * chunk_size)``; whoever runs it (a local worker process,
a pod of an Indexed Job, a child of a Batch array job) reads its chunk's slice (one ranged read;
a process running several chunks reads the blob once), or loads the whole list once, calls the
function on each item of the chunk, stores the chunk's results and writes the chunk's manifest
under the plan's prefix.

A chunk's manifest is written when the chunk starts (status ``running``), again every
``checkpoint_seconds`` with the results of the items finished since (``segments``), and a last
time with every result (``succeeded`` or ``failed``). The manifests outlive the try: a retry or
a cleared task re-runs only the items with no stored result, and the failed ones.

After its last manifest a chunk writes an empty *marker* whose key says what the manifest
says to whoever gathers the chunks (status, failed count, times, usage, the results'
reference): one listing of ``done/`` gathers a thousand chunks without reading a manifest
(:func:`listed_chunks`). A chunk that runs again drops its markers before its first checkpoint,
so a marker is never older than its manifest's last word.

A ``running`` manifest of the current try means a process of this try died in that chunk. The
chunk's next run is *careful*: it records the item it is about to start before each item, so a
process that dies again names the item that killed it (:func:`mark_crashed` makes that item a
``Failure``, and the run after that goes on with the rest).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from provider.runtime.context import explain_airflow_access, flow_context_of
from provider.runtime.failure import Failure
from provider.runtime.payload import Payload
from provider.store import ArtifactStore, MissingArtifact, Reference

ChunkLayout = Literal["chunks", "items"]
RUNNING = "running"
FINAL = ("succeeded", "failed")
CHECKPOINT_SECONDS = 5.0
PROCESS_DIED = "ProcessDied"  # the type of a Failure for an item whose process died


@dataclass(frozen=True)
class ForeachPlan:
    """How a foreach task's items are split, and where each chunk reports.

    ``argument`` is the keyword each item is passed as; None passes each item (a dict) as
    keywords (``.foreach_kwargs``). With layout ``items`` every item's result is its own
    artifact (downstream tasks are mapped over them); with ``chunks``, a chunk's results are
    one artifact. A chunk keeps what it has done every ``checkpoint_seconds``.
    """

    argument: str | None
    items: dict[str, Any]
    length: int
    chunk_size: int
    prefix: str
    layout: ChunkLayout = "chunks"
    checkpoint_seconds: float = CHECKPOINT_SECONDS
    # ``items`` holds a slice per chunk: [offset, size, sha256, encoding] of each, in order.
    item_slices: list[list[Any]] | None = None

    @property
    def chunks(self) -> int:
        return math.ceil(self.length / self.chunk_size)

    def bounds(self, chunk: int) -> tuple[int, int]:
        start = chunk * self.chunk_size
        return start, min(start + self.chunk_size, self.length)

    def chunk_key(self, chunk: int) -> str:
        return f"{self.prefix}/{chunk:06d}.json"


def first_line(text: str) -> str:
    return next((line for line in text.splitlines() if line.strip()), "")[:300]


def is_final(manifest: Mapping[str, Any]) -> bool:
    """Whether a chunk manifest is the chunk's last word (not a checkpoint of a running one)."""
    return manifest.get("status") in FINAL


def store_results(store: ArtifactStore, layout: ChunkLayout, values: list[Any]) -> Any:
    """Results as a chunk manifest names them: one artifact, or one per item."""
    if layout == "items":
        return [store.put(value).to_json() for value in values]
    return store.put(values).to_json()


def final_results(store: ArtifactStore, layout: ChunkLayout, state: ChunkState) -> Any:
    """Every result of a chunk in order; results kept one per item are not stored again."""
    if layout == "items":
        return [
            state.refs[offset]
            if offset in state.refs
            else store.put(state.values[offset]).to_json()
            for offset in range(state.size)
        ]
    return store.put([state.values[offset] for offset in range(state.size)]).to_json()


def load_chunk_results(store: ArtifactStore, stored: Any) -> list[Any]:
    """A chunk manifest's results: one artifact per chunk, or one per item."""
    if isinstance(stored, list):
        return [store.get(ref) for ref in stored]
    values: list[Any] = store.get(stored)
    return values


@dataclass
class ChunkState:
    """What a chunk holds: results by offset in the chunk, the stored references of the ones
    kept one per item, and its failed items (each with the try that failed it)."""

    size: int
    values: dict[int, Any] = field(default_factory=dict)
    refs: dict[int, Any] = field(default_factory=dict)  # layout "items": offset -> reference
    failed: dict[int, dict[str, Any]] = field(default_factory=dict)  # offset -> failed entry
    segments: list[dict[str, Any]] = field(default_factory=list)  # as the manifest names them

    @classmethod
    def read(
        cls, store: ArtifactStore, manifest: Mapping[str, Any] | None, start: int, size: int
    ) -> ChunkState:
        state = cls(size)
        if not manifest:
            return state
        written_by = int(manifest.get("try_number", 0))
        if is_final(manifest):
            segments = [{"offsets": list(range(size)), "result": manifest["result"]}]
        else:
            segments = list(manifest.get("segments") or [])
        for segment in segments:
            state.segments.append(segment)
            offsets, stored = segment["offsets"], segment["result"]
            if isinstance(stored, list):  # one reference per item: nothing to load
                for offset, ref in zip(offsets, stored, strict=True):
                    state.refs[offset] = ref
                    state.values[offset] = ref
            else:
                for offset, value in zip(offsets, store.get(stored), strict=True):
                    state.values[offset] = value
        for entry in manifest.get("failed") or ():
            state.failed[entry["index"] - start] = {"try": written_by, **entry}
        return state

    def to_run(self, try_number: int) -> list[int]:
        """Offsets with no result, and failed ones an earlier try left."""
        return [
            offset
            for offset in range(self.size)
            if offset not in self.values
            or (offset in self.failed and self.failed[offset]["try"] < try_number)
        ]

    def record(self, offset: int, value: Any, start: int, try_number: int) -> None:
        self.values[offset] = value
        self.refs.pop(offset, None)
        self.failed.pop(offset, None)
        if isinstance(value, Failure):
            self.failed[offset] = {
                "index": start + offset,
                "type": value.type,
                "message": first_line(value.message),
                "try": try_number,
            }


class ChunkRunner:
    """Runs chunks of one payload's plan in this process; the items load once."""

    def __init__(
        self,
        store: ArtifactStore,
        payload: Payload,
        try_number: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if payload.foreach is None:
            raise ValueError("the payload has no foreach plan")
        self.store = store
        self.payload = payload
        self.plan: ForeachPlan = payload.foreach
        self.try_number = try_number
        self.clock = clock
        self._items: Sequence[Any] | None = None
        self._slices: list[Any] | None = None  # every chunk's items, once a second chunk runs
        self._ran = 0

    def chunk_items(self, chunk: int) -> Sequence[Any]:
        """The items of ``chunk``: its slice alone for the first chunk this process runs, the
        whole blob read once when it runs more (a local pool's process)."""
        start, stop = self.plan.bounds(chunk)
        slices = self.plan.item_slices
        if slices is None:
            return self.items[start:stop]
        if self._slices is not None:
            items = self._slices[chunk]
        elif self._ran == 0:
            items = self.store.get_slice(self.plan.items, slices[chunk])
        else:
            self._slices = self.store.get_slices(self.plan.items, slices)
            items = self._slices[chunk]
        if len(items) != stop - start:
            raise ValueError(f"chunk {chunk}'s slice holds {len(items)} items, not {stop - start}")
        return items

    @property
    def items(self) -> Sequence[Any]:
        if self._items is None:
            items = self.store.get(self.plan.items)
            if isinstance(items, Mapping):  # as Airflow maps over a dict: its (key, value) pairs
                items = list(items.items())
            if len(items) != self.plan.length:
                raise ValueError(
                    f"the items artifact holds {len(items)} items, the plan {self.plan.length}"
                )
            self._items = items
        return self._items

    def run(self, chunk: int) -> dict[str, Any]:
        """Run one chunk (only its items without a result yet); write and return its manifest."""
        from provider.runtime.usage import cpu_seconds, peak_rss_mib, usage
        from provider.runtime.views import item_previews

        plan, store = self.plan, self.store
        start, stop = plan.bounds(chunk)
        earlier = _read(store, plan.chunk_key(chunk)) or {}
        # A process of this try ran the chunk and died: find the item that killed it.
        careful = earlier.get("status") == RUNNING and earlier["try_number"] == self.try_number
        if is_final(earlier):
            drop_markers(store, plan, chunk)
        state = ChunkState.read(store, earlier, start, stop - start)
        todo = state.to_run(self.try_number)
        items = self.chunk_items(chunk) if todo else ()
        self._ran += 1
        checkpoint = _Checkpoints(self, chunk, state, careful=careful)
        checkpoint.write(in_flight=None)
        seconds: list[float | None] = [None] * (stop - start)
        started = time.time()
        cpu_at_start = cpu_seconds()
        for offset in todo:
            if careful:
                checkpoint.write(in_flight=offset)
            began = time.perf_counter()
            value = self._call(items[offset], start + offset)
            seconds[offset] = round(time.perf_counter() - began, 6)
            state.record(offset, value, start, self.try_number)
            checkpoint.done(offset)
            if not careful and checkpoint.due():
                checkpoint.write(in_flight=None)
        failed = [state.failed[offset] for offset in sorted(state.failed)]
        manifest = {
            "chunk": chunk,
            "start": start,
            "stop": stop,
            "status": "failed" if failed else "succeeded",
            "failed": failed,
            "result": final_results(store, plan.layout, state),
            # One line per item for the UI's Flow tab (provider.runtime.views).
            "item_previews": item_previews(store, [state.values[o] for o in range(state.size)]),
            "seconds": seconds,
            "ran": len(todo),
            "started_at": started,
            "finished_at": time.time(),
            "usage": usage(started, cpu_at_start),
            "peak_rss_mib": peak_rss_mib(),
            "try_number": self.try_number,
            "host": os.uname().nodename,
            "pid": os.getpid(),
        }
        store.write_manifest(plan.chunk_key(chunk), manifest)
        write_marker(store, plan, manifest)
        return manifest

    def _call(self, item: Any, index: int) -> Any:
        """The function on one item; its exception becomes a Failure (recorded, not raised)."""
        from provider.runtime.run import resolve_references

        try:
            value = resolve_references(item, self.store)
            kwargs = dict(self.payload.kwargs)
            if self.plan.argument is None:
                kwargs.update(value)
            else:
                kwargs[self.plan.argument] = value
            with flow_context_of({**self.payload.context, "foreach_index": index}):
                return self.payload.function(*self.payload.args, **kwargs)
        except Exception as exc:
            import traceback

            explain_airflow_access(exc)
            print(f"flowtask foreach: item {index} failed:", file=sys.stderr)
            traceback.print_exc()
            return Failure.from_exception(exc)


class _Checkpoints:
    """Writes a running chunk's manifest: what it has done so far, and (careful) what it runs."""

    def __init__(self, runner: ChunkRunner, chunk: int, state: ChunkState, *, careful: bool):
        self.runner, self.chunk, self.state, self.careful = runner, chunk, state, careful
        self.new: list[int] = []
        self.last = runner.clock()
        self.started = time.time()

    def done(self, offset: int) -> None:
        self.new.append(offset)

    def due(self) -> bool:
        return self.runner.clock() - self.last >= self.runner.plan.checkpoint_seconds

    def write(self, in_flight: int | None) -> None:
        runner, state = self.runner, self.state
        if self.new:
            values = [state.values[offset] for offset in self.new]
            stored = store_results(runner.store, runner.plan.layout, values)
            state.segments.append({"offsets": self.new, "result": stored})
            if isinstance(stored, list):
                state.refs.update(zip(self.new, stored, strict=True))
            self.new = []
        start, stop = runner.plan.bounds(self.chunk)
        runner.store.write_manifest(
            runner.plan.chunk_key(self.chunk),
            {
                "chunk": self.chunk,
                "start": start,
                "stop": stop,
                "status": RUNNING,
                "careful": self.careful,
                "in_flight": in_flight,
                "segments": state.segments,
                "failed": [state.failed[offset] for offset in sorted(state.failed)],
                "try_number": runner.try_number,
                "started_at": self.started,
                "host": os.uname().nodename,
                "pid": os.getpid(),
            },
            durable=False,  # a lost checkpoint costs a re-run of its items, nothing more
        )
        self.last = runner.clock()


DONE = "done"  # the markers' folder under the plan's prefix
_CODES = {"pickle5": "p", "pickle5+zstd": "z"}  # result encodings a marker can name
_ENCODINGS = {code: encoding for encoding, code in _CODES.items()}


def marker_prefix(plan: ForeachPlan, chunk: int | None = None) -> str:
    base = f"{plan.prefix}/{DONE}"
    return base if chunk is None else f"{base}/{chunk:06d}"


def write_marker(store: ArtifactStore, plan: ForeachPlan, manifest: Mapping[str, Any]) -> None:
    """The chunk's last manifest, in a key: ``done/<chunk>/<numbers>/<result>/<previews>``."""
    usage = manifest.get("usage") or {}
    numbers = [
        int(manifest["try_number"]),
        "s" if manifest["status"] == "succeeded" else "f",
        len(manifest.get("failed") or ()),
        round(float(manifest["started_at"]) * 1e6),
        round(float(manifest["finished_at"]) * 1e6),
        round(sum(s for s in manifest.get("seconds") or () if s is not None) * 1e6),
        round(float(usage.get("cpu_seconds", 0.0)) * 1000),
        round(float(usage.get("wall_seconds", 0.0)) * 1000),
        round(float(manifest.get("peak_rss_mib") or 0.0) * 10),
    ]
    result, previews = manifest["result"], manifest.get("item_previews")
    code = _CODES.get(str(result.get("encoding"))) if isinstance(result, Mapping) else None
    named = f"{result['sha256']}.{result['size']}.{code}" if code else "-"
    shown = f"{previews['sha256']}.{previews['size']}" if previews else "-"
    key = f"{marker_prefix(plan, manifest['chunk'])}/{'.'.join(map(str, numbers))}/{named}/{shown}"
    store.backend.write_bytes(key, b"")


def drop_markers(store: ArtifactStore, plan: ForeachPlan, chunk: int) -> None:
    """Before a chunk runs again: its markers would speak for a manifest being replaced."""
    keys = list(store.backend.list(marker_prefix(plan, chunk)))
    if keys:
        store.backend.delete_many(keys)


def read_marker(store: ArtifactStore, plan: ForeachPlan, key: str) -> dict[str, Any] | None:
    """What a marker says, as the parts of its chunk's manifest a gather reads (``failed``
    listed only when none failed); None for a key that is not a marker."""
    parts = key[len(marker_prefix(plan)) + 1 :].split("/")
    try:
        chunk_text, numbers, named, shown = parts
        chunk = int(chunk_text)
        tries, status, failed, started, finished, function, cpu, wall, rss = numbers.split(".")
        values = [int(v) for v in (tries, failed, started, finished, function, cpu, wall, rss)]
    except ValueError:
        return None
    tries_, failed_, started_, finished_, function_, cpu_, wall_, rss_ = values
    start, stop = plan.bounds(chunk)
    summary: dict[str, Any] = {
        "chunk": chunk,
        "start": start,
        "stop": stop,
        "status": "succeeded" if status == "s" else "failed",
        "try_number": tries_,
        "failed_count": failed_,
        "started_at": started_ / 1e6,
        "finished_at": finished_ / 1e6,
        "seconds": [function_ / 1e6],
        "usage": {
            "peak_rss_mib": rss_ / 10,
            "cpu_seconds": cpu_ / 1000,
            "wall_seconds": wall_ / 1000,
        },
        "peak_rss_mib": rss_ / 10,
        "marker": True,
    }
    if failed_ == 0:
        summary["failed"] = []
    if named != "-":
        sha256, size, code = named.split(".")
        ref = Reference(
            store.blob_uri(sha256), sha256, int(size), "builtins.list", _ENCODINGS[code]
        )
        summary["result"] = ref.to_json()
    if shown != "-":
        from provider.runtime.views import ITEM_PREVIEWS_TYPE, VIEW_ENCODING

        sha256, size = shown.split(".")
        uri = store.blob_uri(sha256)
        previews = Reference(uri, sha256, int(size), ITEM_PREVIEWS_TYPE, VIEW_ENCODING)
        summary["item_previews"] = previews.to_json()
    return summary


def listed_chunks(
    store: ArtifactStore, plan: ForeachPlan, *, read: Literal["none", "unmarked", "all"]
) -> dict[int, dict[str, Any]]:
    """Every chunk's last word (or checkpoint), by chunk, from one listing of the plan's prefix:
    the markers say most. ``read`` (``reads_in_flight`` at a time) besides: ``unmarked``, the
    manifests with no marker (checkpoints, chunks written before markers); ``all``, also those
    a marker cannot say whole (failed items, results kept one per item); ``none``: markers."""
    markers: dict[int, dict[str, Any]] = {}
    manifests: list[str] = []
    done = marker_prefix(plan) + "/"
    for key in store.backend.list(marker_prefix(plan) if read == "none" else plan.prefix):
        if key.startswith(done):
            said = read_marker(store, plan, key)
            if said is None:
                continue
            best = markers.get(said["chunk"])
            order = (said["try_number"], said["finished_at"])
            if best is None or order > (best["try_number"], best["finished_at"]):
                markers[said["chunk"]] = said
        elif key.endswith(".json"):
            manifests.append(key)
    chunk_of = {plan.chunk_key(chunk): chunk for chunk in range(plan.chunks)}

    def wanted(key: str) -> bool:
        said = markers.get(chunk_of[key])
        if said is None:
            return True
        return read == "all" and ("failed" not in said or "result" not in said)

    found = dict(markers)
    if read != "none":
        keys = [key for key in manifests if key in chunk_of and wanted(key)]
        for manifest in store.read_manifests(keys).values():
            found[int(manifest["chunk"])] = manifest
    return found


def _read(store: ArtifactStore, key: str) -> dict[str, Any] | None:
    try:
        return store.read_manifest(key)
    except MissingArtifact:
        return None


def mark_crashed(
    store: ArtifactStore, plan: ForeachPlan, chunk: int, try_number: int, reason: str
) -> int | None:
    """After a careful run of ``chunk`` died, the item it was running becomes a ``Failure``
    (so the next run goes on with the rest); its index, or None when no item was running."""
    manifest = _read(store, plan.chunk_key(chunk))
    if (
        not manifest
        or manifest.get("status") != RUNNING
        or manifest.get("try_number") != try_number
        or not manifest.get("careful")
        or manifest.get("in_flight") is None
    ):
        return None
    offset = int(manifest["in_flight"])
    start, _ = plan.bounds(chunk)
    message = f"the process running item {start + offset} died: {reason}"
    failure = Failure(type=PROCESS_DIED, message=message, traceback="")
    stored = store_results(store, plan.layout, [failure])
    entry = {"index": start + offset, "type": PROCESS_DIED, "message": message, "try": try_number}
    manifest["segments"] = [*manifest.get("segments", []), {"offsets": [offset], "result": stored}]
    manifest["failed"] = [*manifest.get("failed", []), entry]
    manifest["in_flight"] = None
    store.write_manifest(plan.chunk_key(chunk), manifest)
    return start + offset


def give_up_chunk(
    store: ArtifactStore, plan: ForeachPlan, chunk: int, try_number: int, reason: str
) -> list[int]:
    """Write the last manifest of a chunk whose processes kept dying: what it finished, and a
    ``Failure`` for every other item (``catch=``); the indexes of those items."""
    start, stop = plan.bounds(chunk)
    state = ChunkState.read(store, _read(store, plan.chunk_key(chunk)), start, stop - start)
    missing = state.to_run(try_number)
    for offset in missing:
        message = f"item {start + offset} never finished: {reason}"
        failure = Failure(type=PROCESS_DIED, message=message, traceback="")
        state.record(offset, failure, start, try_number)
    result = final_results(store, plan.layout, state)
    now = time.time()
    manifest = {
        "chunk": chunk,
        "start": start,
        "stop": stop,
        "status": "failed",
        "failed": [state.failed[offset] for offset in sorted(state.failed)],
        "result": result,
        "seconds": [None] * state.size,
        "ran": 0,
        "started_at": now,
        "finished_at": now,
        "usage": {"peak_rss_mib": 0.0, "cpu_seconds": 0.0, "wall_seconds": 0.0},
        "peak_rss_mib": 0.0,
        "try_number": try_number,
        "written_by": "worker",
    }
    store.write_manifest(plan.chunk_key(chunk), manifest)
    write_marker(store, plan, manifest)
    return [start + offset for offset in missing]


def serve_chunks(runner: ChunkRunner, commands: Iterator[str], reply: Callable[[str], Any]) -> int:
    """The pool worker's loop: a chunk number per line in, ``<chunk> <status> <failed>`` out."""
    for line in commands:
        chunk = int(line)
        try:
            manifest = runner.run(chunk)
        except Exception:  # the chunk cannot run at all (its items cannot be loaded...)
            import traceback

            traceback.print_exc()
            reply(f"{chunk} error 0\n")
            continue
        reply(f"{chunk} {manifest['status']} {len(manifest['failed'])}\n")
    return 0


def chunk_reference(
    store: ArtifactStore, plan: ForeachPlan, manifests: list[dict[str, Any]]
) -> Reference:
    """One reference to the ordered results of every chunk (loaded chunk by chunk)."""
    chunks = [{"result": m["result"], "count": m["stop"] - m["start"]} for m in manifests]
    return store.put_chunked(chunks, length=plan.length)


def format_chunks(chunks: Sequence[int]) -> str:
    """Chunk numbers as compact text: ``[0, 1, 2, 5, 7, 8]`` -> ``"0-2,5,7-8"``."""
    parts: list[str] = []
    run: list[int] = []
    for chunk in sorted(chunks):
        if run and chunk == run[-1] + 1:
            run.append(chunk)
            continue
        if run:
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [chunk]
    if run:
        parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(parts)


def parse_chunks(text: str) -> list[int]:
    """The inverse of :func:`format_chunks`, in order: an index into it picks a chunk."""
    chunks: list[int] = []
    for part in filter(None, text.split(",")):
        first, _, last = part.partition("-")
        chunks.extend(range(int(first), int(last or first) + 1))
    return chunks
