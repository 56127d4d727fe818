"""Fan-out to thousands with ``.foreach``: one Airflow task, ten thousand items.

``.expand`` makes one Airflow task instance per item (capped at 1,024 by ``max_map_length``,
a process and a store round trip each). ``.foreach`` is one task instance: locally a pool of
workers (one per CPU) loads the function and the items once and runs them in chunks; on
Kubernetes an Indexed Job, on AWS Batch an array job. Downstream gets the list of results in
item order.

``parse`` shows failed items: a transient error fails the first try, and the retry re-runs only
the failed items' chunks (and in them only the failed items); a malformed record fails on every
try and, with ``catch=True``, becomes a ``Failure`` in its place in the list.

    airflow dags test flow_foreach
    airflow dags test flow_foreach -c '{"flow_compute": "batch"}'    # one array job per task
    airflow dags test flow_foreach -c '{"flow_compute": "kubernetes", "n_items": 2000}'  # a Job
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Param, dag, task

from provider import Failure, ForeachOptions, Resources, Retry, flow_params, flow_task

N_ITEMS = 10_000
RECORDS = [f"r{i}={3 * i}" if i != 13 else "r13" for i in range(100)]  # r13 has no value


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

    @flow_task(retry=Retry(times=1, delay="1s"), catch=True, foreach=ForeachOptions(chunk_size=25))
    def parse(record: str) -> int:
        from provider import flow_context

        key, _, value = record.partition("=")
        if key == "r60" and flow_context()["try_number"] == 1:
            raise ConnectionError("the source timed out")  # stands in for a flaky source
        return int(value)

    @task
    def check(
        scores: list[int], summary: dict[str, int], parsed: list, salt: int, params: Any = None
    ) -> str:
        expected = [(i * i + salt) % 9973 for i in range(params["n_items"])]
        assert scores == expected, "results out of order or wrong"
        assert summary == {"count": len(expected), "total": sum(expected)}, summary
        failure = parsed.pop(13)  # r13's, caught; r60 healed on the retry
        assert isinstance(failure, Failure) and "invalid literal" in failure.message, failure
        assert parsed == [3 * i for i in range(100) if i != 13], parsed
        return f"{len(scores)} items checked"

    scores = score.partial(salt=7).foreach(item=list_items())
    check(scores, summarize(scores), parse.foreach(record=RECORDS), salt=7)


flow_foreach()
