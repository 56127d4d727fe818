"""What a trivial local flow task costs against a plain `@task`, where its time goes, and
how many store requests it makes: on a local folder, on moto's S3 server, and on the S3 model.

    .venv/bin/python benchmarks/task_overhead.py [--repeat 3] [--chain 15]
        [--stores folder,moto,model] [--expand N] [--cold] [--no-start]

One DAG holds two chains of `--chain` trivial tasks, one of `@task`, one of `@flow_task`, run
by one `airflow dags test` with `FlowXCom` (the plain task's small values stay in the XCom
row). A task's cost is its duration in the `task_instance` table; the first task of each chain
is left out (it pays the process's one-time imports). Each repeat runs the DAG once per store,
interleaved:

    folder  a local folder ($AIRFLOW_HOME/flow_artifacts)
    moto    moto's S3 server on 127.0.0.1, behind a proxy that only counts requests
    model   the same behind the S3 model (tests/s3_servers.py `S3Model`): every answer waits
            20 ms for its first byte, each connection carries 90 MiB/s, no jitter

On S3, the proxy counts the run's requests by method and its sequential rounds: requests in
flight together are one round, requests one after another one each. Both are divided by the
chain's length (the plain tasks make none): requests and rounds per flow task. The flow task's
parts come from its launch and result manifests:

    prepare   task start -> the launch manifest's time (worker: specs, payload pickled)
    start     -> the runtime process running its first line of work (fork or spawn)
    load      -> the function called (payload and arguments loaded)
    function  the function itself
    result    -> the result stored (runtime)
    finish    -> the task's end (the runtime's report, the records stored, the XCom pushed)

`--expand N` also runs `.expand` over N items of the same two tasks (a mapped plain `@task`
and a mapped flow task) and prints each mapped instance's median duration and their ratio;
`--cold` also runs the folder chain with `warm_runtime_idle = 0` (every runtime a new
interpreter); without `--no-start`, a new interpreter's start of the runtime against a bare
`python -c pass` (medians of 21, interleaved).

A local flow task's store requests (the runtime gets its payload and sends its report over its
channel, `provider.runtime.channel`): while the runtime runs, the run's manifest (a GET) and
its start in the run index (a HEAD), the code package (one PUT below 256 KiB: no HEAD first)
and the launch manifest; once it reported, at once, its result manifest, the result's and its
view's blobs and the task's end in the run index (a LIST of the index log one end in eight).
About two rounds on the critical path; nothing read back.

Pods and Batch jobs (not measured here: the store is their channel) make what is left of the
former design: the worker stores the payload (one PUT) and the launch manifest, the container
reads the payload and its inputs, stores the result (one PUT below 256 KiB, no HEAD) and its
result manifest, and the worker reads that manifest back and deletes the payload; the run's
records are read at once (a GET and a HEAD together, where it was HEAD, GET, HEAD one after
the other). What remains and why: the container cannot answer the worker but through the
store (a pod's logs and a Batch job's status carry no manifest), and a payload in the
container's arguments is bounded (Batch refuses container overrides over 8,192 characters),
so it stays in the store.

Medians over the tasks and the repeats; ratios against the plain `@task` of the same run.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import itertools
from collections import Counter
from typing import Any

from conftest import BUCKET, airflow_env, aws_connection, s3_client

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
EXPAND_DAG = """
from airflow.sdk import dag, task
from provider import flow_task

@dag(schedule=None)
def bench_expand():
    @task
    def plain(x: int) -> int:
        return x + 1

    @flow_task
    def flow(x: int) -> int:
        return x + 1

    plain.expand(x=list(range({items})))
    flow.expand(x=list(range({items})))

