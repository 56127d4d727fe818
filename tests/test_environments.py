"""Environments: resolved and built with the real uv from a local folder of wheels (no network),
cached on the worker, stored, and what fails says why."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import tarfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from wheels import local_index, make_wheel, no_index, probe_wheels, unreachable_index

from provider.core.environments import build as uv
from provider.core.environments.cache import EnvironmentCache
from provider.core.environments.tasks import ensure_environment, warn_conflicts
from provider.specs import SpecError
from provider.specs.platforms import target_platform
from provider.store import open_store
from provider.translate.environment import (
    EnvironmentFailure,
    Locked,
    Target,
    environment_id,
    index_key,
    lock_subset,
    locked_packages,
    remote_target,
    worker_target,
)

X86 = remote_target("x86_64")
ARM = remote_target("aarch64")
LOG = logging.getLogger("test")


@pytest.fixture
def wheels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A local index: ftpure (1.0, 2.0), ftcompiled (x86_64 only), six 1.16.0, ftdeps -> ftpure."""
    folder = tmp_path / "wheels"
    make_wheel(folder, "ftpure", "1.0")
    make_wheel(folder, "ftpure", "2.0")
    make_wheel(folder, "ftcompiled", "1.0", tag="cp311-cp311-manylinux_2_17_x86_64")
    make_wheel(folder, "six", "1.16.0", source="__version__ = '1.16.0'\n")
    make_wheel(folder, "ftdeps", "1.0", requires=("ftpure>=2",))
    make_wheel(folder, "packaging", version("packaging"))  # the worker's own version
    for name, value in local_index(folder).items():
        monkeypatch.setenv(name, value)
    return folder


def test_platforms_identities_and_keys():
    assert target_platform("aarch64") == "aarch64-manylinux_2_28"
    assert target_platform("arm64") == "aarch64-manylinux_2_28"
    assert target_platform("x86_64-manylinux_2_17") == "x86_64-manylinux_2_17"
    with pytest.raises(SpecError, match="target_platform='riscv64' is invalid"):
        target_platform("riscv64")
    assert (X86.arch, ARM.arch, X86.python) == ("x86_64", "aarch64", worker_target().python)
    assert index_key(["a", "b"], X86) == index_key(["b", "a"], X86) != index_key(["a", "b"], ARM)
    assert environment_id("lock", X86) != environment_id("lock", ARM)
    wheel = Locked("numpy", "2.2.6", "numpy-2.2.6-cp311-cp311-manylinux_2_17_aarch64.whl")
    assert wheel.tags == ["cp311-cp311-manylinux_2_17_aarch64"]


def test_resolved_for_the_target_built_packed_and_subset(wheels: Path, tmp_path: Path):
    lock = uv.resolve(["ftdeps", "ftcompiled"], X86)
    packages = {p.name: (p.version, p.wheel) for p in locked_packages(lock)}
    assert packages == {
        "ftcompiled": ("1.0", "ftcompiled-1.0-cp311-cp311-manylinux_2_17_x86_64.whl"),
        "ftdeps": ("1.0", "ftdeps-1.0-py3-none-any.whl"),
        "ftpure": ("2.0", "ftpure-2.0-py3-none-any.whl"),  # ftdeps needs >= 2
    }
    assert "uv pip compile" not in lock  # no header naming temp files: the id is the content
    assert [p.name for p in locked_packages(lock_subset(lock, ["ftpure"]))] == ["ftpure"]
    site = tmp_path / "site"
    uv.build(lock, X86, site)
    assert (site / "ftpure" / "__init__.py").read_text() == "VALUE = 'ftpure 2.0'\n"
    assert list((site / "ftpure" / "__pycache__").glob("*.pyc"))  # compiled for the pod
    uv.pack(site, tmp_path / "env.tar.gz")
    with tarfile.open(tmp_path / "env.tar.gz") as tar:
        assert "ftcompiled/__init__.py" in tar.getnames()


