"""The API server's cache (``provider.ui.cache``): what it keeps, when it reads again, its bound.

On moto's S3 server (its listings name versions) with the S3 model in front to count requests,
and on a folder store.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import BUCKET, s3_client
from run_factory import make_run, write_try
from s3_servers import S3Model

from provider.runtime.views import record
from provider.store import ArtifactStore, IntegrityError, open_store, rollup
from provider.store.index import read_runs
from provider.store.keys import blob_key, launch_manifest_key, manifest_key, run_prefix
from provider.ui import data
from provider.ui.cache import ByteCache, CachedStore


@pytest.fixture
def counted(moto) -> Iterator[tuple[ArtifactStore, S3Model]]:
    """A fresh prefix of the moto bucket, read through the S3 model (which counts requests)."""
    model = S3Model(moto.port, first_byte_ms=0.0)
    prefix = f"s3://{BUCKET}/ui-cache-{uuid.uuid4().hex[:8]}"
    try:
        yield open_store(prefix, s3_client=s3_client(model.endpoint)), model
    finally:
        model.stop()


def test_the_cache_drops_the_least_recently_used_past_its_bound():
    cache = ByteCache(max_bytes=100)
    cache.put(("a",), b"x" * 40)
    cache.put(("b",), b"x" * 40)
    assert cache.get(("a",)) is not None  # a is now the most recently used
    cache.put(("c",), b"x" * 40)
    assert cache.get(("b",)) is None
    assert cache.get(("a",)) is not None and cache.get(("c",)) is not None
    assert cache.size == 80 and len(cache) == 2
    cache.put(("big",), b"x" * 101)  # larger than the whole cache: not kept
    assert cache.get(("big",)) is None and cache.size == 80


def test_a_manifest_is_read_once_per_version_a_listing_names(counted):
    store, model = counted
    key = "runs/d/r/t/-1/1/result.json"
    store.write_manifest(key, {"status": "running"})
    cache = ByteCache()

    def page() -> dict:
        view = CachedStore(store, cache)
        assert list(view.backend.list("runs/d/r")) == [key]
        return view.read_manifest(key)

    assert page() == {"status": "running"}
    before = model.by_method["GET"]
    assert page() == {"status": "running"}
    assert model.by_method["GET"] - before == 1  # the listing; the manifest came from the cache
    store.write_manifest(key, {"status": "succeeded"})  # rewritten: a new ETag
    assert page() == {"status": "succeeded"}
    assert model.by_method["GET"] - before == 3


def test_a_manifest_no_listing_named_is_always_read(counted):
    store, _ = counted
    key = "runs/d/r/run.json"
    store.write_manifest(key, {"n": 1})
    cache = ByteCache()
    assert CachedStore(store, cache).read_manifest(key) == {"n": 1}
    store.write_manifest(key, {"n": 2})
    assert CachedStore(store, cache).read_manifest(key) == {"n": 2}
    assert len(cache) == 0


def test_a_manifest_rewritten_between_listing_and_reading_is_kept_by_what_was_read(counted):
    store, _ = counted
    key = "runs/d/r/t/-1/1/result.json"
    store.write_manifest(key, {"n": 1})
    cache = ByteCache()
    view = CachedStore(store, cache)
    list(view.backend.list("runs/d/r"))  # names the version of {"n": 1}
    store.write_manifest(key, {"n": 2})
    assert view.read_manifest(key) == {"n": 2}
    store.write_manifest(key, {"n": 1})  # the listed version's content again: same ETag
    again = CachedStore(store, cache)
    list(again.backend.list("runs/d/r"))
    assert again.read_manifest(key) == {"n": 1}  # not {"n": 2} under the old ETag


def test_views_are_kept_by_content_and_read_once(counted):
    store, model = counted
    ref = record(store, list(range(30)))["result"]
    cache = ByteCache()
    first = data.read_view(CachedStore(store, cache), ref)
    before = model.requests
    assert data.read_view(CachedStore(store, cache), ref) == first
    assert model.requests == before
    assert first["kind"] == "items" and first["length"] == 30


def test_a_damaged_blob_is_never_kept(tmp_path: Path):
    store = open_store(tmp_path.as_uri())
    ref = record(store, {"a": 1})["result"]
    path = tmp_path / blob_key(ref["sha256"])
    good = path.read_bytes()
    path.write_bytes(good.replace(b'"a"', b'"b"'))
    cache = ByteCache()
    with pytest.raises(IntegrityError):
        CachedStore(store, cache).get_bytes(ref)
    assert len(cache) == 0
    path.write_bytes(good)
    assert bytes(CachedStore(store, cache).get_bytes(ref)) == good
    assert len(cache) == 1


def test_the_run_tab_reads_each_manifest_once_until_it_changes(counted):
    store, model = counted
    data.clear_cache()
    make_run(store, "dag", "run1", tags=["t"], mapped={"fit": list(range(20))})
    first = data.run_view(store, "dag", "run1")
    before = model.by_method["GET"]
    assert data.run_view(store, "dag", "run1") == first
    reads = model.by_method["GET"] - before  # listings and the index's snapshot, no manifest
    assert reads < 10
    make_run(store, "dag", "run1", tags=["t"], mapped={"fit": [1] * 20})  # every try rewritten
    after = model.by_method["GET"]
    changed = data.run_view(store, "dag", "run1")
    assert model.by_method["GET"] - after >= 20
    assert [r["preview"] for r in changed["rows"]] == ["int: 1"] * 20
    assert [r["preview"] for r in first["rows"]] == [f"int: {i}" for i in range(20)]


def test_the_run_tab_takes_a_request_from_the_launch_manifest_only_where_listed(counted):
    store, model = counted
    data.clear_cache()
    identity = make_run(store, "dag", "run2", mapped={"fit": [1, 2]})
    usage = {"peak_rss_mib": 100.0, "cpu_seconds": 1.0, "wall_seconds": 2.0}
    for task_id, requested_in in (("asks", "result"), ("gathered", "launch")):
        ident = {**identity, "task_id": task_id, "map_index": -1, "try_number": 1}
        key = manifest_key("dag", "run2", task_id, -1, 1)
        asked = {"cpu": 2.0, "memory_mib": 1024, "gpu": 0}
        store.write_manifest(launch_manifest_key(key), {**ident, "requested": asked})
        manifest = {**ident, "status": "succeeded", "usage": usage}
        if requested_in == "result":
            manifest["requested"] = asked
        store.write_manifest(key, manifest)
    before = model.by_method["GET"]
    view = data.run_view(store, "dag", "run2")
    reads = model.by_method["GET"] - before
    rows = {row["task_id"]: row for row in view["usage"]}
    assert rows["asks"]["requested"] == rows["gathered"]["requested"] == asked
    assert view["totals"]["cpu"] == 4.0 and view["totals"]["tries"] == 2
    # The index (snapshot, events), one listing, the rollup (none: a small run), 4 result
    # manifests, 1 launch manifest.
    assert reads <= 5 + 1 + 1 + 4 + 1, model.by_method


def requests_of(store: ArtifactStore) -> Counter[str]:
    """The HTTP requests the store's client sends from now on, by method (a listing as LIST)."""
    counted: Counter[str] = Counter()

    def before_send(request: Any, **kwargs: Any) -> None:
        listing = request.method == "GET" and "list-type=2" in request.url
        counted["LIST" if listing else request.method] += 1

    store.backend.client.meta.events.register("before-send.s3", before_send)
    return counted


