"""A 256 MiB pandas DataFrame from one `@task` to the next in `airflow dags test`:
flowtask's FlowXCom vs common-io's XComObjectStorageBackend (threshold 0), same location.

    .venv/bin/python benchmarks/xcom_roundtrip.py [--mib 256] [--repeat 3] [--only file|s3]

Locations: a local folder, then moto's S3 server on 127.0.0.1 (own process). The DAG runs
warm_up -> warm_pull -> produce -> consume. The warm-up pair pushes and pulls a 16-row
DataFrame through the same backend, so Airflow's one-time set-up inside `airflow dags test` and
the backend's first use (imports, clients) are paid before anything is timed. The backend under
test is wrapped (``TIMED_XCOM`` below): push time is its ``serialize_value`` of the DataFrame
in `produce`, pull time its ``deserialize_value`` in `consume`, each timed around the backend's
own call, so neither a task's duration nor any start-up is in them. Peak memory is the
`dags test` process's max RSS minus that of the same DAG with a 1 MiB DataFrame. Medians over
``--repeat`` runs, each a new `dags test` process; the output says how each figure was taken,
and the ratio lines come last (> 1 means FlowXCom is faster).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conftest import BUCKET, aws_connection, s3_client
from s3_servers import MotoServer

AIRFLOW = str(Path(sys.executable).parent / "airflow")
COMMON_IO = "airflow.providers.common.io.xcom.backend.XComObjectStorageBackend"
FLOWXCOM = "provider.xcom.FlowXCom"
WARM_ROWS = 16
DAG = """
import os
import numpy as np
import pandas as pd
from airflow.sdk import dag, task


def frame(rows: int) -> pd.DataFrame:
    frame = pd.DataFrame(
        {f"c{i}": np.arange(rows, dtype="float64") * (i + 1) for i in range(8)}
    )
    frame.iloc[0, 0] = float(os.environ["BENCH_RUN"])  # new content every run: no dedup
    return frame


