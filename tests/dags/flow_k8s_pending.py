"""Pods that never start: a missing Secret, an image the registry lacks, no node for the GPU.

Each task fails in seconds with the reason, and its pod is deleted.
"""

from __future__ import annotations

from airflow.sdk import dag

from provider import Environment, Resources, flow_task


@dag(schedule=None, catchup=False)
def flow_k8s_pending():
    @flow_task(compute="kubernetes", environment=Environment(secrets=["db-creds"]))
    def needs_secret() -> int:
        return 1

    @flow_task(compute="kubernetes", environment=Environment(image="registry.example/nope:1"))
    def bad_image() -> int:
        return 1

    @flow_task(compute="kubernetes", resources=Resources(gpu=1, gpu_type="A100"))
    def no_node() -> int:
        return 1

    needs_secret()
    bad_image()
    no_node()


flow_k8s_pending()
