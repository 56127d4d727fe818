"""1 GiB put + get through the artifact store, boto3's transfer manager and metaflow.S3, on S3
with and without the S3 model, each in its own process with its peak memory (medians).

    .venv/bin/python benchmarks/large_objects.py [--mib 1024] [--repeat 3]
        [--metaflow-python /tmp/mfvenv/bin/python] [--only store,boto3,metaflow]

metaflow is not a dependency of flowtask: install it in a venv of its own and pass its python
(without it, the metaflow rows are left out):

    python3 -m uv venv /tmp/mfvenv
    python3 -m uv pip install --python /tmp/mfvenv/bin/python metaflow boto3 numpy

Each tool as a user would configure it: ``store.put(array)`` / ``store.get(ref)`` (its own
defaults: 16 MiB parts, 8 in flight, SHA-256 checked); boto3's ``upload_fileobj`` /
``download_fileobj`` with the default ``TransferConfig`` (8 MiB parts, 10 threads) from and into
``io.BytesIO``; ``metaflow.S3(s3root=...)``'s ``put`` and ``get(...).blob`` (through its s3op
worker processes and a local temp file, as it always reads). Every process makes 1 GiB of
random bytes (for the store a NumPy array over them, not a copy), puts them, drops them, gets
them back and checks them; its peak memory is ``ru_maxrss`` of itself and of its children
(metaflow's workers). The S3 model (tests/s3_servers.py ``S3Model``): 20 ms to the first byte
of every request and 90 MiB/s per connection, as S3 in-region, in front of moto's server on
loopback. moto answers a ranged GET by copying the whole object and slicing it: each range
costs a read of the whole GiB there, which favours fewer, larger ranges (the store's 16 MiB
against boto3's 8 MiB): on S3 a range costs only its bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conftest import BUCKET, s3_client
from s3_servers import MotoServer, S3Model

ROOT = Path(__file__).resolve().parent.parent
COMMON = """
import json, os, resource, sys, time
import numpy as np
MIB, KEY = int(sys.argv[1]), sys.argv[2]
ENDPOINT, BUCKET = os.environ["BENCH_ENDPOINT"], os.environ["BENCH_BUCKET"]
def made():  # random bytes, allocated once (a generator's .bytes() copies: 2 GiB at its peak)
    return os.urandom(MIB * 2**20)
def report(put, get):
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"put": put, "get": get, "peak_mib": max(own, children) / 1024}))
"""
STORE = (
    COMMON
    + """
sys.path.insert(0, os.path.join(os.environ["BENCH_ROOT"], "tests"))
from conftest import s3_client
from provider.store import open_store
store = open_store(f"s3://{BUCKET}/{KEY}", s3_client=s3_client(ENDPOINT))
data = np.frombuffer(made(), dtype=np.uint8)  # the bytes as an array, not copied
expected = int(data[:4096].sum())
started = time.perf_counter()
ref = store.put(data)
put = time.perf_counter() - started
del data
started = time.perf_counter()
back = store.get(ref)
get = time.perf_counter() - started
assert back.nbytes == MIB * 2**20 and int(back[:4096].sum()) == expected
report(put, get)
"""
)
BOTO3 = (
    COMMON
    + """
import io, boto3
client = boto3.client("s3", endpoint_url=ENDPOINT, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
data = made()
expected = sum(data[:4096])
started = time.perf_counter()
client.upload_fileobj(io.BytesIO(data), BUCKET, KEY)
put = time.perf_counter() - started
del data
started = time.perf_counter()
out = io.BytesIO()
client.download_fileobj(BUCKET, KEY, out)
got = out.getbuffer()
get = time.perf_counter() - started
assert got.nbytes == MIB * 2**20 and sum(got[:4096]) == expected
report(put, get)
"""
)
METAFLOW = (
    COMMON
    + """
from metaflow import S3
data = made()
expected = sum(data[:4096])
with S3(s3root=f"s3://{BUCKET}/{KEY}") as s3:
    started = time.perf_counter()
    s3.put("blob", data)
    put = time.perf_counter() - started
    del data
    started = time.perf_counter()
    got = s3.get("blob").blob
    get = time.perf_counter() - started
assert len(got) == MIB * 2**20 and sum(got[:4096]) == expected
report(put, get)
"""
)


def one(python: str, script: str, endpoint: str, mib: int, key: str) -> dict[str, float]:
    env = {
        **os.environ,
        "BENCH_ENDPOINT": endpoint,
        "BENCH_BUCKET": BUCKET,
        "BENCH_ROOT": str(ROOT),
        "PYTHONPATH": str(ROOT),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "METAFLOW_S3_ENDPOINT_URL": endpoint,
        "METAFLOW_HOME": "/nonexistent",
        "USERNAME": "bench",
    }
    proc = subprocess.run(
        [python, "-c", script, str(mib), key], env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{python} failed: {proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--metaflow-python", default="/tmp/mfvenv/bin/python")
    parser.add_argument("--only", default="store,boto3,metaflow")
    args = parser.parse_args()
    tools = {"store": (sys.executable, STORE), "boto3": (sys.executable, BOTO3)}
    if Path(args.metaflow_python).exists():
        tools["metaflow"] = (args.metaflow_python, METAFLOW)
    else:
        print(f"(no metaflow: {args.metaflow_python} does not exist; see the module docstring)")
    tools = {name: tool for name, tool in tools.items() if name in args.only.split(",")}
    moto = MotoServer()
    model = S3Model(moto.port)
    try:
        s3_client(moto.endpoint).create_bucket(Bucket=BUCKET)
        results: dict[tuple[str, str], list[dict[str, float]]] = {}
        for where, endpoint in (("moto", moto.endpoint), ("S3 model", model.endpoint)):
            for i in range(args.repeat):
                for name, (python, script) in tools.items():  # interleaved
                    key = f"large-{name}-{i}-{time.time_ns()}"
                    results.setdefault((where, name), []).append(
                        one(python, script, endpoint, args.mib, key)
                    )
        print(f"{args.mib} MiB put + get, medians of {args.repeat}, each in its own process")
        for where in ("moto", "S3 model"):
            rows = {}
            for name in tools:
                runs = results[(where, name)]
                rows[name] = {
                    k: statistics.median(r[k] for r in runs) for k in ("put", "get", "peak_mib")
                }
                row = rows[name]
                total = row["put"] + row["get"]
                print(
                    f"  {where:8} {name:8}: put {row['put']:6.2f} s, get {row['get']:6.2f} s, "
                    f"put+get {total:6.2f} s ({args.mib / total:6.1f} MiB/s); "
                    f"peak memory {row['peak_mib']:6.0f} MiB"
                )
            if "store" in rows:
                ours = rows["store"]
                for anchor in [n for n in rows if n != "store"]:
                    theirs = rows[anchor]
                    speed = (theirs["put"] + theirs["get"]) / (ours["put"] + ours["get"])
                    memory = ours["peak_mib"] / theirs["peak_mib"]
                    print(
                        f"  {where:8} store against {anchor}: put+get {speed:.2f}x as fast, "
                        f"peak memory {memory:.2f}x"
                    )
        print("[moto: each ranged GET copies the whole object; see the module docstring]")
    finally:
        model.stop()
        moto.stop()


if __name__ == "__main__":
    main()
