"""Scaling up: the same Python functions run as Kubernetes pods, results pass by reference.

Every flow task here says ``compute="kubernetes"`` and what it needs; flowtask turns that into a
``KubernetesPodOperator`` pod (see it with ``flowtask render flow_kubernetes score``). Pods need
an artifact store they can reach (``[flow_task] artifact_store = s3://...``) and an image with
the worker's Python (``[flow_task] default_image``; boto3 in it saves an install per pod).

    airflow dags test flow_kubernetes                                   # on the cluster
    airflow dags test flow_kubernetes -c '{"flow_compute": "local"}'    # on the laptop
"""

from __future__ import annotations

import random

from airflow.sdk import dag
from flow_helpers import polynomial

from provider import Environment, Resources, Retry, flow_params, flow_task


@dag(schedule=None, catchup=False, params=flow_params(tags=["example", "k8s"]), tags=["flowtask"])
def flow_kubernetes():
    @flow_task(compute="kubernetes", resources=Resources(cpu="500m", memory="512Mi"), timeout="10m")
    def make_batches(n_batches: int, size: int) -> list[list[float]]:
        rng = random.Random(7)
        return [[rng.uniform(-1, 1) for _ in range(size)] for _ in range(n_batches)]

    @flow_task(
        compute="kubernetes",
        resources=Resources(cpu=1, memory="1Gi"),
        retry=Retry(times=2, delay="10s"),
        timeout="10m",
        environment=Environment(env={"FLOW_SCALE": "2"}),
    )
    def score(batch: list[float]) -> float:
        import os

        return sum(polynomial(x) for x in batch) * float(os.environ["FLOW_SCALE"])

    @flow_task(compute="kubernetes", resources=Resources(cpu="250m", memory="512Mi"))
    def summarize(scores: list[float]) -> dict[str, float]:
        return {"batches": len(scores), "total": round(sum(scores), 6)}

    summarize(score.expand(batch=make_batches(n_batches=3, size=1000)))


flow_kubernetes()