def test_what_cannot_be_resolved_or_reached_is_named(wheels: Path, monkeypatch):
    with pytest.raises(EnvironmentFailure) as failed:
        uv.resolve(["ftcompiled==1.0"], ARM)
    assert failed.value.kind == "no_wheel"
    assert "ftcompiled has no wheel for Python 3.11 on aarch64-manylinux_2_28" in str(failed.value)
    assert "manylinux_2_17_x86_64" in str(failed.value)  # uv's own hint, quoted

    with pytest.raises(EnvironmentFailure) as failed:
        uv.resolve(["ftpure==3.0"], X86)
    assert failed.value.kind == "unresolvable"
    assert "environment.pip: 'ftpure==3.0' cannot be resolved for Python 3.11" in str(failed.value)
    assert "there is no version of ftpure==3.0" in str(failed.value)

    monkeypatch.delenv("UV_CONFIG_FILE")
    monkeypatch.setenv("UV_INDEX_URL", "http://127.0.0.1:9/simple")
    with pytest.raises(EnvironmentFailure) as failed:
        uv.resolve(["ftpure"], X86)
    assert failed.value.kind == "index"
    assert "no package index reachable while resolving 'ftpure'" in str(failed.value)
    assert "Connection refused" in str(failed.value)


def _built(store, requirements, target, cache, caplog=None):
    return ensure_environment(store, requirements, target, cache=cache, log=LOG)


def test_built_once_then_cached_then_fetched_with_no_index(
    wheels: Path, tmp_path: Path, monkeypatch
):
    store = open_store((tmp_path / "store").as_uri())
    cache = EnvironmentCache(tmp_path / "cache", 10 * 2**20)
    first = _built(store, ("ftdeps",), X86, cache)
    assert first.how == "built" and first.packages == {"ftdeps": "1.0", "ftpure": "2.0"}
    assert first.archive is not None and store.has(first.archive) and store.has(first.lock)
    assert first.folder is None  # a pod's environment travels as its archive
    record = first.record()
    assert record["platform"] == "x86_64-manylinux_2_28" and record["python"] == X86.python
    assert record["archive"]["sha256"] == first.archive.sha256

    # No index at all now: a second run neither resolves nor downloads.
    monkeypatch.setenv("UV_CONFIG_FILE", str(tmp_path / "nowhere.toml"))
    again = _built(store, ("ftdeps",), X86, cache)
    assert (again.how, again.env_id, again.archive) == ("cached", first.env_id, first.archive)

    # The worker's cache lost it: fetched from the store (hash checked), still no index.
    import shutil

    shutil.rmtree(cache.entry(first.env_id))
    fetched = _built(store, ("ftdeps",), X86, cache)
    assert fetched.how == "fetched" and fetched.archive == first.archive


def test_local_environments_hold_only_what_the_worker_lacks(wheels, tmp_path, caplog):
    store = open_store((tmp_path / "store").as_uri())
    cache = EnvironmentCache(tmp_path / "cache", 10 * 2**20)
    layered = _built(store, ("ftpure==1.0", "six==1.16.0", "packaging"), worker_target(), cache)
    assert layered.packages == {"ftpure": "1.0", "six": "1.16.0"}
    assert "packaging" in layered.from_worker  # the worker's own copy serves
    assert layered.folder is not None and (layered.folder / "ftpure" / "__init__.py").exists()
    with caplog.at_level(logging.WARNING):
        warn_conflicts(("six==1.16.0",), LOG)
    import six

    assert (
        f"environment.pip 'six==1.16.0' conflicts with the worker's six {six.__version__}"
    ) in caplog.text
    nothing = _built(store, ("packaging",), worker_target(), cache)
    assert nothing.archive is None and nothing.packages == {}


def test_the_cache_drops_the_least_recently_used_but_not_one_in_use(wheels, tmp_path):
    store = open_store((tmp_path / "store").as_uri())
    cache = EnvironmentCache(tmp_path / "cache", 1)  # everything is over the size
    first = _built(store, ("ftpure==1.0",), X86, cache)
    second = _built(store, ("ftpure==2.0",), X86, cache)  # first is in use: kept
    assert cache.complete(first.env_id, site=False) and cache.complete(second.env_id, site=False)
    import os

    os.close(first.hold)
    _built(store, ("ftdeps",), X86, cache)
    assert not cache.complete(first.env_id, site=False)
    assert cache.complete(second.env_id, site=False)


