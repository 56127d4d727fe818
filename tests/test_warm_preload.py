"""Warm runtime preloading: a server imports what its tasks import before it forks them, and a
task still gets what a new interpreter with its own environment would."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import psutil
import pytest
from test_warm_runtime import IDLE, Warm, _alive, _answers, _connected, _servers, _wait_for

from provider.core.local.runner import run_local
from provider.core.local.warm import start_warm
from provider.runtime.preload import (
    DENY,
    PreloadSettings,
    Record,
    parse_settings,
    plan,
)
from provider.runtime.warm import encode_request, record_path
from provider.store import open_store

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="warm runtimes are Linux's (pidfd, PDEATHSIG)"
)
cloudpickle.register_pickle_by_value(sys.modules[__name__])

PROBES = {
    "good": "VERSION = 1\n",
    "reads_mode": "import os\nMODE = os.environ.get('FLOWTASK_PROBE_MODE')\n",
    "starts_thread": (
        "import threading, time\n"
        "threading.Thread(target=time.sleep, args=(600,), daemon=True).start()\n"
    ),
    "starts_native": "import _thread, time\n_thread.start_new_thread(time.sleep, (600,))\n",
    "sets_env": "import os\nos.environ.setdefault('FLOWTASK_PROBE_SET', '1')\n",
    "reads_all": "import os\nSNAPSHOT = dict(os.environ)\n",
    "broken": "raise RuntimeError('cannot be imported here')\n",
    "big": "BLOB = b'\\x01' * (64 * 2**20)\n",
}


class Preloading(Warm):
    """Runs with a folder of probe modules on ``PYTHONPATH`` (it shapes the server)."""

    def __init__(self, tmp_path: Path, preload: PreloadSettings, **env: str) -> None:
        super().__init__(tmp_path, preload=preload)
        self.modules = tmp_path / "modules"
        self.modules.mkdir(exist_ok=True)
        for name, source in PROBES.items():
            (self.modules / f"{name}.py").write_text(source)
        self.env.update(PYTHONPATH=str(self.modules), **env)
        from provider.core.local.warm import runtime_folder, server_environment, server_name

        name = server_name(server_environment(self.env), os.getcwd())
        self.socket = runtime_folder(self.env) / f"{name}.sock"

    @property
    def record(self) -> dict[str, Any]:
        return Record(record_path(str(self.socket))).read()

    def preloaded(self) -> list[str]:
        """What the server answering now preloaded (a run of nothing reports it)."""
        code, manifest, _ = self.run(_nothing)
        assert code == 0 and manifest["runtime_start"] == "warm"
        return list(manifest["preloaded"])


@pytest.fixture
def listed(tmp_path: Path) -> Iterator[Preloading]:
    runs = Preloading(tmp_path, PreloadSettings("listed", ("numpy", "pandas")))
    yield runs
    runs.stop()


def _nothing() -> None:
    return None


def uses_pandas() -> dict[str, Any]:
    loaded = "pandas" in sys.modules
    import pandas

    frame = pandas.DataFrame({"a": [1, 2, 3]})
    return {"loaded_before": loaded, "sum": int(frame["a"].sum())}


def test_what_recent_tasks_import_the_next_generation_preloads(tmp_path: Path):
    runs = Preloading(tmp_path, PreloadSettings("auto"))
    try:
        runs.started()
        first = runs.server()
        for _ in range(2):  # two tasks import pandas: the next generation preloads it
            code, manifest, _ = runs.run(uses_pandas)
            assert code == 0 and manifest["preloaded"] == []
            assert runs.store.get(manifest["result"]) == {"loaded_before": False, "sum": 6}
        assert runs.record["recent"][-1]["imported"] == [
            "dateutil",
            "numpy",
            "pandas",
            "pyarrow",
            "pytz",
            "six",
        ]
        assert _wait_for(lambda: first.pid not in [s.pid for s in _servers(runs.socket)], 60)
        code, manifest, lines = runs.run(uses_pandas)
        assert code == 0 and manifest["runtime_start"] == "warm"
        assert {"numpy", "pandas", "pyarrow"} <= set(manifest["preloaded"])
        assert runs.store.get(manifest["result"]) == {"loaded_before": True, "sum": 6}
        assert f"with {', '.join(manifest['preloaded'])} preloaded" in lines[0]
        # the first generation retired once the second took the name, and has ended
        assert _wait_for(lambda: not _alive(first.pid), 30)
        # a preloaded module a task imports still counts as imported by it (no generation
        # forgets what its tasks use because they found it loaded)
        assert "pandas" in runs.record["recent"][-1]["imported"]
    finally:
        runs.stop()


def draws() -> list[float]:
    import random

    import numpy

    return [float(numpy.random.rand()), random.random()]


def test_each_fork_draws_its_own_random_numbers(listed: Preloading):
    """numpy seeds its global generator from the OS as it is imported: forks of a server that
    preloaded it would all draw the same numbers, where new interpreters never do."""
    listed.started()
    values = []
    for _ in range(3):
        code, manifest, _ = listed.run(draws)
        assert code == 0 and "numpy" in manifest["preloaded"]
        values.append(listed.store.get(manifest["result"]))
    assert len({value[0] for value in values}) == 3
    assert len({value[1] for value in values}) == 3


def computes() -> dict[str, Any]:
    import numpy
    import pyarrow
    import pyarrow.compute
    import scipy.linalg
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_info

    ones = numpy.ones((600, 600))
    product = ones @ ones  # large enough for OpenBLAS to use its threads
    system = numpy.eye(400) * 2 + numpy.tri(400) * 0.001
    solved = scipy.linalg.solve(system, system @ numpy.arange(400.0))  # scipy's OpenBLAS
    points = numpy.concatenate([numpy.zeros((200, 2)), numpy.full((200, 2), 10.0)])
    labels = KMeans(n_clusters=2, n_init=2, random_state=0).fit_predict(points)  # OpenMP
    table = pyarrow.table({"x": pyarrow.array(numpy.arange(2_000_000) % 7)})
    blobs = [numpy.full(2**20, i, dtype="int64") for i in range(50)]  # jemalloc and back
    return {
        "product": bool((product == 600).all()),
        "solved": bool(numpy.allclose(solved, numpy.arange(400.0))),
        "clusters": sorted(numpy.bincount(labels).tolist()),
        "pools": sorted((p["internal_api"], p["num_threads"]) for p in threadpool_info()),
        "arrow_sum": pyarrow.compute.sum(table["x"]).as_py(),
        "arrow_sorted": pyarrow.compute.sort_indices(table["x"])[-1].as_py() >= 0,
        "blobs": sum(int(blob[0]) for blob in blobs),
    }


def test_forks_compute_with_the_thread_pools_preloaded_libraries_started(tmp_path: Path):
    """OpenBLAS (numpy's, and scipy's that scikit-learn loads) and jemalloc (pyarrow) start
    native threads as they load; they are preloaded because their libraries make them anew in a
    fork: a fork computes correctly with them (and with scikit-learn's OpenMP)."""
    listed = ("numpy", "pyarrow", "sklearn")
    runs = Preloading(tmp_path, PreloadSettings("listed", listed))
    try:
        runs.started()
        assert set(listed) <= set(runs.preloaded())
        assert "verdicts" not in runs.record
        server = runs.server()
        assert server.num_threads() > 1  # the pools are running in the server
        cold = run_cold(runs, computes)
        for _ in range(2):
            argv, key = runs.command(computes)
            proc = start_warm(
                argv, runs.env, owner=os.getpid(), idle_seconds=IDLE, preload=runs.preload
            )
            assert proc is not None
            assert proc.wait(timeout=120) == 0  # no deadlock in the fork
            manifest = runs.store.read_manifest(key)
            assert runs.store.get(manifest["result"]) == cold
        assert cold["product"] and cold["solved"] and cold["clusters"] == [200, 200]
        assert cold["arrow_sum"] == sum(i % 7 for i in range(2_000_000))
    finally:
        runs.stop()


def run_cold(runs: Warm, function: Any, **env: str) -> Any:
    """What a new interpreter gives (no warm runtime)."""
    argv, key = runs.command(function)
    code = run_local(argv, env={**runs.env, **env}, log_line=lambda line: None)
    assert code == 0
    manifest = runs.store.read_manifest(key)
    assert manifest["runtime_start"] == "cold"
    return runs.store.get(manifest["result"])


def blas_threads() -> list[int]:
    import numpy  # noqa: F401
    from threadpoolctl import threadpool_info

    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]


