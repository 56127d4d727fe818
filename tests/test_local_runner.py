"""The local runner and the runtime's lifetime: nothing a task started outlives it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cloudpickle
import pytest

from provider.core.local.runner import run_local, runtime_environment
from provider.runtime import Payload
from provider.runtime.lifetime import PARENT_PID_ENV
from provider.store import manifest_key, open_store, payload_key
from provider.translate import runtime_command

cloudpickle.register_pickle_by_value(sys.modules[__name__])
KEY = manifest_key("d", "r", "t", -1, 1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def _wait_for(predicate, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_the_task_ends_when_its_function_returns_and_leftover_children_stop(tmp_path):
    pid_file = tmp_path / "child.pid"
    script = f"""
        import subprocess, sys
        child = subprocess.Popen(["sleep", "600"])  # a daemon the function leaves behind
        open({str(pid_file)!r}, "w").write(str(child.pid))
        print("out: done")
        print("err: a warning", file=sys.stderr)
    """
    out: list[str] = []
    err: list[str] = []
    started = time.monotonic()
    code = run_local(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=dict(os.environ),
        log_line=out.append,
        log_error=err.append,
        grace_seconds=2.0,
    )
    assert code == 0 and time.monotonic() - started < 10
    assert out == ["out: done"] and err == ["err: a warning"]
    assert _wait_for(lambda: not _alive(int(pid_file.read_text())), 5)


def sleep_then_mark(marker: str) -> str:
    Path(marker).with_suffix(".pid").write_text(str(os.getpid()))
    time.sleep(30)
    Path(marker).write_text("the function finished")
    return "finished"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_runtime_whose_worker_is_killed_stops_and_reports_no_success(tmp_path):
    """SIGKILL reaches no handler: the kernel tells the runtime its parent died."""
    store = open_store((tmp_path / "store").as_uri())
    marker = tmp_path / "marker"
    ref = store.put_at(
        payload_key(KEY), Payload(function=sleep_then_mark, args=(str(marker),)), by_value=True
    )
    argv = runtime_command(store.root_uri, ref.to_json(), KEY, python=sys.executable)
    # A stand-in for the Airflow task process: it runs the runtime as LocalTarget does.
    worker = f"""
        import os, sys
        from provider.core.local.runner import run_local
        env = dict(os.environ, {PARENT_PID_ENV}=str(os.getpid()))
        run_local({argv!r}, env=env, log_line=print)
    """
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(worker)])
    pid_file = marker.with_suffix(".pid")
    assert _wait_for(pid_file.exists, 30)
    runtime = int(pid_file.read_text())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _wait_for(lambda: not _alive(runtime), 5), "the runtime outlived its worker"
    assert not marker.exists()
    assert store.backend.stat(KEY) is None  # no "succeeded" manifest for a killed try


def test_the_runtime_environment_leaves_the_task_supervisor_behind():
    worker = {
        "PATH": "/usr/bin",
        "AIRFLOW_HOME": "/opt/airflow",
        "AIRFLOW__CORE__DAGS_FOLDER": "/dags",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "airflow-db-not-allowed:///",
        "AIRFLOW__CORE__SQL_ALCHEMY_CONN": "airflow-db-not-allowed:///",
        "_AIRFLOW_FORK_EXEC": "1",
        "__AIRFLOW_SUPERVISOR_FD": "7",
        "_AIRFLOW_PROCESS_CONTEXT": "client",
    }
    assert runtime_environment(worker, {"FLOW": "1"}) == {
        "PATH": "/usr/bin",
        "AIRFLOW_HOME": "/opt/airflow",
        "AIRFLOW__CORE__DAGS_FOLDER": "/dags",
        "FLOW": "1",
    }


def test_killing_a_chunk_pool_stops_every_worker_and_what_it_started(tmp_path):
    from provider.core.local.pool import ChunkPool

    pids = tmp_path / "pids"
    pids.mkdir()
    worker = f"""
        import os, subprocess, sys, time
        child = subprocess.Popen(["sleep", "600"])
        open(os.path.join({str(pids)!r}, str(os.getpid())), "w").write(str(child.pid))
        for line in sys.stdin:
            time.sleep(600)
    """
    pool = ChunkPool(
        lambda fd: [sys.executable, "-c", textwrap.dedent(worker)],
        env=dict(os.environ),
        size=2,
        log_line=lambda line: None,
        log_error=lambda line: None,
    )
    import threading

    thread = threading.Thread(target=pool.run, args=([0, 1, 2],), daemon=True)
    thread.start()
    assert _wait_for(lambda: len(list(pids.iterdir())) == 2, 30)
    started = [int(p.name) for p in pids.iterdir()] + [int(p.read_text()) for p in pids.iterdir()]
    pool.kill(grace_seconds=1.0)
    thread.join(10)
    assert not thread.is_alive()
    assert _wait_for(lambda: not any(_alive(pid) for pid in started), 5)


def test_a_chunk_pool_killed_from_a_signal_handler_returns_its_chunks_as_lost(tmp_path):
    """Airflow's task runner calls ``on_kill`` from its SIGTERM handler (a Celery worker's
    warm shutdown forwards SIGTERM to its task processes): the handler kills the pool in the
    thread that runs it, and ``run`` must then return, naming the chunks it lost."""
    import threading

    from provider.core.local.pool import ChunkPool

    started = tmp_path / "started"
    worker = f"""
        import sys, time
        for line in sys.stdin:
            open({str(started)!r}, "w").write(line)
            time.sleep(600)
    """
    pool = ChunkPool(
        lambda fd: [sys.executable, "-c", textwrap.dedent(worker)],
        env=dict(os.environ),
        size=1,
        log_line=lambda line: None,
        log_error=lambda line: None,
    )

    class StillRunning(Exception):
        pass

    def on_term(signum, frame):
        pool.kill(grace_seconds=1.0)

    def too_late(signum, frame):
        raise StillRunning("the pool still ran after it was killed")

    def send_sigterm() -> None:
        if _wait_for(started.exists, 30):
            os.kill(os.getpid(), signal.SIGUSR1)

    previous = signal.signal(signal.SIGUSR1, on_term), signal.signal(signal.SIGALRM, too_late)
    signal.alarm(20)  # a hang fails the test instead of the session
    try:
        threading.Thread(target=send_sigterm, daemon=True).start()
        report = pool.run([0, 1])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGUSR1, previous[0])
        signal.signal(signal.SIGALRM, previous[1])
    assert report.answered == {}
    assert list(report.lost) == [0], report.lost