def test_the_runtime_layer_is_the_workers_own_files_where_they_fit(tmp_path: Path):
    described = uv.runtime_layer(X86, tmp_path / "rt")
    assert described is not None
    names = {line.split("==")[0].lower() for line in described.splitlines()[1:]}
    assert {"boto3", "botocore", "s3transfer", "zstandard", "urllib3"} <= names
    assert (tmp_path / "rt" / "boto3" / "__init__.py").exists()
    data = tmp_path / "rt" / "botocore" / "data"
    assert (data / "s3").is_dir() and (data / "endpoints.json").exists()
    assert not (data / "ec2").exists()  # models of services the runtime never calls
    assert list((tmp_path / "rt" / "zstandard").glob("*.so"))
    assert uv.runtime_layer(ARM) is None  # zstandard's x86_64 build cannot go to Arm
    assert uv.fits(["py3-none-any"], ARM)
    assert uv.fits(["cp311-cp311-manylinux_2_17_aarch64"], ARM)
    assert not uv.fits(["cp311-cp311-manylinux_2_34_x86_64"], X86)  # newer glibc than 2.28
    assert not uv.fits(["cp312-cp312-manylinux_2_17_x86_64"], X86)


def test_a_local_target_is_the_worker():
    target = worker_target()
    assert target.local and target.describe().endswith("on the worker")
    assert isinstance(target, Target)


def _venv_snapshot() -> list[tuple[str, int]]:
    """What the worker's own environment holds: each site-packages entry and its mtime."""
    import sysconfig

    site = Path(sysconfig.get_paths()["purelib"])
    return sorted((p.name, p.stat().st_mtime_ns) for p in site.iterdir())


_SECONDS = re.compile(r"environment: environment (\w+) for .*?: (built|fetched from the store|"
                      r"found cached) in ([0-9.]+)s")  # fmt: skip


@pytest.mark.dags_test
def test_a_local_task_gets_a_package_the_worker_lacks_and_a_second_run_reuses_it(
    dags_test, tmp_path: Path
):
    """Run 1 resolves and builds ``ftprobe`` from a local folder; run 2 has no index and no
    wheels at all, so it can neither resolve nor download: it finds the environment cached.
    The worker's ``.venv`` is the same afterwards, and the manifest names what was used."""
    from conftest import TEST_DAGS

    with pytest.raises(ImportError):
        __import__("ftprobe")
    before = _venv_snapshot()
    first = dags_test("flow_environment", dags_folder=TEST_DAGS, **probe_wheels(tmp_path / "w"))
    assert first.returncode == 0, first.output[-6000:]
    second = dags_test("flow_environment", dags_folder=TEST_DAGS, **no_index(tmp_path / "none"))
    assert second.returncode == 0, second.output[-6000:]
    assert _venv_snapshot() == before

    built, cached = (_SECONDS.search(run.output) for run in (first, second))
    assert built is not None and cached is not None, first.output[-3000:]
    assert (built[2], cached[2]) == ("built", "found cached") and built[1] == cached[1]

    store = open_store(first.artifacts.as_uri())
    results = [m for m in second.manifests("flow_environment") if m["task_id"] == "probe"]
    assert len(results) == 2  # both runs
    for manifest in results:
        value = {name: store.get(ref) for name, ref in manifest["result"].items()}
        assert value["value"] == "ftprobe 1.0"
        assert value["file"].startswith(str(second.home / "flowtask" / "environments"))
    launches = sorted((second.artifacts / "runs" / "flow_environment").rglob("launch.json"))
    import json

    records = [json.loads(p.read_text())["environment"] for p in launches]
    assert [r["how"] for r in records] == ["built", "cached"] or [r["how"] for r in records] == [
        "cached",
        "built",
    ]
    record = records[0]
    assert record["packages"] == {"ftprobe": "1.0"} and record["python"] == worker_target().python
    assert record["platform"] == worker_target().platform and record["id"].startswith(built[1])
    assert store.has(record["archive"]) and store.has(record["lock"])

    # A new worker (its own home and uv cache, the same store) that reaches no package index:
    # the environment comes through the store's index, the same one.
    worker = tmp_path / "worker_b"
    third = dags_test(
        "flow_environment",
        dags_folder=TEST_DAGS,
        home=worker,
        AIRFLOW__FLOW_TASK__ARTIFACT_STORE=store.root_uri,
        UV_CACHE_DIR=str(worker / "uv-cache"),
        **unreachable_index(tmp_path / "offline"),
    )
    assert third.returncode == 0, third.output[-6000:]
    fetched = _SECONDS.search(third.output)
    assert fetched is not None and (fetched[1], fetched[2]) == (built[1], "fetched from the store")
    print(f"environment: built in {built[3]}s, found cached in {cached[3]}s, fetched from the "
          f"store in {fetched[3]}s")  # fmt: skip
    results = [m for m in first.manifests("flow_environment") if m["task_id"] == "probe"]
    files = [store.get(m["result"]["file"]) for m in results]
    assert len(files) == 3 and sum(f.startswith(str(worker / "flowtask")) for f in files) == 1

    # gc (grace 0) after the runs deletes nothing a run, an environment or the index needs.
    from reachability import assert_environments_kept, assert_gc_keeps_everything_reachable

    assert_gc_keeps_everything_reachable(store, {})
    assert_environments_kept(store)


