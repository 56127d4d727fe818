"""`python -m provider.runtime foreach`: chunks of items, as a pod or an array child runs them."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from datetime import timedelta

import cloudpickle
import pytest

from provider.runtime import Failure, Payload
from provider.runtime.foreach import (
    ChunkRunner,
    ForeachPlan,
    format_chunks,
    mark_crashed,
    parse_chunks,
)
from provider.store import manifest_key, open_store, payload_key
from provider.store.gc import collect_garbage
from provider.translate.command import foreach_command

cloudpickle.register_pickle_by_value(sys.modules[__name__])
KEY = manifest_key("d", "r", "t", -1, 1)


def halve(item: int) -> float:
    if item == 5:
        raise ZeroDivisionError("item five is cursed")
    return item / 2


@pytest.fixture
def store(tmp_path):
    return open_store((tmp_path / "artifacts").as_uri())


def _plan(store, n: int = 10, chunk_size: int = 4) -> ForeachPlan:
    items = store.put(list(range(n))).to_json()
    return ForeachPlan("item", items, n, chunk_size, "runs/d/r/t/-1/foreach/p")


@pytest.mark.parametrize(
    ("chunks", "text"),
    [([0, 1, 2, 5, 7, 8], "0-2,5,7-8"), ([3], "3"), ([], ""), (list(range(1000)), "0-999")],
)
def test_chunk_lists_are_compact_and_read_back_in_order(chunks, text):
    assert format_chunks(chunks) == text
    assert parse_chunks(text) == chunks


def test_a_chunk_from_an_index_variable_as_an_indexed_job_pod_runs_it(store):
    plan = _plan(store)
    ref = store.put_at(
        payload_key(KEY), Payload(halve, identity={"try_number": 1}, foreach=plan), by_value=True
    )
    argv = foreach_command(
        store.root_uri,
        ref.to_json(),
        ["--chunk-env", "INDEX", "--chunks", "1-2"],
        python=sys.executable,
    )
    proc = subprocess.run(argv, env={**os.environ, "INDEX": "1"}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr  # an item's failure is recorded, not an exit code
    manifest = store.read_manifest(plan.chunk_key(2))  # index 1 of "1-2" is chunk 2
    assert (manifest["start"], manifest["stop"], manifest["status"]) == (8, 10, "succeeded")
    assert store.get(manifest["result"]) == [4.0, 4.5]


def test_a_chunk_through_the_bootstrap_as_an_array_child_runs_it(store, tmp_path):
    """The container command of a Batch array job: the bootstrap hands the foreach arguments
    (after ``--``) to the runtime, which picks its chunk by AWS_BATCH_JOB_ARRAY_INDEX."""
    from provider.core.code import store_code_package
    from provider.core.code_package import build_code_package
    from provider.translate import bootstrap_command

    plan = _plan(store)
    ref = store.put_at(
        payload_key(KEY), Payload(halve, identity={"try_number": 1}, foreach=plan), by_value=True
    )
    code = store_code_package(store, build_code_package())
    mode = ["--chunk-env", "AWS_BATCH_JOB_ARRAY_INDEX", "--chunks", "0,2"]
    argv = bootstrap_command(
        store.root_uri, code, ref.to_json(), KEY, python=sys.executable, foreach=mode
    )
    assert argv[argv.index("--") + 1 :][0] == "foreach" and argv[-4:] == mode
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PYTHON"))}
    env = {**clean, "TMPDIR": str(tmp_path), "AWS_BATCH_JOB_ARRAY_INDEX": "1"}
    proc = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert store.get(store.read_manifest(plan.chunk_key(2))["result"]) == [4.0, 4.5]
    assert list(store.list_manifests(plan.prefix)) == [plan.chunk_key(2)]  # that chunk alone


def test_a_rerun_chunk_runs_only_its_failed_items(store):
    plan = _plan(store)
    calls: list[int] = []

    def counting(item: int) -> float:
        calls.append(item)
        return halve(item)

    first = ChunkRunner(store, Payload(counting, foreach=plan), try_number=1).run(1)
    assert first["status"] == "failed" and [f["index"] for f in first["failed"]] == [5]
    assert first["failed"][0]["message"] == "item five is cursed"
    assert calls == [4, 5, 6, 7]
    calls.clear()
    second = ChunkRunner(store, Payload(lambda item: item / 2, foreach=plan), 2).run(1)
    assert second["status"] == "succeeded" and second["ran"] == 1 and calls == []
    assert store.get(second["result"]) == [2.0, 2.5, 3.0, 3.5]


def test_a_failed_item_is_a_failure_value_in_its_chunk(store):
    plan = _plan(store)
    manifest = ChunkRunner(store, Payload(halve, foreach=plan), 1).run(1)
    values = store.get(manifest["result"])
    assert values[0] == 2.0 and isinstance(values[1], Failure)
    assert values[1].type == "builtins.ZeroDivisionError"


def dies_on_three(item: int) -> int:
    """Records each call in $FLOW_TEST_MARKER; item 3 kills its process, as a segfault would."""
    marker = os.environ["FLOW_TEST_MARKER"]
    with open(os.path.join(marker, f"{item}-{time.monotonic_ns()}"), "w"):
        pass
    if item == 3:
        os._exit(5)
    return item * 10


def _run_chunk(store, ref, chunk: int, marker) -> int:
    argv = foreach_command(store.root_uri, ref.to_json(), ["--chunk", str(chunk)])
    argv[0] = sys.executable
    env = {**os.environ, "FLOW_TEST_MARKER": str(marker)}
    return subprocess.run(argv, env=env, capture_output=True, text=True).returncode


def test_a_chunk_whose_process_dies_keeps_what_it_did_and_names_the_item_that_killed_it(
    store, tmp_path
):
    """Checkpoints after every item (checkpoint_seconds=0): the second run is careful (it
    records each item before starting it), so the item that kills it is known; marked as a
    Failure, the third run finishes the chunk. No item that finished ran twice."""
    plan = dataclasses.replace(_plan(store, n=6, chunk_size=6), checkpoint_seconds=0.0)
    ref = store.put_at(
        payload_key(KEY),
        Payload(dies_on_three, identity={"try_number": 1}, foreach=plan),
        by_value=True,
    )
    marker = tmp_path / "calls"
    marker.mkdir()
    assert _run_chunk(store, ref, 0, marker) == 5
    first = store.read_manifest(plan.chunk_key(0))
    assert (first["status"], first["careful"]) == ("running", False)
    assert sorted(o for s in first["segments"] for o in s["offsets"]) == [0, 1, 2]
    assert mark_crashed(store, plan, 0, 1, "exit code 5") is None  # not careful: unknown item

    assert _run_chunk(store, ref, 0, marker) == 5
    second = store.read_manifest(plan.chunk_key(0))
    assert (second["status"], second["careful"], second["in_flight"]) == ("running", True, 3)
    assert mark_crashed(store, plan, 0, 1, "worker 0 exited with code 5") == 3

    assert _run_chunk(store, ref, 0, marker) == 0
    last = store.read_manifest(plan.chunk_key(0))
    assert last["status"] == "failed" and [f["index"] for f in last["failed"]] == [3]
    values = store.get(last["result"])
    assert values[:3] == [0, 10, 20] and values[4:] == [40, 50]
    assert isinstance(values[3], Failure) and values[3].type == "ProcessDied"
    assert values[3].message == "the process running item 3 died: worker 0 exited with code 5"
    calls = sorted(int(p.name.split("-")[0]) for p in marker.iterdir())
    assert calls == [0, 1, 2, 3, 3, 4, 5]  # item 3 twice (it killed both runs), no other


def test_gc_keeps_an_older_try_s_result_after_a_later_try_reran_its_chunk(store):
    """Try 1 caught a Failure; try 2 re-ran that item, which rewrote its chunk. Try 1's result
    names every chunk's results in its manifest, so gc keeps them all."""
    from provider.core.foreach import gather, pending_chunks

    plan = _plan(store, n=8, chunk_size=4)
    results = {}
    for try_number, function in ((1, halve), (2, lambda item: item / 2)):
        runner = ChunkRunner(store, Payload(function, foreach=plan), try_number)
        for chunk in pending_chunks(store, plan):
            runner.run(chunk)
        key = manifest_key("d", "r", "t", -1, try_number)
        identity = {"try_number": try_number}
        manifest = gather(store, plan, key, identity, catching=True, started=0.0)
        results[try_number] = manifest["result"]
    assert results[1]["preview"] == "list of 8 in 2 chunks, 1 Failure at 5"
    collect_garbage(store, grace=timedelta(0), delete=True)
    first, second = store.get(results[1]), store.get(results[2])
    assert isinstance(first[5], Failure) and first[:5] == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert second == [i / 2 for i in range(8)]


