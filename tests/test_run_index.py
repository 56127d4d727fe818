"""The run index: appended by writers, folded and compacted by readers, on a folder and on S3."""

from __future__ import annotations

import itertools
import json
import os
import random
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import BUCKET, s3_client
from run_factory import make_run

from provider.store import open_store, run_manifest_key
from provider.store.index import (
    CLAIM_SECONDS,
    COMPACT_AFTER,
    SNAPSHOT,
    append_event,
    apply_event,
    read_runs,
    record_run_end,
    record_run_start,
    record_tags,
    record_task_end,
)
from provider.store.keys import index_prefix


@pytest.fixture(params=["folder", "s3"])
def store(request, tmp_path):
    if request.param == "folder":
        return open_store(tmp_path.as_uri())
    moto = request.getfixturevalue("moto")
    return open_store(f"s3://{BUCKET}/{uuid.uuid4().hex}", s3_client=s3_client(moto.endpoint))


def _log(store, dag_id: str) -> list[str]:
    return list(store.backend.list(f"{index_prefix(dag_id)}/log"))


def _identity(run_id: str, **extra) -> dict:
    return {"dag_id": "d", "run_id": run_id, "namespace": "user:a", "tags": ["x"], **extra}


def test_a_run_start_is_recorded_once_with_its_namespace_and_tags(store):
    assert record_run_start(store, _identity("r1"), reports_end=True) is True
    assert record_run_start(store, _identity("r1"), reports_end=True) is False  # a later try
    assert record_run_start(store, {**_identity("r2"), "namespace": "team:ml", "tags": []})
    assert len(_log(store, "d")) == 2
    runs = read_runs(store, "d")
    assert set(runs) == {"r1", "r2"}
    assert (runs["r1"].namespace, runs["r1"].system_tags, runs["r1"].user_tags) == (
        "user:a",
        ("x",),
        (),
    )
    assert runs["r1"].reports_end is True  # its DAG has the record_run_state callbacks
    assert runs["r2"].reports_end is False
    assert runs["r1"].created_at <= runs["r2"].created_at <= time.time()
    assert runs["r1"].state is None


def test_the_latest_recorded_end_wins(store):
    record_run_start(store, _identity("r1"))
    record_run_end(store, "d", "r1", "failed", reason="task_failure")
    assert read_runs(store, "d")["r1"].state == "failed"
    record_run_end(store, "d", "r1", "success", reason="success")  # cleared and run again
    run = read_runs(store, "d")["r1"]
    assert (run.state, run.reason) == ("success", "success")
    assert run.finished_at is not None and run.finished_at >= run.created_at
    with pytest.raises(ValueError, match="'running' is invalid"):
        record_run_end(store, "d", "r1", "running")


def test_folding_is_order_independent_and_idempotent():
    events = [
        ("01", {"kind": "start", "run_id": "r", "namespace": "n", "tags": ["a"], "at": 1.0}),
        ("02", {"kind": "start", "run_id": "r", "namespace": "n", "tags": ["a"], "at": 2.0}),
        ("03", {"kind": "tags", "run_id": "r", "add": ["t", "u"], "remove": []}),
        ("04", {"kind": "end", "run_id": "r", "state": "failed", "at": 4.0}),
        ("05", {"kind": "tags", "run_id": "r", "add": [], "remove": ["t"]}),
        ("06", {"kind": "end", "run_id": "r", "state": "success", "at": 6.0}),
        ("07", {"kind": "tags", "run_id": "r", "add": ["t"], "remove": ["u"]}),
    ]
    expected: dict = {}
    for name, event in events:
        apply_event(expected, name, event)
    assert expected["r"]["created_at"] == 1.0 and expected["r"]["state"] == "success"
    assert {t for t, (_, present) in expected["r"]["user_tags"].items() if present} == {"t"}
    shuffler = random.Random(7)
    for _ in range(200):
        order = events + shuffler.sample(events, 3)  # some events folded twice
        shuffler.shuffle(order)
        state: dict = {}
        for name, event in order:
            apply_event(state, name, event)
        assert state == expected


def _task(run_id: str, task_id: str, map_index: int = -1) -> dict:
    return {**_identity(run_id), "task_id": task_id, "map_index": map_index}


