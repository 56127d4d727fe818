"""The store's S3 backend against a real S3 API: moto's server on 127.0.0.1, and the same
server behind a proxy that injects 500s, 503 SlowDowns, resets and truncated bodies."""

from __future__ import annotations

import hashlib
import random
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import BUCKET, s3_client
from s3_servers import FaultProxy

from provider.store import (
    ArtifactStore,
    IntegrityError,
    MissingArtifact,
    Reference,
    StoreError,
    codec,
    open_store,
)
from provider.store import store as store_module
from provider.store.s3 import S3Backend
from provider.store.store import RENEW_AFTER
from provider.store.streams import BufferSink

MiB = 2**20


@pytest.fixture
def store(moto, request) -> ArtifactStore:
    return open_store(f"s3://{BUCKET}/{request.node.name}", s3_client=s3_client(moto.endpoint))


def test_round_trip_small_and_multipart(store):
    small = {"a": [1, 2, 3]}
    big = np.random.default_rng(1).standard_normal(5 * 1024 * 1024)  # 40 MiB: 3 parts
    for value in (small, big):
        ref = store.put(value)
        assert ref.uri.startswith(f"s3://{BUCKET}/")
        loaded = store.get(ref)
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(loaded, value)
        else:
            assert loaded == value


def test_second_put_costs_one_head_request(store):
    calls: list[str] = []
    store.backend.client.meta.events.register(  # type: ignore[attr-defined]
        "before-call.s3.*", lambda model, **_: calls.append(model.name)
    )
    value = _incompressible(BLIND + 1)
    first = store.put(value)
    assert calls == ["HeadObject", "PutObject"]
    calls.clear()
    assert store.put(value) == first
    assert calls == ["HeadObject"]


def test_a_small_blob_is_one_put_without_a_head_first(store):
    """Below ``blind_write_max_bytes`` a PUT costs less than a HEAD and then a PUT, one after
    the other: the same bytes under the same key, which also renews a stored copy's age."""
    calls = _record_calls(store)
    value = _incompressible(BLIND - 4096)  # with its pickle's header, still below
    first = store.put(value)
    assert calls == ["PutObject"]
    before = _head(store, first)["LastModified"]
    calls.clear()
    time.sleep(1.1)  # LastModified has a resolution of one second
    assert store.put(value) == first
    assert calls == ["PutObject"]
    calls.clear()
    assert _head(store, first)["LastModified"] > before
    np.testing.assert_array_equal(store.get(first), value)


def test_corruption_in_s3_is_detected(store):
    ref = store.put(b"x" * 1000)
    backend = store.backend
    key = f"{backend.prefix}/data/{ref.sha256[:2]}/{ref.sha256}"  # type: ignore[attr-defined]
    backend.client.put_object(Bucket=BUCKET, Key=key, Body=b"y" * ref.size)  # type: ignore[attr-defined]
    with pytest.raises(IntegrityError):
        store.get(ref)


def test_manifests_and_listing(store):
    store.write_manifest("runs/d/r/t/-1/1/result.json", {"status": "succeeded"})
    store.write_manifest("runs/d/r/run.json", {"namespace": "n"})
    assert store.read_manifest("runs/d/r/run.json") == {"namespace": "n"}
    with pytest.raises(MissingArtifact):  # a pod that died before reporting
        store.read_manifest("runs/d/r/t/-1/2/result.json")
    assert sorted(store.list_manifests("runs/d")) == [
        "runs/d/r/run.json",
        "runs/d/r/t/-1/1/result.json",
    ]


def test_reference_to_another_bucket_or_prefix_is_refused(store, moto):
    other = open_store(f"s3://{BUCKET}/elsewhere", s3_client=s3_client(moto.endpoint))
    ref = other.put("x")
    with pytest.raises(StoreError, match="refusing reference"):
        store.get(ref)


