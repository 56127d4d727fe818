"""Every example DAG, and the failure paths, through real `airflow dags test` runs on SQLite."""

from __future__ import annotations

import getpass
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import (
    AIRFLOW,
    BUCKET,
    EXAMPLES,
    REPO,
    TEST_DAGS,
    DagsTest,
    airflow_env,
    aws_connection,
    s3_client,
)
from memory_cgroup import MemoryCgroup
from reachability import assert_gc_keeps_everything_reachable

from provider.client import Flow
from provider.store import is_reference, open_store

pytestmark = pytest.mark.dags_test
FLOWTASK = str(Path(sys.executable).parent / "flowtask")


def _value(store, row):
    """What an XCom row holds: a small result itself (as @task's), a larger one by reference."""
    return store.get(row) if is_reference(row) else row


def _xcom_rows(home, dag_id: str) -> dict[str, object]:
    with sqlite3.connect(home / "airflow.db") as db:
        rows = db.execute(
            "SELECT task_id, map_index, value FROM xcom WHERE dag_id = ? AND key = 'return_value'",
            (dag_id,),
        ).fetchall()
    # SQLite gives a JSON column numeric affinity: a number comes back as one, not as text.
    return {
        f"{task}[{index}]": json.loads(value) if isinstance(value, str) else value
        for task, index, value in rows
    }


def _try_numbers(home, dag_id: str) -> dict[str, int]:
    with sqlite3.connect(home / "airflow.db") as db:
        rows = db.execute(
            "SELECT task_id, try_number FROM task_instance WHERE dag_id = ?", (dag_id,)
        ).fetchall()
    return dict(rows)