def test_a_rollup_replaces_the_manifest_reads_of_the_run_tab(counted, monkeypatch):
    store, _ = counted
    monkeypatch.setattr(rollup, "MIN_MANIFESTS", 4)
    make_run(store, "dag", "run3", mapped={"fit": list(range(8))})
    prefix = run_prefix("dag", "run3")
    assert rollup.build(store, prefix) == 8
    read_runs(store, "dag")  # the index folds its log once
    data.clear_cache()
    sent = requests_of(store)
    view = data.run_view(store, "dag", "run3")
    assert sent["GET"] == 2, sent  # the index's snapshot and the rollup: no manifest one by one
    assert [r["preview"] for r in view["rows"]] == [f"int: {i}" for i in range(8)]
    # One try rewritten: its entry names a version the listing no longer does.
    write_try(store, {"dag_id": "dag", "run_id": "run3"}, "fit", 42, map_index=3)
    data.clear_cache()
    sent.clear()
    view = data.run_view(store, "dag", "run3")
    assert view["rows"][3]["preview"] == "int: 42"
    assert sent["GET"] == 3, sent


def test_a_rollup_entry_is_used_only_at_the_version_listed(counted, monkeypatch):
    store, _ = counted
    monkeypatch.setattr(rollup, "MIN_MANIFESTS", 1)
    make_run(store, "dag", "run4", mapped={"fit": [1, 2]})
    prefix = run_prefix("dag", "run4")
    key = manifest_key("dag", "run4", "fit", 0, 1)
    real = store.read_manifest(key)
    forged = json.dumps({**real, "result": {**real["result"], "preview": "forged"}}).encode()
    versions = rollup.listed_versions(store, prefix)
    assert versions is not None
    rollup.write(store, prefix, {key: ('"not-its-etag"', forged)})
    data.clear_cache()
    assert data.run_view(store, "dag", "run4")["rows"][0]["preview"] == "int: 1"
    rollup.write(store, prefix, {key: (versions[key], forged)})  # what the listing names
    data.clear_cache()
    assert data.run_view(store, "dag", "run4")["rows"][0]["preview"] == "forged"


def test_gc_finds_no_reference_in_a_rollup(tmp_path: Path, monkeypatch):
    from datetime import timedelta

    from provider.store.gc import collect_garbage

    store = open_store(tmp_path.as_uri())
    identity = make_run(store, "dag", "run5", tasks={"t": "old result"})
    prefix = run_prefix("dag", "run5")
    key = manifest_key("dag", "run5", "t", -1, 1)
    old = store.read_manifest(key)["result"]
    rollup.write(store, prefix, {key: ('"v"', json.dumps(store.read_manifest(key)).encode())})
    write_try(store, identity, "t", "new result")  # the old result is referenced no more
    report = collect_garbage(store, grace=timedelta(0), delete=True, now=time.time() + 60)
    assert blob_key(old["sha256"]) in [k for k, _ in report.unreferenced]


