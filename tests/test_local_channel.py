"""A local try's payload and outcome over its runtime's channel, its records off the critical
path: never a success without its ``result.json``, and every finished try on record."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from reachability import assert_gc_keeps_everything_reachable

from provider.store import manifest_key, open_store

FLOWTASK = str(Path(sys.executable).parent / "flowtask")
# A stand-in for the Airflow task process: it runs a try as the operator does (the core's
# prepare, the local target, settle) and prints what it reports. With "kill", it dies by
# SIGKILL the moment it stores the try's result manifest: after the runtime reported the
# outcome over the channel, before the record is written.
WORKER = """
    import json, logging, os, signal, sys

    from provider.core.launch import TaskTry, prepare_try
    from provider.core.outcome import settle
    from provider.core.run_context import default_namespace
    from provider.core.targets.local import LocalTarget
    from provider.specs import TaskSpec
    from provider.store import open_store

    logging.basicConfig(level=logging.INFO)
    store = open_store(sys.argv[1])
    number, mode, length = int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    if mode == "kill":
        write = store.backend.write_bytes

        def dying(key, data, durable=True):
            if key.endswith("/result.json"):
                os.kill(os.getpid(), signal.SIGKILL)
            return write(key, data, durable)

        store.backend.write_bytes = dying

    def numbers(n):
        if mode == "exit":  # reports its success, then its process ends with code 3
            import atexit

            atexit.register(os._exit, 3)
        return list(range(n))

    identity = {
        "dag_id": "d", "run_id": "r", "task_id": "t", "map_index": -1, "try_number": number,
        "namespace": default_namespace("d", "manual", None), "tags": [],
    }
    task = TaskTry(
        task_id="t", function=numbers, args=(length,), kwargs={}, context_kwargs={},
        context={}, identity=identity, spec=TaskSpec(), compute="local", layout="value",
        log=logging.getLogger("worker"),
    )
    target = LocalTarget()
    run = prepare_try(task, target, store)
    outcome = target.run(run, None)
    result = settle(run, outcome, catching=False, local=True, instances=lambda: 1)
    print("REPORTED " + json.dumps(result), flush=True)
"""


def _worker(
    tmp_path: Path, root: str, number: int, mode: str = "", length: int = 400, idle: str = "0"
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path / "home"),
        "AIRFLOW__FLOW_TASK__WARM_RUNTIME_IDLE": idle,
    }
    argv = [sys.executable, "-c", textwrap.dedent(WORKER), root, str(number), mode, str(length)]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)


def _reported(done: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in done.stdout.splitlines() if line.startswith("REPORTED ")]


def test_a_worker_killed_between_the_outcome_and_its_record_reports_no_success(tmp_path):
    root = (tmp_path / "store").as_uri()
    store = open_store(root)
    killed = _worker(tmp_path, root, 1, "kill")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert _reported(killed) == []  # the outcome arrived; no success was reported
    assert store.backend.stat(manifest_key("d", "r", "t", -1, 1)) is None
    # Its launch records were written while the runtime ran, and awaited before the end.
    launch = store.read_manifest(manifest_key("d", "r", "t", -1, 1).replace("result", "launch"))
    assert launch["try_number"] == 1 and "code_package" in launch

    again = _worker(tmp_path, root, 2)
    assert again.returncode == 0, again.stderr[-3000:]
    [line] = _reported(again)
    result = json.loads(line.removeprefix("REPORTED "))
    assert store.get(result) == list(range(400))  # larger than the inline limit: stored
    manifest = store.read_manifest(manifest_key("d", "r", "t", -1, 2))
    assert manifest["status"] == "succeeded" and manifest["result"] == result

    # Every finished try is on record: `flowtask usage` lists it, gc keeps what it names.
    usage = subprocess.run(
        [FLOWTASK, "usage", "d", "--json", "--store", root],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = json.loads(usage.stdout)
    assert [(row["task_id"], row["try_number"]) for row in rows] == [("t", 2)]
    assert_gc_keeps_everything_reachable(store, {"t": result})
    assert store.get(result) == list(range(400))


@pytest.mark.parametrize("idle", ["0", "60"], ids=["cold", "warm"])
def test_a_small_result_comes_back_inline_and_no_payload_is_stored(tmp_path, idle):
    """The task returns a small result itself (FlowXCom keeps it in the row, a downstream
    flow task gets it in its payload); the manifest names its stored blob, as for any."""
    root = (tmp_path / "store").as_uri()
    store = open_store(root)
    starts = []
    for number in (1, 2, 3):  # warm: the first starts the warm runtime, the next are forks
        done = _worker(tmp_path, root, number, length=5, idle=idle)
        assert done.returncode == 0, done.stderr[-3000:]
        [line] = _reported(done)
        assert json.loads(line.removeprefix("REPORTED ")) == [0, 1, 2, 3, 4]
        manifest = store.read_manifest(manifest_key("d", "r", "t", -1, number))
        assert manifest["status"] == "succeeded" and manifest["result_inline"] is True
        # On record as any result: a stored blob that the worker wrote beside the manifest.
        assert store.get(manifest["result"]) == [0, 1, 2, 3, 4]
        starts.append(manifest["runtime_start"])
        # The view the UI shows was stored by the worker, beside the manifest.
        assert store.has(manifest["views"]["result"])
    if idle != "0":
        assert "warm" in starts, starts
    stored = [key for key in store.backend.list("runs") if not key.endswith(".json")]
    assert stored == []  # the payload went over the channel, never to the store


def test_a_runtime_that_reports_a_success_and_then_dies_is_on_record_as_failed(tmp_path):
    root = (tmp_path / "store").as_uri()
    store = open_store(root)
    done = _worker(tmp_path, root, 1, "exit", length=5)
    assert done.returncode != 0 and _reported(done) == []
    assert "the runtime exited with code 3" in done.stderr
    manifest = store.read_manifest(manifest_key("d", "r", "t", -1, 1))
    assert manifest["status"] == "failed"
    assert manifest["error"] == {"type": "RuntimeExit", "message": "the runtime exited with code 3"}
