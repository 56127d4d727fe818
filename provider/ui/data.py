"""What the Flow tabs show, read through the client from the store's index and manifests.

Plain dicts for the templates; nothing here imports Airflow, and nothing is unpickled: a
result shows as the view documents and pictures the runtime made (``provider.runtime.views``)
and the one-line previews its reference carries.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from provider.client import Flow, NotFound, Run, Task, Try
from provider.client.task import TaskLayout, scan_instance
from provider.client.task import describe as describe_result
from provider.runtime.usage import suggested_request
from provider.runtime.views import IMAGE_ENCODINGS, MAX_IMAGE_BYTES, MAX_VIEW_BYTES
from provider.store import ArtifactStore, MissingArtifact, is_reference
from provider.store.errors import BadManifest, StoreError
from provider.store.keys import key_part, manifest_key, run_prefix
from provider.ui.cache import CACHE, cached

RUN_ROWS = 500  # task instances a run's tab lists; the rest are counted
ITEMS_PAGE = 50  # .foreach items shown per page
RUNS_SHOWN = 200  # runs a DAG's tab lists
_THREADS = 16


class NotStored(LookupError):
    """The store has nothing of that DAG, run, task or try."""


def clear_cache() -> None:
    """Forget what the API server kept between pages (``provider.ui.cache``)."""
    CACHE.clear()


def find_run(store: ArtifactStore, dag_id: str, run_id: str) -> Run:
    try:
        return Flow(dag_id, store)[run_id]
    except NotFound as error:
        raise NotStored(str(error)) from None


def _read(store: ArtifactStore, key: str) -> dict[str, Any]:
    try:
        return store.read_manifest(key)
    except (MissingArtifact, BadManifest):
        return {}


def read_view(store: ArtifactStore, ref: Any) -> Any:
    """A view document the runtime stored (JSON), or None; never anything but JSON."""
    if (
        not is_reference(ref)
        or ref.get("encoding") != "json"
        or ref.get("size", 0) > MAX_VIEW_BYTES
    ):
        return None
    try:
        return json.loads(store.get_bytes(ref))
    except (StoreError, ValueError):
        return None


def _usage_row(attempt: Try, asked: dict[str, Any]) -> dict[str, Any]:
    """What the try asked for (its result manifest says, else its launch manifest: a
    ``.foreach``'s is the worker's) and used, with the request that would fit."""
    used = attempt.usage
    row: dict[str, Any] = {"requested": asked, "used": used, "suggested": None}
    if {"peak_rss_mib", "cpu_seconds", "wall_seconds"} <= set(used):
        row["suggested"] = suggested_request(
            used["peak_rss_mib"], used["cpu_seconds"], used["wall_seconds"]
        )
        row["cpus_used"] = used["cpu_seconds"] / max(used["wall_seconds"], 1e-3)
    return row


def _bars(row: dict[str, Any]) -> list[dict[str, Any]]:
    """Requested against used, per resource, with the suggested request: for small bars."""
    asked, used, suggested = row["requested"], row["used"], row["suggested"] or {}
    bars = []
    if "cpus_used" in row:
        bars.append(_bar("CPU (cores)", asked.get("cpu"), row["cpus_used"], suggested.get("cpu")))
    if "peak_rss_mib" in used:
        bars.append(
            _bar(
                "memory peak (MiB)",
                asked.get("memory_mib"),
                used["peak_rss_mib"],
                suggested.get("memory_mib"),
            )
        )
    if "gpu_memory_mib" in used:
        bars.append(_bar("GPU memory (MiB)", None, used["gpu_memory_mib"], None))
    return bars


def _bar(name: str, asked: Any, used: float, suggested: Any) -> dict[str, Any]:
    top = max(float(x) for x in (asked, used, suggested, 1e-9) if x is not None)
    return {
        "name": name,
        "requested": asked,
        "used": round(float(used), 2),
        "suggested": suggested,
        "used_pct": round(100 * float(used) / top, 1),
        "requested_pct": None if asked is None else round(100 * float(asked) / top, 1),
        "suggested_pct": None if suggested is None else round(100 * float(suggested) / top, 1),
        "over": asked is not None and float(used) > float(asked),
    }


# -- a task instance's tab ------------------------------------------------------------------


def task_view(
    store: ArtifactStore,
    dag_id: str,
    run_id: str,
    task_id: str,
    map_index: int,
    items_from: int = 0,
) -> dict[str, Any]:
    """Every try of one task instance, the latest one's result view and cards, its .foreach."""
    store = cached(store)
    prefix, part = run_prefix(dag_id, run_id), key_part(task_id)
    with ThreadPoolExecutor(_THREADS) as pool:
        # The instance's folder is listed while the index is read, then its tries' result and
        # launch manifests are read together, then each try's views.
        listing = pool.submit(scan_instance, store, prefix, part, map_index)
        run = find_run(store, dag_id, run_id)
        task = _task(store, run, task_id, map_index, listing.result())
        numbers = sorted(listing.result().tries.get(map_index, {}))
        launching = pool.map(
            lambda n: _read(store, manifest_key(dag_id, run_id, task_id, map_index, n, "launch")),
            numbers,
        )
        tries = task.tries
        launches = dict(zip(numbers, launching, strict=True))
        shown = list(pool.map(lambda t: _try_view(store, t, launches.get(t.number, {})), tries))
    latest = shown[-1] if shown else None
    view: dict[str, Any] = {
        "dag_id": dag_id,
        "run_id": run_id,
        "task_id": task_id,
        "map_index": map_index,
        "namespace": run.namespace,
        "tags": list(run.tags),
        "tries": list(reversed(shown)),
        "foreach": None,
    }
    if latest is not None and latest["foreach"]:
        view["foreach"] = foreach_view(store, latest["foreach"], items_from)
    return view


