"""What a warm runtime that preloads its tasks' imports saves: a DataFrame's step-to-step cost,
and a chain of tasks that import pandas and numpy, against anchors measured in the same run.

    .venv/bin/python benchmarks/preload.py [--repeat 3] [--chain 15] [--mib 1]
        [--metaflow-python /tmp/mfvenv/bin/python] [--no-deployment]

1. Handoff: a `--mib` MiB DataFrame from one step to the next. The fixed step-to-step cost is
   the time from the producer's function returning to the consumer's function holding the
   value, taken by the functions themselves (`time.time()` appended to a file just before
   `return` and as the consumer's first line). Each DAG runs warm-up steps first (six small
   DataFrames through the same path), so a backend's first use and the warm runtime's learning
   are paid before the timed pair. Under `airflow dags test`:
     flow tasks, preload auto   two flow tasks (the default settings)
     flow tasks, preload off    the same with `warm_runtime_preload = off` (before this change)
     plain, FlowXCom            two `@task`s with FlowXCom (dags test runs them in its process)
     plain, common-io           two `@task`s with common-io's XComObjectStorageBackend
                                (threshold 0, a local folder)
   and Metaflow's `python flow.py run` (local runtime, local datastore) with the same steps,
   when `--metaflow-python` names an interpreter with metaflow and pandas (its own venv: it
   is no dependency of this project).
2. Chain: `--chain` tasks whose function imports pandas and numpy and sums a small Series,
   as plain `@task`s and as flow tasks (preload auto, and off), one chain per DAG. A task's
   cost is its duration in Airflow's task instance (start to end); the first task of each
   chain is left out. Under `airflow dags test` (plain tasks run in its one process, so they
   import pandas once) and under a real deployment (tests/deployment.py: API server,
   scheduler, dag-processor, triggerer, LocalExecutor; a plain task's process imports pandas
   each time), the DAGs triggered one after the other.

Medians over the repeats (and the chain's tasks); ratios last.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conftest import airflow_env

AIRFLOW = str(Path(sys.executable).parent / "airflow")
COMMON_IO = "airflow.providers.common.io.xcom.backend.XComObjectStorageBackend"
WARM_UPS = 6

MARK = """
import json, os, time


def mark(event):
    with open(os.environ["BENCH_MARKS"], "a") as marks:
        marks.write(json.dumps({"event": event, "t": time.time()}) + "\\n")


def frame(rows):
    import numpy as np
    import pandas as pd

    data = {f"c{i}": np.arange(rows, dtype="float64") * (i + 1) for i in range(8)}
    data["c0"][0] = time.time()  # new content every run: no dedup
    return pd.DataFrame(data)
"""
HANDOFF = (
    MARK
    + """
import os
from airflow.sdk import dag, task
from provider import flow_task


