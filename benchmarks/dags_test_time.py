"""Wall time of `airflow dags test` for each example DAG, against a one-task `@task` DAG.

    .venv/bin/python benchmarks/dags_test_time.py [--repeat 3]

Each run gets a fresh Airflow home (a copy of one migrated SQLite DB), as the tests do.
The last line is the ratio of the slowest example to the anchor.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from _timing import time_command

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conftest import airflow_env

REPO = Path(__file__).resolve().parent.parent
AIRFLOW = str(Path(sys.executable).parent / "airflow")
ANCHOR = """
from airflow.sdk import dag, task

@dag(schedule=None)
def anchor_plain_task():
    @task
    def one() -> int:
        return 1
    one()

anchor_plain_task()
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    repeat = parser.parse_args().repeat
    with tempfile.TemporaryDirectory() as tmp:
        dags = Path(tmp) / "dags"
        shutil.copytree(REPO / "dags_examples", dags)
        (dags / "anchor_plain_task.py").write_text(ANCHOR)
        env = airflow_env(Path(tmp) / "home", dags)
        subprocess.run([AIRFLOW, "db", "migrate"], env=env, check=True, capture_output=True)
        times = {
            dag_id: time_command([AIRFLOW, "dags", "test", dag_id], repeat, env)
            for dag_id in ("anchor_plain_task", "flow_mixed", "flow_fanout")
        }
    for dag_id, seconds in times.items():
        print(f"airflow dags test {dag_id:20s} {seconds:6.1f} s (median of {repeat})")
    slowest = max(v for k, v in times.items() if k != "anchor_plain_task")
    print(f"ratio slowest example / one-task anchor: {slowest / times['anchor_plain_task']:.2f}")


if __name__ == "__main__":
    main()
