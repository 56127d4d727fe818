"""The run index: a DAG's runs with their namespace, tags and final state, read without opening
every manifest.

Per DAG, under ``index/<dag>/``::

    log/<time_ns>-<random>.json   one immutable event each: a run started, a task instance
                                  ended (succeeded, or failed with no retry left), a run ended,
                                  tags were added or removed after the fact
    started/<run>.json            the run's start is recorded (what each task try checks)
    snapshot.json                 the events folded so far; replaced only by a conditional write
    compacting.json               a run end's claim to fold the log (while it does)

Writers append: S3 has no append, so each event is a new object under a fresh name. Recording
an event never reads, conflicts or retries, and nobody loses anybody's update (two people
tagging one run at once write two events). One index object rewritten with conditional writes
would instead make every run start, run end and tagger contend for that object, and rewrite an
object that grows with the DAG's history on every event.

Readers fold: GET the snapshot (with its ETag), LIST the log, GET the events the snapshot has
not folded, HEAD the snapshot again (changed: start over). A reader that read events then
compacts: it writes the new snapshot conditionally (``If-Match`` the ETag it read;
``If-None-Match: *`` for the first) and, only once that succeeded, deletes the events it folded.
So the log stays short, a reading costs a few requests, and an event is deleted only when the
snapshot that replaced the one every other reader could still hold has it: a reader that saw the
snapshot unchanged from before its LIST to after its GETs missed nothing. Folding is
order-independent and idempotent (a run's earliest start wins, its latest end wins, each added
tag takes the state of its latest event, by event name), so an event folded twice (its compactor
died before deleting it) changes nothing, and the next compaction deletes it. A run's end, once
recorded, also folds the log when it holds ``COMPACT_AFTER`` events (one writer at a time), so
the log stays short even for a DAG nobody lists.

Limits: compaction needs a store that honours conditional writes (AWS S3 since 2024, MinIO, a
local folder); on one that ignores them two compactors racing can drop events. A reader without
write access reads correctly but never compacts: with a DAG that does not record its ends, each
reading then pays for every event since the last compaction. Event names carry the writer's
clock: it orders a run's ends and one tag's adds and removes, so clocks that disagree can
reorder edits made within that disagreement.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from provider.store.errors import BadManifest, MissingArtifact
from provider.store.keys import index_prefix, key_part
from provider.store.store import ArtifactStore

log = logging.getLogger("provider.store.index")

SNAPSHOT = "snapshot.json"
RUN_STATE_MARKER = "flowtask_records_run_state"  # set on the DAG callback that records the end
MAX_TAG_LENGTH = 500
_EVENT_NAME = re.compile(r"\d{20}-[0-9a-f]{16}\.json")
_ATTEMPTS = 5
COMPACT_AFTER = 100  # events in the log before a run's end folds it
CHECK_EVERY = 8  # one task end in this many counts the log
CLAIM_SECONDS = 300  # a writer's claim to compact, older than this, is taken over


@dataclass(frozen=True)
class RunRecord:
    """What the index knows about one run.

    ``system_tags`` came with the trigger (``flow_tags``) and never change; ``user_tags`` were
    added after the fact (in the order they were added; none of them a system tag). ``state``
    is ``success`` or ``failed`` once the run's end is recorded.
    ``reports_end`` says whether the DAG records its end at all (see ``record_run_end``).
    ``flow_tasks`` are the DAG's flow tasks (None: a run recorded before they were), and
    ``derived``/``derived_at`` what their recorded ends say of the run (see ``derived_state``).
    """

    run_id: str
    namespace: str
    system_tags: tuple[str, ...]
    user_tags: tuple[str, ...]
    created_at: float
    reports_end: bool
    state: str | None = None
    finished_at: float | None = None
    reason: str | None = None
    flow_tasks: tuple[str, ...] | None = None
    derived: str | None = None
    derived_at: float | None = None

    @property
    def tags(self) -> tuple[str, ...]:
        return self.system_tags + self.user_tags


# -- writing ----------------------------------------------------------------------------------


def _started_key(dag_id: str, run_id: str) -> str:
    return f"{index_prefix(dag_id)}/started/{key_part(run_id)}.json"


def recorded_start(store: ArtifactStore, dag_id: str, run_id: str) -> dict[str, Any] | None:
    """The record of a run's start (what ``record_run_start`` wrote), or None: missing or
    unreadable."""
    try:
        return store.read_manifest(_started_key(dag_id, run_id))
    except (MissingArtifact, BadManifest):
        return None


def append_event(
    store: ArtifactStore, dag_id: str, event: Mapping[str, Any], *, at_ns: int | None = None
) -> str:
    """Write one event under a fresh, time-ordered name; returns the name."""
    stamp = time.time_ns() if at_ns is None else at_ns
    name = f"{stamp:020d}-{uuid.uuid4().hex[:16]}.json"
    store.write_manifest(f"{index_prefix(dag_id)}/log/{name}", dict(event))
    return name


def reports_run_state(dag: Any) -> bool:
    """Whether ``dag`` (an Airflow DAG, duck-typed) records its end with flowtask's callback,
    both on success and on failure."""

    def has(callbacks: Any) -> bool:
        items = callbacks if isinstance(callbacks, (list, tuple)) else [callbacks]
        return any(getattr(cb, RUN_STATE_MARKER, False) for cb in items)

    return has(getattr(dag, "on_success_callback", None)) and has(
        getattr(dag, "on_failure_callback", None)
    )


def record_run_start(
    store: ArtifactStore,
    identity: Mapping[str, Any],
    *,
    reports_end: bool = False,
    flow_tasks: Iterable[str] | None = None,
) -> bool:
    """Record a run's start once (each task try calls this; after the first it costs one stat).

    ``identity`` holds ``dag_id``, ``run_id``, ``namespace`` and ``tags``; ``reports_end``
    whether the run's DAG records its end (:func:`reports_run_state`); ``flow_tasks`` are the
    ids of its flow tasks, whose
    ends tell the run's status (``record_task_end``). Two tries that start at once may both
    record it: the earliest record wins. Returns whether this call recorded it.
    """
    dag_id, run_id = identity["dag_id"], identity["run_id"]
    marker = _started_key(dag_id, run_id)
    if store.backend.stat(marker) is not None:
        return False
    event = {
        "kind": "start",
        "run_id": run_id,
        "namespace": identity["namespace"],
        "tags": list(identity["tags"]),
        "at": time.time(),
        "reports_end": reports_end,
    }
    if flow_tasks is not None:
        event["flow_tasks"] = sorted(set(flow_tasks))
    append_event(store, dag_id, event)
    store.write_manifest(marker, event)
    return True


def record_task_end(
    store: ArtifactStore,
    identity: Mapping[str, Any],
    state: str,
    *,
    instances: int | None,
    compact: bool = True,
) -> None:
    """Record that a flow task instance ended for good: ``success`` (a caught failure too: the
    task succeeded) or ``failed`` with no retry left. ``instances`` is how many instances the
    task has (1 unless mapped; None: unknown). A cleared task that runs again records its new
    end, and the latest wins. Then, as for a run's end, fold a long log."""
    if state not in ("success", "failed"):
        raise ValueError(f"state={state!r} is invalid. Accepted: 'success' or 'failed'")
    event = {
        "kind": "task",
        "run_id": identity["run_id"],
        "task_id": identity["task_id"],
        "map_index": identity["map_index"],
        "state": state,
        "instances": instances,
        "at": time.time(),
    }
    append_event(store, identity["dag_id"], event)
    if compact and should_check_length():  # else the caller folds it, perhaps meanwhile
        compact_if_long(store, identity["dag_id"])


