"""``.foreach`` on the worker: plan the chunks, launch what is missing, gather the results."""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from typing import Any

from provider.runtime.foreach import ChunkLayout, ForeachPlan
from provider.store import ArtifactStore, MissingArtifact, is_reference

LOCAL_CHUNKS_PER_WORKER = 4
MAX_LOCAL_CHUNK = 1000
FAILED_SHOWN = 5


class ForeachInputError(ValueError):
    """The items of a ``.foreach`` are not a list it can run over."""


def store_items(store: ArtifactStore, items: Any) -> tuple[dict[str, Any], int]:
    """The items as one stored list, and its length, without loading an upstream's list."""
    from airflow.sdk.execution_time.lazy_sequence import LazyXComSequence

    if is_reference(items):
        length = items.get("length")
        if not isinstance(length, int):
            raise ForeachInputError(
                f"the upstream result {items.get('type')} ({items['uri']}) has no known length: "
                ".foreach runs over a list; return one from the upstream task"
            )
        return dict(items), length
    if isinstance(items, LazyXComSequence):  # a mapped upstream's results (references)
        items = list(items[:])
    if isinstance(items, dict):
        items = list(items.items())  # as Airflow maps over a dict: its (key, value) pairs
    if not isinstance(items, (list, tuple)):
        raise ForeachInputError(
            f".foreach runs over a list, a tuple or a dict; got {type(items).__name__}"
        )
    return store.put(list(items)).to_json(), len(items)


def plan_foreach(
    op: Any,
    store: ArtifactStore,
    manifest_key: str,
    fingerprint: str,
    *,
    local: bool,
    layout: ChunkLayout,
) -> ForeachPlan:
    """Split the items into chunks; the plan's identity is its code, arguments and items, so a
    retry (or a cleared task) with the same ones finds the chunks already done."""
    items, length = store_items(store, op.foreach_items)
    parallel = max_parallel(op.flow_spec, local=local)
    chunk_size = op.flow_spec.foreach.chunk_size or default_chunk_size(length, parallel, local)
    if layout == "items":
        chunk_size = op.flow_spec.foreach.chunk_size or max(1, chunk_size)
    key = json.dumps([fingerprint, items["sha256"], chunk_size, layout, op.foreach_argument])
    plan_id = hashlib.sha256(key.encode()).hexdigest()[:16]
    task_prefix = manifest_key.rsplit("/", 2)[0]  # runs/<dag>/<run>/<task>/<map_index>
    return ForeachPlan(
        argument=op.foreach_argument,
        items=items,
        length=length,
        chunk_size=chunk_size,
        prefix=f"{task_prefix}/foreach/{plan_id}",
        layout=layout,
    )


def max_parallel(spec: Any, *, local: bool) -> int:
    """The task's ``max_parallel``; else the CPU count locally, ``[flow_task]
    foreach_max_parallel`` on Kubernetes."""
    from provider import config

    if spec.foreach.max_parallel is not None:
        return int(spec.foreach.max_parallel)
    return os.cpu_count() or 1 if local else config.foreach_max_parallel()


def default_chunk_size(length: int, parallel: int, local: bool) -> int:
    """Locally a few chunks per worker (they balance load); on a cluster, at most a thousand
    pods or jobs, each doing real work."""
    if local:
        per_chunk = math.ceil(length / (parallel * LOCAL_CHUNKS_PER_WORKER))
        return max(1, min(per_chunk, MAX_LOCAL_CHUNK))
    return max(1, math.ceil(length / 1000))


def pending_chunks(store: ArtifactStore, plan: ForeachPlan) -> list[int]:
    """The chunks with items that have no stored result yet."""
    done = set()
    for key in store.list_manifests(plan.prefix):
        manifest = store.read_manifest(key)
        if manifest.get("status") == "succeeded":
            done.add(int(manifest["chunk"]))
    return [chunk for chunk in range(plan.chunks) if chunk not in done]


