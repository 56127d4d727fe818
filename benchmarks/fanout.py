"""`.foreach` over 10,000 trivial items against `.expand` over 100 items of the same flow task,
in the same `airflow dags test` run.

    .venv/bin/python benchmarks/fanout.py [--repeat 3] [--items 10000] [--expanded 100]

Per-item cost: for `.foreach`, the one task instance's duration divided by its items; for
`.expand`, the span from the first mapped instance's start to the last one's end divided by
its instances (`airflow dags test` runs them one after another). Both come from the
`task_instance` table of the run. Medians over the repeats; the ratio is printed last.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conftest import airflow_env

AIRFLOW = str(Path(sys.executable).parent / "airflow")
DAG = """
from airflow.sdk import dag
from provider import flow_task

@dag(schedule=None)
def bench_fanout():
    @flow_task
    def work(x: int) -> int:
        return x * 2

    work.foreach(x=list(range({items})))
    work.override(task_id="expanded").expand(x=list(range({expanded})))

bench_fanout()
"""


def _parse(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp)


def one_run(home: Path, dags: Path, items: int, expanded: int) -> tuple[float, float]:
    env = airflow_env(home, dags)
    subprocess.run(
        [AIRFLOW, "dags", "test", "bench_fanout"], env=env, check=True, capture_output=True
    )
    with sqlite3.connect(home / "airflow.db") as db:
        rows = db.execute(
            "SELECT task_id, start_date, end_date FROM task_instance WHERE dag_id='bench_fanout'"
        ).fetchall()
    foreach = [(s, e) for t, s, e in rows if t == "work"]
    mapped = [(s, e) for t, s, e in rows if t == "expanded"]
    assert len(foreach) == 1 and len(mapped) == expanded, (len(foreach), len(mapped))
    ((start, end),) = foreach
    foreach_per_item = (_parse(end) - _parse(start)).total_seconds() / items
    span = max(_parse(e) for _, e in mapped) - min(_parse(s) for s, _ in mapped)
    return foreach_per_item, span.total_seconds() / expanded


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--expanded", type=int, default=100)
    args = parser.parse_args()
    foreach, expand = [], []
    with tempfile.TemporaryDirectory() as tmp:
        dags = Path(tmp) / "dags"
        dags.mkdir()
        (dags / "bench_fanout.py").write_text(
            DAG.replace("{items}", str(args.items)).replace("{expanded}", str(args.expanded))
        )
        template = Path(tmp) / "template"
        subprocess.run(
            [AIRFLOW, "db", "migrate"],
            env=airflow_env(template, dags),
            check=True,
            capture_output=True,
        )
        for number in range(args.repeat):
            home = Path(tmp) / f"home{number}"
            home.mkdir()
            (home / "airflow.db").write_bytes((template / "airflow.db").read_bytes())
            f, e = one_run(home, dags, args.items, args.expanded)
            foreach.append(f)
            expand.append(e)
    f, e = statistics.median(foreach), statistics.median(expand)
    print(
        f".foreach over {args.items} items: {f * 1000:8.3f} ms per item (median of {args.repeat})"
    )
    print(
        f".expand over {args.expanded} items: {e * 1000:8.3f} ms per item (median of {args.repeat})"
    )
    print(f"ratio .expand / .foreach per item: {e / f:.0f}x")


if __name__ == "__main__":
    main()
