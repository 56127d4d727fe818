"""Fan-out to thousands with ``.foreach``: one Airflow task, ten thousand items.

``.expand`` makes one Airflow task instance per item (capped at 1,024 by ``max_map_length``,
a process and a store round trip each). ``.foreach`` is one task instance: locally a pool of
workers (one per CPU) loads the function and the items once and runs them in chunks; on
Kubernetes an Indexed Job, on AWS Batch an array job. Downstream gets the list of results in
item order.

    airflow dags test flow_foreach
    airflow dags test flow_foreach -c '{"flow_compute": "kubernetes", "n_items": 2000}'
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Param, dag, task

from provider import ForeachOptions, Resources, flow_params, flow_task

N_ITEMS = 10_000


@dag(
    schedule=None,
    catchup=False,
    params={
        **flow_params(tags=["example"]),
        "n_items": Param(N_ITEMS, type="integer", minimum=1, title="how many items"),
    },
    tags=["flowtask"],
)
def flow_foreach():
    @flow_task
    def list_items(params: dict[str, Any] | None = None) -> list[int]:
        assert params is not None
        return list(range(params["n_items"]))  # stays a reference: the worker never loads it

    @flow_task(resources=Resources(cpu=1, memory=512), foreach=ForeachOptions(chunk_size=500))
    def score(item: int, salt: int) -> int:
        return (item * item + salt) % 9973

    @flow_task
    def summarize(scores: list[int]) -> dict[str, int]:
        return {"count": len(scores), "total": sum(scores)}

    @task
    def check(scores: list[int], summary: dict[str, int], salt: int, params: Any = None) -> str:
        expected = [(i * i + salt) % 9973 for i in range(params["n_items"])]
        assert scores == expected, "results out of order or wrong"
        assert summary == {"count": len(expected), "total": sum(expected)}, summary
        return f"{len(scores)} items checked"

    scores = score.partial(salt=7).foreach(item=list_items())
    check(scores, summarize(scores), salt=7)


flow_foreach()