def _pypi_reachable() -> bool:
    import socket

    try:
        socket.create_connection(("pypi.org", 443), timeout=3).close()
    except OSError:
        return False
    return True


def test_a_compiled_package_resolved_for_aarch64_on_this_machine_stores_aarch64_wheels(
    tmp_path: Path,
):
    """The one test that reaches a real index (PyPI): numpy for Arm nodes, from x86_64."""
    if not _pypi_reachable():
        pytest.skip("PyPI is unreachable from this machine: cannot resolve numpy for aarch64")
    store = open_store((tmp_path / "store").as_uri())
    cache = EnvironmentCache(tmp_path / "cache", 2**30)
    built = _built(store, ("numpy==2.2.6",), ARM, cache)
    assert built.how == "built" and built.packages == {"numpy": "2.2.6"}
    assert built.target.platform == "aarch64-manylinux_2_28"
    lock = bytes(store.get_bytes(built.lock)).decode()
    [numpy] = locked_packages(lock)
    assert numpy.tags and all(tag.endswith("_aarch64") for tag in numpy.tags), numpy.wheel
    with tarfile.open(fileobj=io.BytesIO(store.get_bytes(built.archive))) as tar:
        [core] = [m for m in tar.getmembers() if m.name.startswith("numpy/_core/_multiarray_umath")]
        header = tar.extractfile(core).read(20)  # type: ignore[union-attr]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183  # aarch64


def _try_of(store, spec) -> Any:
    from provider.operators.targets import TaskRun
    from provider.store import Reference

    payload = Reference(store.blob_uri("0" * 64), "0" * 64, 0, "t", "pickle5")
    identity = {"dag_id": "d", "run_id": "r", "task_id": "t", "map_index": -1, "try_number": 1}
    return TaskRun("t", spec, print, store, payload, "runs/d/r/t/-1/1/result.json", identity, LOG)


