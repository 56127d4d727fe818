"""``.foreach``: one task that runs a function over many items, a chunk of items at a time.

The items are one artifact (a list), written once. A chunk ``c`` covers items
``[c * chunk_size, (c + 1) * chunk_size)``; whoever runs it (a local worker process, a pod of an
Indexed Job, a child of a Batch array job) loads the items once, calls the function on each
item of the chunk, stores the chunk's results and writes the chunk's manifest under the plan's
prefix. The manifests outlive the try: a retry or a cleared task re-runs only the items that
have no stored result.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from provider.runtime.context import explain_airflow_access, flow_context_of
from provider.runtime.failure import Failure
from provider.runtime.payload import Payload
from provider.store import ArtifactStore, MissingArtifact, Reference

ChunkLayout = Literal["chunks", "items"]


@dataclass(frozen=True)
class ForeachPlan:
    """How a foreach task's items are split, and where each chunk reports.

    ``argument`` is the keyword each item is passed as; None passes each item (a dict) as
    keywords (``.foreach_kwargs``). With layout ``items`` every item's result is its own
    artifact (downstream tasks are mapped over them); with ``chunks``, a chunk's results are
    one artifact.
    """

    argument: str | None
    items: dict[str, Any]
    length: int
    chunk_size: int
    prefix: str
    layout: ChunkLayout = "chunks"

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


class ChunkRunner:
    """Runs chunks of one payload's plan in this process; the items load once."""

    def __init__(self, store: ArtifactStore, payload: Payload, try_number: int) -> None:
        if payload.foreach is None:
            raise ValueError("the payload has no foreach plan")
        self.store = store
        self.payload = payload
        self.plan: ForeachPlan = payload.foreach
        self.try_number = try_number
        self._items: Sequence[Any] | None = None

    @property
    def items(self) -> Sequence[Any]:
        if self._items is None:
            self._items = self.store.get(self.plan.items)
            if len(self._items) != self.plan.length:
                raise ValueError(
                    f"the items artifact holds {len(self._items)} items, the plan "
                    f"{self.plan.length}"
                )
        return self._items

    def run(self, chunk: int) -> dict[str, Any]:
        """Run one chunk (only its items without a result yet); write and return its manifest."""
        from provider.runtime.run import resolve_references
        from provider.runtime.usage import cpu_seconds, peak_rss_mib, usage

        plan, store = self.plan, self.store
        start, stop = plan.bounds(chunk)
        results, redo = self._previous(chunk, stop - start)
        seconds: list[float | None] = [None] * (stop - start)
        started = time.time()
        cpu_at_start = cpu_seconds()
        for offset in redo:
            item = self.items[start + offset]
            began = time.perf_counter()
            try:
                value = resolve_references(item, store)
                kwargs = dict(self.payload.kwargs)
                if plan.argument is None:
                    kwargs.update(value)
                else:
                    kwargs[plan.argument] = value
                with flow_context_of({**self.payload.context, "foreach_index": start + offset}):
                    results[offset] = self.payload.function(*self.payload.args, **kwargs)
            except Exception as exc:  # an item's failure is recorded, not raised
                import traceback

                explain_airflow_access(exc)
                print(f"flowtask foreach: item {start + offset} failed:", file=sys.stderr)
                traceback.print_exc()
                results[offset] = Failure.from_exception(exc)
            seconds[offset] = round(time.perf_counter() - began, 6)
        failed = [
            {"index": start + i, "type": r.type, "message": first_line(r.message)}
            for i, r in enumerate(results)
            if isinstance(r, Failure)
        ]
        manifest = {
            "chunk": chunk,
            "start": start,
            "stop": stop,
            "status": "failed" if failed else "succeeded",
            "failed": failed,
            "result": self._store_results(results),
            "seconds": seconds,
            "ran": len(redo),
            "started_at": started,
            "finished_at": time.time(),
            "usage": usage(started, cpu_at_start),
            "peak_rss_mib": peak_rss_mib(),
            "try_number": self.try_number,
            "host": os.uname().nodename,
            "pid": os.getpid(),
        }
        store.write_manifest(plan.chunk_key(chunk), manifest)
        return manifest

    def _previous(self, chunk: int, size: int) -> tuple[list[Any], list[int]]:
        """The results an earlier try stored for this chunk, and which items still need a run."""
        try:
            before = self.store.read_manifest(self.plan.chunk_key(chunk))
        except MissingArtifact:
            return [None] * size, list(range(size))
        results = load_chunk_results(self.store, before["result"])
        redo = [i for i, value in enumerate(results) if isinstance(value, Failure)]
        return results, redo

    def _store_results(self, results: list[Any]) -> Any:
        if self.plan.layout == "items":
            return [self.store.put(value).to_json() for value in results]
        return self.store.put(results).to_json()


def load_chunk_results(store: ArtifactStore, stored: Any) -> list[Any]:
    """A chunk manifest's results: one artifact per chunk, or one per item."""
    if isinstance(stored, list):
        return [store.get(ref) for ref in stored]
    values: list[Any] = store.get(stored)
    return values


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
