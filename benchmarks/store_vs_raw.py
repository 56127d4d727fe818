"""Throughput of the artifact store against the plain tools it is built on, in the same run.

    .venv/bin/python benchmarks/store_vs_raw.py [--mib 256] [--repeat 5]

- S3 (moto's server on 127.0.0.1, in its own process): ``store.put`` + ``store.get`` of a NumPy
  array vs boto3 ``upload_fileobj`` + ``download_fileobj`` of the same bytes (default config).
- file://: ``store.put`` + ``store.get`` vs ``pickle.dump`` + ``pickle.load`` to a local file.
  Both write a new file per value, as storing a new artifact does (overwriting one path again
  and again is cheaper in the page cache, and is not what a store does). The two alternate, each
  after an untimed ``os.sync()``, so neither pays for the other's page-cache writeback. The
  store also fsyncs each blob before renaming it into place (durability); plain pickle does not.
- A second put of identical content vs the first put.

Each put stores new content (one element changes), so nothing is deduplicated by accident.
Medians are printed; the ratio lines come last (> 1 means the store is faster).
"""

from __future__ import annotations

import argparse
import io
import os
import pickle
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conftest import BUCKET, s3_client
from s3_servers import MotoServer

from provider.store import open_store


def median_seconds(step: Callable[[int], None], repeat: int) -> float:
    samples = []
    for i in range(repeat):
        started = time.perf_counter()
        step(i)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def interleaved_medians(steps: tuple[Callable[[int], None], ...], repeat: int) -> tuple[float, ...]:
    """Run the steps in turn, each after an untimed os.sync(); median seconds of each."""
    samples: list[list[float]] = [[] for _ in steps]
    for i in range(repeat):
        for step, out in zip(steps, samples, strict=True):
            os.sync()
            started = time.perf_counter()
            step(i)
            out.append(time.perf_counter() - started)
    return tuple(statistics.median(s) for s in samples)


def fresh(array: np.ndarray, i: int) -> np.ndarray:
    array[0] = float(i) + 0.5
    return array


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    array = np.random.default_rng(0).standard_normal(args.mib * 1024 * 1024 // 8)
    mib = array.nbytes / 2**20

    server = MotoServer()
    try:
        client = s3_client(server.endpoint)
        client.create_bucket(Bucket=BUCKET)
        store = open_store(f"s3://{BUCKET}/bench", s3_client=client)

        def raw_s3(i: int) -> None:
            data = memoryview(fresh(array, i)).cast("B")
            client.upload_fileobj(io.BytesIO(data), BUCKET, f"raw/{i}")
            out = io.BytesIO()
            client.download_fileobj(BUCKET, f"raw/{i}", out)
            assert out.getbuffer().nbytes == array.nbytes

        def store_s3(i: int) -> None:
            ref = store.put(fresh(array, i))
            assert store.get(ref)[0] == array[0]

        s3_raw = median_seconds(raw_s3, args.repeat)
        s3_ours = median_seconds(store_s3, args.repeat)
        first_put = median_seconds(lambda i: store.put(fresh(array, 100 + i)), args.repeat)
        same = fresh(array, 999)
        store.put(same)
        second_put = median_seconds(lambda i: store.put(same), args.repeat)
    finally:
        server.stop()

    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parent) as tmp:
        local = open_store(Path(tmp, "store").as_uri())

        def raw_file(i: int) -> None:
            target = Path(tmp, f"value-{i}.pkl")
            with open(target, "wb") as out:
                pickle.dump(fresh(array, i), out, protocol=5)
            with open(target, "rb") as src:
                assert pickle.load(src)[0] == array[0]

        def store_file(i: int) -> None:
            ref = local.put(fresh(array, i))
            assert local.get(ref)[0] == array[0]

        file_raw, file_ours = interleaved_medians((raw_file, store_file), args.repeat)

    def rate(seconds: float) -> str:
        return f"{seconds:7.3f} s  {2 * mib / seconds:8.1f} MiB/s (put+get)"

    print(f"value: {mib:.0f} MiB float64 array; medians of {args.repeat}")
    print(f"S3    boto3 upload_fileobj+download_fileobj  {rate(s3_raw)}")
    print(f"S3    store.put+store.get                    {rate(s3_ours)}")
    print(f"file  pickle.dump+pickle.load                {rate(file_raw)}")
    print(f"file  store.put+store.get                    {rate(file_ours)}")
    print(f"S3    first put {first_put:.3f} s, second put of identical content {second_put:.3f} s")
    print(f"ratio second put / first put (S3): {second_put / first_put:.3f}")
    print(f"ratio store / raw boto3 throughput (S3): {s3_raw / s3_ours:.2f}")
    print(f"ratio store / pickle-to-file throughput (file): {file_raw / file_ours:.2f}")


if __name__ == "__main__":
    main()