def test_a_runs_listing_leaves_out_foreach_chunks_but_not_a_task_named_foreach(counted):
    store, _ = counted
    make_run(store, "dag", "run6", tasks={"foreach": 1, "score": 2})
    chunks = run_prefix("dag", "run6") + "/score/-1/foreach/0123456789abcdef"
    for chunk in range(3):
        store.write_manifest(
            f"{chunks}/{chunk:06d}.json",
            {"chunk": chunk, "start": chunk, "stop": chunk + 1, "status": "succeeded"},
        )
    view = CachedStore(store, ByteCache())
    listed = list(view.backend.list(run_prefix("dag", "run6")))
    assert not [key for key in listed if key.startswith(chunks)]
    assert manifest_key("dag", "run6", "foreach", -1, 1) in listed
    assert len(list(view.backend.list(chunks))) == 3  # a .foreach's own folder: whole
    rows = data.run_view(store, "dag", "run6")["rows"]
    shown_rows = [(r["task_id"], r["preview"]) for r in rows]
    assert shown_rows == [("foreach", "int: 1"), ("score", "int: 2")]
    # A try that ended before its chunks were gathered: they are read from their folder.
    foreach = {"items": 3, "chunks": 3, "chunk_size": 1, "prefix": chunks}
    shown = data.foreach_view(view, foreach, 0)
    assert [c["chunk"] for c in shown["chunk_rows"]] == [0, 1, 2] and shown["done"] == 3


def test_a_fan_outs_tries_keep_the_rollup_current_reading_only_what_it_lacks(counted, monkeypatch):
    store, _ = counted
    monkeypatch.setattr(rollup, "MIN_MANIFESTS", 4)
    identity = make_run(store, "dag", "run7", mapped={"fit": list(range(8))})
    prefix = run_prefix("dag", "run7")
    assert rollup.refresh(store, prefix) == 8
    sent = requests_of(store)
    assert rollup.refresh(store, prefix) == 0  # younger than REFRESH_SECONDS: one HEAD
    assert sent == Counter({"HEAD": 1})
    write_try(store, identity, "fit", 42, map_index=3)
    write_try(store, identity, "fit", 43, map_index=8)  # a new instance
    sent.clear()
    assert rollup.refresh(store, prefix, older_than=0) == 9
    assert sent["GET"] == 2 + 1  # the two manifests it lacked, and the rollup itself
    entries = rollup.read(store, prefix)
    assert (
        json.loads(entries[manifest_key("dag", "run7", "fit", 3, 1)][1])["result"]["preview"]
        == "int: 42"
    )
    assert not store.backend.stat(f"{prefix}/{rollup.CLAIM}")  # the claim is let go


def test_one_writer_at_a_time_refreshes_a_rollup(counted, monkeypatch):
    store, _ = counted
    monkeypatch.setattr(rollup, "MIN_MANIFESTS", 4)
    make_run(store, "dag", "run8", mapped={"fit": list(range(8))})
    prefix = run_prefix("dag", "run8")
    store.backend.write_bytes(f"{prefix}/{rollup.CLAIM}", b"{}")  # another writer is at it
    assert rollup.refresh(store, prefix) == 0
    assert rollup.read(store, prefix) == {}
    later = time.time() + rollup.CLAIM_SECONDS + 60  # that writer died long ago
    monkeypatch.setattr(store, "clock", lambda: later)
    assert rollup.refresh(store, prefix) == 8
    assert not store.backend.stat(f"{prefix}/{rollup.CLAIM}")


def test_a_folder_store_keeps_no_rollup(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(rollup, "MIN_MANIFESTS", 1)
    store = open_store(tmp_path.as_uri())
    make_run(store, "dag", "run9", mapped={"fit": [1, 2]})
    prefix = run_prefix("dag", "run9")
    assert rollup.build(store, prefix) == rollup.refresh(store, prefix) == 0
    assert not (tmp_path / rollup.rollup_key(prefix)).exists()


@pytest.mark.parametrize(
    ("map_index", "instances", "kept"), [(3, 60, True), (3, 10, False), (-1, 60, False)]
)
def test_the_end_of_a_big_fan_outs_try_refreshes_its_runs_rollup(
    counted, monkeypatch, map_index, instances, kept
):
    import logging
    from types import SimpleNamespace

    from provider.core.outcome import record_end

    store, _ = counted
    monkeypatch.setattr(rollup, "MIN_MANIFESTS", 4)
    identity = make_run(store, "dag", "run10", mapped={"fit": list(range(8))})
    ident = {**identity, "task_id": "fit", "map_index": map_index, "try_number": 1}
    run = SimpleNamespace(store=store, identity=ident, log=logging.getLogger("test"))
    record_end(run, "success", instances)  # type: ignore[arg-type]
    assert bool(rollup.read(store, run_prefix("dag", "run10"))) is kept
