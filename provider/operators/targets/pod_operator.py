"""``KubernetesPodOperator`` with a start that explains itself: a pod that cannot start fails in
seconds with the reason (``provider.translate.pending``), not after the startup timeout."""

from __future__ import annotations

import asyncio
import time
from contextlib import suppress
from typing import Any

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.cncf.kubernetes.utils.pod_manager import (
    PodLaunchFailedException,
    PodLaunchTimeoutException,
)

from provider.compat.kubernetes import watch_pod_events
from provider.translate.pending import StartWatch, unschedulable_message


class FlowPodOperator(KubernetesPodOperator):
    """The official operator, waiting for the pod's start with a :class:`StartWatch`.

    ``schedule_timeout`` is how long an unschedulable pod may wait for a node (a cluster
    autoscaler's); ``start_failure`` says, after a failed start, why. A deferrable one waits for
    the start on the worker, then defers while the pod runs.
    """

    def __init__(
        self, *, schedule_timeout: float, placement_hint: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.flow_schedule_timeout = schedule_timeout
        self.flow_placement_hint = placement_hint
        self.start_failure: str | None = None
        self._start_awaited = False

    def await_pod_start(self, pod: Any) -> None:
        asyncio.run(self._await_start(pod))

    async def _await_start(self, pod: Any) -> None:
        manager = self.pod_manager
        manager.stop_watching_events = False
        events = None
        if self.log_events_on_startup:
            interval = self.startup_check_interval_seconds
            events = asyncio.create_task(watch_pod_events(manager, pod, interval))
        try:
            await self._watch_start(pod)
        finally:
            manager.stop_watching_events = True
            if events is not None:
                events.cancel()
                with suppress(asyncio.CancelledError):
                    await events

    async def _watch_start(self, pod: Any) -> None:
        watch = StartWatch(self.flow_schedule_timeout, self.flow_placement_hint)
        scheduled_at = None
        while True:
            remote = self.pod_manager.read_pod(pod)
            status = remote.status
            if status.phase == "Failed" and status.container_statuses is None:
                raise PodLaunchFailedException("Pod failed before containers started")
            if status.phase not in ("Pending", "Unknown"):
                self.log.info("pod %s is %s", pod.metadata.name, status.phase)
                return
            now = time.monotonic()
            verdict = watch.see(remote, now)
            if verdict.note:
                self.log.warning("%s", verdict.note)
            if verdict.failure:
                self.start_failure = verdict.failure
                self.log.error("%s", verdict.failure)
                raise PodLaunchFailedException(verdict.failure)
            if unschedulable_message(remote) is None:
                scheduled_at = scheduled_at or now
                if now - scheduled_at >= self.startup_timeout_seconds:
                    self.start_failure = (
                        f"pod {pod.metadata.name} did not start within "
                        f"{self.startup_timeout_seconds}s of being scheduled"
                    )
                    raise PodLaunchTimeoutException(self.start_failure)
            await asyncio.sleep(self.startup_check_interval_seconds)

    def invoke_defer_method(self, last_log_time: Any = None, context: Any = None) -> None:
        """Defer once the pod runs: its start is watched here, where a failure is explained."""
        if not self._start_awaited:
            self._start_awaited = True
            try:
                self.await_pod_start(self.pod)
            except (PodLaunchFailedException, PodLaunchTimeoutException):
                remote = self.pod_manager.read_pod(self.pod)
                self.post_complete_action(
                    pod=self.pod, remote_pod=remote, context=context, result=None
                )
                raise
        super().invoke_defer_method(last_log_time=last_log_time, context=context)
