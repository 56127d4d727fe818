"""``FlowtaskPlugin``: what the provider adds to Airflow's UI.

- ``fastapi_apps``: the Flow pages under ``/flowtask`` (built on the first request, so a
  process that loads plugins without serving them imports no FastAPI route of ours);
- ``external_views``: a "Flow" tab on task instances, DAG runs and DAGs, each an iframe of one
  of those pages (Airflow fills in ``{DAG_ID}``, ``{RUN_ID}``, ``{TASK_ID}``, ``{MAP_INDEX}``).
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

PREFIX = "/flowtask"
_DAG = "/dags/{DAG_ID}"
_RUN = _DAG + "/runs/{RUN_ID}"


class LazyApp:
    """An ASGI app that builds the Flow pages' FastAPI app on its first request."""

    def __init__(self) -> None:
        self._app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self._app is None:
            from provider.ui.app import create_app

            self._app = create_app()
        await self._app(scope, receive, send)


class FlowtaskPlugin(AirflowPlugin):
    name = "flowtask"
    fastapi_apps = [{"app": LazyApp(), "url_prefix": PREFIX, "name": "flowtask"}]
    external_views = [
        {
            "name": "Flow",
            "href": f"{PREFIX}{_RUN}/tasks/{{TASK_ID}}?map_index={{MAP_INDEX}}",
            "destination": "task_instance",
            "url_route": "flow-task",
        },
        {
            "name": "Flow",
            "href": f"{PREFIX}{_RUN}",
            "destination": "dag_run",
            "url_route": "flow-run",
        },
        {
            "name": "Flow runs",
            "href": f"{PREFIX}{_DAG}",
            "destination": "dag",
            "url_route": "flow-dag",
        },
    ]
