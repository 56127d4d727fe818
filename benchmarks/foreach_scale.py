"""`.foreach` at cluster scale and joins over mapped results, on S3 with and without the S3
model, each figure beside its anchor measured in the same run (medians).

    .venv/bin/python benchmarks/foreach_scale.py [--items 10000] [--chunks 1000] [--repeat 3]
        [--joined 1000] [--cluster] [--pool]

The S3 model (tests/s3_servers.py ``S3Model``): a proxy in front of moto's server on loopback
where every request waits 20 ms for its first byte and each connection moves 90 MiB/s, as S3
does in-region. Without it, moto answers in about a millisecond: designs that make a request
per chunk look free there and cost seconds on S3. Every figure is printed both ways.

The store's steps, as the worker and the pods run them (the code's own functions):

- plan: the items stored a slice per chunk (``store_items``), anchor: the items as one pickle
  (``store.put``, what the plan stored before).
- a pod's items: its chunk's slice (``store.get_slice``, one ranged GET) against the whole list
  (``store.get``, what every pod loaded before), with the bytes 1,000 pods read either way.
- gather: ``gather`` of 1,000 chunks (one listing of the plan's prefix: each chunk's marker
  says what its manifest says; the result's chunk list, the try's manifest) against the
  listing and each chunk manifest read one after another (what it did before).
- progress: the requests ``ChunkProgress`` sends over a Job's 60 polls while its chunks complete
  (one listing of the markers when a line is due).
- join: a task taking 1,000 mapped results (``resolve_references``, 32 in flight) against
  loading them one after another (what the runtime did before).

``--cluster``: the whole `.foreach` through ``airflow dags test`` as one Indexed Job of the test
cluster (tests/k8s_cluster.py: each pod a real process running the runtime), its store behind
the S3 model for the worker and the pods; ``--pool``: through the local pool. The worker's own
time is what its log says: plan (items stored), the Job created, the watch's own reading (not
its waiting), gather. One run each (the pods take minutes on a 2-core machine).
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conftest import BUCKET, s3_client
from s3_servers import MotoServer, S3Model

from provider.core.foreach import ChunkProgress, gather, store_items
from provider.runtime import Payload
from provider.runtime.foreach import ChunkRunner, ForeachPlan
from provider.runtime.run import resolve_references
from provider.store import ArtifactStore, manifest_key, open_store

KEY = manifest_key("bench", "r", "t", -1, 1)


def median(step: Callable[[], Any], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        step()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def square(item: int) -> int:
    return item * item


class _Log:
    def info(self, *args: Any) -> None:
        pass

    warning = info


def prepare(store: ArtifactStore, items: int, chunks: int) -> ForeachPlan:
    """A plan whose every chunk ran (its pods' work, done here in threads, untimed)."""
    chunk_size = -(-items // chunks)
    stored, slices = store_items(store, list(range(items)), chunk_size)
    plan = ForeachPlan(
        "item", stored, items, chunk_size, "runs/bench/r/t/-1/foreach/p", item_slices=slices
    )
    payload = Payload(square, identity={"try_number": 1}, foreach=plan)

    def run(chunk: int) -> None:
        ChunkRunner(store, payload, try_number=1).run(chunk)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(run, range(plan.chunks)))
    return plan


def store_steps(store: ArtifactStore, plan: ForeachPlan, repeat: int, joined: int) -> dict:
    """The medians of each step and its anchor, on ``store``."""
    items = list(range(plan.length))
    n = [0]

    def fresh() -> list[int]:  # new content each time: nothing deduplicated by accident
        n[0] += 1
        return [*items[:-1], -n[0]]

    out: dict[str, float] = {}
    out["plan"] = median(lambda: store_items(store, fresh(), plan.chunk_size), repeat)
    out["plan_anchor"] = median(lambda: store.put(fresh()), repeat)
    whole = store.put(items)
    assert plan.item_slices is not None
    slices = plan.item_slices
    out["pod_items"] = median(lambda: store.get_slice(plan.items, slices[7]), repeat * 5)
    out["pod_items_anchor"] = median(lambda: store.get(whole), repeat * 5)
    out["pod_bytes"] = sum(s[1] for s in slices) / len(slices)
    out["pod_bytes_anchor"] = whole.size
    identity = {"dag_id": "bench", "run_id": "r", "task_id": "t", "map_index": -1}
    result = gather(store, plan, KEY, identity, catching=False, started=time.time())
    assert result["status"] == "succeeded"

    def gather_once() -> None:
        gather(store, plan, KEY, identity, catching=False, started=time.time())

    def gather_before() -> None:  # the listing, then each manifest read in turn
        for key in store.list_manifests(plan.prefix):
            store.read_manifest(key)

    out["gather"] = median(gather_once, repeat)
    out["gather_anchor"] = median(gather_before, repeat)
    refs = [store.put([i, "result"]).to_json() for i in range(joined)]
    out["join"] = median(lambda: resolve_references({"results": refs}, store), repeat)
    out["join_anchor"] = median(lambda: [store.get(ref) for ref in refs], repeat)
    return out


def progress_requests(store: ArtifactStore, plan: ForeachPlan, counted: S3Model) -> tuple:
    """Requests ChunkProgress sends over 60 polls while every chunk completes (a line every
    10 polls), against one request per completed chunk per poll."""
    run = SimpleNamespace(store=store, foreach=plan, log=_Log())
    chunks = list(range(plan.chunks))
    progress = ChunkProgress(run, chunks, every=0.0)
    before = counted.requests
    polls = 60
    for poll in range(polls):
        done = chunks[: (poll + 1) * len(chunks) // polls]
        state = SimpleNamespace(
            completed=range(len(done)),
            finished=poll == polls - 1,
            name="job",
            active=0,
            ready=0,
            succeeded=len(done),
            failed=0,
        )
        progress.logged = time.monotonic() - (1 if poll % 10 == 9 else 0)
        progress.every = 0.5
        progress.see(state)
    per_poll_before = sum((poll + 1) * len(chunks) // polls for poll in range(polls))
    return counted.requests - before, polls, per_poll_before


def cluster_run(moto: MotoServer, model: S3Model, items: int, chunks: int, pool: bool) -> dict:
    """One ``airflow dags test`` of the `.foreach`: the worker's phases from its log."""
    from conftest import AIRFLOW, airflow_env, aws_connection

    dag = f"""
from airflow.sdk import dag
from provider import ForeachOptions, flow_task

@dag(schedule=None)
def bench_scale():
    @flow_task(foreach=ForeachOptions(chunk_size={-(-items // chunks)}, max_parallel=50))
    def work(item: int) -> int:
        return item * 2

    @flow_task
    def total(values: list) -> int:
        return sum(values)

    total(work.foreach(item=list(range({items}))))

bench_scale()
"""
    with tempfile.TemporaryDirectory() as tmp:
        dags = Path(tmp) / "dags"
        dags.mkdir()
        (dags / "bench_scale.py").write_text(dag)
        home = Path(tmp) / "home"
        home.mkdir()
        env = {
            "AIRFLOW__FLOW_TASK__ARTIFACT_STORE": f"s3://{BUCKET}/bench-{time.time_ns()}",
            "AIRFLOW_CONN_AWS_DEFAULT": aws_connection(model.endpoint),
        }
        context: Any = None
        if not pool:
            from k8s_cluster import LocalCluster
            from kubernetes.client import models as k8s

            context = LocalCluster(Path(tmp) / "cluster")
            cluster = context.__enter__()
            secret = k8s.V1Secret(
                metadata=k8s.V1ObjectMeta(name="flow-aws"),
                string_data={"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "x"},
            )
            cluster.core_v1().create_namespaced_secret("default", secret)
            env |= {
                "AIRFLOW__FLOW_TASK__DEFAULT_COMPUTE": "kubernetes",
                "AIRFLOW__FLOW_TASK__KUBERNETES_SECRETS": "flow-aws",
                "AIRFLOW_CONN_KUBERNETES_DEFAULT": cluster.airflow_connection_json(),
            }
        try:
            subprocess.run(
                [AIRFLOW, "db", "migrate"],
                env=airflow_env(home, dags, **env),
                check=True,
                capture_output=True,
            )
            started = time.perf_counter()
            proc = subprocess.run(
                [AIRFLOW, "dags", "test", "bench_scale"],
                env=airflow_env(home, dags, **env),
                capture_output=True,
                text=True,
                timeout=3600,
            )
            wall = time.perf_counter() - started
        finally:
            if context is not None:
                context.__exit__(None, None, None)
    out = proc.stdout + proc.stderr
    expected = f"Returned int: {sum(range(items)) * 2} "
    assert proc.returncode == 0 and expected in out, out[-5000:]

    def seconds(pattern: str) -> float:
        found = re.findall(pattern, out)
        assert found, (pattern, out[-5000:])
        return float(found[0])

    phases = {
        "plan": seconds(r"foreach: \d+ items stored a slice per chunk of \d+ \(([0-9.]+)s\)"),
        "gather": seconds(r"foreach: \d+ chunks gathered \(([0-9.]+)s\)"),
        "wall": wall,
    }
    if not pool:
        phases["submit"] = seconds(r"job \S+: \d+ pods, .*, created in ([0-9.]+)s")
        phases["watch"] = seconds(r"job \S+: watched for ([0-9.]+)s")
        phases["watch_busy"] = seconds(r"job \S+: watched for [0-9.]+s, ([0-9.]+)s of it reading")
        phases["watch_cpu"] = seconds(r"of it reading its state and progress \(([0-9.]+)s of this")
    return phases


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--chunks", type=int, default=1000)
    parser.add_argument("--joined", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cluster", action="store_true", help="also through the test cluster")
    parser.add_argument("--pool", action="store_true", help="also through the local pool")
    parser.add_argument("--no-store", action="store_true", help="skip the store's steps")
    parser.add_argument("--model-only", action="store_true", help="runs on the S3 model only")
    args = parser.parse_args()
    moto = MotoServer()
    model = S3Model(moto.port)
    try:
        s3_client(moto.endpoint).create_bucket(Bucket=BUCKET)
        raw = open_store(f"s3://{BUCKET}/bench", s3_client=s3_client(moto.endpoint))
        modelled = open_store(f"s3://{BUCKET}/bench", s3_client=s3_client(model.endpoint))
        if not args.no_store:
            plan = prepare(raw, args.items, args.chunks)
            figures = {
                "moto": store_steps(raw, plan, args.repeat, args.joined),
                "S3 model": store_steps(modelled, plan, args.repeat, args.joined),
            }
            sent, polls, before = progress_requests(modelled, plan, model)
            report(args, plan, figures, sent, polls, before)
        for pool in [p for p, wanted in ((False, args.cluster), (True, args.pool)) if wanted]:
            where = "the local pool" if pool else "one Indexed Job on the test cluster"
            print(f"\n{args.items} items in {args.chunks} chunks through {where}, one run each:")
            wheres = (("S3 model", model), ("moto", None))
            for name, endpoint in wheres[:1] if args.model_only else wheres:
                proxy = endpoint or SimpleNamespace(endpoint=moto.endpoint)
                phases = cluster_run(moto, proxy, args.items, args.chunks, pool)
                own = phases["plan"] + phases["gather"] + phases.get("submit", 0)
                busy = own + phases.get("watch_cpu", 0)
                own += phases.get("watch_busy", 0)
                print(
                    f"  {name:8}: worker's own {own:6.2f} s ({busy:.2f} s counting the watch's "
                    f"CPU, not its waiting) (plan {phases['plan']:.2f}, "
                    + (
                        f"submit {phases['submit']:.2f}, watch's reading "
                        f"{phases['watch_busy']:.2f} ({phases['watch_cpu']:.2f} of it the "
                        f"worker's CPU) of {phases['watch']:.1f} s watched, "
                        if not pool
                        else ""
                    )
                    + f"gather {phases['gather']:.2f}); `airflow dags test` {phases['wall']:.1f} s",
                    flush=True,
                )
    finally:
        model.stop()
        moto.stop()


def report(args: Any, plan: ForeachPlan, figures: dict, sent: int, polls: int, before: int) -> None:
    print(
        f"{plan.length} items in {plan.chunks} chunks, {args.joined} joined results; "
        f"medians of {args.repeat} (a pod's items: of {args.repeat * 5})"
    )
    rows = [
        ("plan: items stored", "plan", "as one pickle (before)"),
        ("a pod's items", "pod_items", "the whole list (before)"),
        (f"gather {plan.chunks} chunks", "gather", "reads one after another (before)"),
        (f"join over {args.joined} results", "join", "loaded one after another (before)"),
    ]
    for label, key, anchor in rows:
        for name, f in figures.items():
            ratio = f[f"{key}_anchor"] / f[key]
            print(
                f"  {label:28} {name:8}: {f[key]:7.3f} s; {anchor}: {f[f'{key}_anchor']:7.3f} s"
                f" ({ratio:.1f}x)"
            )
    f = figures["moto"]
    print(
        f"  bytes a pod reads: {f['pod_bytes']:.0f} (its slice); the whole list "
        f"{f['pod_bytes_anchor']} ({plan.chunks} pods: {plan.chunks * f['pod_bytes'] / 2**20:.2f}"
        f" MiB against {plan.chunks * f['pod_bytes_anchor'] / 2**20:.1f} MiB)"
    )
    print(
        f"  progress over {polls} polls, a line every 10: {sent} requests (a listing of the "
        f"markers a line); a read per completed chunk per poll would be {before}"
    )


if __name__ == "__main__":
    main()
