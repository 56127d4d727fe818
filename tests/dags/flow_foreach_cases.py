"""``.foreach`` beyond the happy path: failed items retried alone, failures caught, `.expand`
over a foreach, a foreach over an upstream's list and over keyword dicts, progress lines."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from airflow.sdk import dag, task

from provider import Failure, ForeachOptions, Retry, flow_task


@dag(schedule=None, catchup=False)
def flow_foreach_cases():
    @flow_task(retry=Retry(times=1, delay="1s"), foreach=ForeachOptions(chunk_size=4))
    def fragile(item: int, try_number=None) -> int:  # a context value: not part of the plan
        runs = Path(os.environ["FLOW_TEST_MARKER"]) / f"fragile-{item}"
        runs.mkdir(parents=True, exist_ok=True)
        (runs / str(len(list(runs.iterdir())))).touch()  # one file per call of this item
        if item % 7 == 3 and len(list(runs.iterdir())) == 1:
            raise ValueError(f"item {item} fails on its first call")
        return item * 10

    @flow_task(catch=True)
    def doomed(item: int) -> int:
        if item == 2:
            raise KeyError("no such record")
        return item

    @flow_task
    def square(item: int) -> int:
        return item * item

    @flow_task
    def plus_one(x: int) -> int:
        return x + 1

    @flow_task
    def pairs() -> list[dict[str, int]]:
        return [{"a": i, "b": 2 * i} for i in range(5)]

    @flow_task
    def add(a: int, b: int) -> int:
        return a + b

    @flow_task(foreach=ForeachOptions(max_parallel=2, chunk_size=10))
    def slow(item: int) -> int:
        time.sleep(0.1)
        return item

    @flow_task(catch=True, foreach=ForeachOptions(chunk_size=4))
    def crashy(item: int) -> int:
        """Items that kill their own process: an exit, a segfault, a SIGKILL."""
        import signal

        if item == 3:
            os._exit(9)
        if item == 6:
            os.kill(os.getpid(), signal.SIGSEGV)
        if item == 9:
            os.kill(os.getpid(), signal.SIGKILL)
        return item

    @task
    def check(fragile_results, doomed_results, plus_ones, sums, slow_results, crashed) -> str:
        assert fragile_results == [10 * i for i in range(20)], fragile_results
        assert doomed_results[:2] == [0, 1] and doomed_results[3] == 3, doomed_results
        failure = doomed_results[2]
        assert isinstance(failure, Failure) and "no such record" in failure.message, failure
        assert sorted(plus_ones) == [2, 5, 10], plus_ones
        assert sums == [3 * i for i in range(5)], sums
        assert slow_results == list(range(60)), slow_results
        failures = {i: v.message for i, v in enumerate(crashed) if isinstance(v, Failure)}
        assert [v for v in crashed if not isinstance(v, Failure)] == [
            i for i in range(12) if i not in (3, 6, 9)
        ], crashed
        why = {3: "exited with code 9", 6: "was killed by SIGSEGV", 9: "was killed by SIGKILL"}
        assert set(failures) == set(why), failures
        for item, reason in why.items():
            pattern = rf"the process running item {item} died: worker \d+ {reason}"
            assert re.fullmatch(pattern, failures[item]), failures
        return "foreach cases checked"

    check(
        fragile.foreach(item=list(range(20))),
        doomed.foreach(item=[0, 1, 2, 3]),
        plus_one.expand(x=square.foreach(item=[1, 2, 3])),
        add.foreach_kwargs(pairs()),
        slow.foreach(item=list(range(60))),
        crashy.foreach(item=range(12)),  # a range, as .expand takes one
    )


flow_foreach_cases()
