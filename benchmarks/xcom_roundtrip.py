"""A 256 MiB pandas DataFrame from one `@task` to the next in `airflow dags test`:
flowtask's FlowXCom vs common-io's XComObjectStorageBackend (threshold 0), same location.

    .venv/bin/python benchmarks/xcom_roundtrip.py [--mib 256] [--repeat 3] [--only file|s3]

Locations: a local folder, then moto's S3 server on 127.0.0.1 (own process). Anchor: the same
DAG passing a 1 MiB DataFrame with the same backend, run alongside. Push time is the producer
task's duration minus the time to build the DataFrame (measured in the task) minus the anchor's;
pull time is the consumer task's duration minus the anchor's, so the task runner's fixed
per-task cost cancels. Peak memory is the `dags test` process's max RSS minus the anchor's.
Medians; the ratio lines come last (> 1 means FlowXCom is faster).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conftest import BUCKET, aws_connection, s3_client
from s3_servers import MotoServer

AIRFLOW = str(Path(sys.executable).parent / "airflow")
COMMON_IO = "airflow.providers.common.io.xcom.backend.XComObjectStorageBackend"
DAG = """
import os, time
import numpy as np
import pandas as pd
from airflow.sdk import dag, task


@dag(schedule=None)
def xcom_roundtrip():
    @task
    def produce():
        started = time.perf_counter()
        rows = int(os.environ["BENCH_MIB"]) * 1024 * 1024 // 64
        frame = pd.DataFrame({f"c{i}": np.arange(rows, dtype="float64") * (i + 1)
                              for i in range(8)})
        frame.iloc[0, 0] = float(os.environ["BENCH_RUN"])  # new content every run: no dedup
        print(f"BUILD_SECONDS={time.perf_counter() - started:.6f}")
        return frame

    @task
    def consume(frame) -> int:
        return int(frame.shape[0])

    consume(produce())


xcom_roundtrip()
"""


def task_seconds(home: Path) -> dict[str, float]:
    with sqlite3.connect(home / "airflow.db") as db:
        rows = db.execute("SELECT task_id, start_date, end_date FROM task_instance").fetchall()
    return {
        task: (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
        for task, start, end in rows
    }


RUNS = iter(range(1, 1_000_000))


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
        seconds = task_seconds(home)
        build = float(re.search(r"BUILD_SECONDS=([\d.]+)", out).group(1))  # type: ignore[union-attr]
        return {
            "push": seconds["produce"] - build,
            "pull": seconds["consume"],
            "rss_mib": int(re.search(r"MAXRSS_KIB=(\d+)", out).group(1)) / 1024,  # type: ignore[union-attr]
        }


def measure(name: str, base_env, db: Path, mib: int, repeat: int, extra: dict) -> dict:
    runs = [run(base_env, db, mib, extra) for _ in range(repeat)]
    anchors = [run(base_env, db, 1, extra) for _ in range(repeat)]
    keys = ("push", "pull", "rss_mib")
    result = {key: statistics.median(r[key] for r in runs) for key in keys}
    anchor = {key: statistics.median(r[key] for r in anchors) for key in keys}
    result["push"] -= anchor["push"]
    result["pull"] -= anchor["pull"]
    result["extra_rss_mib"] = result["rss_mib"] - anchor["rss_mib"]
    print(
        f"{name:34s} push {result['push']:7.2f} s  pull {result['pull']:7.2f} s  "
        f"peak +{result['extra_rss_mib']:7.0f} MiB over a 1 MiB run",
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
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        base_env.update(
            AIRFLOW__CORE__DAGS_FOLDER=str(dags),
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
            AIRFLOW__COMMON_IO__XCOM_OBJECTSTORAGE_THRESHOLD="0",
        )
        template = Path(tmp, "template")
        subprocess.run(
            [AIRFLOW, "db", "migrate"],
            env={**base_env, "AIRFLOW_HOME": str(template)},
            check=True,
            capture_output=True,
        )
        db = template / "airflow.db"
        print(f"DataFrame: {args.mib} MiB of float64 in 8 columns; medians of {args.repeat}")

        if args.only in (None, "file"):
            folder = Path(tmp, "store")
            ours = measure(
                "file  FlowXCom",
                base_env,
                db,
                args.mib,
                args.repeat,
                {
                    "AIRFLOW__CORE__XCOM_BACKEND": "provider.xcom.FlowXCom",
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
                        "AIRFLOW__CORE__XCOM_BACKEND": "provider.xcom.FlowXCom",
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
        print(f"ratio common-io / FlowXCom push+pull time ({where}): {speedup:.1f}")


if __name__ == "__main__":
    main()