def test_without_callbacks_the_flow_tasks_ends_tell_a_runs_status(store):
    """A DAG without record_run_state: its run is ``success`` once every flow task (each
    instance of a mapped one) ended well, ``failed`` once one failed with no retry left."""
    record_run_start(store, _identity("r1"), flow_tasks=["fit", "score", "fit"])
    run = read_runs(store, "d")["r1"]
    assert (run.flow_tasks, run.derived, run.reports_end) == (("fit", "score"), None, False)
    record_task_end(store, _task("r1", "fit"), "success", instances=1)
    for index in (2, 0):
        record_task_end(store, _task("r1", "score", index), "success", instances=3)
    assert read_runs(store, "d")["r1"].derived is None  # score[1] has not ended
    record_task_end(store, _task("r1", "score", 1), "success", instances=3)
    run = read_runs(store, "d")["r1"]
    assert run.derived == "success" and run.state is None
    assert run.created_at <= run.derived_at <= time.time()
    # Cleared and run again: the latest end of each instance counts.
    record_task_end(store, _task("r1", "score", 1), "failed", instances=3)
    assert read_runs(store, "d")["r1"].derived == "failed"
    record_task_end(store, _task("r1", "score", 1), "success", instances=3)
    assert read_runs(store, "d")["r1"].derived == "success"
    # A mapped task whose instance count is unknown never counts as done.
    record_run_start(store, _identity("r2"), flow_tasks=["score"])
    record_task_end(store, _task("r2", "score", 0), "success", instances=None)
    assert read_runs(store, "d")["r2"].derived is None
    # A run recorded before flow tasks were: nothing derived but failures.
    record_run_start(store, _identity("r3"))
    record_task_end(store, _task("r3", "fit"), "success", instances=1)
    assert read_runs(store, "d")["r3"].derived is None
    record_task_end(store, _task("r3", "fit"), "failed", instances=1)
    assert read_runs(store, "d")["r3"].derived == "failed"
    with pytest.raises(ValueError, match="'skipped' is invalid"):
        record_task_end(store, _task("r1", "fit"), "skipped", instances=1)


def test_task_ends_fold_in_any_order():
    start = {"kind": "start", "run_id": "r", "namespace": "n", "tags": [], "at": 1.0}
    events = [
        ("01", {**start, "flow_tasks": ["a", "b"]}),
        ("02", {"kind": "task", "run_id": "r", "task_id": "a", "map_index": -1,
                "state": "failed", "instances": 1}),
        ("03", {"kind": "task", "run_id": "r", "task_id": "a", "map_index": -1,
                "state": "success", "instances": 1}),
        ("04", {"kind": "task", "run_id": "r", "task_id": "b", "map_index": 0,
                "state": "success", "instances": 2}),
        ("05", {"kind": "task", "run_id": "r", "task_id": "b", "map_index": 1,
                "state": "success", "instances": 2}),
    ]  # fmt: skip
    expected: dict = {}
    for name, event in events:
        apply_event(expected, name, event)
    shuffler = random.Random(11)
    for _ in range(100):
        order = events + shuffler.sample(events, 2)
        shuffler.shuffle(order)
        state: dict = {}
        for name, event in order:
            apply_event(state, name, event)
        assert state == expected


def test_a_reading_folds_the_log_into_the_snapshot_and_deletes_what_it_folded(store):
    for i in range(5):
        make_run(store, "d", f"r{i}", tags=["x"], end="success" if i % 2 else None)
    assert len(_log(store, "d")) == 7  # 5 starts, 2 ends
    first = read_runs(store, "d")
    assert _log(store, "d") == []
    assert store.backend.version(f"{index_prefix('d')}/{SNAPSHOT}") is not None
    assert read_runs(store, "d") == first  # from the snapshot alone
    record_tags(store, "d", "r3", add=["best"])
    make_run(store, "d", "r5")
    runs = read_runs(store, "d")
    assert runs["r3"].user_tags == ("best",) and "r5" in runs
    assert _log(store, "d") == []
    assert {r: runs[r].state for r in runs} == {
        "r0": None,
        "r1": "success",
        "r2": None,
        "r3": "success",
        "r4": None,
        "r5": None,
    }


def test_recording_ends_keeps_the_log_short_without_any_reader(tmp_path):
    store = open_store(tmp_path.as_uri())
    for i in range(COMPACT_AFTER - 1):
        make_run(store, "d", f"r{i:03d}", end="success")  # 2 events each
    # The 50th end folded the log's 100 events; 49 runs wrote 98 events since.
    assert len(_log(store, "d")) == 2 * (COMPACT_AFTER - 1) - COMPACT_AFTER
    runs = read_runs(store, "d", compact=False)
    assert len(runs) == COMPACT_AFTER - 1 and {r.state for r in runs.values()} == {"success"}
    assert not (tmp_path / "index" / "d" / "compacting.json").exists()


