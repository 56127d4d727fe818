"""What `import provider` costs at DAG-parse time, against `import airflow.sdk` in the same run.

    .venv/bin/python benchmarks/import_time.py [--repeat 15]

Prints median wall times of fresh interpreters; the last line is the ratio.
"""

from __future__ import annotations

import argparse
import sys

from _timing import time_command

CASES = {
    "python -c pass": "pass",
    "import airflow.sdk (anchor)": "import airflow.sdk",
    "import provider": "import provider",
    "import airflow.sdk, provider": "import airflow.sdk, provider",
    "from provider import flow_task": "from provider import flow_task",
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=15)
    repeat = parser.parse_args().repeat
    times = {
        name: time_command([sys.executable, "-c", code], repeat) for name, code in CASES.items()
    }
    for name, seconds in times.items():
        print(f"{name:34s} {seconds * 1000:8.1f} ms (median of {repeat})")
    bare = times["python -c pass"]
    anchor = times["import airflow.sdk (anchor)"] - bare
    ours = times["import provider"] - bare
    extra = times["import airflow.sdk, provider"] - times["import airflow.sdk (anchor)"]
    print(
        f"provider alone: {ours * 1000:.1f} ms; added on top of airflow.sdk: {extra * 1000:.1f} ms"
    )
    print(f"ratio import provider / import airflow.sdk: {ours / anchor:.3f}")


if __name__ == "__main__":
    main()
