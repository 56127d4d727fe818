"""Throughput of the artifact store against the plain tools it is built on, in the same run.

    .venv/bin/python benchmarks/store_vs_raw.py [--mib 256] [--repeat 5] [--single-repeat 15]
        [--only s3|single-get|file]

- S3 (moto's server on 127.0.0.1, in its own process): ``store.put`` + ``store.get`` of a NumPy
  array vs boto3 ``upload_fileobj`` + ``download_fileobj`` of the same bytes (default config).
- S3 single GET: ``store.get`` (one GET, its Content-Length checked before allocating, SHA-256
  while the bytes arrive, decoding) vs boto3's ``get_object(...)["Body"].read()`` of the same
  object, for blobs below the part size (8 and 15 MiB with the default 16 MiB parts) and the
  ``--mib`` blob with a part size above its size. The two alternate on the same object.
- file://: ``store.put`` + ``store.get`` vs ``pickle.dump`` + ``pickle.load`` to a local file.
  Both write a new file per value, as storing a new artifact does (overwriting one path again
  and again is cheaper in the page cache, and is not what a store does). The two alternate, each
  after an untimed ``os.sync()``, so neither pays for the other's page-cache writeback. The
  store also fsyncs each blob before renaming it into place (durability); plain pickle does not.
- A second put of identical content vs the first put.

Each put stores new content (one element changes), so nothing is deduplicated by accident.
The store hashes a single GET while its bytes arrive, on a second thread: that hides behind a
remote network, but here moto's server keeps one of the machine's cores busy, so on a 2-core
machine the SHA-256 (printed alone) mostly adds to the read. Medians are printed; the ratio
lines come last (> 1 means the store is faster). moto answers a ranged GET by reading the whole
object and slicing it, so every range costs a full read there: that flatters fewer, larger
ranges, and the store's defaults (16 MiB parts, 8 in flight) stay tuned for real S3, not for
these numbers. Every S3 ratio line says so.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import pickle
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conftest import BUCKET, s3_client
from s3_servers import MotoServer

from provider.store import ArtifactStore, open_store
from provider.store.keys import blob_key
from provider.store.s3 import PART_SIZE_ENV

MiB = 2**20
MOTO_NOTE = (
    "[moto: each ranged GET re-reads the whole object, which flatters fewer, larger ranges; "
    "defaults stay tuned for real S3]"
)


def median_seconds(step: Callable[[int], None], repeat: int) -> float:
    samples = []
    for i in range(repeat):
        started = time.perf_counter()
        step(i)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def interleaved_medians(
    steps: tuple[Callable[[int], None], ...], repeat: int, *, sync: bool = True
) -> tuple[float, ...]:
    """Run the steps in turn, each after an untimed os.sync() (when ``sync``); median seconds."""
    samples: list[list[float]] = [[] for _ in steps]
    for i in range(repeat):
        for step, out in zip(steps, samples, strict=True):
            if sync:
                os.sync()
            started = time.perf_counter()
            step(i)
            out.append(time.perf_counter() - started)
    return tuple(statistics.median(s) for s in samples)


def fresh(array: np.ndarray, i: int) -> np.ndarray:
    array[0] = float(i) + 0.5
    return array


@contextmanager
def part_size_mib(mib: int | None) -> Iterator[None]:
    """Stores opened inside use ``mib`` MiB parts (None: the default)."""
    before = os.environ.get(PART_SIZE_ENV)
    if mib is not None:
        os.environ[PART_SIZE_ENV] = str(mib)
    try:
        yield
    finally:
        os.environ.pop(PART_SIZE_ENV, None)
        if before is not None:
            os.environ[PART_SIZE_ENV] = before


def single_get(client: object, mib: int, part_mib: int | None, repeat: int) -> tuple[float, ...]:
    """Median seconds of boto3's get_object().read(), of store.get and of a SHA-256 of the same
    bytes alone (what store.get adds that can only hide behind the network), alternating, on
    one stored blob."""
    with part_size_mib(part_mib):
        store = open_store(f"s3://{BUCKET}/single-{mib}", s3_client=client)
    array = np.random.default_rng(mib).standard_normal(mib * MiB // 8)
    ref = store.put(array)
    key = f"single-{mib}/{blob_key(ref.sha256)}"

    def raw(i: int) -> None:
        body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()  # type: ignore[attr-defined]
        assert len(body) == ref.size

    def ours(i: int) -> None:
        assert store.get(ref).nbytes == array.nbytes

    blob = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()  # type: ignore[attr-defined]

    def sha256(i: int) -> None:
        hashlib.sha256(blob).digest()

    assert requests(store, lambda: ours(0)) == ["GetObject"], "not a single GET"
    raw(0)  # warm: connections open, pages touched
    return interleaved_medians((raw, ours, sha256), repeat, sync=False)


def requests(store: ArtifactStore, step: Callable[[], None]) -> list[str]:
    """The S3 operations ``step`` sends through the store's client."""
    calls: list[str] = []
    events = store.backend.client.meta.events  # type: ignore[attr-defined]
    record = lambda model, **_: calls.append(model.name)  # noqa: E731
    events.register("before-call.s3.*", record)
    try:
        step()
    finally:
        events.unregister("before-call.s3.*", record)
    return calls


