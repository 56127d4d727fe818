"""A flow task that needs more memory than its machine has: run in a memory cgroup with a
limit below the ballast, the kernel's out-of-memory killer ends its runtime."""

from __future__ import annotations

import os

from airflow.sdk import dag

from provider import Resources, flow_task


@dag(schedule=None, catchup=False)
def flow_oom():
    @flow_task(resources=Resources(memory=256))
    def hog() -> int:
        ballast = bytearray(int(os.environ["FLOW_TEST_BALLAST_MIB"]) << 20)
        ballast[::4096] = b"x" * len(ballast[::4096])  # every page written, so resident
        return len(ballast)

    hog()


flow_oom()