def test_thread_variables_name_a_server_preloaded_under_the_tasks_value(tmp_path: Path):
    """OpenBLAS sizes its pool from OMP_NUM_THREADS as numpy loads: a task that sets it gets a
    server preloaded under its value (or starts cold), never one sized for another."""
    runs = Preloading(tmp_path, PreloadSettings("listed", ("numpy",)))
    try:
        default, one = (
            run_cold(runs, blas_threads),
            run_cold(runs, blas_threads, OMP_NUM_THREADS="1"),
        )
        assert one == [1]
        if (os.cpu_count() or 1) > 1:
            assert default != one  # else this machine cannot tell them apart
        runs.started()
        _, manifest, _ = runs.run(blas_threads)
        assert manifest["preloaded"] == ["numpy"] and runs.store.get(manifest["result"]) == default
        _, manifest, _ = runs.run(blas_threads, OMP_NUM_THREADS="1")
        assert manifest["runtime_start"] == "cold"  # a shape of its own: its server starts
        assert runs.store.get(manifest["result"]) == one

        def warm_with_one() -> bool:
            return runs.run(blas_threads, OMP_NUM_THREADS="1")[1]["runtime_start"] == "warm"

        assert _wait_for(warm_with_one, 60)
        _, manifest, _ = runs.run(blas_threads, OMP_NUM_THREADS="1")
        assert manifest["preloaded"] == ["numpy"] and runs.store.get(manifest["result"]) == one
    finally:
        runs.stop()
        for server in psutil.process_iter(["cmdline"]):
            if str(runs.socket.parent) in " ".join(server.info["cmdline"] or []):
                server.kill()


