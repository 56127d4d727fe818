"""A task that asks for Kubernetes; `-c '{"flow_compute": "local"}'` runs it on the laptop.

With a target that cannot run it (unavailable, or refusing its Kubernetes Secret names), the
task fails at once: retrying cannot help.
"""

from __future__ import annotations

from airflow.sdk import dag

from provider import Environment, Resources, Retry, flow_params, flow_task


@dag(schedule=None, catchup=False, params=flow_params(tags=["k8s"]))
def flow_targets():
    @flow_task(
        compute="kubernetes",
        resources=Resources(cpu=4, memory="16Gi", gpu=1, gpu_type="nvidia-tesla-t4"),
        environment=Environment(image="python:3.11-slim", secrets=["db-creds"]),
        retry=Retry(times=2, delay="1s"),
    )
    def train() -> str:
        return "trained"

    train()


flow_targets()
