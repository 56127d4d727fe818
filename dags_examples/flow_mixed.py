"""Flow tasks and plain ``@task`` in one DAG; a NumPy array moves between them by reference.

With the flowtask XCom backend (AIRFLOW__CORE__XCOM_BACKEND=provider.xcom.FlowXCom), the
plain tasks receive values, and every XCom row holds only a small reference.

    airflow dags test flow_mixed
"""

from __future__ import annotations

from airflow.sdk import dag, task

from provider import Environment, Resources, Retry, flow_params, flow_task


@dag(schedule=None, catchup=False, params=flow_params(namespace="examples"), tags=["flowtask"])
def flow_mixed():
    @task
    def settings() -> dict[str, int]:
        return {"rows": 2000, "cols": 500, "seed": 7}

    @task.flow_task(
        resources=Resources(cpu=2, memory="2Gi"),
        retry=Retry(times=2, delay="2s", backoff="exponential", max_delay="10s"),
        timeout="10m",
        environment=Environment(pip=["numpy>=1.26"], env={"FLOW_EXAMPLE": "1"}),
    )
    def simulate(cfg: dict[str, int]):
        import os

        import numpy as np

        assert os.environ["FLOW_EXAMPLE"] == "1"
        rng = np.random.default_rng(cfg["seed"])
        return rng.standard_normal((cfg["rows"], cfg["cols"]))  # 8 MB: stored, not in the DB

    @flow_task(resources=Resources(cpu=1, memory=1024))
    def column_means(matrix):
        return matrix.mean(axis=0)

    @task
    def report(means, matrix) -> dict[str, float]:
        return {
            "columns": int(means.shape[0]),
            "cells": int(matrix.size),
            "max_abs_mean": float(abs(means).max()),
        }

    matrix = simulate(settings())
    report(column_means(matrix), matrix)


flow_mixed()