def gather(
    store: ArtifactStore,
    plan: ForeachPlan,
    manifest_key: str,
    identity: dict[str, Any],
    *,
    catching: bool,
    started: float,
    unreported: str | None = None,
) -> dict[str, Any]:
    """Write the try's result manifest from the chunk manifests; return it.

    Every item succeeded, or ``catching`` (its failures become Failure values in the list):
    the result is one reference to the ordered results. Otherwise the try failed, naming the
    failed items (their results stay stored: the next try re-runs only those) and, in the
    compute target's words (``unreported``), why chunks wrote no manifest.
    """
    from provider.runtime.foreach import chunk_reference

    manifests, missing = [], []
    for chunk in range(plan.chunks):
        try:
            manifests.append(store.read_manifest(plan.chunk_key(chunk)))
        except MissingArtifact:
            missing.append(chunk)
    failed = [item for m in manifests for item in m["failed"]]
    finished = time.time()
    manifest: dict[str, Any] = {
        **identity,
        "foreach": {
            "items": plan.length,
            "chunks": plan.chunks,
            "chunk_size": plan.chunk_size,
            "prefix": plan.prefix,
            "failed": len(failed),
        },
        "written_by": "worker",
        "started_at": started,
        "finished_at": finished,
        "seconds": round(finished - started, 6),
        "function_seconds": sum(s for m in manifests for s in m["seconds"] if s is not None),
        "peak_rss_mib": max((m["peak_rss_mib"] for m in manifests), default=0.0),
        "usage": {  # over every chunk: the largest process, the time summed
            "peak_rss_mib": max((m["peak_rss_mib"] for m in manifests), default=0.0),
            "cpu_seconds": round(sum(m["usage"]["cpu_seconds"] for m in manifests), 3),
            "wall_seconds": round(sum(m["usage"]["wall_seconds"] for m in manifests), 3),
        },
    }
    if missing or (failed and not catching):
        message = _failure_message(plan, failed, missing, unreported)
        manifest["status"] = "failed"
        manifest["error"] = {"type": "ForeachFailed", "message": message}
    elif plan.layout == "items":
        manifest["status"] = "succeeded"
        manifest["result"] = [ref for m in manifests for ref in m["result"]]
    else:
        ref = chunk_reference(store, plan, manifests).to_json()
        preview = f"list of {plan.length} in {plan.chunks} chunks"
        manifest["status"] = "succeeded"
        manifest["result"] = {**ref, "length": plan.length, "preview": preview}
    store.write_manifest(manifest_key, manifest)
    return manifest


def _failure_message(
    plan: ForeachPlan, failed: list[dict[str, Any]], missing: list[int], unreported: str | None
) -> str:
    parts = []
    if failed:
        shown = "; ".join(
            f"[{f['index']}] {f['type']}: {f['message']}" for f in failed[:FAILED_SHOWN]
        )
        more = f" (and {len(failed) - FAILED_SHOWN} more)" if len(failed) > FAILED_SHOWN else ""
        parts.append(f"{len(failed)} of {plan.length} items failed: {shown}{more}")
    if missing:
        ranges = ", ".join(f"{plan.bounds(c)[0]}-{plan.bounds(c)[1] - 1}" for c in missing[:10])
        why = f": {unreported}" if unreported else ""
        parts.append(f"{len(missing)} chunks never reported (items {ranges}){why}")
    return "; ".join(parts) + "; a retry re-runs only these"


class ForeachProgress:
    """Done / failed out of total, rate and time left, for long fan-outs (not a line per item)."""

    def __init__(self, log: Any, plan: ForeachPlan, chunks: list[int]) -> None:
        self.log = log
        self.plan = plan
        self.items = sum(self._size(c) for c in chunks)
        self.started = time.monotonic()

    def _size(self, chunk: int) -> int:
        start, stop = self.plan.bounds(chunk)
        return stop - start

    def log_line(self, answered: Any, failed_items: int) -> None:
        done = sum(self._size(c) for c in answered)
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = done / elapsed
        left = f"~{(self.items - done) / rate:.0f}s left" if rate > 0 else "starting"
        self.log.info(
            "foreach: %d/%d items done, %d failed; %.0f items/s, %s",
            done,
            self.items,
            failed_items,
            rate,
            left,
        )