def test_task_ends_count_the_log_now_and_then_and_keep_it_short(tmp_path):
    """One task end in ``CHECK_EVERY`` lists the log (a task's end is one request, not two);
    a log of task ends still stays near ``COMPACT_AFTER`` events."""
    import random

    from provider.store import index

    store = open_store(tmp_path.as_uri())
    random.seed(1)
    listed = []
    real = store.backend.list
    store.backend.list = lambda prefix: listed.append(prefix) or real(prefix)  # type: ignore[method-assign]
    for i in range(4 * COMPACT_AFTER):
        record_task_end(store, _task("r1", f"t{i}"), "success", instances=1)
    assert len(_log(store, "d")) < COMPACT_AFTER + 8 * index.CHECK_EVERY
    counted = [prefix for prefix in listed if prefix.endswith("/log")]
    assert 0 < len(counted) < 4 * COMPACT_AFTER / 2  # far fewer lists than ends


def test_one_writer_at_a_time_compacts_and_a_dead_ones_claim_expires(tmp_path):
    store = open_store(tmp_path.as_uri())
    claim = tmp_path / "index" / "d" / "compacting.json"
    claim.parent.mkdir(parents=True)
    claim.write_text("{}")  # another writer is folding the log
    for i in range(COMPACT_AFTER // 2 + 1):
        make_run(store, "d", f"r{i:03d}", end="success")
    assert len(_log(store, "d")) == COMPACT_AFTER + 2
    stale = time.time() - CLAIM_SECONDS - 1
    os.utime(claim, (stale, stale))  # ... and died
    record_run_end(store, "d", "r000", "failed")
    assert _log(store, "d") == [] and not claim.exists()
    assert read_runs(store, "d")["r000"].state == "failed"


def test_concurrent_taggers_never_lose_each_others_tags(store):
    record_run_start(store, _identity("r1"))
    read_runs(store, "d")  # a snapshot exists: taggers race readers that compact, too
    barrier = threading.Barrier(8)

    def tag(i: int) -> None:
        barrier.wait()
        record_tags(store, "d", "r1", add=[f"t{i}"], by=f"user{i}")
        read_runs(store, "d")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(tag, range(8)))
    assert sorted(read_runs(store, "d")["r1"].user_tags) == [f"t{i}" for i in range(8)]


def test_a_compaction_between_listing_and_reading_makes_the_reader_start_over(store):
    for i in range(6):
        make_run(store, "d", f"r{i}")
        if i == 2:
            read_runs(store, "d")  # a snapshot with r0..r2
    real_list = type(store.backend).list
    raced = []

    def list_then_race(backend, prefix):
        keys = list(real_list(backend, prefix))
        if prefix.endswith("/log") and not raced:
            raced.append(prefix)
            read_runs(store, "d")  # another reader compacts: deletes what was just listed
        return iter(keys)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(type(store.backend), "list", list_then_race)
        runs = read_runs(store, "d")
    assert raced
    assert sorted(runs) == [f"r{i}" for i in range(6)]


def test_a_compactor_that_lost_the_race_deletes_nothing(store):
    for i in range(3):
        make_run(store, "d", f"r{i}")
    real_write = type(store.backend).write_if_version
    outcomes = []

    def race_then_write(backend, key, data, version):
        if not outcomes:
            outcomes.append("raced")
            make_run(store, "d", "late")  # written after this reader listed the log...
            read_runs(store, "d")  # ...and folded by a reader that compacts first
            make_run(store, "d", "later")
        ok = real_write(backend, key, data, version)
        outcomes.append(ok)
        return ok

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(type(store.backend), "write_if_version", race_then_write)
        read_runs(store, "d")
    assert outcomes[-1] is False  # the snapshot changed since this reader read it
    assert sorted(read_runs(store, "d")) == ["late", "later", "r0", "r1", "r2"]


def test_a_reader_that_cannot_write_reads_right_and_leaves_the_log(store):
    for i in range(3):
        make_run(store, "d", f"r{i}", end="success")

    def refuse(*args, **kwargs):
        raise PermissionError("read-only credentials")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(type(store.backend), "write_if_version", refuse)
        runs = read_runs(store, "d")
    assert sorted(runs) == ["r0", "r1", "r2"] and runs["r1"].state == "success"
    assert len(_log(store, "d")) == 6


