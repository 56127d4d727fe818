"""DAGs of the production-shaped deployment (tests/test_celery_deployment.py): PostgreSQL, the
CeleryExecutor with Redis, and two Celery workers, each with its own AIRFLOW_HOME and its own copy
of this folder. Worker A consumes the queues ``default`` and ``worker_a``, worker B ``default``
and ``worker_b``: a task on ``worker_a`` runs on A, one on ``default`` on either.

Each task reports what it did as JSON files in ``params.workdir``, a folder the test owns.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Param, dag, task

from provider import (
    Environment,
    ForeachOptions,
    Retry,
    flow_context,
    flow_params,
    flow_task,
    record_run_state,
)

WORKDIR = {"workdir": Param("", type="string", title="where the tasks report")}


def report(workdir: str, name: str, **values: Any) -> dict[str, Any]:
    """Where this runtime runs (pid, parent, worker home, working directory), as a file."""
    import json
    import os
    from pathlib import Path

    found = {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "home": os.environ.get("AIRFLOW_HOME"),
        "cwd": os.getcwd(),
        **values,
    }
    Path(workdir, f"{name}.json.tmp").write_text(json.dumps(found))
    Path(workdir, f"{name}.json.tmp").rename(Path(workdir, f"{name}.json"))
    return found


@dag(
    schedule=None,
    catchup=False,
    params={**flow_params(), **WORKDIR},
    tags=["celery"],
    on_success_callback=record_run_state,  # the dag-processor records the run's end
    on_failure_callback=record_run_state,
)
def celery_warm():
    """Two flow tasks one after the other on each worker: the second of each is a fork of the
    warm runtime its own worker's first one started."""

    @flow_task
    def where(name: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        assert params is not None
        return report(params["workdir"], name)

    for worker in ("a", "b"):
        first = where.override(task_id=f"{worker}_first", queue=f"worker_{worker}")
        second = where.override(task_id=f"{worker}_second", queue=f"worker_{worker}")
        first(f"{worker}_first") >> second(f"{worker}_second")


@dag(schedule=None, catchup=False, params={**flow_params(), **WORKDIR}, tags=["celery"])
def celery_environment():
    """The same ``Environment(pip=...)`` on worker A (it builds and stores it: A has a package
    index) and then on worker B (no index: it must fetch what A stored)."""

    @flow_task(environment=Environment(pip=["ftprobe==1.0"]))
    def probe(name: str, params: dict[str, Any] | None = None) -> str:
        import ftprobe  # type: ignore[import-not-found]

        assert params is not None
        report(params["workdir"], name, value=ftprobe.VALUE, file=ftprobe.__file__)
        return str(ftprobe.VALUE)

    build = probe.override(task_id="build", queue="worker_a")("build")
    use = probe.override(task_id="use", queue="worker_b")("use")
    build >> use


@dag(schedule=None, catchup=False, params={**flow_params(), **WORKDIR}, tags=["celery"])
def celery_foreach():
    """Nine items in chunks of three, one chunk at a time. On try 1 item 4 waits (for the test
    to stop its worker): chunk 0 and item 3 are done, item 4 is running, items 5-8 never
    started. Every call leaves ``calls/<item>-<try>-<pid>.start`` (and ``.end`` once it
    returns), holding the worker's home."""

    @flow_task(
        retry=Retry(times=1, delay="1s"),
        foreach=ForeachOptions(chunk_size=3, max_parallel=1),
    )
    def item_call(item: int, params: dict[str, Any] | None = None) -> int:
        import os
        import time
        from pathlib import Path

        assert params is not None
        calls = Path(params["workdir"], "calls")
        calls.mkdir(exist_ok=True)
        try_number = flow_context()["try_number"]
        name = f"{item}-{try_number}-{os.getpid()}"
        (calls / f"{name}.start").write_text(os.environ.get("AIRFLOW_HOME", ""))
        if item == 4 and try_number == 1:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:  # the test stops this worker meanwhile
                time.sleep(0.2)
            raise TimeoutError("item 4 was never stopped")
        (calls / f"{name}.end").write_text(os.environ.get("AIRFLOW_HOME", ""))
        return item * 10

    @task
    def total(values: list[int]) -> int:
        assert values == [10 * i for i in range(9)], values
        return sum(values)

    total(item_call.foreach(item=list(range(9))))


celery_warm()
celery_environment()
celery_foreach()
