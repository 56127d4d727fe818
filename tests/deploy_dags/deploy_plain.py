"""Plain ``@task`` tasks only: checks the deployment itself (scheduler, executor, XCom)."""

from __future__ import annotations

from airflow.sdk import dag, task


@dag(schedule=None, catchup=False, tags=["deploy"])
def deploy_plain():
    @task
    def numbers() -> list[int]:
        return [1, 2, 3]

    @task
    def total(values: list[int]) -> int:
        assert values == [1, 2, 3], values
        return sum(values)

    total(numbers())


deploy_plain()
