"""Secrets reach the task but are kept nowhere: not in the store, not in the task log."""

from __future__ import annotations

import os

from airflow.sdk import dag

from provider import Environment, flow_task

TOKEN = "tok-8c1f-must-not-be-logged"


@dag(schedule=None, catchup=False)
def flow_secrets():
    @flow_task(environment=Environment(env={"API_TOKEN": TOKEN}))
    def use_password(password: str) -> int:
        assert os.environ["API_TOKEN"] == TOKEN
        assert password.startswith("pw-"), "the template was not rendered"
        return len(password)

    use_password("{{ conn.db.password }}")


flow_secrets()