def handoff(decorator, dag_id):
    @dag(dag_id=dag_id, schedule=None)
    def build():
        @decorator
        def warm_up(i, previous=None):
            return frame(16 + i)

        @decorator
        def produce(ready):
            value = frame(int(os.environ["BENCH_MIB"]) * 1024 * 1024 // 64)
            mark("returned")
            return value

        @decorator
        def consume(value):
            mark("holding")
            return int(value.shape[0])

        previous = None
        for i in range(WARM_UPS):
            previous = warm_up.override(task_id=f"warm_up_{i}")(i, previous)
        consume(produce(previous))

    return build()


handoff(flow_task, "bench_handoff_flow")
handoff(task, "bench_handoff_plain")
""".replace("WARM_UPS", str(WARM_UPS))
)
CHAIN = """
from airflow.sdk import dag, task
from provider import flow_task


def chain(decorator, dag_id):
    @dag(dag_id=dag_id, schedule=None)
    def build():
        @decorator
        def step(x):
            import numpy as np
            import pandas as pd

            return int(pd.Series(np.arange(10)).sum()) + x

        value = step.override(task_id="step_0")(0)
        for i in range(1, CHAIN):
            value = step.override(task_id=f"step_{i}")(value)

    return build()


chain(flow_task, "bench_chain_flow")
chain(task, "bench_chain_plain")
"""
METAFLOW = (
    MARK
    + """
from metaflow import FlowSpec, step


class Handoff(FlowSpec):
    @step
    def start(self):
        self.i = 0
        self.next(self.warm_up)

    @step
    def warm_up(self):
        self.small = frame(16 + self.i)
        self.next(self.produce)

    @step
    def produce(self):
        self.value = frame(int(os.environ["BENCH_MIB"]) * 1024 * 1024 // 64)
        mark("returned")
        self.next(self.consume)

    @step
    def consume(self):
        value = self.value
        mark("holding")
        self.rows = int(value.shape[0])
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    Handoff()
"""
)
OFF = {"AIRFLOW__FLOW_TASK__WARM_RUNTIME_PRELOAD": "off"}
HANDOFFS = {
    "flow tasks, preload auto": ("bench_handoff_flow", {}),
    "flow tasks, preload off": ("bench_handoff_flow", OFF),
    "plain, FlowXCom": ("bench_handoff_plain", {}),
    "plain, common-io": ("bench_handoff_plain", {"AIRFLOW__CORE__XCOM_BACKEND": COMMON_IO}),
}
CHAINS = {
    "plain @task": ("bench_chain_plain", {}),
    "flow task, preload auto": ("bench_chain_flow", {}),
    "flow task, preload off": ("bench_chain_flow", OFF),
}


def _ts(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def _gap(marks: Path) -> float:
    events = {row["event"]: row["t"] for row in map(json.loads, marks.read_text().splitlines())}
    return events["holding"] - events["returned"]


def handoff_once(tmp: Path, template: Path, dags: Path, name: str, mib: int) -> float:
    dag_id, extra = HANDOFFS[name]
    home = Path(tempfile.mkdtemp(dir=tmp, prefix="home-"))
    shutil.copy(template / "airflow.db", home / "airflow.db")
    marks = home / "marks.jsonl"
    env = airflow_env(home, dags, BENCH_MARKS=str(marks), BENCH_MIB=str(mib), **extra)
    env["AIRFLOW__COMMON_IO__XCOM_OBJECTSTORAGE_PATH"] = (home / "common-io").as_uri()
    env["AIRFLOW__COMMON_IO__XCOM_OBJECTSTORAGE_THRESHOLD"] = "0"
    done = subprocess.run([AIRFLOW, "dags", "test", dag_id], env=env, capture_output=True)
    if done.returncode != 0:
        raise RuntimeError(f"{name}: {done.stderr.decode()[-3000:]}")
    return _gap(marks)


def metaflow_once(tmp: Path, python: str, mib: int) -> float:
    folder = Path(tempfile.mkdtemp(dir=tmp, prefix="metaflow-"))
    (folder / "handoff.py").write_text(METAFLOW)
    marks = folder / "marks.jsonl"
    env = {**os.environ, "BENCH_MARKS": str(marks), "BENCH_MIB": str(mib), "USERNAME": "bench"}
    env["METAFLOW_DEFAULT_DATASTORE"] = "local"
    env["METAFLOW_DEFAULT_METADATA"] = "local"
    subprocess.run(
        [python, "handoff.py", "run"], cwd=folder, env=env, check=True, capture_output=True
    )
    return _gap(marks)


def chain_durations(spans: dict[str, tuple[float, float]], chain: int) -> list[float]:
    return [spans[f"step_{i}"][1] - spans[f"step_{i}"][0] for i in range(1, chain)]


def chain_dags_test(tmp: Path, template: Path, dags: Path, name: str, chain: int) -> list[float]:
    dag_id, extra = CHAINS[name]
    home = Path(tempfile.mkdtemp(dir=tmp, prefix="home-"))
    shutil.copy(template / "airflow.db", home / "airflow.db")
    env = airflow_env(home, dags, **extra)
    subprocess.run([AIRFLOW, "dags", "test", dag_id], env=env, check=True, capture_output=True)
    with sqlite3.connect(home / "airflow.db") as db:
        rows = db.execute(
            "SELECT task_id, start_date, end_date FROM task_instance WHERE dag_id=?", (dag_id,)
        ).fetchall()
    return chain_durations({t: (_ts(s), _ts(e)) for t, s, e in rows}, chain)


def chain_deployment(
    tmp: Path, template: Path, dags: Path, repeat: int, chain: int
) -> dict[str, list[float]]:
    """Each chain DAG triggered ``repeat`` times, interleaved, on one real deployment per
    preload setting (the setting is the services' environment)."""
    from deployment import Deployment

    found: dict[str, list[float]] = {name: [] for name in CHAINS}
    for extra in ({}, OFF):
        names = [name for name, (_, e) in CHAINS.items() if e == extra]
        home = Path(tempfile.mkdtemp(dir=tmp, prefix="deploy-"))
        with Deployment(home, dags, template / "airflow.db", env_extra=extra) as deployment:
            api = deployment.api
            for name in names:
                deployment.wait_for_dag(CHAINS[name][0])
                api.unpause(CHAINS[name][0])
            for _ in range(repeat):
                for name in names:
                    dag_id = CHAINS[name][0]
                    run_id = api.trigger_like_ui(dag_id)["dag_run_id"]
                    state = api.wait_for_run(dag_id, run_id, timeout=900)
                    if state != "success":
                        raise RuntimeError(f"{dag_id} {run_id}: {state}")
                    spans = {
                        ti["task_id"]: (_ts(ti["start_date"]), _ts(ti["end_date"]))
                        for ti in api.task_instances(dag_id, run_id)
                    }
                    found[name] += chain_durations(spans, chain)
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--chain", type=int, default=15)
    parser.add_argument("--mib", type=int, default=1)
    parser.add_argument("--metaflow-python", default="", help="a Python with metaflow, pandas")
    parser.add_argument("--no-deployment", action="store_true")
    args = parser.parse_args()
    started = time.monotonic()
    handoffs: dict[str, list[float]] = {name: [] for name in HANDOFFS}
    chains: dict[str, list[float]] = {name: [] for name in CHAINS}
    metaflow: list[float] = []
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        dags = tmp / "dags"
        dags.mkdir()
        (dags / "bench_handoff.py").write_text(HANDOFF)
        (dags / "bench_chain.py").write_text(
            CHAIN.replace("range(1, CHAIN)", f"range(1, {args.chain})")
        )
        template = tmp / "template"
        subprocess.run(
            [AIRFLOW, "db", "migrate"],
            env=airflow_env(template, dags),
            check=True,
            capture_output=True,
        )
        for _ in range(args.repeat):  # interleaved: every figure sees the same machine
            for name in HANDOFFS:
                handoffs[name].append(handoff_once(tmp, template, dags, name, args.mib))
            if args.metaflow_python:
                metaflow.append(metaflow_once(tmp, args.metaflow_python, args.mib))
            for name in CHAINS:
                chains[name] += chain_dags_test(tmp, template, dags, name, args.chain)
        deployed = (
            {}
            if args.no_deployment
            else chain_deployment(tmp, template, dags, args.repeat, args.chain)
        )
    print(f"handoff of a {args.mib} MiB DataFrame: producer's return -> consumer holding it")
    print(f"(medians of {args.repeat} runs; each after {WARM_UPS} warm-up steps)")
    rows = {name: statistics.median(values) for name, values in handoffs.items()}
    if metaflow:
        rows["Metaflow local run"] = statistics.median(metaflow)
    else:
        print("  Metaflow: not measured (give --metaflow-python, a venv with metaflow, pandas)")
    for name, value in rows.items():
        print(f"  {name:28s} {value * 1000:8.1f} ms")
    print(f"chain of {args.chain} tasks importing pandas and numpy, per task (first left out):")
    for runner, table in (("airflow dags test", chains), ("real deployment", deployed)):
        for name, values in table.items():
            if values:
                median = statistics.median(values)
                print(f"  {runner:18s} {name:26s} {median * 1000:8.1f} ms ({len(values)} tasks)")
    auto = rows["flow tasks, preload auto"]
    print("ratios:")
    print(f"  handoff, preload off / auto:          {rows['flow tasks, preload off'] / auto:.2f}x")
    if metaflow:
        print(f"  handoff, Metaflow / flow tasks:       {rows['Metaflow local run'] / auto:.2f}x")
    print(f"  handoff, common-io plain / flow:      {rows['plain, common-io'] / auto:.2f}x")
    for runner, table in (("dags test", chains), ("deployment", deployed)):
        if table and all(table.values()):
            plain = statistics.median(table["plain @task"])
            flow = statistics.median(table["flow task, preload auto"])
            print(f"  chain, {runner}: flow task / plain @task: {flow / plain:.2f}x")
    print(f"(took {time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
