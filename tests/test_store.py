"""The artifact store on `file://`: round trips, dedup, integrity, refusals, atomic writes."""

from __future__ import annotations

import errno
import os
import pickle
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from provider.store import (
    ArtifactStore,
    IntegrityError,
    Reference,
    StoreError,
    is_reference,
    manifest_key,
    open_store,
    run_manifest_key,
)
from provider.store.file import FileBackend
from provider.store.store import RENEW_AFTER


@pytest.fixture
def store(tmp_path) -> ArtifactStore:
    return open_store((tmp_path / "root").as_uri())


def _blob_path(store: ArtifactStore, ref: Reference) -> Path:
    return store.backend.root / "data" / ref.sha256[:2] / ref.sha256  # type: ignore[attr-defined]


def _local_function(x):
    return x + 1


@pytest.mark.parametrize(
    "value",
    [
        0,
        -7,
        3.25,
        "text",
        "",
        b"\x00bytes",
        None,
        True,
        [1, "a", None],
        (1, 2),
        {"nested": {"list": [1, 2, {"x": b"y"}]}},
        {1, 2, 3},
        np.arange(12).reshape(3, 4),
        np.asfortranarray(np.ones((4, 3))),
        np.arange(20)[::2],
    ],
    ids=lambda v: type(v).__name__,
)
def test_round_trip(store, value):
    ref = store.put(value)
    assert ref.uri == f"{store.root_uri}/data/{ref.sha256[:2]}/{ref.sha256}"
    assert ref.encoding == "pickle5" and ref.size == _blob_path(store, ref).stat().st_size
    loaded = store.get(ref)
    if isinstance(value, np.ndarray):
        np.testing.assert_array_equal(loaded, value)
    else:
        assert loaded == value and type(loaded) is type(value)


def test_large_array_is_out_of_band_zero_copy_and_writable(store):
    array = np.random.default_rng(0).standard_normal(1 << 20)  # 8 MiB
    ref = store.put(array)
    assert ref.type == "numpy.ndarray"
    assert ref.size - array.nbytes < 1024  # buffer stored raw, next to a small pickle stream
    loaded = store.get(ref.to_json())
    np.testing.assert_array_equal(loaded, array)
    loaded[0] = 42.0  # a writable view into the read buffer
    assert loaded.base is not None


def test_functions_fall_back_to_cloudpickle(store):
    def local(x):
        return x * 2

    assert store.get(store.put(lambda x: x + 1))(1) == 2
    assert store.get(store.put(local))(3) == 6
    assert store.get(store.put(_local_function, by_value=True))(1) == 2


def test_second_put_of_equal_content_writes_nothing(store, monkeypatch):
    writes = []
    original = FileBackend.write_frames

    def spy(self, key, frames, **options):
        writes.append(key)
        return original(self, key, frames, **options)

    monkeypatch.setattr(FileBackend, "write_frames", spy)
    first = store.put({"a": np.arange(1000)})
    second = store.put({"a": np.arange(1000)})
    assert first == second
    assert len(writes) == 1
    assert len(list((store.backend.root / "data").rglob("*"))) == 2  # type: ignore[attr-defined]


@pytest.mark.parametrize("damage", ["flip", "truncate", "append"])
def test_corruption_is_detected(store, damage):
    ref = store.put(np.arange(1000))
    path = _blob_path(store, ref)
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    elif damage == "truncate":
        del data[-10:]
    else:
        data += b"x"
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=ref.sha256[:8]):
        store.get(ref)


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch /tmp/flowtask-pwned",))


def test_references_outside_the_root_are_refused_before_unpickling(store, tmp_path):
    evil = pickle.dumps(_Boom(), protocol=5)
    other = open_store((tmp_path / "other").as_uri())
    foreign = other.put("elsewhere")
    sha = foreign.sha256
    outside = tmp_path / "evil"
    outside.write_bytes(evil)
    candidates = [
        foreign,  # another store's root
        Reference(f"file://{outside}", sha, len(evil), "x", "pickle5"),
        Reference(f"{store.root_uri}/data/../../evil", sha, 1, "x", "pickle5"),
        Reference(f"{store.root_uri}/data/{sha[:2]}/{'0' * 64}", sha, 1, "x", "pickle5"),
        Reference(f"s3://bucket/data/{sha[:2]}/{sha}", sha, 1, "x", "pickle5"),
        Reference("file:///etc/passwd", sha, 1, "x", "pickle5"),
    ]
    for ref in candidates:
        with pytest.raises(StoreError, match="refusing reference"):
            store.get(ref)
    assert not Path("/tmp/flowtask-pwned").exists()