@pytest.mark.parametrize("compute", ["local", "kubernetes", "batch"])
def test_an_environment_that_cannot_be_built_fails_the_task_before_anything_is_launched(
    compute, wheels, tmp_path, monkeypatch
):
    """What the resolver says, with the requirement and the target, as ``CannotRun`` (no retry
    can fix it: the operator fails the task at once) raised by ``prepare``: nothing has been
    submitted or started."""
    from provider import Environment, KubernetesOptions, TaskSpec
    from provider.core.errors import CannotRun
    from provider.operators.targets import compute_target

    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "home"))
    store = open_store((tmp_path / "store").as_uri())

    def prepare(pip: list[str], **options: Any) -> str:
        spec = TaskSpec(compute=compute, environment=Environment(pip=pip), **options)
        with pytest.raises(CannotRun) as failed:
            compute_target(compute).prepare(_try_of(store, spec))
        return str(failed.value)

    said = prepare(["ftpure==3.0"])
    assert said.startswith("environment.pip: 'ftpure==3.0' cannot be resolved"), said
    assert "there is no version of ftpure==3.0" in said  # the resolver's own words
    if compute == "kubernetes":
        said = prepare(["ftcompiled"], kubernetes=KubernetesOptions(target_platform="aarch64"))
        assert "ftcompiled has no wheel for Python 3.11 on aarch64-manylinux_2_28" in said
    monkeypatch.delenv("UV_CONFIG_FILE")
    monkeypatch.setenv("UV_INDEX_URL", "http://127.0.0.1:9/simple")
    said = prepare(["ftpure==9.9"])
    assert "no package index reachable while resolving 'ftpure==9.9'" in said


# --- across workers: the store's index, reproducible archives, renewed ages ---------------


@pytest.fixture(params=["folder", "s3"])
def shared_store(request, tmp_path: Path):
    """One artifact store that every worker of a test shares: a folder, or moto's S3."""
    if request.param == "folder":
        return open_store((tmp_path / "shared-store").as_uri())
    from conftest import BUCKET, s3_client

    moto = request.getfixturevalue("moto")
    return open_store(f"s3://{BUCKET}/{request.node.name}", s3_client=s3_client(moto.endpoint))


