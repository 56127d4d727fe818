"""Fan-out with ``.expand``: one flow task instance per shard, then a reduce.

airflow dags test flow_fanout
airflow dags test flow_fanout -c '{"flow_tags": ["demo"], "flow_namespace": "team:ml"}'
"""

from __future__ import annotations

from airflow.sdk import dag
from flow_helpers import polynomial

from provider import Resources, Retry, flow_params, flow_task, record_run_state

SCALE = 10  # a module-level constant the tasks read: the DAG module is pickled by value


def shard_bounds(n_shards: int, size: int) -> list[tuple[int, int]]:
    step = size // n_shards
    return [(i * step, (i + 1) * step) for i in range(n_shards)]


@dag(
    schedule=None,
    catchup=False,
    params=flow_params(tags=["example"]),
    tags=["flowtask"],
    # Record the run's end, so `flowtask runs` and provider.client know when it finished.
    on_success_callback=record_run_state,
    on_failure_callback=record_run_state,
)
def flow_fanout():
    @flow_task(resources=Resources(cpu="500m", memory="512Mi"))
    def list_shards(n_shards: int) -> list[tuple[int, int]]:
        return shard_bounds(n_shards, size=1000)

    @flow_task(resources=Resources(cpu=1, memory=1024), retry=Retry(times=1, delay="1s"))
    def score(bounds: tuple[int, int], scale: int) -> float:
        low, high = bounds
        return sum(polynomial(x / SCALE) for x in range(low, high)) * scale

    @flow_task
    def total(scores: list[float]) -> dict[str, float]:
        return {"shards": len(scores), "total": sum(scores)}

    total(score.partial(scale=2).expand(bounds=list_shards(n_shards=4)))


flow_fanout()