def mode() -> str | None:
    import reads_mode  # type: ignore[import-not-found]

    return reads_mode.MODE  # type: ignore[no-any-return]


def probe_set() -> str | None:
    import sets_env  # type: ignore[import-not-found]  # noqa: F401

    return os.environ.get("FLOWTASK_PROBE_SET")


def test_what_a_preloaded_import_set_in_the_environment_a_fork_has_too(tmp_path: Path):
    """``os.environ.setdefault(...)`` at import (scikit-learn does it): a fork sees what a new
    interpreter importing it with the task's environment would."""
    runs = Preloading(tmp_path, PreloadSettings("listed", ("sets_env",)))
    try:
        assert run_cold(runs, probe_set) == "1"
        assert run_cold(runs, probe_set, FLOWTASK_PROBE_SET="2") == "2"
        runs.started()
        code, manifest, _ = runs.run(probe_set)
        assert manifest["preloaded"] == ["sets_env"] and runs.store.get(manifest["result"]) == "1"
        code, manifest, _ = runs.run(probe_set, FLOWTASK_PROBE_SET="2")
        assert manifest["runtime_start"] == "cold" and runs.store.get(manifest["result"]) == "2"
        assert code == 0
    finally:
        runs.stop()


def test_a_task_that_sets_a_variable_a_preloaded_import_read_starts_cold(tmp_path: Path):
    runs = Preloading(tmp_path, PreloadSettings("listed", ("reads_mode",)))
    try:
        runs.started()
        assert runs.preloaded() == ["reads_mode"]
        code, manifest, lines = runs.run(mode, FLOWTASK_PROBE_MODE="fast")
        assert code == 0 and manifest["runtime_start"] == "cold"
        assert runs.store.get(manifest["result"]) == "fast"  # what a new interpreter reads
        assert lines[0] == (
            "flowtask: started as a new interpreter, not a fork of the warm runtime: the task "
            "sets FLOWTASK_PROBE_MODE (read by reads_mode) at import otherwise than the warm "
            "runtime"
        )
        assert runs.record["recent"][-1] == {"refused": ["reads_mode"]}
        code, manifest, _ = runs.run(mode)
        assert manifest["runtime_start"] == "warm" and runs.store.get(manifest["result"]) is None
    finally:
        runs.stop()


UNFIT = ["grpc", "starts_thread", "starts_native", "reads_all", "broken"]


def test_what_a_fork_cannot_inherit_unchanged_is_not_preloaded(tmp_path: Path):
    """Each unfit module is refused for its reason, recorded, and the server that imported it
    starts again without it: the server that serves has no thread but its own."""
    (tmp_path / "modules").mkdir()
    (tmp_path / "modules" / "grpc.py").write_text(
        f"open({str(tmp_path / 'grpc-imported')!r}, 'w').close()\n"
    )
    runs = Preloading(tmp_path, PreloadSettings("listed", (*UNFIT, "good")))
    try:
        runs.started()
        assert runs.preloaded() == ["good"]
        assert runs.server().num_threads() == 1
        verdicts = runs.record["verdicts"]
        assert verdicts == {  # and grpc is left out of every plan, as denied
            "starts_thread": "started a Python thread at import",
            "starts_native": "started native threads at import",
            "reads_all": "reads the whole environment at import",
            "broken": "failed to import: RuntimeError: cannot be imported here",
        }
        assert not (tmp_path / "grpc-imported").exists()  # a denied module is never imported
        assert "grpc" in DENY and "grpc" not in plan({}, runs.preload)
    finally:
        runs.stop()


