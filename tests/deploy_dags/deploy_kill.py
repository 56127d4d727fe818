"""A flow task that runs long enough to be marked failed while it runs.

Its runtime writes its PID to ``<workdir>/runtime.pid``, sleeps 60 s, then writes
``<workdir>/finished``: a runtime that is stopped with its task never writes it.
"""

from __future__ import annotations

from airflow.sdk import Param, dag

from provider import flow_task


@dag(
    schedule=None,
    catchup=False,
    params={"workdir": Param("", type="string", title="where the runtime leaves its files")},
    tags=["deploy"],
)
def deploy_kill():
    @flow_task
    def sleeper(workdir: str) -> str:
        import os
        import time
        from pathlib import Path

        pid_file = Path(workdir, "runtime.pid")
        Path(workdir, "runtime.pid.tmp").write_text(str(os.getpid()))
        Path(workdir, "runtime.pid.tmp").rename(pid_file)  # never seen half-written
        time.sleep(60)
        Path(workdir, "finished").write_text("the runtime outlived its task")
        return "slept"

    sleeper("{{ params.workdir }}")


deploy_kill()
