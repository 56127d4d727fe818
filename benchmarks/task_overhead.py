"""What a trivial local flow task costs against a plain `@task`, and where its time goes.

    .venv/bin/python benchmarks/task_overhead.py [--repeat 3] [--chain 15]

One DAG holds two chains of `--chain` trivial tasks, one of `@task`, one of `@flow_task`, run
by one `airflow dags test`. A task's cost is its duration in the `task_instance` table; the
first task of each chain is left out (it pays the process's one-time imports). The flow task's
parts come from its launch and result manifests:

    prepare   task start -> payload and launch manifest stored (worker)
    start     -> the runtime process running its first line of work (spawn + imports)
    load      -> the function called (payload and arguments loaded)
    function  the function itself
    result    -> the result and its manifest stored (runtime)
    finish    -> the task's end (worker reads the manifest, Airflow pushes the XCom)

Then the runtime's own start: `python -m provider.runtime` importing everything it needs to run
a payload (`python -c "import provider.runtime.__main__"`) against a bare `python -c pass`,
medians of 21 runs each, interleaved.

Medians over the chain's tasks and the repeats; the ratio is printed last.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import itertools

from conftest import airflow_env

AIRFLOW = str(Path(sys.executable).parent / "airflow")
DAG = """
from airflow.sdk import dag, task
from provider import flow_task

@dag(schedule=None)
def bench_overhead():
    @task
    def plain(x: int) -> int:
        return x + 1

    @flow_task
    def flow(x: int) -> int:
        return x + 1

    p, f = plain.override(task_id="plain_0")(0), flow.override(task_id="flow_0")(0)
    for i in range(1, {chain}):
        p = plain.override(task_id=f"plain_{i}")(p)
        f = flow.override(task_id=f"flow_{i}")(f)

bench_overhead()
"""
PARTS = ("prepare", "start", "load", "function", "result", "finish")


def _ts(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def one_run(home: Path, dags: Path, chain: int) -> tuple[list[float], list[float], dict]:
    env = airflow_env(home, dags)
    subprocess.run(
        [AIRFLOW, "dags", "test", "bench_overhead"], env=env, check=True, capture_output=True
    )
    with sqlite3.connect(home / "airflow.db") as db:
        rows = db.execute(
            "SELECT task_id, start_date, end_date FROM task_instance WHERE dag_id=?",
            ("bench_overhead",),
        ).fetchall()
    spans = {task: (_ts(start), _ts(end)) for task, start, end in rows}
    plain = [spans[f"plain_{i}"][1] - spans[f"plain_{i}"][0] for i in range(1, chain)]
    flow = [spans[f"flow_{i}"][1] - spans[f"flow_{i}"][0] for i in range(1, chain)]
    parts: dict[str, list[float]] = {part: [] for part in PARTS}
    runs = home / "flow_artifacts" / "runs" / "bench_overhead"
    for i in range(1, chain):
        folder = next(runs.glob(f"*/flow_{i}/-1/1"))
        launch = json.loads((folder / "launch.json").read_text())
        result = json.loads((folder / "result.json").read_text())
        start, end = spans[f"flow_{i}"]
        called = result["function_started_at"]
        returned = called + result["function_seconds"]
        marks = (
            start,
            launch["launched_at"],
            result["started_at"],
            called,
            returned,
            result["finished_at"],
            end,
        )
        for part, (a, b) in zip(PARTS, itertools.pairwise(marks), strict=True):
            parts[part].append(b - a)
    return plain, flow, parts


def runtime_start(python: str, runs: int = 21) -> tuple[float, float]:
    """Median seconds of a bare interpreter and of one importing the runtime's entry point."""
    import time

    bare, runtime = [], []
    for _ in range(runs):
        for argv, samples in (
            ([python, "-c", "pass"], bare),
            ([python, "-c", "import provider.runtime.__main__"], runtime),
        ):
            started = time.perf_counter()
            subprocess.run(argv, check=True)
            samples.append(time.perf_counter() - started)
    return statistics.median(bare), statistics.median(runtime)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--chain", type=int, default=15)
    args = parser.parse_args()
    plain: list[float] = []
    flow: list[float] = []
    parts: dict[str, list[float]] = {part: [] for part in PARTS}
    with tempfile.TemporaryDirectory() as tmp:
        dags = Path(tmp) / "dags"
        dags.mkdir()
        (dags / "bench_overhead.py").write_text(DAG.replace("{chain}", str(args.chain)))
        template = Path(tmp) / "template"
        subprocess.run(
            [AIRFLOW, "db", "migrate"],
            env=airflow_env(template, dags),
            check=True,
            capture_output=True,
        )
        for number in range(args.repeat):
            home = Path(tmp) / f"home{number}"
            home.mkdir()
            (home / "airflow.db").write_bytes((template / "airflow.db").read_bytes())
            p, f, run_parts = one_run(home, dags, args.chain)
            plain += p
            flow += f
            for part in PARTS:
                parts[part] += run_parts[part]
    bare, runtime = runtime_start(sys.executable)
    print(f"bare interpreter start:  {bare * 1000:7.1f} ms (median of 21)")
    print(
        f"runtime start (imports): {runtime * 1000:7.1f} ms (median of 21), "
        f"+{(runtime - bare) * 1000:.1f} ms"
    )
    n = len(flow)
    print(f"flow task parts (medians of {n} tasks):")
    for part in PARTS:
        print(f"  {part:9s} {statistics.median(parts[part]) * 1000:7.1f} ms")
    p, f = statistics.median(plain), statistics.median(flow)
    print(f"plain @task:     {p * 1000:7.1f} ms per task (median of {len(plain)})")
    print(f"local flow task: {f * 1000:7.1f} ms per task (median of {n})")
    print(f"ratio flow / plain: {f / p:.2f}x")


if __name__ == "__main__":
    main()