def test_preloading_stays_within_its_memory_budget(tmp_path: Path):
    runs = Preloading(tmp_path, PreloadSettings("listed", ("good", "big"), budget_mib=32))
    try:
        runs.started()
        assert runs.preloaded() == ["good"]
        record = runs.record
        assert record["verdicts"] == {"big": "over the preload budget of 32 MiB"}
        assert record["costs"]["big"] >= 60
        # the next plan leaves it out by its known cost, even without the verdict
        del record["verdicts"]
        assert plan(record, runs.preload) == ["good"]
        assert plan(record, PreloadSettings("listed", ("good", "big"), 128)) == ["good", "big"]
    finally:
        runs.stop()


def version() -> int:
    import good  # type: ignore[import-not-found]

    return good.VERSION  # type: ignore[no-any-return]


def test_a_server_whose_preloaded_module_changed_on_disk_serves_no_more(tmp_path: Path):
    """An upgrade under a running server: the next task starts cold (it imports the new
    version), the server stops accepting, and the next one preloads the new version."""
    runs = Preloading(tmp_path, PreloadSettings("listed", ("good",)))
    try:
        runs.started()
        first = runs.server()
        assert runs.store.get(runs.run(version)[1]["result"]) == 1
        (runs.modules / "good.py").write_text("VERSION = 2  # upgraded\n")
        _, manifest, lines = runs.run(version)
        assert manifest["runtime_start"] == "cold" and runs.store.get(manifest["result"]) == 2
        assert "good.py changed on disk since the warm runtime imported it" in lines[0]
        assert _wait_for(lambda: not _alive(first.pid), 30)
        runs.started()
        _, manifest, _ = runs.run(version)
        assert manifest["preloaded"] == ["good"] and runs.store.get(manifest["result"]) == 2
    finally:
        runs.stop()


def counts(folder: str) -> None:
    with open(Path(folder, "runs"), "a") as runs:
        runs.write(f"{os.getpid()}\n")


def test_a_request_queued_at_a_generation_as_the_next_takes_over_is_served(tmp_path: Path):
    """The next generation renames its socket over the name and tells the old one to retire:
    what the old one had queued by then is still served, once, by the old one."""
    runs = Preloading(tmp_path, PreloadSettings("listed", ("good",)))
    owner = subprocess.Popen(["sleep", "600"])
    old = new = None
    argv = [sys.executable, "-m", "provider.runtime", "serve", "--socket", str(runs.socket)]
    argv += ["--owner", str(owner.pid), "--idle", "600"]
    try:
        runs.socket.parent.mkdir(parents=True, mode=0o700)
        old = subprocess.Popen(argv, env=runs.env)
        assert _wait_for(lambda: _answers(runs.socket), 30)
        old.send_signal(signal.SIGSTOP)
        command, _ = runs.command(counts, str(tmp_path))
        out_read, out_write = os.pipe()
        with _connected(runs.socket) as conn:  # queued at the stopped server
            request = encode_request(command[3:], runs.env, os.getcwd())
            socket.send_fds(conn, [request], [out_write, out_write])
            os.close(out_write)
            new = subprocess.Popen([*argv, "--preload", "good", "--replace"], env=runs.env)
            assert _wait_for(lambda: _answers(runs.socket) and new.pid in _peers(runs), 30)
            old.send_signal(signal.SIGCONT)
            conn.settimeout(30)
            assert conn.recv(64).startswith(b"pid ")
            assert os.read(out_read, 1) == b""  # every copy closed: the fork has ended
        os.close(out_read)
        assert old.wait(timeout=30) == 0  # retired, and gone once its fork ended
        assert new.poll() is None and _answers(runs.socket)
        assert len((tmp_path / "runs").read_text().split()) == 1
    finally:
        owner.kill()
        for server in (old, new):
            if server is not None:
                server.kill()
                server.wait()


def _peers(runs: Warm) -> list[int]:
    try:
        with _connected(runs.socket) as conn:
            from provider.runtime.warm import peer

            return [peer(conn)[0]]
    except OSError:
        return []