def test_refusal_names_the_blob_the_store_would_read(store, tmp_path):
    foreign = open_store((tmp_path / "other").as_uri()).put("elsewhere")
    expected = f"{store.root_uri}/data/{foreign.sha256[:2]}/{foreign.sha256}"
    with pytest.raises(StoreError) as raised:
        store.get(foreign)
    assert f"this store only reads {expected} for the reference's own sha256" in str(raised.value)


@pytest.mark.parametrize(
    "obj",
    [
        {},
        {"uri": "x"},
        {
            "__flowtask_ref__": 1,
            "uri": "u",
            "sha256": "zz",
            "size": 1,
            "type": "t",
            "encoding": "pickle5",
        },
        {
            "__flowtask_ref__": 1,
            "uri": "u",
            "sha256": "a" * 64,
            "size": -1,
            "type": "t",
            "encoding": "pickle5",
        },
        {
            "__flowtask_ref__": 1,
            "uri": "",
            "sha256": "a" * 64,
            "size": 1,
            "type": "t",
            "encoding": "pickle5",
        },
        "a string",
        None,
    ],
)
def test_malformed_references_are_refused(store, obj):
    with pytest.raises(StoreError):
        store.get(obj)


def test_reference_json_round_trip(store):
    ref = store.put([1, 2])
    assert is_reference(ref) and is_reference(ref.to_json())
    assert not is_reference({"uri": ref.uri})
    assert Reference.from_json(ref.to_json()) == ref


class _ExplodingFrames:
    def __iter__(self):
        yield memoryview(b"partial data")
        raise OSError("disk unplugged mid-write")


def test_interrupted_write_leaves_nothing_visible(tmp_path):
    backend = FileBackend(tmp_path)
    with pytest.raises(OSError, match="unplugged"):
        backend.write_frames("data/ab/abc", _ExplodingFrames())
    assert not backend.exists("data/ab/abc")
    assert list((tmp_path / "data" / "ab").iterdir()) == []


def test_interrupted_put_leaves_no_blob(store, monkeypatch):
    def failing_replace(src, dst):
        raise OSError("rename interrupted")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="rename interrupted"):
        store.put(np.arange(100))
    monkeypatch.undo()
    data = store.backend.root / "data"  # type: ignore[attr-defined]
    assert [p for p in data.rglob("*") if p.is_file()] == []
    ref = store.put(np.arange(100))  # and a retry succeeds
    np.testing.assert_array_equal(store.get(ref), np.arange(100))


def test_manifests_round_trip_with_quoted_keys(store):
    key = manifest_key("dag", "manual__2026-11-24T02:00:00+00:00", "group.task", 3, 2)
    assert key == "runs/dag/manual__2026-11-24T02:00:00+00:00/group.task/3/2/result.json"
    uri = store.write_manifest(key, {"status": "succeeded", "tags": ["a"]})
    assert uri == f"{store.root_uri}/{key}"
    assert store.read_manifest(key) == {"status": "succeeded", "tags": ["a"]}
    store.write_manifest(run_manifest_key("dag", "r/1"), {"namespace": "n"})
    assert list(store.list_manifests("runs/dag")) == [
        "runs/dag/manual__2026-11-24T02:00:00+00:00/group.task/3/2/result.json",
        "runs/dag/r%2F1/run.json",
    ]


def test_manifest_that_is_not_json_is_named(store):
    key = manifest_key("d", "r", "t", -1, 1)
    (store.backend.root / key).parent.mkdir(parents=True)  # type: ignore[attr-defined]
    (store.backend.root / key).write_text('{"status": "succ')  # type: ignore[attr-defined]
    with pytest.raises(StoreError, match=rf"manifest {store.root_uri}/{key} is not valid JSON: "):
        store.read_manifest(key)


