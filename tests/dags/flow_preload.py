"""Warm runtimes that preload numpy, and a task whose Environment sets OMP_NUM_THREADS: each
task's numpy sizes its thread pool as a new interpreter with the task's environment would."""

from __future__ import annotations

from airflow.sdk import dag

from provider import Environment, flow_task

ONE_THREAD = Environment(env={"OMP_NUM_THREADS": "1"})


def _blas_threads(servers: int) -> list[int]:
    """numpy's BLAS pool size, once ``servers`` warm runtimes answer (so the next task is a
    fork of one)."""
    import os
    import socket
    import time
    from pathlib import Path

    import numpy  # noqa: F401
    from threadpoolctl import threadpool_info

    from provider.runtime.warm import socket_address

    folder = Path(os.environ["AIRFLOW_HOME"], "flowtask", "runtimes")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        answering = 0
        try:
            for path in folder.glob("*.sock"):
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                    answering += probe.connect_ex(socket_address(fd, path.name)) == 0
        finally:
            os.close(fd)
        if answering >= servers:
            break
        time.sleep(0.05)
    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]


@dag(schedule=None, catchup=False)
def flow_preload():
    @flow_task
    def default(servers: int, previous: object = None) -> list[int]:
        return _blas_threads(servers)

    @flow_task(environment=ONE_THREAD)
    def one(servers: int, previous: object = None) -> list[int]:
        return _blas_threads(servers)

    a0 = default.override(task_id="default_0")(1)
    a1 = default.override(task_id="default_1")(1, a0)
    b0 = one.override(task_id="one_0")(2, a1)
    one.override(task_id="one_1")(2, b0)


flow_preload()