class _FailingFrames:
    """Frames whose reading fails after the first multipart part went up."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __iter__(self):
        yield memoryview(bytearray(self.size))


BLIND = S3Backend.blind_write_max_bytes  # above, a put asks whether the blob is there first


def _incompressible(size: int) -> np.ndarray:
    """``size`` random bytes: stored as they are (zstd would shrink zeros to nothing)."""
    return np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8)


def test_interrupted_multipart_upload_leaves_nothing(store, monkeypatch):
    from provider.store import streams

    original = streams.FramesReader.readinto
    seen = {"bytes": 0}

    def failing_readinto(self, buffer):
        if seen["bytes"] > 20 * 1024 * 1024:
            raise OSError("process killed mid-upload")
        n = original(self, buffer)
        seen["bytes"] += n
        return n

    monkeypatch.setattr(streams.FramesReader, "readinto", failing_readinto)
    with pytest.raises(OSError, match="mid-upload"):
        store.put(_incompressible(48 * 1024 * 1024))
    client = store.backend.client  # type: ignore[attr-defined]
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=store.backend.prefix)  # type: ignore[attr-defined]
    assert listed.get("KeyCount", 0) == 0
    assert client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []


def test_thousand_round_trips_with_ten_percent_faults_lose_nothing(moto, monkeypatch):
    # botocore decides what to retry and how often; only its jittered sleeps are shortened
    # (1/20), so ~300 injected faults do not cost minutes of waiting.
    from botocore.retries import standard

    delay = standard.ExponentialBackoff.delay_amount
    monkeypatch.setattr(
        standard.ExponentialBackoff, "delay_amount", lambda self, context: delay(self, context) / 20
    )
    proxy = FaultProxy(moto.port, failure_rate=0.10, seed=7)
    try:
        store = open_store(f"s3://{BUCKET}/faults", s3_client=s3_client(proxy.endpoint))
        rng = random.Random(3)
        refs = []
        for i in range(1000):
            size = 20 * 1024 * 1024 if i % 250 == 0 else rng.randint(1, 64 * 1024)
            value = rng.randbytes(size)
            ref = store.put(value)
            assert store.get(ref) == value
            refs.append((ref, hashlib.sha256(value).hexdigest()))
        assert proxy.requests > 2000  # a PUT and a GET each (no HEAD first: small blobs)
        assert sum(proxy.injected.values()) > 200
        assert set(proxy.injected) == {"500", "503", "reset_before", "reset_after", "truncate"}
    finally:
        proxy.stop()
    # Read everything back without faults: nothing lost, nothing corrupted, no half uploads.
    clean = open_store(f"s3://{BUCKET}/faults", s3_client=s3_client(moto.endpoint))
    for ref, digest in refs:
        assert hashlib.sha256(clean.get(ref)).hexdigest() == digest
    uploads = clean.backend.client.list_multipart_uploads(Bucket=BUCKET)  # type: ignore[attr-defined]
    assert uploads.get("Uploads", []) == []


def test_large_s3_transfers_log_progress(store, caplog, monkeypatch):
    from provider.store import progress

    monkeypatch.setattr(progress.Progress.__init__, "__defaults__", (0.0,))  # log every call
    caplog.set_level("INFO", logger="provider.store")
    ref = store.put(_incompressible(72 * 1024 * 1024))  # five 16 MiB parts
    store.get(ref)
    lines = [r.getMessage() for r in caplog.records]
    assert any("%) at " in line and line.startswith(f"stored {ref.uri}") for line in lines)
    assert any(line.startswith(f"loaded {ref.uri}: 72.0 MiB in ") for line in lines)


def test_part_size_and_concurrency_from_the_environment(monkeypatch):
    from provider.store import s3

    assert (s3.part_size(), s3.max_concurrency()) == (16 * 2**20, 8)
    monkeypatch.setenv(s3.PART_SIZE_ENV, "64")
    monkeypatch.setenv(s3.CONCURRENCY_ENV, "4")
    config = s3.transfer_config()
    assert (config.multipart_chunksize, config.max_request_concurrency) == (64 * 2**20, 4)
    monkeypatch.setenv(s3.PART_SIZE_ENV, "1")
    assert s3.part_size() == 5 * 2**20  # S3's minimum part size
    monkeypatch.setenv(s3.CONCURRENCY_ENV, "many")
    with pytest.raises(StoreError, match="FLOWTASK_S3_MAX_CONCURRENCY='many' is invalid"):
        s3.max_concurrency()


def _record_calls(store: ArtifactStore) -> list[str]:
    calls: list[str] = []
    store.backend.client.meta.events.register(  # type: ignore[attr-defined]
        "before-call.s3.*", lambda model, **_: calls.append(model.name)
    )
    return calls


def _head(store: ArtifactStore, ref) -> dict:
    backend = store.backend
    key = f"{backend.prefix}/data/{ref.sha256[:2]}/{ref.sha256}"  # type: ignore[attr-defined]
    return backend.client.head_object(Bucket=BUCKET, Key=key)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "value", ["a small value", b"x" * 12 * MiB], ids=["hashed-after", "hashed-while-read"]
)
def test_crafted_size_is_refused_before_allocating(store, value):
    ref = store.put(value)
    calls = _record_calls(store)
    assert store.get(ref) == value
    assert calls == ["GetObject"]  # below the part size: one GET, no HEAD, no transfer
    # Claimed above the part size, a HEAD sizes the ranges; below it, the GET's Content-Length.
    for claimed, sent in [(3 * 2**30, ["HeadObject"]), (ref.size + MiB, ["GetObject"])]:
        calls.clear()
        crafted = Reference(ref.uri, ref.sha256, claimed, ref.type, ref.encoding)
        tracemalloc.start()
        try:
            with pytest.raises(IntegrityError) as raised:
                store.get(crafted)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        message = f"size mismatch: the reference claims {claimed} bytes, the object has {ref.size}"
        assert message in str(raised.value)
        assert peak < 2**20
        assert calls == sent


def test_dedup_hit_on_an_old_blob_verifies_and_renews_it(store):
    value = _incompressible(BLIND + 1)
    ref = store.put(value)
    before = _head(store, ref)["LastModified"]
    calls = _record_calls(store)
    store.clock = lambda: time.time() + 30 * 60  # young: one HEAD, nothing else
    assert store.put(value) == ref
    assert calls == ["HeadObject"]
    calls.clear()
    store.clock = lambda: time.time() + RENEW_AFTER.total_seconds() + 60
    assert store.put(value) == ref
    assert calls == ["HeadObject", "GetObject", "CopyObject"]
    head = _head(store, ref)
    assert head["LastModified"] >= before
    assert abs(int(head["Metadata"]["flowtask-verified"]) - time.time()) < 60
    np.testing.assert_array_equal(store.get(ref), value)


def test_renewal_of_a_blob_above_the_part_size_is_a_multipart_copy(moto, monkeypatch):
    from provider.store import s3

    monkeypatch.setenv(s3.PART_SIZE_ENV, "5")
    store = open_store(f"s3://{BUCKET}/renew-multipart", s3_client=s3_client(moto.endpoint))
    value = _incompressible(6 * 2**20)  # two parts
    ref = store.put(value)
    calls = _record_calls(store)
    store.clock = lambda: time.time() + 2 * RENEW_AFTER.total_seconds()
    assert store.put(value) == ref
    verify = ["HeadObject", "GetObject", "GetObject"]  # two ranges, hashed in order
    copy = ["CreateMultipartUpload", "UploadPartCopy", "UploadPartCopy", "CompleteMultipartUpload"]
    assert sorted(calls) == sorted(verify + copy), calls
    assert "flowtask-verified" in _head(store, ref)["Metadata"]
    np.testing.assert_array_equal(store.get(ref), value)


def test_damaged_object_is_repaired_on_dedup(store, caplog):
    value = bytes(_incompressible(BLIND + 1))
    ref = store.put(value)
    backend = store.backend
    key = f"{backend.prefix}/data/{ref.sha256[:2]}/{ref.sha256}"  # type: ignore[attr-defined]
    backend.client.put_object(Bucket=BUCKET, Key=key, Body=b"y" * ref.size)  # type: ignore[attr-defined]
    with pytest.raises(IntegrityError):
        store.get(ref)
    caplog.set_level("WARNING", logger="provider.store")
    store.clock = lambda: time.time() + 2 * RENEW_AFTER.total_seconds()
    assert store.put(value) == ref
    assert store.get(ref) == value
    assert any(ref.uri in r.getMessage() and "damaged" in r.getMessage() for r in caplog.records)


def test_compressible_values_are_stored_as_zstd_on_s3_and_never_on_a_folder(store, tmp_path):
    """zstd where a sample shrinks below 0.8 (S3 only); the address is the SHA-256 of the
    stored bytes, so what was fetched is checked before it is decompressed."""
    from provider.store import compression

    compressible = np.zeros(1 << 20)  # 8 MiB of zeros
    ref = store.put(compressible)
    assert ref.encoding == compression.ENCODING and ref.size < 100_000
    backend = store.backend
    key = f"{backend.prefix}/data/{ref.sha256[:2]}/{ref.sha256}"  # type: ignore[attr-defined]
    stored = backend.client.get_object(Bucket=BUCKET, Key=key)["Body"].read()  # type: ignore[attr-defined]
    assert hashlib.sha256(stored).hexdigest() == ref.sha256 and len(stored) == ref.size
    np.testing.assert_array_equal(store.get(ref), compressible)

    random_bytes = _incompressible(1 << 20)
    assert store.put(random_bytes).encoding == "pickle5"  # the sample did not shrink
    assert store.put(b"x" * 100).encoding == "pickle5"  # too small to be worth a frame

    folder = open_store((tmp_path / "store").as_uri())
    assert folder.put(compressible).encoding == "pickle5"

    damaged = bytearray(stored)
    damaged[len(damaged) // 2] ^= 0xFF
    backend.client.put_object(Bucket=BUCKET, Key=key, Body=bytes(damaged))  # type: ignore[attr-defined]
    with pytest.raises(IntegrityError):
        store.get(ref)


@pytest.fixture
def hashed(monkeypatch) -> list[tuple[int, int]]:
    """Each chunk the store hashes while it reads: (its size, bytes written to the buffer by
    then)."""
    from provider.store import s3

    written = [0]
    chunks: list[tuple[int, int]] = []
    write, update = BufferSink.write, store_module._BackgroundSha256.update
    socket_readinto = s3.socket_readinto

    def counting_write(self, data):
        n = write(self, data)
        written[0] += n
        return n

    def counting_socket_readinto(body):
        readinto = socket_readinto(body)

        def counting(buffer):
            n = readinto(buffer)
            written[0] += n
            return n

        return counting

    def recording_update(self, chunk):
        chunks.append((chunk.nbytes, written[0]))
        update(self, chunk)

    monkeypatch.setattr(BufferSink, "write", counting_write)
    monkeypatch.setattr(s3, "socket_readinto", counting_socket_readinto)
    monkeypatch.setattr(store_module._BackgroundSha256, "update", recording_update)
    return chunks


def test_single_get_is_hashed_while_it_arrives_into_one_buffer(store, hashed):
    from provider.store.s3 import SINGLE_GET_IO_CHUNK

    value = np.random.default_rng(2).standard_normal(15 * MiB // 8)  # below the 16 MiB parts
    ref = store.put(value)
    calls = _record_calls(store)
    tracemalloc.start()
    try:
        loaded = store.get(ref)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(loaded, value)
    assert calls == ["GetObject"]
    assert sum(size for size, _ in hashed) == ref.size  # every byte once
    assert hashed[0][1] < ref.size  # hashing began before the last byte arrived
    assert [size for size, _ in hashed[:3]] == [SINGLE_GET_IO_CHUNK] * 3  # read in pieces
    # One copy of the blob, and the stream's pieces: the one being read, the one being written.
    assert peak < ref.size + 2 * SINGLE_GET_IO_CHUNK + MiB


def test_a_single_get_reads_from_the_socket_and_keeps_its_connection(store):
    """With the pinned botocore and urllib3, the bytes go from the socket into the buffer (no
    copies in between), and the connection goes back to the pool for the next request."""
    import http.client

    from provider.compat.botocore import socket_readinto

    refs = [store.put(_incompressible(6 * MiB)) for _ in range(3)]
    client = store.backend.client  # type: ignore[attr-defined]
    body = client.get_object(Bucket=BUCKET, Key=_blob_key(store, refs[0]))["Body"]
    assert isinstance(socket_readinto(body).__self__, http.client.HTTPResponse)
    body.close()
    before = _connections_made(client)
    for ref in refs:
        assert bytes(store.get(ref)) == bytes(store.get(ref))
    assert _connections_made(client) == before + 1


def _connections_made(client: Any) -> int:
    """Connections the client's pools have opened so far (the pools cannot be iterated)."""
    pools = client._endpoint.http_session._manager.pools
    keys = list(pools.keys())
    return sum(pools[key].num_connections for key in keys)


