"""Failure paths: a flaky task that a retry heals (only its kind of error is retried), a
failing task whose failure is caught, and tasks whose usage is far from what they asked for."""

from __future__ import annotations

import os
from pathlib import Path

from airflow.sdk import dag, task

from provider import Failure, Resources, Retry, flow_task


@dag(schedule=None, catchup=False)
def flow_failures():
    @flow_task(retry=Retry(times=2, delay="1s", on=(OSError,)))  # ConnectionError is one
    def flaky() -> str:
        marker = Path(os.environ["FLOW_TEST_MARKER"])
        if not marker.exists():
            marker.write_text("failed once")
            raise ConnectionError("transient failure, first try")
        return "healed"

    @flow_task(retry=Retry(times=1, delay="1s"), catch="error")
    def broken(x: str) -> str:
        raise ValueError(f"cannot handle {x}")

    @flow_task
    def handle(outcome) -> str:
        assert isinstance(outcome, Failure), outcome
        return f"caught {outcome.type}: {outcome.message}"

    @task
    def check(message: str) -> str:
        assert message == "caught builtins.ValueError: cannot handle healed", message
        return message

    @flow_task(resources=Resources(memory=100))  # MiB: less than it will use
    def hungry() -> int:
        # A cluster kills it at its limit: the Kubernetes test, about retries, asks for less.
        ballast = bytearray(int(os.environ.get("FLOW_TEST_BALLAST_MIB", "300")) << 20)
        # written, so every page is resident
        ballast[::4096] = b"x" * len(ballast[::4096])
        return len(ballast)

    @flow_task(resources=Resources(memory="8Gi"))  # far more than it will use
    def roomy() -> int:
        return 1

    hungry()
    roomy()
    check(handle(broken(flaky())))


flow_failures()
