"""Scaling up on AWS Batch: the same Python functions run as Batch jobs, results by reference.

Every flow task here says ``compute="batch"`` and what it needs; flowtask registers one job
definition per distinct image / secrets / shared memory / roles and submits one job per task try
through ``BatchOperator`` (see the requests with ``flowtask render flow_batch score --compute
batch``). Jobs need a queue (``[flow_task] batch_job_queue``), an artifact store they can reach
(``[flow_task] artifact_store = s3://...``) and an image with the worker's Python.

Batch retries a job whose Spot host is reclaimed (``BatchOptions(attempts=...)``) without spending
the task's own retries. ``fit_in_memory`` asks for less memory than it uses: on Batch the job is
killed, ``catch=True`` hands a ``Failure`` downstream, and the DAG goes on.

    airflow dags test flow_batch                                   # on AWS Batch
    airflow dags test flow_batch -c '{"flow_compute": "local"}'    # on the laptop
"""

from __future__ import annotations

import random

from airflow.sdk import dag
from flow_helpers import polynomial

from provider import BatchOptions, Environment, Failure, Resources, Retry, flow_params, flow_task


@dag(schedule=None, catchup=False, params=flow_params(tags=["example", "batch"]), tags=["flowtask"])
def flow_batch():
    @flow_task(compute="batch", resources=Resources(cpu=1, memory="1Gi"), timeout="10m")
    def make_batches(n_batches: int, size: int) -> list[list[float]]:
        rng = random.Random(7)
        return [[rng.uniform(-1, 1) for _ in range(size)] for _ in range(n_batches)]

    @flow_task(
        compute="batch",
        resources=Resources(cpu=2, memory="2Gi"),
        retry=Retry(times=1, delay="10s"),  # for the function's own failures
        timeout="10m",
        environment=Environment(env={"FLOW_SCALE": "2"}),
        batch=BatchOptions(attempts=3, tags={"team": "ml"}),  # for lost hosts
    )
    def score(batch: list[float]) -> float:
        import os

        print(f"scoring {len(batch)} values")
        return sum(polynomial(x) for x in batch) * float(os.environ["FLOW_SCALE"])

    @flow_task(compute="batch", resources=Resources(memory="128Mi"), catch=True)
    def fit_in_memory(batches: list[list[float]]) -> int:
        import time

        copies = []
        for _ in range(24):  # 384 MiB in all, three times what the task asked for
            copies.append(bytearray(16 << 20))
            time.sleep(0.05)
        return len(copies) * len(batches)

    @flow_task(compute="batch", resources=Resources(memory="1Gi", shared_memory="256Mi"))
    def summarize(scores: list[float], fitted: int | Failure) -> dict[str, object]:
        outcome = f"failed: {fitted.message}" if isinstance(fitted, Failure) else fitted
        return {"batches": len(scores), "total": round(sum(scores), 6), "fit": outcome}

    batches = make_batches(n_batches=3, size=1000)
    summarize(score.expand(batch=batches), fit_in_memory(batches))


flow_batch()