def test_settings_name_the_option_the_value_and_the_accepted_form(monkeypatch):
    from provider.core.targets.local import preload_settings

    monkeypatch.setenv("AIRFLOW__FLOW_TASK__WARM_RUNTIME_PRELOAD", "numpy, pandas.io")
    monkeypatch.setenv("AIRFLOW__FLOW_TASK__WARM_RUNTIME_PRELOAD_MIB", "256")
    assert preload_settings() == PreloadSettings("listed", ("numpy", "pandas.io"), 256)
    monkeypatch.setenv("AIRFLOW__FLOW_TASK__WARM_RUNTIME_PRELOAD", "off")
    assert preload_settings().mode == "off"
    monkeypatch.delenv("AIRFLOW__FLOW_TASK__WARM_RUNTIME_PRELOAD")
    monkeypatch.delenv("AIRFLOW__FLOW_TASK__WARM_RUNTIME_PRELOAD_MIB")
    assert preload_settings() == PreloadSettings("auto", (), 512)
    with pytest.raises(ValueError) as bad:
        parse_settings("numpy,pan-das")
    assert str(bad.value) == (
        "[flow_task] warm_runtime_preload='numpy,pan-das' is invalid: 'pan-das' is not a module "
        "name. Accepted: auto, off, or module names separated by commas (numpy,pandas)"
    )
    with pytest.raises(ValueError, match=r"warm_runtime_preload_mib='lots' is invalid"):
        parse_settings("auto", "lots")


def test_the_plan_follows_recent_imports_and_leaves_out_what_failed():
    imported = {"imported": ["pandas", "numpy", "requests", "once"]}
    content: dict[str, Any] = {
        "recent": [imported, imported, {"imported": ["requests"]}],
        "verdicts": {"once": "started a Python thread at import"},
        "costs": {"pandas": 90.0, "numpy": 15.0},
    }
    auto = PreloadSettings()
    assert plan(content, auto) == ["requests", "numpy", "pandas"]
    assert plan({"recent": [imported]}, auto) == []  # one task is not "recent tasks"
    assert plan(content, PreloadSettings(budget_mib=100)) == ["requests", "numpy"]
    content["recent"] += [{"refused": ["requests"]}, {"refused": ["requests"]}]
    assert plan(content, auto) == ["numpy", "pandas"]
    assert plan(content, PreloadSettings("off")) == []
    assert plan(content, PreloadSettings(budget_mib=0)) == []
    listed = PreloadSettings("listed", ("pandas", "once", "airflow", "numpy"))
    assert plan(content, listed) == ["pandas", "numpy"]


def test_a_fork_reports_only_installed_modules(tmp_path: Path):
    """The standard library, the DAG folder's modules (the code package) and modules of the
    working directory are never candidates: they change with each run or cost nothing."""
    runs = Preloading(tmp_path, PreloadSettings("auto"))
    folder = tmp_path / "dags_code"
    folder.mkdir()
    (folder / "dag_helper.py").write_text("X = 1\n")
    script = f"""
        import sys
        sys.path.append({str(folder)!r})
        import dag_helper, good, decimal, json
    """

    def imports() -> None:
        exec(textwrap.dedent(script))

    try:
        runs.started()
        code, _, _ = runs.run(imports)
        assert code == 0
        assert runs.record["recent"] == [{"imported": ["good"]}]
    finally:
        runs.stop()


def test_the_record_is_a_file_of_this_users_private_folder(listed: Preloading):
    listed.started()
    listed.run(uses_pandas)
    path = Path(record_path(str(listed.socket)))
    assert path.parent == listed.socket.parent and (path.stat().st_mode & 0o777) == 0o600
    assert json.loads(path.read_text())["recent"]


@pytest.mark.dags_test
def test_a_tasks_environment_sizes_numpys_pool_as_in_a_new_interpreter(dags_test: Any):
    """`Environment(env={"OMP_NUM_THREADS": "1"})` with warm runtimes that preload numpy:
    that task's numpy has one BLAS thread, warm or cold; the others have the default."""
    from conftest import TEST_DAGS

    run = dags_test(
        "flow_preload", dags_folder=TEST_DAGS, AIRFLOW__FLOW_TASK__WARM_RUNTIME_PRELOAD="numpy"
    )
    assert run.returncode == 0, run.output[-3000:]
    manifests = {m["task_id"]: m for m in run.manifests("flow_preload")}
    starts = {task: (m["runtime_start"], m["preloaded"]) for task, m in manifests.items()}
    assert starts == {
        "default_0": ("cold", []),
        "default_1": ("warm", ["numpy"]),
        "one_0": ("cold", []),  # a shape of its own: its warm runtime starts now
        "one_1": ("warm", ["numpy"]),
    }
    store = open_store(run.artifacts.as_uri())
    threads = {task: store.get(m["result"]) for task, m in manifests.items()}
    assert threads["one_0"] == threads["one_1"] == [1]
    assert threads["default_0"] == threads["default_1"]
    if (os.cpu_count() or 1) > 1:
        assert threads["default_1"] != [1]
