"""A flow task whose failure is caught (``catch=True``): green, and downstream gets a Failure."""

from __future__ import annotations

from airflow.sdk import dag, task

from provider import Failure, flow_params, flow_task


@dag(schedule=None, catchup=False, params=flow_params(), tags=["deploy"])
def deploy_caught():
    @flow_task(catch=True)
    def load() -> int:
        columns = {"id": [1, 2]}
        return len(columns["missing-column"])  # a KeyError

    @task
    def report(outcome) -> str:
        assert isinstance(outcome, Failure) and not outcome, outcome
        return f"caught {outcome.type}"

    report(load())


deploy_caught()