def _task(store: ArtifactStore, run: Run, task_id: str, map_index: int, layout: TaskLayout) -> Task:
    """The task instance, from listings of its own folder (never the whole run's)."""
    prefix = run_prefix(run.dag_id, run.run_id)
    if not layout.tries and not layout.xcom:
        index = f"[{map_index}]" if map_index >= 0 else ""
        raise NotStored(f"run {run.run_id!r} stored nothing for task {task_id}{index}")
    task = Task(store, prefix, task_id, layout)
    return task[map_index] if task.mapped else task


def _read_all(store: ArtifactStore, keys: list[str]) -> list[dict[str, Any]]:
    return store.in_parallel(lambda key: _read(store, key), keys)


def _try_view(store: ArtifactStore, attempt: Try, launch: dict[str, Any]) -> dict[str, Any]:
    manifest = attempt.manifest
    views = manifest.get("views") or {}
    asked = manifest.get("requested") or launch.get("requested") or {}
    usage = _usage_row(attempt, dict(asked))
    result = attempt.result
    summary, size = describe_result(result) if result is not None else ("", 0)
    return {
        "number": attempt.number,
        "status": attempt.status,
        "error": attempt.error,
        "failure_kind": manifest.get("failure_kind"),
        "exit_code": _exit_code(manifest, attempt.status),
        "seconds": manifest.get("seconds"),
        "compute": launch.get("compute") or manifest.get("compute"),
        "where": manifest.get("where") or _where_from(manifest),
        "environment": _environment(launch, manifest),
        "usage": usage,
        "bars": _bars(usage),
        "result": result,
        "result_summary": summary,
        "result_size": size,
        "result_sha256": result.get("sha256") if is_reference(result) else None,
        "result_type": result.get("type") if is_reference(result) else None,
        "downloadable": is_reference(result) and result.get("encoding") != "flowtask.chunks",
        "view": read_view(store, views.get("result")),
        "cards": (read_view(store, views.get("cards")) or {}).get("cards", []),
        "foreach": manifest.get("foreach"),
    }


def _exit_code(manifest: dict[str, Any], status: str) -> int | None:
    """The worker records a try's exit code when the runtime reported nothing; the runtime's
    own manifest means it exited 0 (succeeded) or 1 (the function raised)."""
    if "exit_code" in manifest:
        return manifest["exit_code"]
    if "pid" in manifest and status in ("succeeded", "failed"):
        return 0 if status == "succeeded" else 1
    return None


def _where_from(manifest: dict[str, Any]) -> dict[str, Any] | None:
    if "host" in manifest:
        return {"platform": "local", "host": manifest["host"], "pid": manifest.get("pid")}
    return None


def _environment(launch: dict[str, Any], manifest: dict[str, Any]) -> dict[str, Any]:
    """The try's Python and platform, its environments (id, packages) and how each was had."""
    records = [
        value
        for value in launch.values()
        if isinstance(value, dict) and "packages" in value and not is_reference(value)
    ]
    how = manifest.get("environments") or {}
    return {
        "python": manifest.get("python"),
        "runtime_start": manifest.get("runtime_start"),
        "bootstrap_seconds": manifest.get("bootstrap_seconds"),
        "environments": records,
        "fetched": how,
    }


def image_ref(
    store: ArtifactStore,
    dag_id: str,
    run_id: str,
    task_id: str,
    map_index: int,
    try_number: int,
    sha256: str,
) -> dict[str, Any]:
    """The reference of a picture the try's manifest names; ``NotStored`` for any other."""
    manifest = _read(store, manifest_key(dag_id, run_id, task_id, map_index, try_number))
    for ref in (manifest.get("views") or {}).get("images") or []:
        if (
            is_reference(ref)
            and ref.get("sha256") == sha256
            and ref.get("encoding") in IMAGE_ENCODINGS
            and int(ref.get("size", 0)) <= MAX_IMAGE_BYTES
        ):
            return dict(ref)
    raise NotStored(f"try {try_number} of {task_id} names no picture {sha256}")