bench_expand()
"""
PARTS = ("prepare", "start", "load", "function", "result", "finish")


def _ts(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def one_run(
    home: Path, dags: Path, chain: int, store: Store, **extra: str
) -> tuple[list[float], list[float], dict, list[str]]:
    env = airflow_env(home, dags, **store.env_for(home), **extra)
    done = subprocess.run(
        [AIRFLOW, "dags", "test", "bench_overhead"], env=env, capture_output=True, text=True
    )
    if done.returncode:
        raise SystemExit(f"airflow dags test failed:\n{(done.stdout + done.stderr)[-60000:]}")
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
    opened = store.open(home)
    runs = "runs/bench_overhead"
    keys = [k for k in opened.list_manifests(runs) if "/flow_" in k]
    for i in range(1, chain):
        folder = next(k for k in keys if f"/flow_{i}/-1/1/" in k).rsplit("/", 1)[0]
        launch = opened.read_manifest(f"{folder}/launch.json")
        result = opened.read_manifest(f"{folder}/result.json")
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


def expand_run(
    home: Path, dags: Path, store: Store
) -> tuple[list[float], list[float], Counter[str], int]:
    """Each mapped instance's duration, plain and flow (the first of each left out: it pays the
    process's imports), and the run's requests and rounds."""
    env = airflow_env(home, dags, **store.env_for(home))
    store.reset()
    done = subprocess.run(
        [AIRFLOW, "dags", "test", "bench_expand"], env=env, capture_output=True, text=True
    )
    if done.returncode:
        raise SystemExit(f"airflow dags test failed:\n{(done.stdout + done.stderr)[-60000:]}")
    with sqlite3.connect(home / "airflow.db") as db:
        rows = db.execute(
            "SELECT task_id, map_index, start_date, end_date FROM task_instance WHERE dag_id=?",
            ("bench_expand",),
        ).fetchall()
    spans: dict[str, list[float]] = {"plain": [], "flow": []}
    for task, index, start, end in sorted(rows, key=lambda row: row[1]):
        if index > 0:
            spans[task].append(_ts(end) - _ts(start))
    methods, rounds = store.counted()
    return spans["plain"], spans["flow"], methods, rounds


class Store:
    """Where a run's artifact store is: a folder, moto, or moto behind the S3 model; on S3,
    a counting proxy in front of moto (without a model it adds no latency)."""

    def __init__(self, name: str, moto: Any = None) -> None:
        self.name, self.proxy, self.moto = name, None, moto
        if name == "folder":
            return
        from s3_servers import FaultProxy, S3Model

        if name == "model":
            self.proxy = S3Model(moto.port)
        else:
            self.proxy = FaultProxy(moto.port, failure_rate=0.0)

    def root(self, home: Path) -> str:
        """The store of the run in ``home``: its own, so its manifests are its own."""
        if self.proxy is None:
            return (home / "flow_artifacts").as_uri()
        return f"s3://{BUCKET}/{home.name}"

    def env_for(self, home: Path) -> dict[str, str]:
        if self.proxy is None:
            return {}
        return {
            "AIRFLOW__FLOW_TASK__ARTIFACT_STORE": self.root(home),
            "AIRFLOW_CONN_AWS_DEFAULT": aws_connection(self.proxy.endpoint),
        }

    def open(self, home: Path) -> Any:
        from provider.store import open_store

        client = None if self.proxy is None else s3_client(self.moto.endpoint)
        return open_store(self.root(home), s3_client=client)

    def reset(self) -> None:
        if self.proxy is not None:
            self.proxy.reset_counts()

    def counted(self) -> tuple[Counter[str], int]:
        """The requests since the last reset, by method, and how many rounds they made: a
        round is requests that were in flight together (one after another: one round each)."""
        if self.proxy is None:
            return Counter(), 0
        with self.proxy.lock:
            spans = sorted(self.proxy.spans, key=lambda span: span[2])
            methods = Counter(self.proxy.by_method)
        rounds, until = 0, float("-inf")
        if os.environ.get("TASK_OVERHEAD_REQUESTS"):  # every request, to see where they go
            for method, path, arrived, answered in spans:
                print(f"{arrived:.3f} {answered - arrived:.3f} {method} {path}")
        for _, _, arrived, answered in spans:
            if arrived > until:
                rounds += 1
            until = max(until, answered)
        return methods, rounds


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
    parser.add_argument("--stores", default="folder,moto,model", help="folder, moto, model")
    parser.add_argument("--cold", action="store_true", help="also every runtime cold (folder)")
    parser.add_argument("--no-start", action="store_true", help="skip the interpreter starts")
    parser.add_argument("--expand", type=int, default=0, help="also .expand over N items")
    args = parser.parse_args()
    names = args.stores.split(",")
    moto = None
    if any(name != "folder" for name in names):
        from s3_servers import MotoServer

        moto = MotoServer()
        s3_client(moto.endpoint).create_bucket(Bucket=BUCKET)
    stores = {name: Store(name, moto) for name in names}
    modes = [(name, "warm") for name in names] + ([("folder", "cold")] if args.cold else [])
    plain: dict[str, list[float]] = {name: [] for name in names}
    flow: dict[tuple[str, str], list[float]] = {mode: [] for mode in modes}
    parts = {mode: {part: [] for part in PARTS} for mode in modes}
    starts: dict[tuple[str, str], list[str]] = {mode: [] for mode in modes}
    requests: dict[str, list[tuple[Counter[str], int]]] = {name: [] for name in names}
    expanded: dict[str, tuple[list[float], list[float], list[tuple[Counter[str], int]]]] = {
        name: ([], [], []) for name in names
    }
    try:
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
            expand_dags = Path(tmp) / "expand_dags"
            expand_dags.mkdir()
            (expand_dags / "bench_expand.py").write_text(
                EXPAND_DAG.replace("{items}", str(args.expand))
            )
            for number in range(args.repeat):
                for name in names if args.expand else []:
                    home = Path(tmp) / f"expand{number}-{name}"
                    home.mkdir()
                    (home / "airflow.db").write_bytes((template / "airflow.db").read_bytes())
                    p, f, methods, rounds = expand_run(home, expand_dags, stores[name])
                    expanded[name][0].extend(p)
                    expanded[name][1].extend(f)
                    expanded[name][2].append((methods, rounds))
                for mode in modes:  # interleaved: all see the same machine
                    name, start = mode
                    home = Path(tmp) / f"home{number}-{name}-{start}"
                    home.mkdir()
                    (home / "airflow.db").write_bytes((template / "airflow.db").read_bytes())
                    extra = COLD if start == "cold" else {}
                    stores[name].reset()
                    p, f, run_parts, run_starts = one_run(
                        home, dags, args.chain, stores[name], **extra
                    )
                    if start == "warm":
                        plain[name] += p
                        requests[name].append(stores[name].counted())
                    flow[mode] += f
                    starts[mode] += run_starts
                    for part in PARTS:
                        parts[mode][part] += run_parts[part]
    finally:
        for store in stores.values():
            if store.proxy is not None:
                store.proxy.stop()
        if moto is not None:
            moto.stop()
    if not args.no_start:
        bare, runtime = runtime_start(sys.executable)
        print(f"bare interpreter start:  {bare * 1000:7.1f} ms (median of 21)")
        print(
            f"runtime start (imports): {runtime * 1000:7.1f} ms (median of 21), "
            f"+{(runtime - bare) * 1000:.1f} ms"
        )
    for mode in modes:
        counted = ", ".join(f"{starts[mode].count(s)} {s}" for s in sorted(set(starts[mode])))
        print(
            f"flow task parts, {mode[0]} store, runtime {mode[1]} "
            f"(medians of {len(flow[mode])} tasks; runtimes: {counted}):"
        )
        for part in PARTS:
            print(f"  {part:9s} {statistics.median(parts[mode][part]) * 1000:7.1f} ms")
    print(f"{'store':8s} {'plain s':>8s} {'flow s':>8s} {'ratio':>6s}  requests per flow task")
    for name in names:
        p, f = statistics.median(plain[name]), statistics.median(flow[(name, "warm")])
        shown = _requests(requests[name], args.chain)
        print(f"{name:8s} {p:8.3f} {f:8.3f} {f / p:5.2f}x  {shown}")
    if args.expand:
        print(f".expand over {args.expand} items, per mapped instance (medians):")
        for name in names:
            p, f = statistics.median(expanded[name][0]), statistics.median(expanded[name][1])
            shown = _requests(expanded[name][2], args.expand)
            print(f"{name:8s} {p:8.3f} {f:8.3f} {f / p:5.2f}x  {shown}")
    if ("folder", "cold") in flow:
        cold = statistics.median(flow[("folder", "cold")])
        ratio = cold / statistics.median(plain["folder"])
        print(f"folder, runtime cold: {cold:.3f} s ({ratio:.2f}x plain)")


def _requests(counted: list[tuple[Counter[str], int]], tasks: int) -> str:
    """Requests per flow task by method, and sequential rounds per flow task (medians)."""
    if not counted:
        return "-"
    runs = len(counted)
    total: Counter[str] = Counter()
    for methods, _ in counted:
        total.update(methods)
    per = sum(total.values()) / runs / tasks
    rounds = statistics.median(r for _, r in counted) / tasks
    by = ", ".join(f"{m} {n / runs / tasks:.1f}" for m, n in sorted(total.items()))
    return f"{per:.1f} ({by}); {rounds:.1f} sequential rounds"


if __name__ == "__main__":
    main()
