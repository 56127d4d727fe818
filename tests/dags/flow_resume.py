"""A ``.foreach`` run that the test kills and runs again in a new process with another
``PYTHONHASHSEED``: only the items with no stored result run again."""

from __future__ import annotations

import os
import time
from pathlib import Path

from airflow.sdk import dag

from provider import ForeachOptions, flow_task

KINDS = {"even", "odd"}  # a set: its pickle differs from one hash seed to the next


@dag(schedule=None, catchup=False)
def flow_resume():
    @flow_task(foreach=ForeachOptions(chunk_size=6, max_parallel=2))
    def slow(item: int, try_number=None) -> int:
        kind = "even" if item % 2 == 0 else "odd"
        assert kind in {"even", "odd"} and kind in KINDS
        marker = Path(os.environ["FLOW_TEST_MARKER"])
        (marker / f"start-{item}-{time.monotonic_ns()}").touch()
        time.sleep(0.1)
        (marker / f"end-{item}-{time.monotonic_ns()}").touch()
        return item * 2

    slow.foreach(item=list(range(60)))


flow_resume()