def _sliced_plan(store, n: int = 10, chunk_size: int = 4) -> ForeachPlan:
    """A plan as the worker makes it: the items stored a slice per chunk."""
    from provider.core.foreach import store_items

    items, slices = store_items(store, list(range(n)), chunk_size)
    return ForeachPlan("item", items, n, chunk_size, "runs/d/r/t/-1/foreach/p", item_slices=slices)


def _damage(store, plan: ForeachPlan, chunk: int) -> None:
    """Flip a byte of ``chunk``'s slice in the stored items blob."""
    from provider.store import Reference
    from provider.store.keys import blob_key

    path = store.backend.root / blob_key(Reference.from_json(plan.items).sha256)
    data = bytearray(path.read_bytes())
    offset, size, _, _ = plan.item_slices[chunk]
    data[offset + size // 2] ^= 0xFF
    path.chmod(0o644)
    path.write_bytes(bytes(data))


def test_a_chunk_reads_only_its_own_slice_of_the_items(store):
    """A pod's chunk reads its slice alone: another chunk's damaged bytes do not touch it (a
    whole read would fail the blob's hash), and its own damaged slice is refused."""
    from provider.store import IntegrityError, StoreError

    plan = _sliced_plan(store)
    assert [s[1] > 0 for s in plan.item_slices] == [True] * 3
    with pytest.raises(StoreError, match="slices"):
        store.get(plan.items)  # not a plain value: read through the plan's slices
    _damage(store, plan, 2)
    manifest = ChunkRunner(store, Payload(halve, foreach=plan), try_number=1).run(0)
    assert store.get(manifest["result"]) == [0.0, 0.5, 1.0, 1.5]
    with pytest.raises(IntegrityError, match="expected sha256"):
        ChunkRunner(store, Payload(halve, foreach=plan), try_number=1).run(2)


def test_a_process_running_several_chunks_reads_the_items_once_whole(store):
    """A local pool's process: its first chunk reads its slice, the next ones the whole blob
    once (hash checked: a damaged slice anywhere fails the whole read)."""
    from provider.store import IntegrityError

    plan = _sliced_plan(store, n=12, chunk_size=3)
    runner = ChunkRunner(store, Payload(lambda item: item + 1, foreach=plan), try_number=1)
    assert [store.get(runner.run(c)["result"]) for c in (3, 0, 1, 2)] == [
        [10, 11, 12],
        [1, 2, 3],
        [4, 5, 6],
        [7, 8, 9],
    ]
    _damage(store, plan, 3)
    fresh = dataclasses.replace(plan, prefix="runs/d/r/t/-1/foreach/q")  # nothing done yet
    other = ChunkRunner(store, Payload(lambda item: item, foreach=fresh), try_number=1)
    other.run(0)  # its own slice is intact
    with pytest.raises(IntegrityError):
        other.run(1)  # the second chunk reads the whole blob


def _without_times(manifest: dict) -> dict:
    foreach = dict(manifest["foreach"])
    foreach["chunk_rows"] = [{**row, "seconds": None} for row in foreach["chunk_rows"]]
    drop = ("started_at", "finished_at", "seconds", "function_seconds", "usage")
    return {**{k: v for k, v in manifest.items() if k not in drop}, "foreach": foreach}


@pytest.mark.parametrize("layout", ["chunks", "items"])
def test_gathering_from_the_markers_writes_what_reading_every_manifest_writes(store, layout):
    """One listing of the markers (a manifest read only for failed items or results kept one
    per item) gives the try's manifest that reading each chunk's manifest gives; a chunk run
    again leaves one marker, its new one."""
    from provider.core.foreach import gather, pending_chunks
    from provider.runtime.foreach import marker_prefix

    plan = dataclasses.replace(_sliced_plan(store, n=10, chunk_size=3), layout=layout)
    for try_number, function in ((1, halve), (2, lambda item: item / 2)):
        runner = ChunkRunner(store, Payload(function, foreach=plan), try_number)
        for chunk in pending_chunks(store, plan):
            runner.run(chunk)
    markers = list(store.backend.list(marker_prefix(plan)))
    assert [key.split("/")[-4] for key in markers] == ["000000", "000001", "000002", "000003"]
    assert markers[1].split("/")[-3].startswith("2.s.0.")  # chunk 1 (item 5) ran again in try 2
    key = manifest_key("d", "r", "t", -1, 2)
    listed = gather(store, plan, key, {"try_number": 2}, catching=False, started=0.0)
    store.backend.delete_many(markers)
    read = gather(store, plan, key, {"try_number": 2}, catching=False, started=0.0)
    assert _without_times(listed) == _without_times(read)
    result = listed["result"]
    values = store.get(result) if layout == "chunks" else [store.get(r) for r in result]
    assert listed["status"] == "succeeded" and values == [i / 2 for i in range(10)]
    assert listed["function_seconds"] == pytest.approx(read["function_seconds"], abs=1e-5)
    assert listed["usage"] == read["usage"]


def test_an_upstream_list_is_stored_again_in_slices_unless_too_large_or_chunked(store, monkeypatch):
    """An upstream's list (or dict) reference up to RESLICE_MAX_BYTES is loaded on the worker
    and stored a slice per chunk; a larger one, or a .foreach result (its size is its chunk
    list's), stays where it is, every chunk loading it whole."""
    from provider.core import foreach
    from provider.runtime.foreach import chunk_reference

    upstream = {**store.put({"a": 1, "b": 2, "c": 3}).to_json(), "length": 3}
    items, length, _ = foreach.foreach_items(store, upstream)
    assert (items, length) == ([("a", 1), ("b", 2), ("c", 3)], 3)
    stored, slices = foreach.store_items(store, items, 2)
    assert len(slices) == 2 and store.get_slice(stored, slices[1]) == [("c", 3)]
    monkeypatch.setattr(foreach, "RESLICE_MAX_BYTES", upstream["size"] - 1)
    kept, _, _ = foreach.foreach_items(store, upstream)
    assert kept == upstream and foreach.store_items(store, kept, 2) == (upstream, None)
    monkeypatch.undo()
    plan = _plan(store, n=4, chunk_size=2)
    done = [ChunkRunner(store, Payload(halve, foreach=plan), 1).run(c) for c in (0, 1)]
    chunked = {**chunk_reference(store, plan, done).to_json(), "length": 4}
    assert foreach.foreach_items(store, chunked)[0] == chunked
