"""Throughput of content hashes and compressors on typical task results, against SHA-256.

    .venv/bin/python benchmarks/hash_and_compress.py [--mib 256] [--repeat 5]

Informs two store decisions: which hash addresses blobs (SHA-256 runs twice per round trip:
the address on put, the verification on get), and whether and how to compress. Data: random
float64 (incompressible), an arange-like float64 column set, and a pandas DataFrame with
repeated strings and small ints. Medians; ratios against SHA-256 come last.
"""

from __future__ import annotations

import argparse
import hashlib
import pickle
import statistics
import time
from collections.abc import Callable

import blake3
import lz4.frame
import numpy as np
import pandas as pd
import zstandard


def median_seconds(step: Callable[[], object], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        step()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def datasets(mib: int) -> dict[str, bytes | memoryview]:
    n = mib * 2**20 // 8
    rng = np.random.default_rng(0)
    rows = n // 4
    frame = pd.DataFrame(
        {
            "city": rng.choice(["Oslo", "Lima", "Pune", "Kyiv"], rows),
            "count": rng.integers(0, 100, rows),
            "price": np.round(rng.random(rows) * 100, 2),
        }
    )
    return {
        "random float64": memoryview(rng.standard_normal(n)).cast("B"),
        "arange float64": memoryview(np.arange(n, dtype="float64")).cast("B"),
        "DataFrame (pickled)": pickle.dumps(frame, protocol=5),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    data = datasets(args.mib)
    sample = data["random float64"]
    mib = sample.nbytes / 2**20
    hashes = {
        "sha256 (anchor)": lambda: hashlib.sha256(sample).digest(),
        "blake3, 1 thread": lambda: blake3.blake3(sample).digest(),
        "blake3, all cores": lambda: blake3.blake3(sample, max_threads=blake3.blake3.AUTO).digest(),
    }
    seconds = {name: median_seconds(step, args.repeat) for name, step in hashes.items()}
    for name, s in seconds.items():
        print(f"hash  {name:22s} {mib / s:8.0f} MiB/s")
    compressors: dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]] = {
        "zstd level 1": (
            zstandard.ZstdCompressor(level=1, threads=-1).compress,
            zstandard.ZstdDecompressor().decompress,
        ),
        "zstd level 3": (
            zstandard.ZstdCompressor(level=3, threads=-1).compress,
            zstandard.ZstdDecompressor().decompress,
        ),
        "lz4 frame": (lz4.frame.compress, lz4.frame.decompress),
    }
    for label, payload in data.items():
        size = len(payload) / 2**20
        for name, (compress, decompress) in compressors.items():
            packed = compress(payload)
            c = median_seconds(
                lambda compress=compress, payload=payload: compress(payload), args.repeat
            )
            d = median_seconds(
                lambda decompress=decompress, packed=packed: decompress(packed), args.repeat
            )
            print(
                f"{label:20s} {name:13s} ratio {len(packed) / len(payload):5.2f}  "
                f"compress {size / c:7.0f} MiB/s  decompress {size / d:7.0f} MiB/s"
            )
    anchor = seconds["sha256 (anchor)"]
    for name in ("blake3, 1 thread", "blake3, all cores"):
        print(f"ratio {name} / sha256 throughput: {anchor / seconds[name]:.2f}")


if __name__ == "__main__":
    main()