def should_check_length() -> bool:
    """Whether a task's end counts the log (a LIST): one end in ``CHECK_EVERY`` does, so a log
    grows past ``COMPACT_AFTER`` by a few events before it is folded, and a task's end costs
    one request, not two. (A run's end always counts it.)"""
    return random.random() < 1 / CHECK_EVERY


def compact_if_long(store: ArtifactStore, dag_id: str) -> None:
    """Fold the log of ``dag_id`` when it is long (see ``_compact_if_long``); never raises."""
    try:
        _compact_if_long(store, dag_id)
    except Exception as error:  # the end is recorded; a reader folds the log later
        log.warning("run index of %s: could not compact: %s", dag_id, error)


def record_run_end(
    store: ArtifactStore, dag_id: str, run_id: str, state: str, *, reason: str | None = None
) -> None:
    """Record a run's final state (``success`` or ``failed``); the latest record wins.

    Then, when the log holds ``COMPACT_AFTER`` events or more, fold it (one LIST to know): so a
    DAG that records its ends keeps its log short even when nobody lists its runs, and the
    first listing after many runs stays cheap.
    """
    if state not in ("success", "failed"):
        raise ValueError(f"state={state!r} is invalid. Accepted: 'success' or 'failed'")
    event = {"kind": "end", "run_id": run_id, "state": state, "at": time.time(), "reason": reason}
    append_event(store, dag_id, event)
    try:
        _compact_if_long(store, dag_id)
    except Exception as error:  # the end is recorded; a reader folds the log later
        log.warning("run index of %s: could not compact: %s", dag_id, error)