@dag(schedule=None)
def xcom_roundtrip():
    @task
    def warm_up():
        return frame(WARM_ROWS)

    @task
    def warm_pull(small) -> int:
        return int(small.shape[0])

    @task
    def produce(ready: int):
        return frame(int(os.environ["BENCH_MIB"]) * 1024 * 1024 // 64)

    @task
    def consume(big) -> int:
        return int(big.shape[0])

    consume(produce(warm_pull(warm_up())))


xcom_roundtrip()
""".replace("WARM_ROWS", str(WARM_ROWS))
TIMED_XCOM = """
import importlib
import os
import time

import pandas as pd

_module, _name = os.environ["BENCH_XCOM_BACKEND"].rsplit(".", 1)
Backend = getattr(importlib.import_module(_module), _name)


def _report(op, value, started):
    seconds = time.perf_counter() - started
    if isinstance(value, pd.DataFrame):
        print(f"BENCH_XCOM op={op} rows={len(value)} seconds={seconds:.6f}", flush=True)


class TimedXCom(Backend):
    '''The backend under test; its DataFrame pushes and pulls are timed and printed.'''

    @staticmethod
    def serialize_value(value, **kwargs):
        started = time.perf_counter()
        stored = Backend.serialize_value(value, **kwargs)
        _report("push", value, started)
        return stored

    @staticmethod
    def deserialize_value(result):
        started = time.perf_counter()
        value = Backend.deserialize_value(result)
        _report("pull", value, started)
        return value
"""
TIMED = re.compile(r"BENCH_XCOM op=(push|pull) rows=(\d+) seconds=([\d.]+)")
HOW = f"""how each figure is taken:
  push, pull  the backend's serialize_value of the DataFrame in `produce` and its
              deserialize_value in `consume`, timed in the task around that call alone, after a
              warm-up pair of tasks used the same backend ({WARM_ROWS} rows): no task duration,
              no Airflow start-up
  first use   the warm-up's push and pull ({WARM_ROWS} rows): the backend's one-time imports and
              clients; for information, in no ratio
  peak        max RSS of the `airflow dags test` process (GNU time) minus that of the same DAG
              with a 1 MiB DataFrame"""
RUNS = iter(range(1, 1_000_000))


def timings(out: str, rows: int) -> dict[str, float]:
    """Push and pull seconds of the DataFrame of ``rows`` rows (each must occur once)."""
    found: dict[str, list[float]] = {"push": [], "pull": []}
    for op, n, seconds in TIMED.findall(out):
        if int(n) == rows:
            found[op].append(float(seconds))
    if any(len(samples) != 1 for samples in found.values()):
        raise RuntimeError(f"expected one push and one pull of {rows} rows, got {found}")
    return {op: samples[0] for op, samples in found.items()}


def run(base_env: dict[str, str], template_db: Path, mib: int, extra: dict[str, str]) -> dict:
    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parent) as tmp:
        home = Path(tmp)
        shutil.copy(template_db, home / "airflow.db")
        env = {
            **base_env,
            "AIRFLOW_HOME": str(home),
            "BENCH_MIB": str(mib),
            "BENCH_RUN": str(next(RUNS)),
            **extra,
        }
        proc = subprocess.run(
            ["/usr/bin/time", "-f", "MAXRSS_KIB=%M", AIRFLOW, "dags", "test", "xcom_roundtrip"],
            env=env,
            capture_output=True,
            text=True,
        )
        out = proc.stdout + proc.stderr
        if proc.returncode != 0:
            raise RuntimeError(f"dags test failed:\n{out[-3000:]}")
        warm = timings(out, WARM_ROWS)
        return {
            **timings(out, mib * 1024 * 1024 // 64),
            "first_push": warm["push"],
            "first_pull": warm["pull"],
            "rss_mib": int(re.search(r"MAXRSS_KIB=(\d+)", out).group(1)) / 1024,  # type: ignore[union-attr]
        }


def measure(name: str, base_env, db: Path, mib: int, repeat: int, extra: dict) -> dict:
    """Medians of ``repeat`` runs with the backend ``extra`` names, timed by TimedXCom."""
    timed = {
        **extra,
        "BENCH_XCOM_BACKEND": extra["AIRFLOW__CORE__XCOM_BACKEND"],
        "AIRFLOW__CORE__XCOM_BACKEND": "bench_timed_xcom.TimedXCom",
    }
    runs = [run(base_env, db, mib, timed) for _ in range(repeat)]
    anchors = [run(base_env, db, 1, timed) for _ in range(repeat)]
    keys = ("push", "pull", "first_push", "first_pull", "rss_mib")
    result = {key: statistics.median(r[key] for r in runs) for key in keys}
    result["extra_rss_mib"] = result["rss_mib"] - statistics.median(r["rss_mib"] for r in anchors)
    print(
        f"{name:30s} push {result['push']:6.3f} s  pull {result['pull']:6.3f} s  "
        f"first use push {result['first_push']:6.3f} s  pull {result['first_pull']:6.3f} s  "
        f"peak +{result['extra_rss_mib']:4.0f} MiB",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", choices=("file", "s3"))
    args = parser.parse_args()
    ratios = []
    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parent) as tmp:
        dags = Path(tmp, "dags")
        dags.mkdir()
        (dags / "xcom_roundtrip.py").write_text(DAG)
        timed = Path(tmp, "timed")
        timed.mkdir()
        (timed / "bench_timed_xcom.py").write_text(TIMED_XCOM)
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        base_env.update(
            AIRFLOW__CORE__DAGS_FOLDER=str(dags),
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
            AIRFLOW__COMMON_IO__XCOM_OBJECTSTORAGE_THRESHOLD="0",
            PYTHONPATH=os.pathsep.join(filter(None, [str(timed), os.environ.get("PYTHONPATH")])),
        )
        template = Path(tmp, "template")
        subprocess.run(
            [AIRFLOW, "db", "migrate"],
            env={**base_env, "AIRFLOW_HOME": str(template)},
            check=True,
            capture_output=True,
        )
        db = template / "airflow.db"
        print(f"DataFrame: {args.mib} MiB of float64 in 8 columns; medians of {args.repeat} runs")
        print(HOW, flush=True)

        if args.only in (None, "file"):
            folder = Path(tmp, "store")
            ours = measure(
                "file  FlowXCom",
                base_env,
                db,
                args.mib,
                args.repeat,
                {
                    "AIRFLOW__CORE__XCOM_BACKEND": FLOWXCOM,
                    "AIRFLOW__FLOW_TASK__ARTIFACT_STORE": folder.as_uri(),
                },
            )
            theirs = measure(
                "file  XComObjectStorageBackend",
                base_env,
                db,
                args.mib,
                args.repeat,
                {
                    "AIRFLOW__CORE__XCOM_BACKEND": COMMON_IO,
                    "AIRFLOW__COMMON_IO__XCOM_OBJECTSTORAGE_PATH": folder.as_uri() + "/common-io",
                },
            )
            ratios.append(("file", ours, theirs))

        if args.only in (None, "s3"):
            server = MotoServer()
            try:
                s3_client(server.endpoint).create_bucket(Bucket=BUCKET)
                connection = {"AIRFLOW_CONN_AWS_DEFAULT": aws_connection(server.endpoint)}
                ours = measure(
                    "s3    FlowXCom",
                    base_env,
                    db,
                    args.mib,
                    args.repeat,
                    {
                        **connection,
                        "AIRFLOW__CORE__XCOM_BACKEND": FLOWXCOM,
                        "AIRFLOW__FLOW_TASK__ARTIFACT_STORE": f"s3://{BUCKET}/flowxcom",
                    },
                )
                theirs = measure(
                    "s3    XComObjectStorageBackend",
                    base_env,
                    db,
                    args.mib,
                    args.repeat,
                    {
                        **connection,
                        "AIRFLOW__CORE__XCOM_BACKEND": COMMON_IO,
                        "AIRFLOW__COMMON_IO__XCOM_OBJECTSTORAGE_PATH": f"s3://aws_default@{BUCKET}/common-io",
                    },
                )
                ratios.append(("s3", ours, theirs))
            finally:
                server.stop()

    for where, ours, theirs in ratios:
        print(
            f"{where}: FlowXCom peak memory over baseline = "
            f"{ours['extra_rss_mib'] / args.mib:.2f}x the DataFrame "
            f"(common-io: {theirs['extra_rss_mib'] / args.mib:.2f}x)"
        )
    for where, ours, theirs in ratios:
        speedup = (theirs["push"] + theirs["pull"]) / (ours["push"] + ours["pull"])
        note = (
            " [moto: each ranged GET re-reads the whole object, which flatters fewer, larger "
            "ranges; defaults stay tuned for real S3]"
            if where == "s3"
            else ""
        )
        print(
            f"ratio common-io / FlowXCom push+pull time, timed in the tasks ({where}): "
            f"{speedup:.1f}{note}"
        )


if __name__ == "__main__":
    main()
