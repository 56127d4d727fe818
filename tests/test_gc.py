"""`flowtask gc`: only blobs that no manifest references, past the grace period, go."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from unittest.mock import ANY

import pytest
from conftest import BUCKET, s3_client

from provider.client.cli import main
from provider.store import (
    ArtifactStore,
    MissingArtifact,
    StoreError,
    gc,
    manifest_key,
    open_store,
    payload_key,
)
from provider.store.file import FileBackend
from provider.store.gc import collect_garbage
from provider.xcom import FlowXCom

FLOWTASK = str(Path(sys.executable).parent / "flowtask")
DAY = 86400


def _populate(store: ArtifactStore):
    kept = store.put("result of a task")
    nested = store.put(["item", 1])
    orphan = store.put("orphaned: its manifest was never written")
    store.write_manifest(manifest_key("d", "r", "t", -1, 1), {"result": kept.to_json()})
    store.write_manifest(
        manifest_key("d", "r", "fan", -1, 1), {"result": [{"deep": [nested.to_json()]}]}
    )
    return kept, nested, orphan


def _blob(store: ArtifactStore, ref) -> Path:
    return store.backend.root / "data" / ref.sha256[:2] / ref.sha256  # type: ignore[attr-defined]


def _age(store: ArtifactStore, ref, days: float) -> None:
    old = time.time() - days * DAY
    os.utime(_blob(store, ref), (old, old))


def test_dry_run_reports_and_delete_removes_only_old_unreferenced(tmp_path):
    store = open_store(tmp_path.as_uri())
    kept, nested, orphan = _populate(store)
    young_orphan = store.put("stored a moment ago; its manifest is not written yet")
    for ref in (kept, nested, orphan):
        _age(store, ref, days=30)

    report = collect_garbage(store, grace=timedelta(days=7), delete=False)
    assert (report.blobs, report.referenced, report.within_grace) == (4, 2, 1)
    assert [key for key, _ in report.unreferenced] == [f"data/{orphan.sha256[:2]}/{orphan.sha256}"]
    assert report.deleted == 0
    assert store.get(orphan) == "orphaned: its manifest was never written"

    report = collect_garbage(store, grace=timedelta(days=7), delete=True)
    assert report.deleted == 1
    with pytest.raises(MissingArtifact):
        store.get(orphan)
    assert store.get(kept) == "result of a task"
    assert store.get(nested) == ["item", 1]
    assert store.get(young_orphan).startswith("stored a moment ago")


def test_gc_on_s3(moto):
    store = open_store(f"s3://{BUCKET}/gc", s3_client=s3_client(moto.endpoint))
    kept, nested, orphan = _populate(store)
    later = time.time() + 8 * DAY
    report = collect_garbage(store, grace=timedelta(days=7), delete=True, now=later)
    assert report.deleted == 1 and report.referenced == 2
    assert store.get(kept) == "result of a task" and store.get(nested) == ["item", 1]
    with pytest.raises(MissingArtifact):
        store.get(orphan)


def test_cli_is_a_dry_run_by_default(tmp_path):
    store = open_store(tmp_path.as_uri())
    _, _, orphan = _populate(store)
    _age(store, orphan, days=30)
    run = subprocess.run(
        [FLOWTASK, "gc", "--store", tmp_path.as_uri()], capture_output=True, text=True, check=True
    )
    assert "would delete (dry run; pass --delete) 1" in run.stdout
    assert store.get(orphan)
    run = subprocess.run(
        [FLOWTASK, "gc", "--store", tmp_path.as_uri(), "--delete"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"deleted {store.root_uri}/data/{orphan.sha256[:2]}/{orphan.sha256}" in run.stdout
    assert "3 blobs: 2 referenced" in run.stdout


def test_cli_reports_bad_arguments_clearly(tmp_path):
    run = subprocess.run(
        [FLOWTASK, "gc", "--store", tmp_path.as_uri(), "--grace", "soon"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2
    assert "--grace='soon' is invalid" in run.stderr
    run = subprocess.run([FLOWTASK, "gc", "--store", "ftp://x"], capture_output=True, text=True)
    assert run.returncode == 2 and "unsupported location" in run.stderr


def test_xcom_values_stay_alive_and_purge_keeps_shared_blobs(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW__FLOW_TASK__ARTIFACT_STORE", tmp_path.as_uri())
    ref = FlowXCom.serialize_value(
        list(range(5000)), key="return_value", dag_id="d", run_id="r", task_id="plain", map_index=-1
    )
    store = open_store(tmp_path.as_uri())
    path = store.backend.root / "data" / ref["sha256"][:2] / ref["sha256"]  # type: ignore[attr-defined]
    old = time.time() - 30 * DAY
    os.utime(path, (old, old))
    assert collect_garbage(store, grace=timedelta(days=7), delete=True).deleted == 0
    FlowXCom.purge(SimpleNamespace(value=ref))  # a cleared task: the blob may be shared
    assert store.get(ref) == list(range(5000))


def test_renewal_after_gc_took_the_blob_stores_it_again(tmp_path, monkeypatch):
    from provider.store import file

    store = open_store(tmp_path.as_uri())
    _, _, orphan = _populate(store)
    _age(store, orphan, days=30)
    utime = os.utime
    reports = []

    def gc_runs_first(path, *args, **kwargs):
        reports.append(collect_garbage(store, grace=timedelta(days=7), delete=True))
        return utime(path, *args, **kwargs)

    monkeypatch.setattr(file.os, "utime", gc_runs_first)
    open_store(tmp_path.as_uri()).put("orphaned: its manifest was never written")
    monkeypatch.undo()
    assert [r.deleted for r in reports] == [1]
    assert store.get(orphan) == "orphaned: its manifest was never written"


def _scan_then(store: ArtifactStore, monkeypatch, meanwhile) -> None:
    """Run ``meanwhile(key, modified)`` after gc's scan saw a blob and before gc acts on it."""
    entries = type(store.backend).entries

    def scanned_then_meanwhile(self, prefix):
        for key, size, modified in entries(self, prefix):
            meanwhile(key, modified)
            yield key, size, modified

    monkeypatch.setattr(type(store.backend), "entries", scanned_then_meanwhile)


