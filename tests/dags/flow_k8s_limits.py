"""Pods that end badly: over the memory limit, over the timeout, evicted (by the test).

``hog`` runs out of memory twice: once plainly, once with ``catch=`` so the OOM kill reaches
downstream as a ``Failure``. ``grows`` runs out of memory once and its retry asks for twice as
much; ``evictee`` is evicted once and submitted again within its one Airflow try.
"""

from __future__ import annotations

import time

from airflow.sdk import dag

from provider import Failure, Resources, Retry, flow_task


@dag(schedule=None, catchup=False)
def flow_k8s_limits():
    @flow_task(compute="kubernetes", resources=Resources(memory="160Mi"))
    def hog() -> int:
        ballast = b"x" * (512 << 20)  # written, so every page is resident
        # The test kubelet samples memory every 20 ms, where a kernel kills at once: hold on,
        # so a busy machine cannot let the task finish between two samples.
        time.sleep(60)
        return len(ballast)

    # 10 s, and after the warm-up: the first task of a `dags test` process spends seconds on
    # imports, and the timeout must fire while the pod runs, not before it exists.
    @flow_task(compute="kubernetes", timeout="10s")
    def sleepy() -> str:
        time.sleep(120)
        return "never"

    @flow_task(compute="kubernetes", timeout="90s")
    def evictee() -> str:
        time.sleep(8)  # the test evicts the first pod while it sleeps
        return "survived an eviction"

    @flow_task(
        compute="kubernetes",
        resources=Resources(memory="200Mi"),
        retry=Retry(times=1, delay="1s", on_oom="grow"),
    )
    def grows() -> int:
        ballast = b"x" * (220 << 20)  # over 200Mi with the runtime, well under 400Mi
        time.sleep(3)  # held, so the test kubelet's memory sampling sees it
        return len(ballast)

    @flow_task
    def after_oom(outcome) -> str:
        assert isinstance(outcome, Failure) and "was OOMKilled" in outcome.message, outcome
        return outcome.type

    hog()
    after_oom(hog.override(task_id="caught_hog", catch=True)()) >> sleepy()
    evictee()
    grows()


flow_k8s_limits()
