"""The API server's cache (``provider.ui.cache``): what it keeps, when it reads again, its bound.

On moto's S3 server (its listings name versions) with the S3 model in front to count requests,
and on a folder store.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import BUCKET, s3_client
from run_factory import make_run
from s3_servers import S3Model

from provider.runtime.views import record
from provider.store import ArtifactStore, IntegrityError, open_store
from provider.store.keys import blob_key, launch_manifest_key, manifest_key
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