@pytest.mark.parametrize("task_id", ["a/b", "..", "../x", "."])
def test_manifest_key_components_cannot_escape(task_id):
    key = manifest_key("d", "r", task_id, -1, 1)
    parts = key.split("/")
    assert len(parts) == 7 and ".." not in parts and "." not in parts


@pytest.mark.parametrize("key", ["../x", "/abs", "a//b", "a/./b", "a\\b", ""])
def test_invalid_keys_are_rejected(store, key):
    with pytest.raises(StoreError, match="invalid store key"):
        store.write_manifest(key, {})


def test_open_store_forms(tmp_path):
    assert open_store(str(tmp_path)).root_uri == tmp_path.resolve().as_uri()
    assert open_store(tmp_path.as_uri() + "/").root_uri == tmp_path.resolve().as_uri()
    for bad in ("s3://", "relative/path", "http://host/x", "file://host/x"):
        with pytest.raises(StoreError, match="unsupported location"):
            open_store(bad)


def test_large_transfers_log_bytes_and_rate(store, caplog):
    caplog.set_level("INFO", logger="provider.store")
    small = store.put(np.zeros(1000))
    store.get(small)
    assert caplog.records == []
    big = store.put(np.ones(9 * 1024 * 1024))  # 72 MiB
    store.get(big)
    lines = [r.getMessage() for r in caplog.records]
    assert any(
        line.startswith(f"stored {big.uri}: 72.0 MiB in ") and "MiB/s" in line for line in lines
    ), lines
    assert any(line.startswith(f"loaded {big.uri}: 72.0 MiB in ") for line in lines), lines


@pytest.mark.parametrize(
    ("mib", "chunks"), [(15, []), (20, [8, 8, 4])], ids=["hashed-after", "hashed-while-read"]
)
def test_file_reads_hash_8_mib_chunks_in_order_from_16_mib(store, monkeypatch, mib, chunks):
    """The file backend's read path as it was: hashed after the read below 16 MiB, and from
    16 MiB up in the 8 MiB chunks it reads, in order, while it reads the next."""
    from provider.store import store as store_module

    handed: list[memoryview] = []
    update = store_module._BackgroundSha256.update

    def recording_update(self, chunk):
        handed.append(chunk)
        update(self, chunk)

    monkeypatch.setattr(store_module._BackgroundSha256, "update", recording_update)
    value = np.random.default_rng(mib).bytes(mib * 2**20 - 200)
    ref = store.put(value)
    assert store.get(ref) == value
    assert [round(chunk.nbytes / 2**20) for chunk in handed] == chunks
    if handed:  # consecutive views into the one buffer the value was read into
        assert all(a.obj is handed[0].obj for a in handed)
        assert sum(chunk.nbytes for chunk in handed) == ref.size


class _FullDisk:
    """A file whose writes fail with ENOSPC once ``room`` bytes are written."""

    def __init__(self, real, room: int) -> None:
        self.real, self.room = real, room

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.real.close()

    def write(self, data) -> int:
        n = memoryview(data).nbytes
        if n > self.room:
            self.real.write(memoryview(data).cast("B")[: self.room])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= n
        return self.real.write(data)

    def __getattr__(self, name):
        return getattr(self.real, name)


def test_full_disk_names_the_store_and_leaves_no_temp_file(store, monkeypatch):
    from provider.store import file

    def full_disk_open(*args, **kwargs):
        return _FullDisk(open(*args, **kwargs), room=4096)  # _FullDisk closes it

    monkeypatch.setattr(file, "open", full_disk_open, raising=False)
    with pytest.raises(StoreError) as raised:
        store.put(np.zeros(100_000))
    message = str(raised.value)
    assert message.startswith(f"artifact store {store.root_uri} is full (no space left on device)")
    assert "writing data/" in message and "point [flow_task] artifact_store elsewhere" in message
    key = manifest_key("d", "r", "t", -1, 1)
    with pytest.raises(StoreError, match=f"is full .* writing {key}"):
        store.write_manifest(key, {"x": "y" * 10_000})
    root = store.backend.root  # type: ignore[attr-defined]
    assert [p for p in root.rglob("*") if p.is_file()] == []


