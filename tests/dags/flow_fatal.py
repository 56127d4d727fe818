"""Tries that end badly: a failing function, a timeout, a runtime that dies, an unpicklable
global; with ``catch=``, a death and a timeout on the last try reach downstream as Failures.
"""

from __future__ import annotations

import os
import signal
import threading
import time

from airflow.sdk import dag, task

from provider import Failure, ForeachOptions, Resources, Retry, flow_task

LOCK = threading.Lock()  # a module-level lock: no process but this one can have it


@dag(schedule=None, catchup=False)
def flow_fatal():
    @flow_task
    def explode() -> None:
        raise RuntimeError("boom: the data is wrong")

    @flow_task(timeout="3s")
    def sleepy() -> None:
        time.sleep(120)

    @flow_task(catch=True)
    def vanish() -> None:
        os._exit(7)  # the runtime dies without reporting

    @flow_task(resources=Resources(memory=300))
    def sigkilled() -> None:
        os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's out-of-memory killer does

    @flow_task(timeout="3s", catch=True)
    def slow() -> None:
        time.sleep(120)

    @flow_task(retry=Retry(times=2, delay="1s"))
    def locked() -> bool:
        with LOCK:
            return True

    @flow_task(retry=Retry(times=2, delay="1s", on=(ConnectionError, TimeoutError)))
    def wrong() -> None:
        raise KeyError("a bug, not a network hiccup: retrying cannot help")

    @flow_task(foreach=ForeachOptions(chunk_size=3))
    def crashing(item: int) -> int:
        if item == 4:
            os._exit(9)  # kills the process running it: the task names the item
        return item

    @flow_task(retry=Retry(times=2, delay="1s"))
    def unpicklable_items(item) -> bool:
        return True

    @task
    def check(died, timed_out) -> str:
        assert isinstance(died, Failure) and "exited with code 7" in died.message, died
        assert isinstance(timed_out, Failure), timed_out
        assert "ran longer than its timeout" in timed_out.message, timed_out
        return "caught both"

    explode()
    sleepy()
    locked()
    wrong()
    sigkilled()
    check(vanish(), slow())
    crashing.foreach(item=list(range(6)))
    unpicklable_items.foreach(item=[1, threading.Lock()])


flow_fatal()
