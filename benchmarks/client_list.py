"""Listing a DAG's runs with ``provider.client`` against a raw ``list_objects_v2``, same run.

    .venv/bin/python benchmarks/client_list.py [--runs 1000] [--repeat 7]

moto's S3 server on 127.0.0.1 (its own process). ``--runs`` runs of one DAG are written as
workers write them: ``run.json``, the run's start in the run index (``record_run_start``), one
task try's ``result.json``, and the run's end (``record_run_end``, as the ``record_run_state``
callback does); half the runs in each of two namespaces, a third tagged.

- client: ``list(Flow(dag).runs(namespace=None))`` from a fresh ``Flow`` (namespace, tags,
  created, status of every run), after the first listing compacted the index.
- raw: ``list_objects_v2`` of the DAG's ``runs/<dag>/`` prefix with ``Delimiter="/"``, all
  pages: the run ids alone, the least any listing of the runs has to do.
- first listing (once): the reader that folds the events written since the last compaction
  (run ends fold the log once it holds 100 events); reading every ``run.json`` (once): what
  listing without the index costs.

Medians are printed; the ratio (client / raw, < 1 means the client is faster) comes last.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conftest import BUCKET, s3_client
from run_factory import make_run
from s3_servers import MotoServer

from provider.client import Flow
from provider.store import open_store

DAG = "bench_dag"


def timed(step: Callable[[], object]) -> float:
    started = time.perf_counter()
    step()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()

    server = MotoServer()
    try:
        client = s3_client(server.endpoint)
        client.create_bucket(Bucket=BUCKET)
        store = open_store(f"s3://{BUCKET}/bench", s3_client=client)

        def write(i: int) -> None:
            make_run(
                store,
                DAG,
                f"manual__{i:05d}",
                namespace=("user:alice", "team:ml")[i % 2],
                tags=["nightly"] if i % 3 == 0 else [],
                tasks={"fit": i},
                end="success" if i % 5 else "failed",
            )

        started = time.perf_counter()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(write, range(args.runs)))
        print(f"wrote {args.runs} runs in {time.perf_counter() - started:.1f} s")

        def client_list() -> None:
            runs = list(Flow(DAG, store).runs(namespace=None))
            assert len(runs) == args.runs and runs[0].status in ("success", "failed")

        def raw_list() -> None:
            pages = client.get_paginator("list_objects_v2").paginate(
                Bucket=BUCKET, Prefix=f"bench/runs/{DAG}/", Delimiter="/"
            )
            assert sum(len(page.get("CommonPrefixes", ())) for page in pages) == args.runs

        def every_run_json() -> None:
            keys = [f"runs/{DAG}/{part}/run.json" for part in store.backend.children(f"runs/{DAG}")]
            with ThreadPoolExecutor(16) as pool:
                assert len(list(pool.map(store.read_manifest, keys))) == args.runs

        first = timed(client_list)
        naive = timed(every_run_json)
        samples: dict[str, list[float]] = {"client": [], "raw": []}
        for _ in range(args.repeat):
            samples["client"].append(timed(client_list))
            samples["raw"].append(timed(raw_list))
        client_s, raw_s = (statistics.median(samples[k]) for k in ("client", "raw"))
        print(f"first listing (folds what the run ends left):  {first:.3f} s")
        print(f"reading every run.json (16 threads):           {naive:.3f} s")
        print(f"client: list {args.runs} runs, median:           {client_s:.3f} s")
        print(f"raw list_objects_v2 of runs/{DAG}/, median: {raw_s:.3f} s")
        print(f"ratio client / raw: {client_s / raw_s:.2f}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
