"""``.foreach`` on the worker: plan the chunks, launch what is missing, gather the results."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from provider.core.errors import CannotRun
from provider.runtime.foreach import ChunkLayout, ForeachPlan, is_final, listed_chunks
from provider.store import ArtifactStore, is_reference

FAILED_SHOWN = 5
# After its processes died this many times on the items they were running, a chunk's other
# items are not run again in this try (every item crashing is not worth a process per item).
MAX_CRASHED_ITEMS = 10
ITEM_TYPES = ("builtins.list", "builtins.tuple", "builtins.dict")
# An upstream's list up to this size is loaded on the worker and stored again a slice per
# chunk: a fan-out of 1,000 pods then reads it once, not 1,000 times.
RESLICE_MAX_BYTES = 32 * 1024 * 1024


class ForeachInputError(CannotRun):
    """The items of a ``.foreach`` are not a list it can run over."""


def check_argument(
    function: Callable[..., Any], op_kwargs: Mapping[str, Any], argument: str | None
) -> None:
    """The function takes the argument each item is passed as."""
    import inspect

    if argument is None:
        return
    try:
        inspect.signature(function).bind_partial(**{**op_kwargs, argument: None})
    except TypeError as exc:
        raise TypeError(f".foreach({argument}=...): {function.__name__} {exc}") from None


def foreach_items(store: ArtifactStore, items: Any) -> tuple[Any, int, str]:
    """The items as a list to store in slices, or an upstream's stored list or dict kept where
    it is (a reference) when it is larger than ``RESLICE_MAX_BYTES`` or cannot be loaded here
    (its types live in the task's environment only); its length and its content's identity."""
    from provider.store.fingerprint import fingerprint

    if is_reference(items):
        length = items.get("length")
        if items.get("type") not in ITEM_TYPES or not isinstance(length, int):
            raise ForeachInputError(
                f"the upstream result {items.get('type')} ({items['uri']}) is not a list, a "
                "tuple or a dict: .foreach runs over one; return one from the upstream task"
            )
        identity = fingerprint(items)
        loaded = _loaded(store, items, length)
        if loaded is not None:
            return loaded, length, identity
        kept = {key: value for key, value in items.items() if key not in ("preview",)}
        return kept, length, identity
    if isinstance(items, Mapping):
        items = list(items.items())  # as Airflow maps over a dict: its (key, value) pairs
    elif isinstance(items, Sequence) and not isinstance(items, (str, bytes)):
        items = list(items[:]) if hasattr(items, "__getitem__") else list(items)
    else:
        raise ForeachInputError(
            f".foreach runs over a list, a tuple, a range or a dict; got {type(items).__name__}"
        )
    try:
        identity = fingerprint(items)
    except Exception as exc:  # an item that cannot be pickled cannot be named by content either
        raise _unpicklable_item(items, exc) from exc
    return items, len(items), identity


def _loaded(store: ArtifactStore, ref: Mapping[str, Any], length: int) -> list[Any] | None:
    """An upstream's list, loaded to be stored again in slices; None to keep it where it is
    (a chunked one's size is its chunk list's, not its values')."""
    from provider.store.store import CHUNKS_ENCODING

    if not isinstance(ref.get("size"), int) or ref["size"] > RESLICE_MAX_BYTES:
        return None
    if ref.get("encoding") == CHUNKS_ENCODING:
        return None
    try:
        value = store.get(ref)
    except Exception:  # its types are the task environment's, not the worker's
        return None
    items = list(value.items()) if isinstance(value, Mapping) else list(value)
    return items if len(items) == length else None


def store_items(
    store: ArtifactStore, items: Any, chunk_size: int
) -> tuple[dict[str, Any], list[list[Any]] | None]:
    """The items as one blob of a slice per chunk (a chunk reads only its own), and the
    slices; an upstream's reference kept where it is (every chunk loads it) as it is."""
    if not isinstance(items, list):
        return items, None
    chunks = [items[start : start + chunk_size] for start in range(0, len(items), chunk_size)]
    try:
        ref, slices = store.put_slices(chunks)
    except Exception as exc:
        raise _unpicklable_item(items, exc) from exc
    return ref.to_json(), slices


def _unpicklable_item(items: list[Any], exc: Exception) -> Exception:
    import cloudpickle

    for index, item in enumerate(items):
        try:
            cloudpickle.dumps(item)
        except Exception as error:
            return ForeachInputError(
                f"its item {index} (a {type(item).__qualname__}) cannot be pickled "
                f"({type(error).__name__}: {error}). Create it inside the function, or pass "
                "what it is made from as the item."
            )
    return exc


def plan_foreach(
    task: Any,
    store: ArtifactStore,
    manifest_key: str,
    code_identity: str,
    target: Any,
    *,
    layout: ChunkLayout,
) -> ForeachPlan:
    """Split the items into chunks as the target would (``ComputeTarget.chunking``). The
    plan's identity is content (the code, the arguments, the items, the chunking), so a retry
    or a cleared task in any process, on any worker, finds the chunks already done."""
    from provider import settings

    began = time.perf_counter()
    listed, length, items_identity = foreach_items(store, task.foreach_items)
    chunk_size, _ = target.chunking(task.spec, length)
    items, slices = store_items(store, listed, chunk_size)
    task.log.info(
        "foreach: %d items stored %s (%.2fs)",
        length,
        f"a slice per chunk of {chunk_size}" if slices else "where the upstream task left them",
        time.perf_counter() - began,
    )
    key = json.dumps([code_identity, items_identity, chunk_size, layout, task.foreach_argument])
    plan_id = hashlib.sha256(key.encode()).hexdigest()[:16]
    task_prefix = manifest_key.rsplit("/", 2)[0]  # runs/<dag>/<run>/<task>/<map_index>
    return ForeachPlan(
        argument=task.foreach_argument,
        items=items,
        length=length,
        chunk_size=chunk_size,
        prefix=f"{task_prefix}/foreach/{plan_id}",
        layout=layout,
        checkpoint_seconds=settings.value("foreach_checkpoint_seconds"),
        item_slices=slices,
    )


def _manifests(
    store: ArtifactStore, plan: ForeachPlan, chunks: Sequence[int] | None = None
) -> dict[int, dict[str, Any]]:
    """The chunk manifests there are (of ``chunks``, or of all), by chunk: one listing, then
    the manifests read ``reads_in_flight`` at a time."""
    wanted = None if chunks is None else {plan.chunk_key(chunk) for chunk in chunks}
    keys = [k for k in store.list_manifests(plan.prefix) if wanted is None or k in wanted]
    return {int(m["chunk"]): m for m in store.read_manifests(keys).values()}


def pending_chunks(store: ArtifactStore, plan: ForeachPlan) -> list[int]:
    """The chunks with items that have no stored result yet (or a failed one)."""
    found = listed_chunks(store, plan, read="unmarked")
    done = {c for c, m in found.items() if m.get("status") == "succeeded"}
    return [chunk for chunk in range(plan.chunks) if chunk not in done]


def unfinished_chunks(store: ArtifactStore, plan: ForeachPlan, chunks: Sequence[int]) -> list[int]:
    """Of ``chunks``, those with no last manifest: their processes died (or never started)."""
    found = listed_chunks(store, plan, read="unmarked")
    return [chunk for chunk in chunks if not is_final(found.get(chunk, {}))]


def run_foreach(
    run: Any,
    launch: Callable[[list[int]], Any],
    *,
    catching: bool,
    stopped: Callable[[], bool] = lambda: False,
) -> Any:
    """A ``.foreach`` try: launch the chunks without stored results (:func:`run_to_the_end`),
    then gather every chunk into the try's result manifest. Returns the outcome to settle."""
    from provider.core.targets.base import Outcome

    started = time.time()
    plan, log = run.foreach, run.log
    pending = pending_chunks(run.store, plan)
    done = plan.chunks - len(pending)
    log.info(
        "foreach: %d items in %d chunks of %d; %d chunks to run%s",
        plan.length,
        plan.chunks,
        plan.chunk_size,
        len(pending),
        f" ({done} done by an earlier try)" if done else "",
    )
    outcome = Outcome(run.manifest_key, exit_code=0)
    if pending:
        outcome = run_to_the_end(
            run.store,
            plan,
            run.identity["try_number"],
            launch,
            pending,
            log,
            catching=catching,
            stopped=stopped,
        )
    began = time.perf_counter()
    gather(
        run.store,
        plan,
        run.manifest_key,
        run.identity,
        catching=catching,
        started=started,
        unreported=outcome.failure,
        log=log,
    )
    log.info("foreach: %d chunks gathered (%.2fs)", plan.chunks, time.perf_counter() - began)
    return Outcome(run.manifest_key, exit_code=0, failure=outcome.failure)


def run_to_the_end(
    store: ArtifactStore,
    plan: ForeachPlan,
    try_number: int,
    launch: Callable[[list[int]], Any],
    chunks: list[int],
    log: Any,
    *,
    catching: bool,
    stopped: Callable[[], bool] = lambda: False,
) -> Any:
    """Launch ``chunks``; where a process died while running items, run its chunk's other
    items again, carefully (each item recorded before it starts), until each item that killed
    its process is known and is a ``Failure``. Returns the last launch's outcome.

    A chunk that never started (a pod that cannot start, a lost host) is the platform's
    failure and is not launched again here; nor is a chunk whose careful run died outside an
    item, or any once ``MAX_CRASHED_ITEMS`` items killed their processes. With ``catch=``
    their unfinished items become ``Failure`` values; without it, the task fails naming them.
    """
    from provider.runtime.foreach import RUNNING, give_up_chunk, mark_crashed

    outcome = launch(chunks)
    crashed: list[int] = []
    dead = unfinished_chunks(store, plan, chunks)
    while dead and not stopped():
        reasons = dict(outcome.lost or {})
        found = _manifests(store, plan, dead)
        relaunch = []
        for chunk in dead:
            why = reasons.get(chunk) or outcome.failure or "its process died"
            manifest = found.get(chunk, {})
            ran = manifest.get("status") == RUNNING and manifest["try_number"] == try_number
            item = mark_crashed(store, plan, chunk, try_number, why) if ran else None
            if item is not None:
                crashed.append(item)
                log.warning("foreach: item %d killed the process running it (%s)", item, why)
            named = item is not None or (ran and not manifest.get("careful"))
            if named and len(crashed) <= MAX_CRASHED_ITEMS:
                relaunch.append(chunk)
            elif catching:
                lost = give_up_chunk(store, plan, chunk, try_number, why)
                log.warning(
                    "foreach: chunk %d not run again (%s): %d items not run", chunk, why, len(lost)
                )
        if not relaunch:
            break
        log.warning(
            "foreach: the processes of %d chunks died; running their other items again, "
            "each recorded before it starts, to find the items that kill them",
            len(relaunch),
        )
        outcome = launch(relaunch)
        dead = unfinished_chunks(store, plan, relaunch)
    return outcome


def gather(
    store: ArtifactStore,
    plan: ForeachPlan,
    manifest_key: str,
    identity: dict[str, Any],
    *,
    catching: bool,
    started: float,
    unreported: str | None = None,
    log: Any = None,
) -> dict[str, Any]:
    """Write the try's result manifest from the chunk manifests; return it.

    Every item succeeded, or ``catching`` (its failures become Failure values in the list):
    the result is one reference to the ordered results, and the manifest names every chunk's
    results (so gc keeps them for as long as this try's result). Otherwise the try failed,
    naming the failed items (their results stay stored: the next try re-runs only those) and,
    in the compute target's words (``unreported``), why chunks wrote no manifest.
    """
    from provider.runtime.foreach import chunk_reference

    found = listed_chunks(store, plan, read="all")
    manifests = [found[c] for c in range(plan.chunks) if is_final(found.get(c, {}))]
    missing = [c for c in range(plan.chunks) if not is_final(found.get(c, {}))]
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
            "failed_items": failed[:FAILED_LISTED],
            "chunk_rows": [_chunk_row(m) for m in manifests],  # the Flow tab reads these
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
        chunks = [{"result": m["result"], "count": m["stop"] - m["start"]} for m in manifests]
        ref = chunk_reference(store, plan, manifests).to_json()
        manifest["status"] = "succeeded"
        manifest["result"] = {**ref, "length": plan.length, "preview": _preview(plan, failed)}
        manifest["foreach"]["chunk_results"] = chunks  # what the result's blob refers to
    if manifest["status"] == "succeeded" and failed and log is not None:
        log.warning("foreach: %s", _caught_summary(plan, failed))
    store.write_manifest(manifest_key, manifest)
    return manifest


FAILED_LISTED = 100  # failed items the result manifest lists (each with its first error line)


def _chunk_row(manifest: dict[str, Any]) -> dict[str, Any]:
    """A chunk as the try's result manifest lists it: its items, status, seconds, failed items
    and where its items' previews are (one manifest to read for a fan-out's tab)."""
    started, finished = manifest.get("started_at"), manifest.get("finished_at")
    row = {key: manifest.get(key) for key in ("chunk", "start", "stop", "status", "try_number")}
    row["failed"] = len(manifest["failed"])
    row["seconds"] = round(finished - started, 3) if started and finished else None
    if manifest.get("item_previews"):
        row["item_previews"] = manifest["item_previews"]
    return row


def _preview(plan: ForeachPlan, failed: list[dict[str, Any]]) -> str:
    preview = f"list of {plan.length} in {plan.chunks} chunks"
    return f"{preview}, {_failures_at(failed)}" if failed else preview


def _failures_at(failed: list[dict[str, Any]]) -> str:
    shown = ", ".join(str(f["index"]) for f in failed[:FAILED_SHOWN])
    more = f" and {len(failed) - FAILED_SHOWN} more" if len(failed) > FAILED_SHOWN else ""
    return f"{len(failed)} Failure{'s' if len(failed) != 1 else ''} at {shown}{more}"


def _caught_summary(plan: ForeachPlan, failed: list[dict[str, Any]]) -> str:
    first = failed[0]
    return (
        f"list of {plan.length}, {_failures_at(failed)} (caught: downstream gets Failure values "
        f"there); the first: [{first['index']}] {first['type']}: {first['message']}"
    )


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


class ChunkProgress:
    """Logs a cluster fan-out's progress every ``every`` seconds: items done and failed, and
    its pods (an Indexed Job's state: its ``completed`` indexes and its pod counts). The items
    done come from the state; the failed ones from the markers of the chunks completed since
    the last line: one listing when a line is due, not a request per chunk per poll."""

    def __init__(self, run: Any, chunks: list[int], every: float) -> None:
        self.run, self.chunks, self.every = run, chunks, every
        self.progress = ForeachProgress(run.log, run.foreach, chunks)
        self.done: set[int] = set()
        self.unread: list[int] = []
        self.failed_items = 0
        self.logged = self.progress.started

    def see(self, state: Any) -> None:
        import time

        for index in state.completed:
            chunk = self.chunks[index]
            if chunk not in self.done:
                self.done.add(chunk)
                self.unread.append(chunk)
        now = time.monotonic()
        if now - self.logged < self.every and not state.finished:
            return
        self.logged = now
        if self.unread:  # one listing of the markers, not a read per chunk
            said = listed_chunks(self.run.store, self.run.foreach, read="none")
            for chunk in self.unread:
                self.failed_items += said.get(chunk, {}).get("failed_count", 0)
            self.unread = []
        self.progress.log_line(self.done, self.failed_items)
        self.run.log.info(
            "job %s: %d pods active (%d running), %d succeeded, %d failed",
            state.name,
            state.active,
            state.ready,
            state.succeeded,
            state.failed,
        )