def test_blob_stored_again_during_gc_is_kept(tmp_path, monkeypatch):
    store = open_store(tmp_path.as_uri())
    _, _, orphan = _populate(store)
    _age(store, orphan, days=30)
    writer = open_store(tmp_path.as_uri())
    _scan_then(store, monkeypatch, lambda key, _: writer.put(store.get(orphan)))
    report = collect_garbage(store, grace=timedelta(days=7), delete=True)
    assert report.deleted == 0
    assert report.renewed == [f"data/{orphan.sha256[:2]}/{orphan.sha256}"]
    assert store.get(orphan) == "orphaned: its manifest was never written"


def test_blob_stored_again_while_gc_deletes_it_is_kept(tmp_path, monkeypatch):
    from provider.store import file

    store = open_store(tmp_path.as_uri())
    _, _, orphan = _populate(store)
    _age(store, orphan, days=30)
    rename = os.rename

    def writer_puts_right_after(src, dst):
        rename(src, dst)
        open_store(tmp_path.as_uri()).put("orphaned: its manifest was never written")

    monkeypatch.setattr(file.os, "rename", writer_puts_right_after)
    report = collect_garbage(store, grace=timedelta(days=7), delete=True)
    monkeypatch.undo()
    assert report.deleted == 1  # the old copy; the writer's new one stays
    assert store.get(orphan) == "orphaned: its manifest was never written"
    assert [p.name for p in _blob(store, orphan).parent.iterdir()] == [orphan.sha256]


