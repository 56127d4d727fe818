"""A task that fails for good (no catch), and a task that runs past its timeout."""

from __future__ import annotations

import time

from airflow.sdk import dag

from provider import flow_task


@dag(schedule=None, catchup=False)
def flow_fatal():
    @flow_task
    def explode() -> None:
        raise RuntimeError("boom: the data is wrong")

    @flow_task(timeout="3s")
    def sleepy() -> None:
        time.sleep(120)

    explode()
    sleepy()


flow_fatal()