def _by_task(manifests: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for manifest in manifests:
        out.setdefault(manifest["task_id"], []).append(manifest)
    return out


def test_example_flow_mixed(dags_test: DagsTest):
    run = dags_test("flow_mixed")
    assert run.returncode == 0, run.output[-5000:]
    store = open_store(run.artifacts.as_uri())
    tasks = _by_task(run.manifests("flow_mixed"))
    assert set(tasks) == {"simulate", "column_means"}
    assert all(
        m["status"] == "succeeded" and m["namespace"] == "examples" for m in tasks["simulate"]
    )
    means = store.get(tasks["column_means"][0]["result"])
    assert means.shape == (500,)

    rows = _xcom_rows(run.home, "flow_mixed")
    # The 8 MB matrix and the means are references; small JSON of plain tasks stays inline.
    assert is_reference(rows["simulate[-1]"]) and rows["simulate[-1]"]["size"] > 8_000_000
    assert is_reference(rows["column_means[-1]"])
    assert rows["settings[-1]"] == {"rows": 2000, "cols": 500, "seed": 7}
    report = rows["report[-1]"]
    assert report["columns"] == 500 and report["cells"] == 1_000_000
    assert 0 < report["max_abs_mean"] < 1
    assert "flow task finished in" in run.output  # runtime output streamed into the task log
    assert_gc_keeps_everything_reachable(run.artifacts, rows)


def test_example_flow_fanout_with_tags_and_namespace(dags_test: DagsTest):
    run = dags_test("flow_fanout", conf={"flow_tags": ["demo", "ci"], "flow_namespace": "team:ml"})
    assert run.returncode == 0, run.output[-5000:]
    store = open_store(run.artifacts.as_uri())
    tasks = _by_task(run.manifests("flow_fanout"))
    assert len(tasks["score"]) == 4
    assert sorted(m["map_index"] for m in tasks["score"]) == [0, 1, 2, 3]
    scores = sorted(tasks["score"], key=lambda m: m["map_index"])
    assert all(
        m["tags"] == ["demo", "ci"] and m["namespace"] == "team:ml"
        for ms in tasks.values()
        for m in ms
    )

    def polynomial(x: float) -> float:
        return 3 * x * x + 2 * x + 1

    expected = sum(polynomial(x / 10) for x in range(1000)) * 2
    # `-> dict[str, float]` makes TaskFlow infer multiple_outputs: one artifact per key.
    refs = tasks["total"][0]["result"]
    assert set(refs) == {"shards", "total"}
    assert store.get(refs["shards"]) == 4
    assert store.get(refs["total"]) == pytest.approx(expected)
    rows = _xcom_rows(run.home, "flow_fanout")
    assert rows["list_shards[-1]"] == tasks["list_shards"][0]["result"]  # one ref per shard
    assert len(rows["list_shards[-1]"]) == 4
    run_json = next((run.artifacts / "runs" / "flow_fanout").rglob("run.json"))
    assert json.loads(run_json.read_text())["tags"] == ["demo", "ci"]
    assert_gc_keeps_everything_reachable(run.artifacts, rows)
    # Found again by tag through the client; its end recorded by the record_run_state callback.
    (found,) = Flow("flow_fanout", run.artifacts.as_uri()).runs(["ci"], namespace="team:ml")
    assert (found.tags, found.status, found.successful) == (("demo", "ci"), "success", True)
    assert found["total"].data == {"shards": 4, "total": pytest.approx(expected)}
    assert [task.data for task in found["score"]] == [store.get(m["result"]) for m in scores]


def test_flow_tasks_pass_references_with_the_default_xcom_backend(dags_test: DagsTest):
    run = dags_test(
        "flow_fanout", AIRFLOW__CORE__XCOM_BACKEND="airflow.sdk.execution_time.xcom.BaseXCom"
    )
    assert run.returncode == 0, run.output[-5000:]
    rows = _xcom_rows(run.home, "flow_fanout")
    store = open_store(run.artifacts.as_uri())
    scores = sorted(_by_task(run.manifests("flow_fanout"))["score"], key=lambda m: m["map_index"])
    assert len(scores) == 4
    # A score is a small dict: in the row itself, as @task's; its stored copy is the same value.
    assert [rows[f"score[{i}]"] for i in range(4)] == [store.get(m["result"]) for m in scores]
    assert not any(is_reference(rows[f"score[{i}]"]) for i in range(4))
    # A larger result (the shards' list of references) is in the row by reference.
    assert is_reference(rows["list_shards[-1]"][0])


def test_retry_heals_a_flaky_task_and_catch_hands_on_a_failure(dags_test: DagsTest, tmp_path):
    marker = tmp_path / "marker"
    run = dags_test("flow_failures", dags_folder=TEST_DAGS, FLOW_TEST_MARKER=str(marker))
    assert run.returncode == 0, run.output[-5000:]
    tasks = _by_task(run.manifests("flow_failures"))
    assert [m["status"] for m in tasks["flaky"]] == ["failed", "succeeded"]
    assert tasks["flaky"][0]["error"]["type"] == "builtins.ConnectionError"
    assert [m["status"] for m in tasks["broken"]] == ["failed", "failed"]
    assert [m["try_number"] for m in tasks["broken"]] == [1, 2]
    rows = _xcom_rows(run.home, "flow_failures")
    assert rows["check[-1]"] == "caught builtins.ValueError: cannot handle healed"
    assert_gc_keeps_everything_reachable(run.artifacts, rows)
    # Usage against the request: in the task log, and from `flowtask usage`.
    assert re.search(
        r"peak memory 3\d\d MiB is over the task's request \(100 MiB\): on "
        r"Kubernetes or Batch it would be killed",
        run.output,
    )
    assert re.search(
        r"peak memory \d+ MiB is under a quarter of the request \(8.0 GiB\)", run.output
    )
    assert re.search(r"used \d+ MiB of 8.0 GiB memory, \d\.\d of 1 CPUs \(avg\)", run.output)
    usage = subprocess.run(
        [FLOWTASK, "usage", "flow_failures", "--json", "--store", run.artifacts.as_uri()],
        capture_output=True,
        text=True,
        check=True,
    )
    by_task = {row["task_id"]: row for row in json.loads(usage.stdout)}
    hungry, roomy = by_task["hungry"], by_task["roomy"]
    assert hungry["requested"] == {"cpu": 1.0, "memory_mib": 100, "gpu": 0}
    assert hungry["used"]["peak_rss_mib"] > 300 and hungry["suggested"]["memory_mib"] >= 384
    assert roomy["requested"]["memory_mib"] == 8192 and roomy["suggested"]["memory_mib"] == 256
    assert set(by_task["flaky"]) == {
        "task_id",
        "map_index",
        "try_number",
        "requested",
        "used",
        "suggested",
    }


def test_a_failing_task_fails_the_run_and_a_timeout_stops_the_task(dags_test: DagsTest):
    started = time.monotonic()
    run = dags_test("flow_fatal", dags_folder=TEST_DAGS)
    elapsed = time.monotonic() - started
    assert run.returncode != 0
    assert "RuntimeError: boom: the data is wrong" in run.output
    assert "flow task explode failed" in run.output
    assert "Timeout" in run.output
    assert elapsed < 150, f"the 120 s sleeps were not stopped by timeout='3s' ({elapsed:.0f}s)"
    tasks = _by_task(run.manifests("flow_fatal"))
    # Killed before it could report: the worker recorded the try.
    (sleepy,) = tasks["sleepy"]
    assert sleepy["written_by"] == "worker"
    assert "longer than its timeout" in sleepy["error"]["message"]
    # A dead runtime and a timeout on the last try are caught (the plain task checks them).
    (vanish,) = tasks["vanish"]
    assert vanish["exit_code"] == 7 and "exited with code 7" in vanish["error"]["message"]
    assert _xcom_rows(run.home, "flow_fatal")["check[-1]"] == "caught both"
    # An unpicklable global can never work: one try, not three, and the global is named; the
    # try is on record though it never launched.
    (locked,) = tasks["locked"]
    assert (locked["status"], locked["written_by"]) == ("failed", "worker")
    assert "cannot be sent to where it runs: the global 'LOCK'" in locked["error"]["message"]
    assert _try_numbers(run.home, "flow_fatal")["locked"] == 1
    assert "flow task locked cannot run: it cannot be sent to where it runs: the global 'LOCK'" in (
        run.output
    )
    # A runtime killed by SIGKILL by hand: no out-of-memory kill on record, so none is said.
    (killed,) = tasks["sigkilled"]
    assert killed["failure_kind"] is None and killed["exit_code"] == -9
    assert "the runtime was killed by SIGKILL (" in killed["error"]["message"]
    assert "ran out of memory" not in killed["error"]["message"]
    assert killed["requested"]["memory_mib"] == 300
    # A timeout is recorded as one, caught or not.
    assert sleepy["failure_kind"] == "timeout"
    (slow,) = tasks["slow"]
    assert slow["failure_kind"] == "timeout"
    assert "longer than its timeout" in slow["error"]["message"]
    # Retry(on=(ConnectionError, TimeoutError)): a KeyError is not retried.
    assert _try_numbers(run.home, "flow_fatal")["wrong"] == 1
    assert "builtins.KeyError is not one of retry.on=" in run.output
    # A .foreach item that kills its process: the others finish, the task names that item.
    (crashing,) = tasks["crashing"]
    assert crashing["status"] == "failed" and crashing["foreach"]["failed"] == 1
    assert re.search(
        r"1 of 6 items failed: \[4\] ProcessDied: the process running item 4 died: "
        r"worker \d+ exited with code 9",
        crashing["error"]["message"],
    ), crashing["error"]
    # Items that cannot be pickled can never run: one try, the item named.
    assert _try_numbers(run.home, "flow_fatal")["unpicklable_items"] == 1
    assert (
        "flow task unpicklable_items cannot run: its item 1 (a lock) cannot be pickled"
        in run.output
    )
    assert_gc_keeps_everything_reachable(run.artifacts, _xcom_rows(run.home, "flow_fatal"))


def test_a_runtime_the_kernel_kills_for_memory_is_reported_out_of_memory(dags_test: DagsTest):
    """`airflow dags test` in a memory cgroup (as in a container with a memory limit): the
    flow task's runtime goes over the limit, the kernel's OOM killer ends it, and the try is
    recorded as out of memory, with the kernel's evidence."""
    try:
        cgroup = MemoryCgroup.make(limit_mib=1536)
    except OSError as exc:
        pytest.skip(f"cannot make a memory cgroup with a limit here: {exc}")
    try:
        run = dags_test(
            "flow_oom",
            dags_folder=TEST_DAGS,
            preexec_fn=cgroup.enter,
            FLOW_TEST_BALLAST_MIB="4096",
            # No warm runtime, which would outlive the run in the cgroup for its idle time.
            AIRFLOW__FLOW_TASK__WARM_RUNTIME_IDLE="0",
        )
    finally:
        cgroup.remove(timeout=30)
    assert run.returncode != 0
    (hog,) = _by_task(run.manifests("flow_oom"))["hog"]
    assert (hog["failure_kind"], hog["exit_code"]) == ("oom", -9), hog["error"]
    message = hog["error"]["message"]
    assert "the runtime ran out of memory: the kernel's out-of-memory killer ended it (" in message
    assert "the task asked for 256 MiB" in message


def test_with_airflows_examples_on_flowtasks_examples_are_example_dags(
    dags_test: DagsTest, tmp_path: Path
):
    """``[core] load_examples = True`` (Airflow's default): Airflow imports the module named
    after the distribution, ``airflow_provider_flowtask``, and its ``example_dags`` are a DAG
    bundle; an example from it runs."""
    empty = tmp_path / "dags"
    empty.mkdir()
    run = dags_test("flow_fanout", dags_folder=empty, AIRFLOW__CORE__LOAD_EXAMPLES="True")
    assert run.returncode == 0, run.output[-5000:]
    assert "Could not load provider module" not in run.output
    assert "ModuleNotFoundError" not in run.output
    bundle = "airflow-provider-flowtask-example-dags"
    proc = subprocess.run(
        [AIRFLOW, "dags", "list", "--local", "-B", bundle, "-o", "json"],
        env=airflow_env(run.home, empty, AIRFLOW__CORE__LOAD_EXAMPLES="True"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    listed = json.loads(proc.stdout.splitlines()[-1])  # after the warnings Airflow prints
    examples = {dag["dag_id"]: Path(dag["fileloc"]) for dag in listed}
    assert set(examples) == {p.stem for p in EXAMPLES.glob("flow_*.py")}
    assert all(path.parent.name == "example_dags" for path in examples.values()), examples


def test_the_readmes_laptop_command_for_flow_kubernetes_works_in_a_fresh_shell(tmp_path: Path):
    """The command as the README prints it, in a shell with no Airflow settings (only the
    Airflow home is moved out of the checkout); it ends listing the run it made."""
    readme = (REPO / "README.md").read_text()
    (command,) = [
        line.strip()
        for line in readme.splitlines()
        if line.startswith("./dev example flow_kubernetes ")
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "FLOWTASK"))}
    env["AIRFLOW_HOME"] = str(tmp_path / "home")
    proc = subprocess.run(
        ["bash", "-c", command], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    header, *rows = proc.stdout.splitlines()[-2:]
    assert header.split()[:3] == ["RUN", "ID", "NAMESPACE"], proc.stdout[-2000:]
    (row,) = rows
    assert row.split()[1] == f"user:{getpass.getuser()}" and row.split()[-1] == "success"


def test_kubernetes_task_runs_locally_with_the_flow_compute_param(dags_test: DagsTest):
    run = dags_test("flow_targets", conf={"flow_compute": "batch"}, dags_folder=TEST_DAGS)
    assert run.returncode != 0
    # Batch takes secrets as ARNs only: its Kubernetes Secret name can never work there.
    assert (
        "flow task train cannot run: environment.secrets='db-creds' is invalid: a Kubernetes "
        "Secret name is resolved by compute='kubernetes' only" in run.output
    )
    assert _try_numbers(run.home, "flow_targets") == {"train": 1}  # not retried: it cannot work

    run = dags_test("flow_targets", conf={"flow_compute": "local"}, dags_folder=TEST_DAGS)
    assert run.returncode == 0, run.output[-5000:]
    (manifest,) = [m for m in run.manifests("flow_targets") if m["status"] == "succeeded"]
    assert manifest["tags"] == ["k8s"]

    # compute="kubernetes" where no cluster is configured: one try, one line naming the setting.
    run = dags_test("flow_targets", dags_folder=TEST_DAGS)
    assert run.returncode != 0
    assert (
        "flow task train cannot run: compute='kubernetes': no Kubernetes cluster is configured: "
        "set [flow_task] kubernetes_conn_id to an Airflow Kubernetes connection (now "
        "'kubernetes_default', which does not exist), or give the worker a kubeconfig "
        "(~/.kube/config or $KUBECONFIG)\n" in run.output
    )
    assert "ConfigException" not in run.output
    assert _try_numbers(run.home, "flow_targets") == {"train": 1}

    # A bare `flowtask runs` in that Airflow home (no --store, no namespace) lists the runs
    # `airflow dags test` made: they are yours. Their status comes without DAG callbacks (the
    # DAG has none), the runs that failed before launching included.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "FLOWTASK"))}
    proc = subprocess.run(
        [FLOWTASK, "runs", "flow_targets", "--json"],
        env={**env, "AIRFLOW_HOME": str(run.home)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    listing = json.loads(proc.stdout)
    assert listing["namespace"] == f"user:{getpass.getuser()}" and listing["hint"] is None
    assert [r["status"] for r in listing["runs"]] == ["failed", "success", "failed"]
    assert all(r["finished"] for r in listing["runs"])


def test_secrets_reach_the_task_and_are_kept_nowhere(dags_test: DagsTest):
    password = "pw-5e3b9a-only-in-the-connection"
    connection = {"conn_type": "postgres", "host": "db", "login": "u", "password": password}
    token = "tok-8c1f-must-not-be-logged"
    run = dags_test("flow_secrets", dags_folder=TEST_DAGS, AIRFLOW_CONN_DB=json.dumps(connection))
    assert run.returncode == 0, run.output[-5000:]
    (manifest,) = run.manifests("flow_secrets")
    assert manifest["status"] == "succeeded"
    result = _xcom_rows(run.home, "flow_secrets")["use_password[-1]"]
    assert _value(open_store(run.artifacts.as_uri()), result) == len(password)
    # The payload held the rendered password: it ended with the try.
    stored = [p for p in run.artifacts.rglob("*") if p.is_file()]
    assert not [p for p in stored if p.name == "payload.pickle"]
    assert not [p for p in stored if password.encode() in p.read_bytes()]
    assert token not in run.output and "'API_TOKEN': '***'" in run.output


def test_flow_tasks_do_what_task_does(dags_test: DagsTest, monkeypatch):
    monkeypatch.syspath_prepend(str(TEST_DAGS))  # the walk below loads a DAG-folder class
    run = dags_test("flow_taskflow", dags_folder=TEST_DAGS)
    assert run.returncode == 0, run.output[-8000:]
    rows = _xcom_rows(run.home, "flow_taskflow")
    # Chained and dict mapping, DAG-folder imports, templates, NamedTuples, context: checked
    # inside the DAG's tasks; the plain task downstream saw every value as @task would.
    assert rows["check[-1]"] == "all like @task"
    # The function's stderr is a warning in the task log, its stdout information.
    assert re.search(r"\[warning\s*\] a line on stderr", run.output)
    assert re.search(r"\[info\s*\] a line on stdout", run.output)
    # The flow task's fan-in read no item past the end (a plain @task's still does).
    assert "not found for task 'describe'" not in run.output
    # The result is previewed in the log and in the XCom row the UI shows.
    assert "Returned int: 2 (25 bytes stored)" in run.output
    assert rows["double[0]"] == 2  # a small result is in the XCom row itself, as @task's
    # The daemon the function left behind was stopped when the task ended.
    store = open_store(run.artifacts.as_uri())
    daemon = _value(store, rows["leave_a_daemon[-1]"])
    assert not Path(f"/proc/{daemon}").exists() or "Z" in Path(f"/proc/{daemon}/stat").read_text()
    # A 314-character XCom key is stored (its manifest's name is shortened, never too long).
    with sqlite3.connect(run.home / "airflow.db") as db:
        (value,) = db.execute("SELECT value FROM xcom WHERE task_id = 'long_key'").fetchone()
    assert store.get(json.loads(value)) == list(range(2000))
    assert_gc_keeps_everything_reachable(run.artifacts, rows)


def test_example_flow_foreach_runs_ten_thousand_items_as_one_task(dags_test: DagsTest):
    run = dags_test("flow_foreach")
    assert run.returncode == 0, run.output[-8000:]
    # The plain task downstream compared all 10,000 results, in order.
    assert _xcom_rows(run.home, "flow_foreach")["check[-1]"] == "10000 items checked"
    assert _try_numbers(run.home, "flow_foreach")["score"] == 1  # one task instance, one try
    (score,) = _by_task(run.manifests("flow_foreach"))["score"]
    foreach = score["foreach"]
    assert (foreach["items"], foreach["chunks"], foreach["chunk_size"]) == (10_000, 20, 500)
    assert (foreach["failed"], foreach["failed_items"]) == (0, [])
    # The result's chunk list, in the manifest: what gc keeps while this try's result lives.
    assert [chunk["count"] for chunk in foreach["chunk_results"]] == [500] * 20
    assert score["seconds"] < 60, score["seconds"]
    chunks = sorted((run.artifacts / score["foreach"]["prefix"]).glob("*.json"))
    assert len(chunks) == 20 and all(json.loads(c.read_text())["ran"] == 500 for c in chunks)
    print(f"FOREACH 10000 items: {score['seconds']:.2f}s in the task")
    # `flowtask usage` says what the .foreach task asked for, beside what it used.
    proc = subprocess.run(
        [FLOWTASK, "usage", "flow_foreach", "--json", "--store", run.artifacts.as_uri()],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    (row,) = [r for r in json.loads(proc.stdout) if r["task_id"] == "score"]
    assert row["requested"] == {"cpu": 1, "memory_mib": 512, "gpu": 0}
    assert row["used"]["peak_rss_mib"] > 0


def test_foreach_retries_only_failed_items_catches_and_composes(dags_test: DagsTest, tmp_path):
    marker = tmp_path / "calls"
    run = dags_test("flow_foreach_cases", dags_folder=TEST_DAGS, FLOW_TEST_MARKER=str(marker))
    assert run.returncode == 0, run.output[-8000:]
    rows = _xcom_rows(run.home, "flow_foreach_cases")
    # The plain task downstream saw: the healed list, a caught Failure in place, `.expand`
    # over a foreach, a foreach over an upstream's dicts, the slow foreach's results.
    assert rows["check[-1]"] == "foreach cases checked"
    assert (
        "flow task fragile failed: ForeachFailed: 3 of 20 items failed: "
        "[3] builtins.ValueError: item 3 fails on its first call" in run.output
    )
    assert "20 items in 5 chunks of 4; 3 chunks to run (2 done by an earlier try)" in run.output
    calls = {int(d.name.split("-")[1]): len(list(d.iterdir())) for d in marker.iterdir()}
    assert calls == {i: 2 if i % 7 == 3 else 1 for i in range(20)}  # try 2 re-ran only those
    assert _try_numbers(run.home, "flow_foreach_cases")["fragile"] == 2
    assert re.search(r"foreach: \d+/60 items done, 0 failed; \d+ items/s, ~\d+s left", run.output)
    assert_gc_keeps_everything_reachable(run.artifacts, rows)


def test_example_flow_mixed_on_s3_with_credentials_from_the_airflow_connection(
    dags_test: DagsTest, moto
):
    root = f"s3://{BUCKET}/e2e-mixed"
    run = dags_test(
        "flow_mixed",
        AIRFLOW__FLOW_TASK__ARTIFACT_STORE=root,
        AIRFLOW_CONN_AWS_DEFAULT=aws_connection(moto.endpoint),
    )
    assert run.returncode == 0, run.output[-5000:]
    assert not run.artifacts.exists()  # nothing went to the local folder
    rows = _xcom_rows(run.home, "flow_mixed")
    assert rows["simulate[-1]"]["uri"].startswith(f"{root}/data/")
    store = open_store(root, s3_client=s3_client(moto.endpoint))
    keys = list(store.list_manifests("runs/flow_mixed"))
    results = [store.read_manifest(k) for k in keys if k.endswith("/result.json")]
    assert {m["task_id"] for m in results} == {"simulate", "column_means"}
    assert all(m["status"] == "succeeded" for m in results)
    assert store.get(rows["column_means[-1]"]).shape == (500,)


def test_example_flow_kubernetes_runs_locally_with_the_flow_compute_param(dags_test: DagsTest):
    run = dags_test("flow_kubernetes", conf={"flow_compute": "local"})
    assert run.returncode == 0, run.output[-5000:]
    store = open_store(run.artifacts.as_uri())
    tasks = _by_task(run.manifests("flow_kubernetes"))
    assert len(tasks["score"]) == 3
    summary = tasks["summarize"][0]["result"]  # a dict return: one artifact per key
    assert store.get(summary["batches"]) == 3 and store.get(summary["total"]) > 0


def test_example_flow_batch_runs_locally_with_the_flow_compute_param(dags_test: DagsTest):
    run = dags_test("flow_batch", conf={"flow_compute": "local"})
    assert run.returncode == 0, run.output[-5000:]
    store = open_store(run.artifacts.as_uri())
    tasks = _by_task(run.manifests("flow_batch"))
    assert {name: len(tries) for name, tries in tasks.items()} == {
        "make_batches": 1,
        "score": 3,
        "fit_in_memory": 1,
        "summarize": 1,
    }
    summary = {k: store.get(v) for k, v in tasks["summarize"][0]["result"].items()}
    # Locally nothing limits memory: the fit that Batch kills succeeds here.
    assert summary == {"batches": 3, "total": summary["total"], "fit": 72}
    assert summary["total"] > 0 and "compute=local" in run.output


def test_a_flow_task_whose_warm_runtime_dies_names_it(dags_test: DagsTest):
    """The try's error says the warm runtime serving it died, not "exited with code 255"."""
    run = dags_test("flow_warm_lost", dags_folder=TEST_DAGS)
    assert run.returncode != 0
    tasks = _by_task(run.manifests("flow_warm_lost"))
    assert tasks["first"][0]["status"] == "succeeded"
    (orphaned,) = tasks["orphaned"]
    assert orphaned.get("written_by") == "worker" and orphaned["exit_code"] is None, orphaned
    message = orphaned["error"]["message"]
    assert re.match(
        r"the warm runtime serving this task died \(pid \d+(, killed by SIGKILL)?\) while the "
        r"task ran; the task's process \(pid \d+\) was stopped with it and reported no exit code",
        message,
    ), message
    assert "code 255" not in run.output