def s3_throughput(client: object, array: np.ndarray, repeat: int) -> dict[str, float]:
    """put+get against upload_fileobj+download_fileobj; first and second put of equal content."""
    store = open_store(f"s3://{BUCKET}/bench", s3_client=client)

    def raw_s3(i: int) -> None:
        data = memoryview(fresh(array, i)).cast("B")
        client.upload_fileobj(io.BytesIO(data), BUCKET, f"raw/{i}")  # type: ignore[attr-defined]
        out = io.BytesIO()
        client.download_fileobj(BUCKET, f"raw/{i}", out)  # type: ignore[attr-defined]
        assert out.getbuffer().nbytes == array.nbytes

    def store_s3(i: int) -> None:
        ref = store.put(fresh(array, i))
        assert store.get(ref)[0] == array[0]

    same = fresh(array, 999)
    store.put(same)
    return {
        "raw": median_seconds(raw_s3, repeat),
        "ours": median_seconds(store_s3, repeat),
        "first_put": median_seconds(lambda i: store.put(fresh(array, 100 + i)), repeat),
        "second_put": median_seconds(lambda i: store.put(same), repeat),
    }


def file_throughput(array: np.ndarray, repeat: int) -> tuple[float, float]:
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

        return interleaved_medians((raw_file, store_file), repeat)  # type: ignore[return-value]


def rate(seconds: float, mib: float, what: str) -> str:
    return f"{seconds * 1000:9.1f} ms  {mib / seconds:8.1f} MiB/s ({what})"


def single_get_section(client: object, args: argparse.Namespace) -> list[str]:
    """Print each single-GET case; return its ratio line."""
    ratios = []
    for size, part in [(m, None) for m in args.single_mib] + [(args.mib, args.mib + 1)]:
        raw, ours, sha256 = single_get(client, size, part, args.single_repeat)
        label = f"{size} MiB, " + (f"{part} MiB parts" if part else "default parts")
        print(f"S3 single GET {label:20s} boto3 get_object().read() {rate(raw, size, 'read')}")
        print(f"S3 single GET {label:20s} store.get                 {rate(ours, size, 'read')}")
        print(f"S3 single GET {label:20s}   its SHA-256 alone       {sha256 * 1000:9.1f} ms")
        ratios.append(
            f"ratio store.get / boto3 get_object().read() throughput (S3 single GET, {label}): "
            f"{raw / ours:.2f} {MOTO_NOTE}"
        )
    return ratios


def s3_section(client: object, array: np.ndarray, repeat: int) -> list[str]:
    mib = array.nbytes / MiB
    s3 = s3_throughput(client, array, repeat)
    print(f"S3    boto3 upload_fileobj+download_fileobj {rate(s3['raw'], 2 * mib, 'put+get')}")
    print(f"S3    store.put+store.get                   {rate(s3['ours'], 2 * mib, 'put+get')}")
    print(f"S3    first put {s3['first_put']:.3f} s, second put of identical content ", end="")
    print(f"{s3['second_put']:.3f} s")
    second = s3["second_put"] / s3["first_put"]
    return [
        f"ratio second put / first put (S3): {second:.3f} {MOTO_NOTE}",
        f"ratio store / raw boto3 throughput (S3 put+get, {mib:.0f} MiB in ranges): "
        f"{s3['raw'] / s3['ours']:.2f} {MOTO_NOTE}",
    ]


def file_section(array: np.ndarray, repeat: int) -> list[str]:
    mib = array.nbytes / MiB
    raw, ours = file_throughput(array, repeat)
    print(f"file  pickle.dump+pickle.load               {rate(raw, 2 * mib, 'put+get')}")
    print(f"file  store.put+store.get                   {rate(ours, 2 * mib, 'put+get')}")
    return [f"ratio store / pickle-to-file throughput (file): {raw / ours:.2f}"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--single-mib", type=int, nargs="*", default=[8, 15])
    parser.add_argument("--single-repeat", type=int, default=15)
    parser.add_argument("--only", choices=("s3", "single-get", "file"))
    args = parser.parse_args()
    array = np.random.default_rng(0).standard_normal(args.mib * MiB // 8)
    print(f"value: {args.mib} MiB float64 array; medians of {args.repeat} ", end="")
    print(f"(single GET: of {args.single_repeat}, alternating with boto3)")
    ratios: list[str] = []
    if args.only in (None, "s3", "single-get"):
        server = MotoServer()
        try:
            client = s3_client(server.endpoint)
            client.create_bucket(Bucket=BUCKET)
            if args.only in (None, "single-get"):
                ratios += single_get_section(client, args)
            if args.only in (None, "s3"):
                ratios += s3_section(client, array, args.repeat)
        finally:
            server.stop()
    if args.only in (None, "file"):
        ratios += file_section(array, args.repeat)
    print("\n".join(ratios))


if __name__ == "__main__":
    main()