class _Evil:
    """Unpickling it creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (self.marker.touch, ())


def _evil_blob(marker: Path, size: int) -> bytes:
    """A well-formed blob of exactly ``size`` bytes whose unpickling creates ``marker``."""
    pad = size - 1000
    for _ in range(3):
        encoded = codec.encode((_Evil(marker), np.zeros(pad, dtype=np.uint8)))
        pad += size - encoded.size
    assert encoded.size == size
    return b"".join(bytes(frame) for frame in encoded.frames)


def test_damaged_single_get_blob_is_refused_before_unpickling(store, hashed, tmp_path):
    ref = store.put(_incompressible(12 * MiB))  # stored as it is: one 12 MiB GET
    marker = tmp_path / "unpickled"
    evil = _evil_blob(marker, ref.size)
    codec.decode(bytearray(evil))  # the blob works: loading it creates the marker
    assert marker.exists()
    marker.unlink()
    store.backend.client.put_object(Bucket=BUCKET, Key=_blob_key(store, ref), Body=evil)  # type: ignore[attr-defined]
    with pytest.raises(IntegrityError, match=f"expected sha256 {ref.sha256}"):
        store.get(ref)
    assert not marker.exists()
    assert sum(size for size, _ in hashed) == ref.size and hashed[0][1] < ref.size


class _PlannedFaults(FaultProxy):
    """The fault proxy, injecting ``plan[n]`` into the n-th request only."""

    def __init__(self, upstream_port: int, plan: dict[int, str]) -> None:
        super().__init__(upstream_port, failure_rate=0.0)
        self.plan = plan

    def choose(self, method: str) -> str | None:
        with self.lock:
            self.requests += 1
            self.by_method[method] += 1
            fault = self.plan.get(self.requests)
            if fault is not None:
                self.injected[fault] += 1
            return fault


def test_interrupted_single_get_is_retried_and_hashed_once(moto, hashed):
    value = np.random.default_rng(3).standard_normal(12 * MiB // 8)
    ref = open_store(f"s3://{BUCKET}/retried", s3_client=s3_client(moto.endpoint)).put(value)
    proxy = _PlannedFaults(moto.port, {1: "truncate"})  # the GET: cut at half
    try:
        store = open_store(f"s3://{BUCKET}/retried", s3_client=s3_client(proxy.endpoint))
        ranges: list[str | None] = []
        store.backend.client.meta.events.register(  # type: ignore[attr-defined]
            "before-parameter-build.s3.GetObject",
            lambda params, **_: ranges.append(params.get("Range")),
        )
        np.testing.assert_array_equal(store.get(ref), value)
    finally:
        proxy.stop()
    assert proxy.injected == {"truncate": 1}
    # The second GET resumes at the first byte the first one did not deliver (0 when the reset
    # discarded what the socket held unread): no byte is read twice.
    assert ranges[0] is None and len(ranges) == 2
    resumed_at = int(ranges[1].removeprefix("bytes=").removesuffix("-"))
    assert 0 <= resumed_at < ref.size
    assert hashed[-1][1] == ref.size  # bytes read in all, across both GETs
    assert sum(size for size, _ in hashed) == ref.size  # bytes sent again were not hashed again


def test_ranges_are_hashed_in_order_as_they_complete(moto, monkeypatch, hashed):
    from provider.store import s3

    monkeypatch.setenv(s3.PART_SIZE_ENV, "5")
    store = open_store(f"s3://{BUCKET}/ranged", s3_client=s3_client(moto.endpoint))
    value = np.random.default_rng(4).standard_normal(12 * MiB // 8)  # three ranges
    ref = store.put(value)
    calls = _record_calls(store)
    np.testing.assert_array_equal(store.get(ref), value)
    assert calls == ["HeadObject", "GetObject", "GetObject", "GetObject"]
    assert sum(size for size, _ in hashed) == ref.size


def test_buffer_sink_hands_over_the_landed_prefix_in_order_each_byte_once():
    handed: list[bytes] = []
    sink = BufferSink(10, lambda chunk: handed.append(bytes(chunk)), min_chunk=1)
    for offset, data in [(4, b"efg"), (0, b"ab"), (7, b"hij")]:  # ranges land out of order
        sink.seek(offset)
        sink.write(data)
    assert handed == [b"ab"]  # "efg" and "hij" wait for "cd"
    sink.seek(2)
    sink.write(b"cd")
    assert handed == [b"ab", b"cdefghij"]
    sink.seek(0)
    sink.write(b"abc")  # a retried stream sends its range again: equal bytes are accepted
    sink.finish()
    assert handed == [b"ab", b"cdefghij"] and sink.buffer == bytearray(b"abcdefghij")
    sink.seek(1)
    with pytest.raises(IntegrityError, match="the object changed while it was read"):
        sink.write(b"X")
    assert sink.buffer == bytearray(b"abcdefghij")


def test_buffer_sink_hands_over_in_pieces_of_min_chunk_and_the_rest_at_finish():
    handed: list[int] = []
    sink = BufferSink(10, lambda chunk: handed.append(chunk.nbytes), min_chunk=4)
    for data in (b"ab", b"cd", b"ef", b"g"):
        sink.write(data)
    assert handed == [4]
    sink.finish()  # a short download: the zeros are handed over too, and fail the hash
    assert handed == [4, 6] and sink.buffer == bytearray(b"abcdefg\0\0\0")


def _blob_key(store: ArtifactStore, ref) -> str:
    return f"{store.backend.prefix}/data/{ref.sha256[:2]}/{ref.sha256}"  # type: ignore[attr-defined]
