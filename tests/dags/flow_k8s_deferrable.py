"""The same pod twice: deferred (the worker slot is free while it runs) and held.

``warm_up`` runs first, so neither pays for the imports of the first task of a `dags test`.
"""

from __future__ import annotations

import time

from airflow.sdk import dag

from provider import KubernetesOptions, flow_task

SECONDS = 12


@dag(schedule=None, catchup=False)
def flow_k8s_deferrable():
    @flow_task(compute="kubernetes")
    def warm_up() -> int:
        return 1

    @flow_task(compute="kubernetes", kubernetes=KubernetesOptions(deferrable=True))
    def deferred(seconds: int) -> str:
        time.sleep(seconds)
        return "deferred"

    @flow_task(compute="kubernetes")
    def held(seconds: int) -> str:
        time.sleep(seconds)
        return "held"

    @flow_task(compute="kubernetes", kubernetes=KubernetesOptions(deferrable=True))
    def deferred_failure() -> str:
        raise ValueError("the pod's function failed after the deferral")

    first = warm_up()
    first >> deferred(SECONDS) >> held(SECONDS)
    first >> deferred_failure()


flow_k8s_deferrable()
