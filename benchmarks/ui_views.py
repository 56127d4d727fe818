"""How fast the Flow tabs open on a big run: 1,000 mapped flow tasks and a 10,000-item .foreach.

    .venv/bin/python benchmarks/ui_views.py [--store file|s3|both] [--repeat 5]

One run is written as workers and runtimes write it (``tests/run_factory.py``): 1,000 mapped
instances of ``fit`` (each a result manifest with usage, a result and its views), and a
``.foreach`` of 10,000 items in 1,000 chunks of 10 (the chunk size a cluster gets by default),
each chunk manifest naming its items' previews. Each tab's page is built as the API server
builds it (``provider.ui.data`` read through the client, then the template), on a ``file://``
store and on moto's S3 server on 127.0.0.1. Medians are printed; the anchor is one
``list_manifests`` of the run's prefix, the least any view of the run must read.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from run_factory import make_run

from provider.runtime.views import item_previews, record
from provider.store import ArtifactStore, manifest_key, open_store
from provider.store.keys import run_prefix, try_prefix
from provider.ui import app, data

DAG, RUN = "bench_ui", "manual__2026-01-01T00:00:00+00:00"
MAPPED, ITEMS, CHUNK = 1000, 10_000, 10


def build(store: ArtifactStore) -> None:
    identity = make_run(store, DAG, RUN, tags=["big"])
    views = record(store, list(range(50)))
    result = {**store.put(7).to_json(), "preview": "int: 7"}
    usage = {"peak_rss_mib": 300.0, "cpu_seconds": 2.0, "wall_seconds": 3.0}
    requested = {"cpu": 1.0, "memory_mib": 4096, "gpu": 0}
    for index in range(MAPPED):
        ident = {**identity, "task_id": "fit", "map_index": index, "try_number": 1}
        manifest = {
            **ident,
            "status": "succeeded",
            "result": result,
            "views": views,
            "usage": usage,
            "requested": requested,
            "seconds": 3.0,
            "pid": 1,
        }
        store.write_manifest(manifest_key(DAG, RUN, "fit", index, 1), manifest)
    prefix = try_prefix(DAG, RUN, "score", -1, 1).rsplit("/", 1)[0] + "/foreach/plan0"
    chunks = ITEMS // CHUNK
    for chunk in range(chunks):
        start = chunk * CHUNK
        values = [start + i for i in range(CHUNK)]
        store.write_manifest(
            f"{prefix}/{chunk:06d}.json",
            {
                "chunk": chunk,
                "start": start,
                "stop": start + CHUNK,
                "status": "succeeded",
                "failed": [],
                "result": store.put(values).to_json(),
                "item_previews": item_previews(store, values),
                "seconds": [0.01] * CHUNK,
                "started_at": 1.0,
                "finished_at": 1.5,
                "usage": usage,
                "try_number": 1,
            },
        )
    ident = {**identity, "task_id": "score", "map_index": -1, "try_number": 1}
    store.write_manifest(
        manifest_key(DAG, RUN, "score", -1, 1),
        {
            **ident,
            "status": "succeeded",
            "usage": usage,
            "seconds": 9.0,
            "result": {**store.put([0]).to_json(), "preview": "list of 10000"},
            "foreach": {
                "items": ITEMS,
                "chunks": chunks,
                "chunk_size": CHUNK,
                "prefix": prefix,
                "failed": 0,
                "failed_items": [],
            },
        },
    )


def median(step: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(store: ArtifactStore, repeat: int) -> dict[str, float]:
    return {
        "list the run's prefix (anchor)": median(
            lambda: list(store.backend.list(run_prefix(DAG, RUN))), repeat
        ),
        "run tab (1,000 mapped + .foreach)": median(
            lambda: app._render("run.html", view=data.run_view(store, DAG, RUN), can_edit=True),
            repeat,
        ),
        "task tab (fit[500])": median(
            lambda: app._render("task.html", view=data.task_view(store, DAG, RUN, "fit", 500)),
            repeat,
        ),
        "task tab (.foreach of 10,000, items 5,000-)": median(
            lambda: app._render(
                "task.html", view=data.task_view(store, DAG, RUN, "score", -1, 5000)
            ),
            repeat,
        ),
        "DAG tab": median(
            lambda: app._render("dag.html", view=data.dag_view(store, DAG, None, ["big"])),
            repeat,
        ),
    }


def report(name: str, results: dict[str, float]) -> None:
    anchor = results["list the run's prefix (anchor)"]
    print(f"{name}:")
    for what, seconds in results.items():
        print(f"  {what:46s} {seconds:7.3f} s  ({seconds / anchor:5.1f}x the anchor)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", choices=("file", "s3", "both"), default="both")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if args.store in ("file", "both"):
        with TemporaryDirectory() as folder:
            store = open_store(Path(folder).as_uri())
            build(store)
            report("file://", measure(store, args.repeat))
    if args.store in ("s3", "both"):
        from conftest import BUCKET, s3_client
        from s3_servers import MotoServer

        server = MotoServer()
        try:
            client = s3_client(server.endpoint)
            client.create_bucket(Bucket=BUCKET)
            store = open_store(f"s3://{BUCKET}/bench", s3_client=client)
            build(store)
            report("s3 (moto on 127.0.0.1)", measure(store, args.repeat))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