def result_ref(
    store: ArtifactStore, dag_id: str, run_id: str, task_id: str, map_index: int, try_number: int
) -> dict[str, Any]:
    """The stored result of one succeeded try (a single blob), for a download."""
    manifest = _read(store, manifest_key(dag_id, run_id, task_id, map_index, try_number))
    result: Any = manifest.get("result") if manifest.get("status") == "succeeded" else None
    if not is_reference(result) or result.get("encoding") == "flowtask.chunks":
        raise NotStored(f"try {try_number} of {task_id} stored no single result to download")
    return dict(result)


# -- a .foreach -----------------------------------------------------------------------------


def foreach_view(store: ArtifactStore, foreach: dict[str, Any], items_from: int) -> dict[str, Any]:
    """Items done and failed, the failed items' first error lines, each chunk's duration and a
    page of the items' previews from ``items_from``."""
    prefix, size = foreach["prefix"], int(foreach["chunk_size"])
    manifests = foreach.get("chunk_rows")  # the try's result manifest lists its chunks
    if manifests is None:  # a try that ended before its chunks were gathered: read them
        keys = list(store.list_manifests(prefix))
        found = [m for m in _read_all(store, keys) if "chunk" in m]
        manifests = [{**m, "seconds": _duration(m), "failed": m.get("failed") or []} for m in found]
    manifests = sorted(manifests, key=lambda m: int(m["chunk"]))
    chunks: list[dict[str, Any]] = [
        {
            "chunk": int(m["chunk"]),
            "start": m.get("start"),
            "stop": m.get("stop"),
            "status": m.get("status"),
            "seconds": m.get("seconds"),
            "failed": m["failed"] if isinstance(m["failed"], int) else len(m["failed"]),
            "try_number": m.get("try_number"),
        }
        for m in manifests
    ]
    longest = max((c["seconds"] or 0 for c in chunks), default=0) or 1
    for chunk in chunks:
        chunk["pct"] = round(100 * (chunk["seconds"] or 0) / longest, 1)
    total = int(foreach["items"])
    start = max(0, min(items_from, max(total - 1, 0)))
    stop = min(total, start + ITEMS_PAGE)
    by_chunk = {int(m["chunk"]): m for m in manifests}
    lines: dict[int, str] = {}
    numbers = sorted({index // size for index in range(start, stop)})
    refs = [(by_chunk.get(number) or {}).get("item_previews") for number in numbers]
    for number, found in zip(numbers, _read_views(store, refs), strict=True):
        for offset, line in enumerate(found or []):
            lines[number * size + offset] = line
    failed = {int(f["index"]): f for f in foreach.get("failed_items") or []}
    ended = [c for c in chunks if c["status"] in ("succeeded", "failed")]
    done = sum((c["stop"] or 0) - (c["start"] or 0) - c["failed"] for c in ended)
    return {
        "items": total,
        "chunks": int(foreach.get("chunks", len(chunks))),
        "chunk_size": size,
        "done": done,
        "failed": int(foreach.get("failed", 0)),
        "failed_items": list(failed.values()),
        "chunk_rows": chunks,
        "page": [
            {
                "index": index,
                "preview": lines.get(index),
                "failed": failed.get(index),
            }
            for index in range(start, stop)
        ],
        "page_start": start,
        "page_stop": stop,
        "previous": max(0, start - ITEMS_PAGE) if start > 0 else None,
        "next": stop if stop < total else None,
    }


def _read_views(store: ArtifactStore, refs: list[Any]) -> list[Any]:
    """View documents read in parallel (a page of items spans several chunks)."""
    if len(refs) < 2:
        return [read_view(store, ref) for ref in refs]
    with ThreadPoolExecutor(min(_THREADS, len(refs))) as pool:
        return list(pool.map(lambda ref: read_view(store, ref), refs))


def _duration(manifest: dict[str, Any]) -> float | None:
    started, finished = manifest.get("started_at"), manifest.get("finished_at")
    if isinstance(started, (int, float)) and isinstance(finished, (int, float)):
        return round(finished - started, 3)
    return None


# -- a run's tab ----------------------------------------------------------------------------


def run_view(store: ArtifactStore, dag_id: str, run_id: str) -> dict[str, Any]:
    """Namespace and tags, every flow task instance's latest try with its result's size and
    preview, the run's requested against used, and the right-sizing table of ``flowtask
    usage``."""
    store = reading = cached(store)
    prefix = run_prefix(dag_id, run_id)
    with ThreadPoolExecutor(2) as side:  # the run's listing and rollup, while the index is read
        listing = side.submit(reading.list_ahead, prefix)
        preloading = side.submit(reading.preload, prefix)
        run = find_run(store, dag_id, run_id)
        listing.result()
        preloading.result()
        tasks = list(run)
    with ThreadPoolExecutor(min(_THREADS, max(len(tasks), 1))) as pool:
        tried = list(pool.map(lambda task: task.tries, tasks))
    # What each try asked for: its result manifest says, else (a .foreach's, gathered by the
    # worker) its launch manifest, read only where the listing found one.
    attempts = [a for tries in tried for a in tries]
    with ThreadPoolExecutor(min(_THREADS, max(len(attempts), 1))) as pool:
        asks = list(pool.map(lambda a: a.requested, attempts))
    wanted = dict(zip(map(id, attempts), asks, strict=True))
    rows, usage_rows = [], []
    totals = {"cpu": 0.0, "memory_mib": 0.0, "cpu_seconds": 0.0, "peak_rss_mib": 0.0, "tries": 0}
    for task, tries in zip(tasks, tried, strict=True):
        latest: dict[int, Try] = {}
        for attempt in tries:
            latest[attempt.map_index] = attempt
            row = _usage_row(attempt, wanted[id(attempt)])
            if row["suggested"] is None:
                continue
            usage_rows.append(
                {
                    "task_id": task.task_id,
                    "map_index": attempt.map_index,
                    "try_number": attempt.number,
                    **row,
                }
            )
            asked, used = row["requested"], row["used"]
            totals["cpu"] += float(asked.get("cpu") or 0)
            totals["memory_mib"] += float(asked.get("memory_mib") or 0)
            totals["cpu_seconds"] += float(used["cpu_seconds"])
            totals["peak_rss_mib"] += float(used["peak_rss_mib"])
            totals["tries"] += 1
        for map_index, attempt in sorted(latest.items()):
            summary, size = (
                describe_result(attempt.result) if attempt.result is not None else ("", 0)
            )
            rows.append(
                {
                    "task_id": task.task_id,
                    "map_index": map_index,
                    "try_number": attempt.number,
                    "status": attempt.status,
                    "preview": summary or (attempt.error or {}).get("message", ""),
                    "size": size,
                }
            )
    reading.keep(prefix)
    suggested = [u["suggested"] for u in usage_rows]
    totals["cpus_used"] = sum(u["cpus_used"] for u in usage_rows)
    bars = [
        _bar("CPU (cores)", totals["cpu"], totals["cpus_used"], sum(x["cpu"] for x in suggested)),
        _bar(
            "memory peak (MiB)",
            totals["memory_mib"],
            totals["peak_rss_mib"],
            sum(x["memory_mib"] for x in suggested),
        ),
    ]
    return {
        "dag_id": dag_id,
        "run_id": run_id,
        "namespace": run.namespace,
        "bars": bars if usage_rows else [],
        "system_tags": list(run.system_tags),
        "user_tags": list(run.user_tags),
        "status": run.status,
        "rows": rows[:RUN_ROWS],
        "rows_total": len(rows),
        "usage": usage_rows[:RUN_ROWS],
        "usage_total": len(usage_rows),
        "totals": totals,
    }


# -- a DAG's tab ----------------------------------------------------------------------------


def dag_view(
    store: ArtifactStore, dag_id: str, namespace: str | None, tags: Iterable[str]
) -> dict[str, Any]:
    """The DAG's runs newest first, in ``namespace`` (None: all) carrying every one of ``tags``,
    as ``flowtask runs`` lists them."""
    wanted = [t for t in tags if t]
    store = cached(store)
    try:
        flow = Flow(dag_id, store)
    except NotFound:
        return {
            "dag_id": dag_id,
            "runs": [],
            "namespaces": [],
            "namespace": namespace,
            "tags": wanted,
            "total": 0,
        }
    every = list(flow.runs(namespace=None))
    runs = [
        r
        for r in every
        if (namespace is None or r.namespace == namespace) and set(wanted) <= set(r.tags)
    ]
    return {
        "dag_id": dag_id,
        "namespace": namespace,
        "tags": wanted,
        "namespaces": sorted({r.namespace for r in every}),
        "all_tags": sorted({t for r in every for t in r.tags}),
        "total": len(runs),
        "runs": [
            {
                "run_id": r.run_id,
                "namespace": r.namespace,
                "tags": list(r.tags),
                "created_at": r.created_at.isoformat(timespec="seconds"),
                "status": r.status,
            }
            for r in runs[:RUNS_SHOWN]
        ],
    }
