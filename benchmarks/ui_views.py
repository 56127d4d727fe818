"""How fast the Flow tabs open on a big run: 1,000 mapped flow tasks and a 10,000-item .foreach.

    .venv/bin/python benchmarks/ui_views.py [--store file|moto|model|all] [--repeat 5]

One run is written as workers and runtimes write it (``tests/run_factory.py``): 1,000 mapped
instances of ``fit`` (each a launch manifest, a result manifest with usage, a result and its
views), and a ``.foreach`` of 10,000 items in 1,000 chunks of 10 (the chunk size a cluster gets
by default), each chunk manifest naming its items' previews, gathered into the try's result
manifest by the worker's own ``gather``. Each tab's page is built as the API server builds it
(``provider.ui.data`` read through the client, then the template) on three stores: a
``file://`` folder, moto's S3 server on 127.0.0.1, and moto behind ``S3Model`` (20 ms to the
first byte, 90 MiB/s a connection: "the S3 model").

The run has ended as ``record_run_state`` records an end, which also writes the run's rollup
(``provider.store.rollup``: its try manifests in one object, on S3). Each tab is timed cold
(the API server's cache emptied first: a run nobody opened since the server started) and warm
(opened again), medians of ``--repeat``. The run tab also while running (the rollup as the end
of a fan-out's try refreshed it, 50 tries behind) and with no rollup at all. The store requests one
opening makes are counted (HTTP requests by method for S3, LIST for listing pages; backend
calls for a folder). The anchor is one listing of the run's prefix, the least any view of the
run must read.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from run_factory import make_run

from provider.core.foreach import gather, store_items
from provider.runtime.foreach import ForeachPlan
from provider.runtime.views import item_previews, record
from provider.store import ArtifactStore, manifest_key, open_store, rollup
from provider.store.keys import launch_manifest_key, run_prefix
from provider.ui import app, data

DAG, RUN = "bench_ui", "manual__2026-01-01T00:00:00+00:00"
MAPPED, ITEMS, CHUNK = 1000, 10_000, 10
ANCHOR = "list the run's prefix (anchor)"
RUN_TAB = "run tab, ended (rollup at its end)"
RUNNING = "run tab, running (rollup 50 tries behind)"
NO_ROLLUP = "run tab, no rollup at all"
LATE = 50  # tries that ended since a running run's rollup was last refreshed


def build(store: ArtifactStore) -> None:
    """The run, written with 16 writers (as many workers and runtimes would)."""
    identity = make_run(store, DAG, RUN, tags=["big"])
    views = record(store, list(range(50)))
    result = {**store.put(7).to_json(), "preview": "int: 7"}
    usage = {"peak_rss_mib": 300.0, "cpu_seconds": 2.0, "wall_seconds": 3.0}
    requested = {"cpu": 1.0, "memory_mib": 4096, "gpu": 0}

    def fit(index: int) -> None:
        ident = {**identity, "task_id": "fit", "map_index": index, "try_number": 1}
        key = manifest_key(DAG, RUN, "fit", index, 1)
        launch = {**ident, "compute": "kubernetes", "launched_at": 1.0, "requested": requested}
        store.write_manifest(launch_manifest_key(key), launch, durable=False)
        manifest = {
            **ident,
            "status": "succeeded",
            "result": result,
            "views": views,
            "where": {"platform": "kubernetes", "pod": f"fit-{index}", "namespace": "flows"},
            "usage": usage,
            "requested": requested,
            "seconds": 3.0,
            "pid": 1,
        }
        store.write_manifest(key, manifest)

    key = manifest_key(DAG, RUN, "score", -1, 1)
    items, length, _ = store_items(store, list(range(ITEMS)))
    plan = ForeachPlan(
        argument="x",
        items=items,
        length=length,
        chunk_size=CHUNK,
        prefix=key.rsplit("/", 2)[0] + "/foreach/0123456789abcdef",
    )

    def chunk(number: int) -> None:
        start, stop = plan.bounds(number)
        values = list(range(start, stop))
        manifest = {  # as provider.runtime.foreach writes a chunk's last manifest
            "chunk": number,
            "start": start,
            "stop": stop,
            "status": "succeeded",
            "failed": [],
            "result": store.put(values).to_json(),
            "item_previews": item_previews(store, values),
            "seconds": [0.01] * (stop - start),
            "ran": stop - start,
            "started_at": 1.0,
            "finished_at": 1.5,
            "usage": usage,
            "peak_rss_mib": 300.0,
            "try_number": 1,
            "host": "bench",
            "pid": 1,
        }
        store.write_manifest(plan.chunk_key(number), manifest)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(fit, range(MAPPED)))
        list(pool.map(chunk, range(plan.chunks)))
    ident = {**identity, "task_id": "score", "map_index": -1, "try_number": 1}
    launch = {**ident, "compute": "kubernetes", "requested": requested, "foreach_items": items}
    store.write_manifest(launch_manifest_key(key), launch, durable=False)
    gather(store, plan, key, ident, catching=False, started=1.0)
    rollup.build(store, run_prefix(DAG, RUN))  # as record_run_state does at the run's end


def run_tab(store: ArtifactStore) -> Any:
    return app._render("run.html", view=data.run_view(store, DAG, RUN), can_edit=True)


def prepare(store: ArtifactStore, what: str, repetition: int) -> None:
    """Before each cold opening (neither timed nor counted): the rollup as the case has it."""
    prefix = run_prefix(DAG, RUN)
    if what == NO_ROLLUP:  # none written (the opening writes one, which the next one uses)
        store.backend.delete(rollup.rollup_key(prefix))
    elif what == RUNNING:  # refreshed by a try's end, then LATE more tries ended
        rollup.build(store, prefix)
        for index in range(MAPPED - LATE, MAPPED):
            key = manifest_key(DAG, RUN, "fit", index, 1)
            manifest = store.read_manifest(key)
            store.write_manifest(key, {**manifest, "seconds": 3.0 + repetition / 1000})


def tabs(store: ArtifactStore) -> dict[str, Callable[[], Any]]:
    return {
        ANCHOR: lambda: list(store.backend.list(run_prefix(DAG, RUN))),
        "DAG tab": lambda: app._render("dag.html", view=data.dag_view(store, DAG, None, ["big"])),
        RUN_TAB: lambda: run_tab(store),
        RUNNING: lambda: run_tab(store),
        NO_ROLLUP: lambda: run_tab(store),
        "task tab (fit[500])": lambda: app._render(
            "task.html", view=data.task_view(store, DAG, RUN, "fit", 500)
        ),
        "foreach tab (10,000 items, from 5,000)": lambda: app._render(
            "task.html", view=data.task_view(store, DAG, RUN, "score", -1, 5000)
        ),
    }


def clear_cache() -> None:
    """Empty the API server's cache (none before it had one)."""
    getattr(data, "clear_cache", lambda: None)()