def _new_worker(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker that never ran anything: its own Airflow home (so an empty environment cache)
    and its own uv cache."""
    monkeypatch.setenv("AIRFLOW_HOME", str(home))
    monkeypatch.setenv("UV_CACHE_DIR", str(home / "uv-cache"))


def _prepare(store, compute: str, pip: list[str]) -> dict[str, Any]:
    """What a try records of its environments, after the compute target's ``prepare``."""
    from provider import Environment, TaskSpec
    from provider.operators.targets import compute_target

    spec = TaskSpec(compute=compute, environment=Environment(pip=pip))
    return compute_target(compute).prepare(_try_of(store, spec))


def _index_entries(store) -> dict[str, dict[str, Any]]:
    return {key: store.read_manifest(key) for key in store.list_manifests("environments")}


@pytest.mark.parametrize("compute", ["local", "kubernetes"])
def test_a_new_worker_with_no_package_index_fetches_the_environment_from_the_store(
    compute, shared_store, wheels, tmp_path, monkeypatch
):
    """Worker A resolves and builds; worker B (a fresh home: no cache; the same store) reaches
    no package index, finds the environment in the store's index and fetches its archive: the
    same id, archive and lock, nothing resolved or built again. On S3 the runtime's own
    environment (kubernetes) comes the same way."""
    _new_worker(tmp_path / "a", monkeypatch)
    built = _prepare(shared_store, compute, ["ftdeps"])
    assert built["environment"]["how"] == "built"
    entries = _index_entries(shared_store)

    _new_worker(tmp_path / "b", monkeypatch)
    for name, value in unreachable_index(tmp_path / "offline").items():
        monkeypatch.setenv(name, value)
    fetched = _prepare(shared_store, compute, ["ftdeps"])
    assert set(fetched) == set(built)
    for name in set(built) - {"code_package"}:  # the task's, and the runtime's on S3
        first, again = built[name], fetched[name]
        assert (first["how"], again["how"]) == ("built", "fetched"), name
        for field in ("id", "archive", "lock", "packages", "platform", "python"):
            assert again[field] == first[field], (name, field)
    assert fetched["environment"]["packages"] == {"ftdeps": "1.0", "ftpure": "2.0"}
    if compute == "local":  # unpacked on worker B, in front of its packages
        site = tmp_path / "b" / "flowtask" / "environments" / "envs" / built["environment"]["id"]
        assert (site / "site" / "ftpure" / "__init__.py").read_text() == "VALUE = 'ftpure 2.0'\n"
    assert _index_entries(shared_store) == entries  # found, not written again
    assert [e["id"] for e in entries.values() if e["requirements"] == ["ftdeps"]] == [
        built["environment"]["id"]
    ]


def test_on_s3_a_new_worker_finds_an_environment_with_four_requests(moto, wheels, tmp_path):
    """The store's index costs one GET of a small JSON: a new worker then checks the archive
    (HEAD), fetches it (GET) and checks the lock (HEAD); a worker that has it cached only checks
    both. Building it: the lookup, each blob put (small ones, as here, in one PUT with no HEAD
    first: see ``blind_write_max_bytes``), and the index entry put."""
    from conftest import BUCKET, s3_client

    store = open_store(f"s3://{BUCKET}/four-requests", s3_client=s3_client(moto.endpoint))
    calls: list[str] = []
    store.backend.client.meta.events.register(  # type: ignore[attr-defined]
        "before-call.s3.*", lambda model, **_: calls.append(model.name)
    )
    seen = {}
    for worker in ("a", "b", "b"):
        calls.clear()
        built = _built(store, ("ftdeps",), X86, EnvironmentCache(tmp_path / worker, 2**30))
        seen[built.how] = list(calls)
    assert seen == {
        "built": ["GetObject", "PutObject", "PutObject", "PutObject"],
        "fetched": ["GetObject", "HeadObject", "GetObject", "HeadObject"],
        "cached": ["HeadObject", "HeadObject"],
    }


@pytest.mark.parametrize("compute", ["local", "kubernetes"])
def test_two_fresh_workers_build_byte_identical_archives(compute, wheels, tmp_path, monkeypatch):
    """The same requirements built on two workers that share nothing (homes, uv caches, stores;
    the wheels even carry other file times) make one environment id and the same archive,
    byte for byte; its bytecode stays valid where it is unpacked (it records the time and size
    its source member has)."""
    archives = []
    for name in ("a", "b"):
        _new_worker(tmp_path / name, monkeypatch)
        store = open_store((tmp_path / name / "store").as_uri())
        built = _prepare(store, compute, ["ftdeps", "six==1.16.0"])["environment"]
        assert built["how"] == "built"
        data = bytes(store.get_bytes(built["archive"]))
        archives.append((built["id"], built["archive"]["sha256"], data))
        for wheel in wheels.glob("*.whl"):
            os.utime(wheel, (1e9, 1e9))
    (id_a, sha_a, data_a), (id_b, sha_b, data_b) = archives
    assert id_a == id_b and sha_a == sha_b and data_a == data_b
    assert data_a[4:8] == b"\0\0\0\0"  # no time in the gzip header

    with tarfile.open(fileobj=io.BytesIO(data_a)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert len({m.mtime for m in members.values()}) == 1
        assert {(m.uid, m.gid, m.uname, m.gname) for m in members.values()} == {(0, 0, "", "")}
        compiled = [name for name in members if name.endswith(".pyc")]
        assert compiled and ".lock" not in members
        for name in compiled:
            source = members[name.replace("__pycache__/", "").rsplit(".", 2)[0] + ".py"]
            header = tar.extractfile(name).read(16)  # type: ignore[union-attr]
            assert int.from_bytes(header[4:8], "little") == 0  # timestamp-checked
            assert int.from_bytes(header[8:12], "little") == source.mtime
            assert int.from_bytes(header[12:16], "little") == source.size


def _age(store, refs: list[Any]) -> Any:
    """Make stored blobs older than RENEW_AFTER; return a check that each was renewed since."""
    from provider.store.store import RENEW_AFTER

    old = 2 * RENEW_AFTER.total_seconds()
    if store.root_uri.startswith("file://"):
        paths = [store.backend.root / "data" / r.sha256[:2] / r.sha256 for r in refs]
        for path in paths:
            os.utime(path, (time.time() - old, time.time() - old))
        return lambda: all(time.time() - p.stat().st_mtime < 60 for p in paths)
    copied: list[str] = []  # S3: a renewal is a copy onto itself
    store.backend.client.meta.events.register(
        "before-parameter-build.s3.CopyObject", lambda params, **_: copied.append(params["Key"])
    )
    store.clock = lambda: time.time() + old
    return lambda: all(any(key.endswith(r.sha256) for key in copied) for r in refs)


def test_an_environment_found_again_renews_the_age_of_its_archive_and_lock(
    shared_store, wheels, tmp_path, monkeypatch
):
    """A stored archive and lock older than RENEW_AFTER that a worker uses again — found in its
    own cache, or through the store's index by a new worker — are checked and renewed, as a
    dedup hit is: gc (grace >= RENEW_AFTER) keeps what a try is about to name."""
    from provider.store import Reference

    _new_worker(tmp_path / "a", monkeypatch)
    first = _prepare(shared_store, "kubernetes", ["ftdeps"])["environment"]
    stored = [Reference.from_json(first[name]) for name in ("archive", "lock")]
    for worker, how in (("a", "cached"), ("b", "fetched")):
        _new_worker(tmp_path / worker, monkeypatch)
        renewed = _age(shared_store, stored)
        again = _prepare(shared_store, "kubernetes", ["ftdeps"])["environment"]
        assert (again["how"], again["archive"], again["lock"]) == (
            how,
            *(r.to_json() for r in stored),
        )
        assert renewed(), worker


def test_an_index_entry_whose_archive_gc_took_is_rebuilt_to_the_same_bytes(
    wheels, tmp_path, caplog
):
    """gc keeps index entries but not what only they name: a worker then builds the entry's lock
    again (no resolution), to the same archive, and stores it. An entry that is not one for its
    key is ignored, and written again."""
    from datetime import timedelta

    from provider.store.gc import collect_garbage

    store = open_store((tmp_path / "store").as_uri())
    first = _built(store, ("ftdeps",), X86, EnvironmentCache(tmp_path / "a", 2**30))
    [(key, entry)] = _index_entries(store).items()
    report = collect_garbage(store, grace=timedelta(0), delete=True)  # no try named them
    assert report.deleted == 2 and not store.has(first.archive) and not store.has(first.lock)
    assert _index_entries(store) == {key: entry}

    again = _built(store, ("ftdeps",), X86, EnvironmentCache(tmp_path / "b", 2**30))
    assert (again.how, again.env_id, again.archive) == ("built", first.env_id, first.archive)
    assert store.has(again.archive) and store.has(again.lock)
    assert _index_entries(store) == {key: entry}

    store.write_manifest(key, {**entry, "id": "0" * 32})  # not the id of its lock
    with caplog.at_level(logging.WARNING, logger="provider.environments"):
        third = _built(store, ("ftdeps",), X86, EnvironmentCache(tmp_path / "c", 2**30))
    assert f"ignoring the environment index entry {store.root_uri}/{key}" in caplog.text
    assert "is not its lock's" in caplog.text
    assert third.how == "built" and _index_entries(store) == {key: entry}


def test_two_workers_building_one_environment_at_once_store_it_once(wheels, tmp_path):
    """Concurrent builds of the same requirements on two workers (their own caches, one store)
    end with one environment, one archive and a valid index entry naming it."""
    from concurrent.futures import ThreadPoolExecutor

    store = open_store((tmp_path / "store").as_uri())
    caches = [EnvironmentCache(tmp_path / name, 2**30) for name in ("a", "b")]
    with ThreadPoolExecutor(2) as pool:
        built = list(pool.map(lambda c: _built(store, ("ftdeps",), X86, c), caches))
    hows = [b.how for b in built]
    assert "built" in hows and set(hows) <= {"built", "fetched"}
    assert built[0].env_id == built[1].env_id and built[0].archive == built[1].archive
    [entry] = _index_entries(store).values()
    assert entry["id"] == built[0].env_id and entry["archive"] == built[0].archive.to_json()
    assert hashlib.sha256(store.get_bytes(built[0].archive)).hexdigest() == built[0].archive.sha256
