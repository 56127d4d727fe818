"""``.foreach`` as Indexed Jobs beyond the happy path (run with ``flow_compute=kubernetes``).

``fragile``: a pod OOMKilled on its first attempt is retried alone by the Job
(``backoffLimitPerIndex`` from ``Retry(infra=1)``); an item that fails on its first call fails
try 1 (``Retry(times=1)``), and try 2 runs one pod for that chunk, which re-runs only that
item. ``doomed``: a failed item caught as a ``Failure``. ``hog``: a chunk OOMKilled every time
(``Retry(infra=0)``) fails the task, naming its index and the reason. ``needs_secret``: pods
that cannot start fail the Job in seconds.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from airflow.sdk import dag, task

from provider import Environment, Failure, ForeachOptions, Resources, Retry, flow_task


def _calls(name: str) -> int:
    """Record one call of ``name``; how many there were, this one included."""
    runs = Path(os.environ["FLOW_TEST_MARKER"]) / name
    runs.mkdir(parents=True, exist_ok=True)
    (runs / str(len(list(runs.iterdir())))).touch()
    return len(list(runs.iterdir()))


def _out_of_memory() -> None:
    ballast = b"x" * (512 << 20)  # written, so every page is resident
    time.sleep(60)  # the test kubelet samples memory every 20 ms: hold on
    print(len(ballast))


@dag(schedule=None, catchup=False)
def flow_foreach_k8s():
    @flow_task(
        retry=Retry(times=1, delay="1s", infra=1),
        resources=Resources(memory=256),
        foreach=ForeachOptions(chunk_size=2),
    )
    def fragile(item: int) -> int:
        calls = _calls(f"fragile-{item}")
        if item == 2 and calls == 1:
            _out_of_memory()
        if item == 5 and calls == 1:
            raise ValueError(f"item {item} fails on its first call")
        return item * 10

    @flow_task(catch=True, foreach=ForeachOptions(chunk_size=2))
    def doomed(item: int) -> int:
        if item == 2:
            raise KeyError("no such record")
        return item

    @flow_task(
        retry=Retry(infra=0), resources=Resources(memory=160), foreach=ForeachOptions(chunk_size=3)
    )
    def hog(item: int) -> int:
        if item == 4:
            _out_of_memory()
        return item

    @flow_task(environment=Environment(secrets=["no-such-secret"]))
    def needs_secret(item: int) -> int:
        return item

    @task
    def check(fragile_results: list[int], doomed_results: list[object]) -> str:
        assert fragile_results == [10 * i for i in range(8)], fragile_results
        assert doomed_results[:2] == [0, 1] and doomed_results[3] == 3, doomed_results
        failure = doomed_results[2]
        assert isinstance(failure, Failure) and "no such record" in failure.message, failure
        return "foreach on kubernetes checked"

    check(fragile.foreach(item=list(range(8))), doomed.foreach(item=[0, 1, 2, 3]))
    hog.foreach(item=list(range(6)))
    needs_secret.foreach(item=[1, 2])


flow_foreach_k8s()