def _compact_if_long(store: ArtifactStore, dag_id: str) -> None:
    """Fold a log of ``COMPACT_AFTER`` events or more, unless another writer is at it.

    Writers claim the job by creating ``compacting.json`` conditionally, so a burst of run ends
    (a backfill) folds the log once, not once per run; a claim older than ``CLAIM_SECONDS``
    (its writer died) is taken over, conditionally too.
    """
    prefix = index_prefix(dag_id)
    if sum(1 for _ in store.backend.list(f"{prefix}/log")) < COMPACT_AFTER:
        return
    claim = f"{prefix}/compacting.json"
    found = store.backend.stat(claim)
    if found is not None and time.time() - found.modified < CLAIM_SECONDS:
        return
    version = None if found is None else store.backend.version(claim)
    body = json.dumps({"since": time.time()}).encode()
    if not store.backend.write_if_version(claim, body, version):
        return
    try:
        read_runs(store, dag_id, attempts=1)
    finally:
        store.backend.delete(claim)


def check_tags(tags: Iterable[str]) -> list[str]:
    """Tags stripped, each once; ``ValueError`` for one that is not a non-empty string."""
    out: list[str] = []
    for tag in tags:
        if not isinstance(tag, str) or not tag.strip() or len(tag.strip()) > MAX_TAG_LENGTH:
            raise ValueError(
                f"tag {tag!r} is invalid. Accepted: a non-empty string of at most "
                f"{MAX_TAG_LENGTH} characters, e.g. 'best-model'"
            )
        if tag.strip() not in out:
            out.append(tag.strip())
    return out


def record_tags(
    store: ArtifactStore,
    dag_id: str,
    run_id: str,
    *,
    add: Iterable[str] = (),
    remove: Iterable[str] = (),
    by: str | None = None,
) -> None:
    """Add and remove tags of a run after the fact: one event, never a read-modify-write."""
    added, removed = check_tags(add), check_tags(remove)
    both = set(added) & set(removed)
    if both:
        raise ValueError(f"tags {sorted(both)} are both added and removed")
    if not added and not removed:
        return
    event = {
        "kind": "tags",
        "run_id": run_id,
        "add": added,
        "remove": removed,
        "at": time.time(),
        "by": by,
    }
    append_event(store, dag_id, event)


# -- folding ----------------------------------------------------------------------------------


def _valid(event: Any) -> bool:
    if not isinstance(event, dict) or not isinstance(event.get("run_id"), str):
        return False
    kind = event.get("kind")
    if kind == "start":
        tags = event.get("tags")
        return (
            isinstance(event.get("namespace"), str)
            and isinstance(tags, list)
            and all(isinstance(t, str) for t in tags)
            and isinstance(event.get("at"), (int, float))
        )
    if kind == "end":
        return event.get("state") in ("success", "failed") and isinstance(
            event.get("at"), (int, float)
        )
    if kind == "tags":
        lists = (event.get("add", []), event.get("remove", []))
        return all(isinstance(x, list) and all(isinstance(t, str) for t in x) for x in lists)
    if kind == "task":
        instances = event.get("instances")
        return (
            isinstance(event.get("task_id"), str)
            and isinstance(event.get("map_index"), int)
            and event.get("state") in ("success", "failed")
            and (instances is None or isinstance(instances, int))
        )
    return False