_FILL_A_TMPFS = """
import sys
from provider.store import StoreError, open_store
store = open_store(sys.argv[1])
try:
    store.put(b"x" * (2 * 2**20))
except StoreError as error:
    print(error)
"""


def test_full_tmpfs_names_the_store(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    script = (
        f"mount -t tmpfs -o size=1m tmpfs {mount} || exit 77; "
        f"{sys.executable} -c '{_FILL_A_TMPFS}' {mount.as_uri()}; "
        f"find {mount} -type f"
    )
    try:
        run = subprocess.run(
            ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except FileNotFoundError:
        pytest.skip("no unshare(1) to mount a small tmpfs")
    if run.returncode in (1, 77) and "is full" not in run.stdout:
        pytest.skip(f"cannot mount a tmpfs here: {run.stderr.strip()}")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines, run.stderr
    assert lines[0].startswith(f"artifact store {mount.as_uri()} is full (no space left on")
    assert "writing data/" in lines[0]
    assert lines[1:] == []  # no temp file left


@pytest.mark.parametrize("claim", ["smaller", "larger"])
def test_size_mismatch_is_named_before_allocating(store, claim):
    ref = store.put("forty-odd bytes of pickle")
    claimed = 3 * 2**30 if claim == "larger" else ref.size - 1
    crafted = Reference(ref.uri, ref.sha256, claimed, ref.type, ref.encoding)
    tracemalloc.start()
    try:
        with pytest.raises(IntegrityError) as raised:
            store.get(crafted)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert f"size mismatch: the reference claims {claimed} bytes, the object has {ref.size}" in (
        str(raised.value)
    )
    assert peak < 2**20


def _age(path: Path, seconds: float) -> None:
    old = time.time() - seconds
    os.utime(path, (old, old))


def test_dedup_hit_renews_the_age_of_an_old_blob_only(store):
    ref = store.put(np.arange(1000))
    path = _blob_path(store, ref)
    _age(path, 30 * 60)  # younger than RENEW_AFTER: the cheap path, nothing touched
    young = path.stat().st_mtime
    assert store.put(np.arange(1000)) == ref
    assert path.stat().st_mtime == young
    _age(path, RENEW_AFTER.total_seconds() + 60)
    assert store.put(np.arange(1000)) == ref
    assert time.time() - path.stat().st_mtime < 60
    np.testing.assert_array_equal(store.get(ref), np.arange(1000))


def test_reuse_checks_like_a_dedup_hit_and_renews_an_old_blob(store):
    """``reuse`` (a stored blob named again without storing it: an environment's archive) is a
    dedup hit without the bytes: True for an intact blob, its age renewed once it is older than
    RENEW_AFTER; False for one that is missing or damaged."""
    ref = store.put_bytes(b"archive" * 1000, type_name="t", encoding="tar.gz")
    path = _blob_path(store, ref)
    _age(path, 30 * 60)
    young = path.stat().st_mtime
    assert store.reuse(ref) and path.stat().st_mtime == young
    _age(path, RENEW_AFTER.total_seconds() + 60)
    assert store.reuse(ref) and time.time() - path.stat().st_mtime < 60
    path.write_bytes(b"Archive" * 1000)  # same size, other bytes
    _age(path, RENEW_AFTER.total_seconds() + 60)
    assert not store.reuse(ref)
    path.unlink()
    assert not store.reuse(ref)


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_dedup_hit_repairs_a_damaged_blob(store, caplog, damage):
    value = np.arange(100_000)
    ref = store.put(value)
    path = _blob_path(store, ref)
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
    else:
        del data[-10:]
    path.write_bytes(bytes(data))
    _age(path, 2 * RENEW_AFTER.total_seconds())
    with pytest.raises(IntegrityError):
        store.get(ref)
    caplog.set_level("WARNING", logger="provider.store")
    assert store.put(value) == ref
    np.testing.assert_array_equal(store.get(ref), value)
    assert [r.getMessage() for r in caplog.records if ref.uri in r.getMessage()], caplog.text
    assert any("damaged" in r.getMessage() for r in caplog.records)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left


def test_blob_collected_while_renewed_is_stored_again(store, monkeypatch):
    from provider.store import file

    ref = store.put("value")
    path = _blob_path(store, ref)
    _age(path, 2 * RENEW_AFTER.total_seconds())
    utime = os.utime
    taken = []

    def gc_deletes_first(target, *args, **kwargs):
        Path(target).unlink()  # gc took it between the writer's check and its renewal
        taken.append(target)
        return utime(target, *args, **kwargs)

    monkeypatch.setattr(file.os, "utime", gc_deletes_first)
    assert store.put("value") == ref
    monkeypatch.undo()
    assert taken == [path]
    assert path.exists() and store.get(ref) == "value"


def test_open_store_for_gc_refuses_a_missing_folder(tmp_path):
    with pytest.raises(StoreError, match=f"no artifact store at {tmp_path / 'nope'}"):
        open_store((tmp_path / "nope").as_uri(), must_exist=True)
    assert open_store(tmp_path.as_uri(), must_exist=True).root_uri == tmp_path.as_uri()


class _SlowReads(FileBackend):
    """A folder whose reads take 20 ms (a round trip to S3), counting how many run at once."""

    def __init__(self, root: Path, reads_in_flight: int) -> None:
        super().__init__(root)
        self.reads_in_flight = reads_in_flight
        self.now = self.most = 0
        import threading

        self.lock = threading.Lock()

    def _slow(self, read, *args, **kwargs):
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            time.sleep(0.02)
            return read(*args, **kwargs)
        finally:
            with self.lock:
                self.now -= 1

    def read_into(self, *args, **kwargs):
        return self._slow(super().read_into, *args, **kwargs)

    def read_bytes(self, key):
        return self._slow(super().read_bytes, key)


def test_a_join_loads_its_references_a_bounded_number_at_a_time_each_its_own_value(tmp_path):
    """A task taking 40 mapped results: each loaded (in order, a reference twice gives two
    values), ``reads_in_flight`` at a time at most, and more than one at a time."""
    from provider.runtime.run import resolve_references

    backend = _SlowReads(tmp_path / "root", reads_in_flight=6)
    store = ArtifactStore(backend, (tmp_path / "root").as_uri())
    refs = [store.put([i]).to_json() for i in range(40)]
    value = {"results": [*refs, refs[0]], "other": (1, refs[1])}
    resolved = resolve_references(value, store)
    assert resolved == {"results": [*([i] for i in range(40)), [0]], "other": (1, [1])}
    assert resolved["results"][0] is not resolved["results"][40]  # a mutable value each
    assert 1 < backend.most <= 6


def test_manifests_are_read_a_bounded_number_at_a_time_and_missing_ones_left_out(tmp_path):
    backend = _SlowReads(tmp_path / "root", reads_in_flight=4)
    store = ArtifactStore(backend, (tmp_path / "root").as_uri())
    keys = [f"runs/d/r/t/-1/foreach/p/{c:06d}.json" for c in range(20)]
    for chunk, key in enumerate(keys[:-2]):
        store.write_manifest(key, {"chunk": chunk})
    found = store.read_manifests(keys)
    assert list(found) == keys[:-2] and [m["chunk"] for m in found.values()] == list(range(18))
    assert 1 < backend.most <= 4


def test_slices_read_alone_or_whole_each_checked(store):
    values = [list(range(5)), {"a": np.arange(3)}, "x" * 10_000, []]
    ref, slices = store.put_slices(values)
    assert ref.size == sum(s[1] for s in slices) and slices[0][0] == 0
    assert store.get_slice(ref, slices[2]) == "x" * 10_000
    whole = store.get_slices(ref, slices)
    assert whole[0] == values[0] and list(whole[1]["a"]) == [0, 1, 2] and whole[3] == []
    again, same = store.put_slices(values)  # content-addressed: stored once
    assert (again, same) == (ref, slices)
    path = _blob_path(store, ref)
    data = bytearray(path.read_bytes())
    data[slices[2][0]] ^= 0xFF
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    assert store.get_slice(ref, slices[0]) == values[0]
    with pytest.raises(IntegrityError):
        store.get_slice(ref, slices[2])
    with pytest.raises(IntegrityError):
        store.get_slices(ref, slices)