def test_runs_stored_before_the_index_existed_are_found(store):
    identity = _identity("old")
    store.write_manifest(run_manifest_key("d", "old"), identity)  # no index entry
    make_run(store, "d", "new")
    runs = read_runs(store, "d")
    assert sorted(runs) == ["new", "old"]
    assert runs["old"].system_tags == ("x",) and runs["old"].reports_end is False
    assert read_runs(store, "d") == runs  # recorded: found again without scanning


def test_an_event_this_version_cannot_read_is_skipped_and_kept(store, caplog):
    make_run(store, "d", "r1")
    append_event(store, "d", {"kind": "from-the-future", "run_id": "r1"})
    store.backend.write_bytes(f"{index_prefix('d')}/log/{'9' * 20}-{'a' * 16}.json", b"{oops")
    assert list(read_runs(store, "d")) == ["r1"]
    assert "skipping event" in caplog.text
    assert len(_log(store, "d")) == 2  # never folded, so never deleted


def test_conditional_writes_refuse_a_changed_or_existing_object(store):
    backend = store.backend
    assert backend.version("index/x/s.json") is None
    assert backend.write_if_version("index/x/s.json", b"1", None) is True
    assert backend.write_if_version("index/x/s.json", b"2", None) is False  # exists now
    body, first = backend.read_versioned("index/x/s.json")
    assert body == b"1" and backend.version("index/x/s.json") == first
    assert backend.write_if_version("index/x/s.json", b"22", first) is True
    assert backend.write_if_version("index/x/s.json", b"3", first) is False  # changed
    assert backend.read_versioned("index/x/s.json")[0] == b"22"


def _requests(client) -> Counter:
    counted: Counter = Counter()
    client.meta.events.register("before-call.s3", lambda model, **_: counted.update([model.name]))
    return counted


def test_listing_1000_runs_on_s3_costs_a_few_requests(moto):
    """1,000 runs in a compacted index plus 20 since (written as workers write them): listing
    reads the snapshot and those 20 events; the next listing, the snapshot alone."""
    client = s3_client(moto.endpoint)
    store = open_store(f"s3://{BUCKET}/{uuid.uuid4().hex}", s3_client=client)
    runs: dict = {}
    stamp = itertools.count(10**18)
    for i in range(1000):
        run_id = f"scheduled__{i:04d}"
        start = {"kind": "start", "run_id": run_id, "namespace": f"user:{'ab'[i % 2]}"}
        apply_event(runs, f"{next(stamp):020d}-{'0' * 16}.json", {**start, "tags": [], "at": i})
        end = {"kind": "end", "run_id": run_id, "state": "success", "at": i + 0.5}
        apply_event(runs, f"{next(stamp):020d}-{'0' * 16}.json", end)
    snapshot = json.dumps({"version": 1, "runs": runs, "folded": []}).encode()
    assert store.backend.write_if_version(f"{index_prefix('d')}/{SNAPSHOT}", snapshot, None)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: make_run(store, "d", f"manual__{i:02d}", end="failed"), range(20)))

    requests = _requests(client)
    started = time.perf_counter()
    listed = read_runs(store, "d")
    cold = time.perf_counter() - started
    assert len(listed) == 1020
    assert requests["GetObject"] == 1 + 40 and requests["ListObjectsV2"] == 1, requests
    requests.clear()
    started = time.perf_counter()
    assert read_runs(store, "d") == listed
    warm = time.perf_counter() - started
    assert dict(requests) == {"GetObject": 1, "ListObjectsV2": 1, "HeadObject": 1}
    assert warm < 2.0 and cold < 5.0, (warm, cold)


def test_the_record_run_state_callback_records_what_airflow_says(tmp_path, monkeypatch):
    """Airflow calls DAG callbacks with ``reason`` ``success``, or the cause of the failure."""
    from types import SimpleNamespace

    from provider import config, record_run_state

    store = open_store(tmp_path.as_uri())
    monkeypatch.setattr(config, "open_artifact_store", lambda: store)
    make_run(store, "d", "ok")
    make_run(store, "d", "late")
    dag = SimpleNamespace(dag_id="d")
    record_run_state({"dag": dag, "run_id": "ok", "reason": "success"})
    record_run_state({"dag": dag, "run_id": "late", "reason": "timed_out"})
    runs = read_runs(store, "d")
    assert (runs["ok"].state, runs["late"].state, runs["late"].reason) == (
        "success",
        "failed",
        "timed_out",
    )