def apply_event(runs: dict[str, dict[str, Any]], name: str, event: Mapping[str, Any]) -> None:
    """Fold one event into ``runs`` (run id -> state): any order gives the same result, and
    folding an event again changes nothing."""
    state = runs.setdefault(event["run_id"], {})
    kind = event["kind"]
    if kind == "start":
        # Whether the DAG records its end: any start event that says so (a backfilled one
        # cannot know).
        reports_end = bool(state.get("reports_end")) or bool(event.get("reports_end"))
        if "start" not in state or name < state["start"]:
            state.update(
                start=name,
                namespace=event["namespace"],
                tags=list(event["tags"]),
                created_at=float(event["at"]),
            )
            if isinstance(event.get("flow_tasks"), list):
                state["flow_tasks"] = [t for t in event["flow_tasks"] if isinstance(t, str)]
        state["reports_end"] = reports_end
    elif kind == "task":
        task = state.setdefault("tasks", {}).setdefault(event["task_id"], {"ends": {}})
        if event.get("instances") is not None:
            task["instances"] = max(task.get("instances", 0), event["instances"])
        index = str(event["map_index"])
        if name > task["ends"].get(index, ("",))[0]:
            task["ends"][index] = [name, event["state"]]
    elif kind == "end" and name > state.get("end", ""):
        state.update(end=name, state=event["state"], finished_at=float(event["at"]))
        state["reason"] = event.get("reason")
    elif kind == "tags":
        user = state.setdefault("user_tags", {})
        for present, tags in ((True, event.get("add", [])), (False, event.get("remove", []))):
            for tag in tags:
                if tag not in user or name > user[tag][0]:
                    user[tag] = [name, present]


def derived_state(state: Mapping[str, Any]) -> tuple[str | None, float | None]:
    """What the flow tasks' recorded ends say of a run, and when: ``failed`` once a flow task
    instance failed with no retry left (its latest end); ``success`` once every flow task of
    the DAG has ended well, every instance of it; else None (still running, or not known)."""
    tasks = state.get("tasks") or {}
    ends = [end for task in tasks.values() for end in task["ends"].values()]
    failed = [name for name, end in ends if end == "failed"]
    if failed:
        return "failed", _event_time(max(failed))
    flow_tasks = state.get("flow_tasks")
    if not flow_tasks or not all(_all_ended(tasks.get(task_id)) for task_id in flow_tasks):
        return None, None
    return "success", _event_time(max(name for name, _ in ends))


def _all_ended(task: Mapping[str, Any] | None) -> bool:
    if task is None or not task.get("instances"):
        return False
    ends = task["ends"]
    if "-1" in ends:  # not mapped
        return True
    return all(str(index) in ends for index in range(task["instances"]))


def _event_time(name: str) -> float:
    return int(name[:20]) / 1e9


def _record(run_id: str, state: Mapping[str, Any]) -> RunRecord:
    system = tuple(state["tags"])
    user = sorted(
        (entry[0], tag)
        for tag, entry in state.get("user_tags", {}).items()
        if entry[1] and tag not in system
    )
    derived = derived_state(state)
    return RunRecord(
        run_id=run_id,
        namespace=state["namespace"],
        system_tags=system,
        user_tags=tuple(tag for _, tag in user),
        created_at=state["created_at"],
        reports_end=state.get("reports_end", False),
        state=state.get("state"),
        finished_at=state.get("finished_at"),
        reason=state.get("reason"),
        flow_tasks=tuple(state["flow_tasks"]) if "flow_tasks" in state else None,
        derived=derived[0],
        derived_at=derived[1],
    )


# -- reading ----------------------------------------------------------------------------------


def _read_event(store: ArtifactStore, key: str) -> dict[str, Any] | None:
    """An event, or None: gone (a compactor folded it into the snapshot since it was listed:
    see ``read_runs``), or not an event this version understands (kept, never folded)."""
    try:
        event = store.read_manifest(key)
    except MissingArtifact:
        return None
    except BadManifest as error:
        log.warning("run index: skipping event %s: %s", key, error)
        return None
    if not _valid(event):
        log.warning("run index: skipping event %s: not a run event this version knows", key)
        return None
    return event


def _read_events(store: ArtifactStore, keys: list[str]) -> list[dict[str, Any] | None]:
    return store.in_parallel(lambda key: _read_event(store, key), keys)


def _load_snapshot(store: ArtifactStore, key: str) -> tuple[dict[str, Any], str | None]:
    """The snapshot and its version (None: there is none yet)."""
    empty: dict[str, Any] = {"version": 1, "runs": {}, "folded": []}
    try:
        body, version = store.backend.read_versioned(key)
    except MissingArtifact:
        return empty, None
    try:
        snapshot = json.loads(body)
    except ValueError:
        snapshot = None
    ok = (
        isinstance(snapshot, dict)
        and snapshot.get("version") == 1
        and isinstance(snapshot.get("runs"), dict)
        and isinstance(snapshot.get("folded"), list)
    )
    if not ok:  # rebuilt from the log by the next compaction; events still there fold again
        log.warning("run index: %s is not a snapshot this version reads; ignoring it", key)
        return empty, version
    return snapshot, version


