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

Each repeat runs the DAG twice: with warm runtimes (the default: every flow task after the
first is a fork of the warm runtime) and with `warm_runtime_idle = 0` (every runtime a new
interpreter). Then a new interpreter's start of the runtime: `python -m provider.runtime`
importing everything it needs to run a payload (`python -c "import provider.runtime.__main__"`)
against a bare `python -c pass`, medians of 21 runs each, interleaved.

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


def one_run(
    home: Path, dags: Path, chain: int, **extra: str
) -> tuple[list[float], list[float], dict, list[str]]:
    env = airflow_env(home, dags, **extra)
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
    starts = []
    runs = home / "flow_artifacts" / "runs" / "bench_overhead"
    for i in range(1, chain):
        folder = next(runs.glob(f"*/flow_{i}/-1/1"))
        launch = json.loads((folder / "launch.json").read_text())
        result = json.loads((folder / "result.json").read_text())
        starts.append(result["runtime_start"])
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
    return plain, flow, parts, starts


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


COLD = {"AIRFLOW__FLOW_TASK__WARM_RUNTIME_IDLE": "0"}  # every runtime a new interpreter


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--chain", type=int, default=15)
    args = parser.parse_args()
    plain: list[float] = []
    flow: dict[str, list[float]] = {"warm": [], "cold": []}
    parts = {mode: {part: [] for part in PARTS} for mode in flow}
    starts: dict[str, list[str]] = {mode: [] for mode in flow}
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
            for mode in flow:  # interleaved: both see the same machine
                home = Path(tmp) / f"home{number}-{mode}"
                home.mkdir()
                (home / "airflow.db").write_bytes((template / "airflow.db").read_bytes())
                extra = COLD if mode == "cold" else {}
                p, f, run_parts, run_starts = one_run(home, dags, args.chain, **extra)
                plain += p
                flow[mode] += f
                starts[mode] += run_starts
                for part in PARTS:
                    parts[mode][part] += run_parts[part]
    bare, runtime = runtime_start(sys.executable)
    print(f"bare interpreter start:  {bare * 1000:7.1f} ms (median of 21)")
    print(
        f"runtime start (imports): {runtime * 1000:7.1f} ms (median of 21), "
        f"+{(runtime - bare) * 1000:.1f} ms"
    )
    for mode in flow:
        counted = ", ".join(f"{starts[mode].count(s)} {s}" for s in sorted(set(starts[mode])))
        print(f"flow task parts, {mode} (medians of {len(flow[mode])} tasks; runtimes: {counted}):")
        for part in PARTS:
            print(f"  {part:9s} {statistics.median(parts[mode][part]) * 1000:7.1f} ms")
    p = statistics.median(plain)
    cold, warm = statistics.median(flow["cold"]), statistics.median(flow["warm"])
    print(f"plain @task:                {p * 1000:7.1f} ms per task (median of {len(plain)})")
    print(f"flow task, runtime cold:    {cold * 1000:7.1f} ms per task ({cold / p:.2f}x plain)")
    print(f"flow task, runtime warm:    {warm * 1000:7.1f} ms per task (the default)")
    print(f"ratio flow / plain: {warm / p:.2f}x")


if __name__ == "__main__":
    main()