def test_gc_on_s3_checks_the_age_again_before_deleting(moto, monkeypatch):
    store = open_store(f"s3://{BUCKET}/gc-recheck", s3_client=s3_client(moto.endpoint))
    _, _, orphan = _populate(store)
    calls: list[str] = []
    store.backend.client.meta.events.register(  # type: ignore[attr-defined]
        "before-call.s3.*", lambda model, **_: calls.append(model.name)
    )
    # The scan saw the orphan 30 days old; by the time gc acts on it, a writer renewed it.
    entries = type(store.backend).entries

    def stale_scan(self, prefix):
        for key, size, modified in entries(self, prefix):
            yield key, size, modified - 30 * DAY

    monkeypatch.setattr(type(store.backend), "entries", stale_scan)
    report = collect_garbage(store, grace=timedelta(days=7), delete=True)
    assert report.deleted == 0 and len(report.renewed) == 1
    assert "DeleteObject" not in calls
    assert store.get(orphan) == "orphaned: its manifest was never written"


def test_cli_warns_when_the_grace_does_not_protect_writers(tmp_path):
    store = open_store(tmp_path.as_uri())
    _populate(store)
    run = subprocess.run(
        [FLOWTASK, "gc", "--store", tmp_path.as_uri(), "--grace", "30m"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "warning: --grace 0:30:00 is below 1:00:00" in run.stderr
    assert "only while nothing writes to the store" in run.stderr
    run = subprocess.run(
        [FLOWTASK, "gc", "--store", tmp_path.as_uri(), "--grace", "1h"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert run.stderr == ""


def test_bad_manifest_is_named_and_nothing_is_deleted(tmp_path):
    store = open_store(tmp_path.as_uri())
    _, _, orphan = _populate(store)
    _age(store, orphan, days=30)
    key = manifest_key("d", "r", "broken", -1, 1)
    (tmp_path / key).parent.mkdir(parents=True)
    (tmp_path / key).write_text('{"result": {"__flowtask_ref__": 1, "sha2')
    with pytest.raises(StoreError) as raised:
        collect_garbage(store, grace=timedelta(days=7), delete=True)
    assert f"{store.root_uri}/{key} is not valid JSON: Unterminated string" in str(raised.value)
    assert "deleting nothing" in str(raised.value)
    assert store.get(orphan)
    run = subprocess.run(
        [FLOWTASK, "gc", "--store", tmp_path.as_uri(), "--delete"], capture_output=True, text=True
    )
    assert run.returncode == 2 and f"{key} is not valid JSON" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr
    assert store.get(orphan)


def test_gc_refuses_a_store_that_does_not_exist(tmp_path):
    missing = tmp_path / "typo"
    run = subprocess.run(
        [FLOWTASK, "gc", "--store", missing.as_uri()], capture_output=True, text=True
    )
    assert run.returncode == 2
    assert f"no artifact store at {missing}" in run.stderr
    with pytest.raises(StoreError, match="no artifact store at"):
        collect_garbage(open_store(missing.as_uri()), grace=timedelta(days=7), delete=False)
    assert not missing.exists()


def test_blob_removed_between_listing_and_stat_is_skipped(tmp_path, monkeypatch):
    store = open_store(tmp_path.as_uri())
    _, _, orphan = _populate(store)
    listed = FileBackend.list

    def removed_once_listed(self, prefix):
        for key in listed(self, prefix):
            if key.endswith(orphan.sha256):
                (tmp_path / key).unlink()  # a concurrent gc took (or quarantined) it
            yield key

    monkeypatch.setattr(FileBackend, "list", removed_once_listed)
    report = collect_garbage(store, grace=timedelta(days=7), delete=True)
    assert (report.blobs, report.referenced, report.deleted) == (2, 2, 0)


def _killed_writer(root: Path, key: str) -> None:
    """A process killed (SIGKILL) in the middle of writing ``key``: its temp file stays."""
    code = (
        "import sys\n"
        "from provider.store.file import FileBackend\n"
        "def frames():\n"
        "    yield b'x' * 100_000\n"
        "    print('written', flush=True)\n"
        "    sys.stdin.read()\n"
        "    yield b'never'\n"
        f"FileBackend({str(root)!r}).write_frames({key!r}, frames())\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline() == "written\n"
    proc.kill()
    proc.wait()


def test_interrupted_writes_on_a_folder_are_found_and_removed(tmp_path, monkeypatch, capsys):
    store = open_store(tmp_path.as_uri())
    kept, _, _ = _populate(store)
    _killed_writer(tmp_path, f"data/ab/{'ab' * 32}")
    _killed_writer(tmp_path, manifest_key("d", "r", "t", -1, 2))
    _killed_writer(tmp_path, f"index/d/log/{'0' * 20}-{'a' * 16}.json")  # a run index event
    leftovers = sorted(p for p in tmp_path.rglob(".*.tmp-*"))
    assert len(leftovers) == 3 and all(p.stat().st_size == 100_000 for p in leftovers)

    young = collect_garbage(store, grace=timedelta(days=7), delete=True)
    assert young.interrupted == [] and len(sorted(tmp_path.rglob(".*.tmp-*"))) == 3

    later = time.time() + 8 * DAY
    report = collect_garbage(store, grace=timedelta(days=7), delete=False, now=later)
    assert sorted(w.key for w in report.interrupted) == sorted(
        p.relative_to(tmp_path).as_posix() for p in leftovers
    )
    assert report.interrupted_bytes == 300_000 and report.interrupted_removed == 0

    monkeypatch.setattr(gc.time, "time", lambda: later)
    assert main(["gc", "--store", tmp_path.as_uri(), "--delete"]) == 0
    out = capsys.readouterr().out
    for path in leftovers:
        assert f"removed {path.as_uri()} 100000 B" in out
    assert "3 interrupted writes older than 7 days, 0:00:00 (0.3 MiB): removed" in out
    assert list(tmp_path.rglob(".*.tmp-*")) == []
    assert store.get(kept) == "result of a task"


def test_interrupted_multipart_uploads_on_s3_are_found_and_aborted(moto):
    client = s3_client(moto.endpoint)
    store = open_store(f"s3://{BUCKET}/gc-uploads", s3_client=client)
    store.put("something")
    key = f"gc-uploads/data/ab/{'ab' * 32}"
    upload = client.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    for number, size in ((1, 5 * 2**20), (2, 1000)):
        client.upload_part(
            Bucket=BUCKET, Key=key, UploadId=upload, PartNumber=number, Body=b"z" * size
        )
    elsewhere = client.create_multipart_upload(Bucket=BUCKET, Key="other-prefix/data/x")
    try:
        assert collect_garbage(store, grace=timedelta(days=7), delete=True).interrupted == []
        later = time.time() + 8 * DAY
        report = collect_garbage(store, grace=timedelta(days=7), delete=True, now=later)
        [write] = report.interrupted
        assert (write.key, write.upload_id, write.size) == (key[11:], upload, 5 * 2**20 + 1000)
        assert report.interrupted_removed == 1
        remaining = client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
        assert [u["UploadId"] for u in remaining] == [elsewhere["UploadId"]]
    finally:
        client.abort_multipart_upload(
            Bucket=BUCKET, Key="other-prefix/data/x", UploadId=elsewhere["UploadId"]
        )


def test_payloads_a_dead_worker_left_behind_go_once_their_try_has_finished(tmp_path):
    store = open_store(tmp_path.as_uri())
    finished = manifest_key("d", "r", "done", -1, 1)
    running = manifest_key("d", "r", "running", -1, 1)
    for key in (finished, running):
        store.put_at(payload_key(key), {"password": "kept only while the try runs"})
    store.write_manifest(finished, {"status": "failed", "written_by": "worker"})
    later = time.time() + 8 * DAY
    report = collect_garbage(store, grace=timedelta(days=7), delete=True, now=later)
    assert report.payloads == [(payload_key(finished), ANY)] and report.payloads_removed == 1
    assert store.backend.stat(payload_key(finished)) is None
    assert store.backend.stat(payload_key(running)) is not None  # its runtime may not have read it