def read_runs(
    store: ArtifactStore, dag_id: str, *, compact: bool = True, attempts: int = _ATTEMPTS
) -> dict[str, RunRecord]:
    """Every run of ``dag_id`` the index knows, by run id.

    With ``compact``, events read beyond the snapshot are folded into it and deleted (best
    effort: a reader without write access still gets the right answer). A reading that found
    the snapshot replaced meanwhile starts over, up to ``attempts`` times; after the last one
    it answers from what it read but does not compact.
    """
    prefix = index_prefix(dag_id)
    key = f"{prefix}/{SNAPSHOT}"
    for _ in range(attempts):
        snapshot, version = _load_snapshot(store, key)
        runs: dict[str, dict[str, Any]] = snapshot["runs"]
        listed = [k.rsplit("/", 1)[1] for k in store.backend.list(f"{prefix}/log")]
        done = set(snapshot["folded"])
        new = [n for n in listed if n not in done and _EVENT_NAME.fullmatch(n)]
        events = _read_events(store, [f"{prefix}/log/{name}" for name in new])
        if store.backend.version(key) == version:
            break  # no compactor deleted anything this reading has not got
    else:
        if attempts > 1:
            log.warning("run index of %s: the snapshot kept changing; listing may be stale", dag_id)
        compact = False
    folded = []
    for name, event in zip(new, events, strict=True):
        if event is not None:
            apply_event(runs, name, event)
            folded.append(name)
    if version is None:
        folded += _backfill(store, dag_id, runs)
    if compact and folded:
        _compact(store, prefix, runs, folded, version, stale=[n for n in listed if n in done])
    return {run_id: _record(run_id, s) for run_id, s in runs.items() if "start" in s}


def _compact(
    store: ArtifactStore,
    prefix: str,
    runs: dict[str, Any],
    folded: list[str],
    version: str | None,
    stale: list[str],
) -> None:
    """Replace the snapshot read at ``version`` by one with ``folded`` in, then delete the
    folded events (and those the previous snapshot folded, if still there)."""
    body = json.dumps({"version": 1, "runs": runs, "folded": sorted(folded)}).encode()
    try:
        if not store.backend.write_if_version(f"{prefix}/{SNAPSHOT}", body, version):
            return  # another reader compacted first: its snapshot has all this one has read
        store.backend.delete_many(f"{prefix}/log/{name}" for name in [*stale, *folded])
    except Exception as error:  # read-only credentials: the answer is right anyway
        log.debug("run index: could not compact %s: %s", prefix, error)


def _backfill(store: ArtifactStore, dag_id: str, runs: dict[str, dict[str, Any]]) -> list[str]:
    """Record the start of runs stored before the index existed (their ``run.json``), once:
    only a reader that finds no snapshot looks. Returns the names of the events it applied."""
    known = {key_part(run_id) for run_id, state in runs.items() if "start" in state}
    base = f"runs/{key_part(dag_id)}"
    names: list[str] = []
    for part in store.backend.children(base):
        if part in known:
            continue
        key = f"{base}/{part}/run.json"
        found = store.backend.stat(key)
        try:
            manifest = store.read_manifest(key)
        except (MissingArtifact, BadManifest):
            continue
        if found is None or not isinstance(manifest.get("run_id"), str):
            continue
        event = {
            "kind": "start",
            "run_id": manifest["run_id"],
            "namespace": str(manifest.get("namespace", "")),
            "tags": [t for t in manifest.get("tags", []) if isinstance(t, str)],
            "at": found.modified,
            "reports_end": False,
            "backfilled": True,
        }
        try:
            name = append_event(store, dag_id, event)
        except Exception as error:  # read-only: apply it without writing
            log.debug("run index: could not record %s: %s", key, error)
            name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:16]}.json"
        apply_event(runs, name, event)
        names.append(name)
    return names


def indexed_dags(store: ArtifactStore) -> list[str]:
    """DAG ids with a run index or stored runs (a long id shows as its key segment)."""
    parts = set(store.backend.children("index")) | set(store.backend.children("runs"))
    return sorted(unquote(part) for part in parts)


def has_runs(store: ArtifactStore, dag_id: str) -> bool:
    """Whether the store holds an index or runs of ``dag_id`` (one delimited listing each)."""
    part = key_part(dag_id)
    return any(True for _ in store.backend.children(f"index/{part}")) or any(
        True for _ in store.backend.children(f"runs/{part}")
    )