def measure(
    store: ArtifactStore, counted: Counter[str], repeat: int
) -> dict[str, tuple[float, float, Counter[str], Counter[str]]]:
    """Per tab: median seconds cold and warm, and the requests of one cold and one warm
    opening."""
    results = {}
    for what, step in tabs(store).items():
        cold, warm = [], []
        cold_requests: Counter[str] = Counter()
        warm_requests: Counter[str] = Counter()
        for repetition in range(repeat):
            prepare(store, what, repetition)
            clear_cache()
            counted.clear()
            started = time.perf_counter()
            step()
            cold.append(time.perf_counter() - started)
            cold_requests = Counter(counted)
            counted.clear()
            started = time.perf_counter()
            step()
            warm.append(time.perf_counter() - started)
            warm_requests = Counter(counted)
        results[what] = (
            statistics.median(cold),
            statistics.median(warm),
            cold_requests,
            warm_requests,
        )
    return results


def _requests(counts: Counter[str]) -> str:
    return (
        f"{sum(counts.values()):5d} ("
        + ", ".join(f"{n} {m}" for m, n in sorted(counts.items()))
        + ")"
    )


def report(name: str, results: dict[str, tuple[float, float, Counter[str], Counter[str]]]) -> None:
    anchor = results[ANCHOR][0]
    print(f"{name}:  (seconds: median cold / warm; x: cold against the anchor; requests)")
    for what, (cold, warm, cold_requests, warm_requests) in results.items():
        print(
            f"  {what:42s} {cold:6.3f} / {warm:6.3f} s  ({cold / anchor:5.1f}x)"
            f"  cold {_requests(cold_requests)}  warm {_requests(warm_requests)}"
        )


class CountingBackend:
    """A folder backend that counts the calls made to it, by method."""

    def __init__(self, inner: Any, counted: Counter[str]) -> None:
        self._inner, self._counted = inner, counted

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._inner, name)
        if not callable(found):
            return found

        def call(*args: Any, **kwargs: Any) -> Any:
            self._counted[name] += 1
            return found(*args, **kwargs)

        return call


def count_requests(client: Any, counted: Counter[str]) -> None:
    """Count the HTTP requests ``client`` sends, by method (a listing page as LIST)."""

    def before_send(request: Any, **kwargs: Any) -> None:
        listing = request.method == "GET" and "list-type=2" in request.url
        counted["LIST" if listing else request.method] += 1

    client.meta.events.register("before-send.s3", before_send)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", choices=("file", "moto", "model", "all"), default="all")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    counted: Counter[str] = Counter()
    if args.store in ("file", "all"):
        with TemporaryDirectory() as folder:
            store = open_store(Path(folder).as_uri())
            build(store)
            store.backend = CountingBackend(store.backend, counted)
            report("file://", measure(store, counted, args.repeat))
    if args.store == "file":
        return
    from conftest import BUCKET, s3_client
    from s3_servers import MotoServer, S3Model

    server = MotoServer()
    model = S3Model(server.port)
    try:
        client = s3_client(server.endpoint)
        client.create_bucket(Bucket=BUCKET)
        build(open_store(f"s3://{BUCKET}/bench", s3_client=client))
        for name, endpoint in (("moto", server.endpoint), ("model", model.endpoint)):
            if args.store not in (name, "all"):
                continue
            client = s3_client(endpoint)
            count_requests(client, counted)
            store = open_store(f"s3://{BUCKET}/bench", s3_client=client)
            before = model.requests
            title = {
                "moto": "s3: moto on 127.0.0.1",
                "model": "s3: moto behind the S3 model (20 ms to first byte, 90 MiB/s)",
            }[name]
            report(title, measure(store, counted, args.repeat))
            if name == "model":
                print(f"  (the model counted {model.requests - before} requests in all)")
    finally:
        model.stop()
        server.stop()


if __name__ == "__main__":
    main()
