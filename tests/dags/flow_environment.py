"""A task needing a package the worker lacks (``ftprobe``, a wheel the tests make and serve from
a local folder): built once for its target, stored, and laid over the base where it runs. The
package index is unreachable where the task runs (pods and jobs never need it)."""

from __future__ import annotations

from airflow.sdk import dag

from provider import Environment, flow_params, flow_task

NOWHERE = "http://127.0.0.1:9/simple"  # nothing listens on the discard port


@dag(schedule=None, catchup=False, params=flow_params())
def flow_environment():
    @flow_task(
        environment=Environment(
            pip=["ftprobe==1.0"],
            env={"PIP_INDEX_URL": NOWHERE, "UV_INDEX_URL": NOWHERE, "PIP_NO_INDEX": "1"},
        ),
    )
    def probe() -> dict[str, str]:
        import os
        import sys

        import ftprobe  # type: ignore[import-not-found]

        return {"value": ftprobe.VALUE, "file": ftprobe.__file__, "first": sys.path[0],
                "pythonpath": os.environ.get("PYTHONPATH", "")}  # fmt: skip

    probe()


flow_environment()
