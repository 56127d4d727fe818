"""``KubernetesJobOperator`` for ``.foreach``: one Indexed Job, watched to its end.

The official operator builds the Job (``build_job_request_obj``: the pod template is
``KubernetesPodOperator``'s own), creates it, and deletes it on kill (``on_kill``, with its
propagation policy). Its ``execute`` follows only the pods it finds right after the create and
reads their logs at the end; a Job of thousands of pods is watched here instead: its status
every ``job_poll_interval`` seconds, its pods while none has started (a pod that cannot start
fails the Job in seconds, with the reason), then now and then, and the logs of pods that failed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from airflow.providers.cncf.kubernetes.operators.job import KubernetesJobOperator
from kubernetes.client.rest import ApiException

from provider.compat.kubernetes import with_hook
from provider.translate.kubernetes_job import (
    JOB_NAME_LABEL,
    JobReport,
    JobStartWatch,
    JobState,
    api_message,
    job_state,
    pod_index,
)

IN_CLUSTER_LABEL = "airflow_kpo_in_cluster"
PODS_EVERY = 10  # status polls between listings of a started Job's pending pods
PENDING = "status.phase=Pending"
NOT_SUCCEEDED = "status.phase!=Succeeded"
LOGGED_PODS = 5  # failed pods whose log tail is shown
LOG_TAIL = 20


class FlowJobOperator(KubernetesJobOperator):
    """The official Job operator with ``backoffLimitPerIndex`` and a watch that explains itself.

    ``schedule_timeout`` and ``placement_hint`` are as for a single pod (``FlowPodOperator``).
    """

    def __init__(
        self,
        *,
        backoff_limit_per_index: int | None = None,
        schedule_timeout: float,
        placement_hint: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.flow_backoff_limit_per_index = backoff_limit_per_index
        self.flow_schedule_timeout = schedule_timeout
        self.flow_placement_hint = placement_hint
        self.flow_busy = self.flow_busy_cpu = 0.0

    def build_job_request_obj(self, context: Any = None) -> Any:
        job = super().build_job_request_obj(context)
        job.spec.backoff_limit_per_index = self.flow_backoff_limit_per_index
        return job

    def render_job(self) -> Any:
        """The ``V1Job`` without a cluster: as ``build_pod_request_obj(dry_run=True)`` does for a
        pod, nothing asks the API whether the worker runs in the cluster."""
        with with_hook(self, _OfflineHook(self.hook)):
            job = self.build_job_request_obj(None)
        job.spec.template.metadata.labels.pop(IN_CLUSTER_LABEL, None)
        return job

    def run_indexed(self, context: Any, on_state: Callable[[JobState], None]) -> JobReport:
        """Create the Job, watch it to its end (``on_state`` sees each reading), delete it."""
        self.name = self._set_name(self.name)
        self.job_request_obj = request = self.build_job_request_obj(context)
        began = time.perf_counter()
        try:
            self.job = self.create_job(request)  # set before anything can kill it
        except ApiException as exc:
            if not 400 <= (exc.status or 0) < 500:
                raise
            refused = f"the API server refused job {request.metadata.name}: {api_message(exc)}"
            self.log.error("%s", refused)
            return JobReport(JobState(request.metadata.name), start_failure=refused)
        name = request.metadata.name
        self.log.info(
            "job %s: %d pods, %d at a time (%s), created in %.2fs",
            name,
            self.completions,
            self.parallelism,
            f"backoffLimitPerIndex={self.flow_backoff_limit_per_index}"
            if self.flow_backoff_limit_per_index is not None
            else f"backoffLimit={self.backoff_limit}",
            time.perf_counter() - began,
        )
        finished = False
        try:
            watched = time.perf_counter()
            report = self._watch(on_state)
            self.log.info(
                "job %s: watched for %.1fs, %.2fs of it reading its state and progress "
                "(%.2fs of this thread's CPU; the rest waiting for answers)",
                name,
                time.perf_counter() - watched,
                self.flow_busy,
                self.flow_busy_cpu,
            )
            finished = True
            report.pods = self._pods(NOT_SUCCEEDED)  # what explains a failure: not thousands
            self._log_failed_pods(report.pods)
            return report
        finally:
            self.delete_job("Background" if finished else self.on_kill_propagation_policy)

    def _watch(self, on_state: Callable[[JobState], None]) -> JobReport:
        start = JobStartWatch(self.flow_schedule_timeout, self.flow_placement_hint)
        polls = 0
        self.flow_busy = 0.0  # the worker's own time in the watch: reading, not waiting
        self.flow_busy_cpu = 0.0
        while True:
            began, cpu = time.perf_counter(), time.thread_time()
            state = self._state()
            on_state(state)
            if state.finished:
                self.flow_busy += time.perf_counter() - began
                self.flow_busy_cpu += time.thread_time() - cpu
                return JobReport(state)
            started = start.started or state.started
            if not started or polls % PODS_EVERY == 0:
                # Once a pod ran, only pending ones can tell of a pod that cannot start.
                pods = self._pods(PENDING if started else None)
                verdict = start.see(pods, time.monotonic())
                if verdict.note:
                    self.log.warning("%s", verdict.note)
                if verdict.failure:
                    self.log.error("%s", verdict.failure)
                    return JobReport(state, self._pods(), start_failure=verdict.failure)
            polls += 1
            self.flow_busy += time.perf_counter() - began
            self.flow_busy_cpu += time.thread_time() - cpu
            time.sleep(self.job_poll_interval)

    @property
    def _created(self) -> Any:
        assert self.job is not None, "run_indexed() creates the Job first"
        return self.job

    def _state(self) -> JobState:
        name, namespace = self._created.metadata.name, self._created.metadata.namespace
        try:
            return job_state(self.hook.get_job_status(job_name=name, namespace=namespace))
        except ApiException as exc:
            if exc.status != 404:
                raise
            return JobState(name, finished="Failed", reason="Deleted", message="job was deleted")

    def _pods(self, phases: str | None = None) -> list[Any]:
        """The Job's pods (of the phases a field selector names): a Job of a thousand pods is
        a listing of megabytes, read now and then, not on every poll."""
        selector = f"{JOB_NAME_LABEL}={self._created.metadata.name}"
        listed = self.client.list_namespaced_pod(
            self._created.metadata.namespace,
            label_selector=selector,
            **({"field_selector": phases} if phases else {}),
        )
        return list(listed.items)

    def _log_failed_pods(self, pods: list[Any]) -> None:
        """The last lines of the first failed pods' logs (a chunk's items' own failures are in
        its manifest; a pod fails when its runtime could not finish)."""
        failed = [p for p in pods if p.status and p.status.phase == "Failed"]
        for pod in failed[:LOGGED_PODS]:
            try:
                response = self.client.read_namespaced_pod_log(
                    pod.metadata.name,
                    pod.metadata.namespace,
                    container=self.base_container_name,
                    tail_lines=LOG_TAIL,
                    _preload_content=False,
                )
                text = response.data.decode(errors="replace").rstrip()
            except Exception as exc:  # a log is a courtesy: never hide the outcome behind it
                text = f"(no log: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
            prefix = f"[index {pod_index(pod)}] "
            self.log.warning(
                "pod %s failed; its last lines:\n%s",
                pod.metadata.name,
                "\n".join(prefix + line for line in text.splitlines()),
            )

    def delete_job(self, propagation_policy: str) -> None:
        """Delete the Job and its pods (gone already is fine)."""
        if self.job is None:
            return
        try:
            self.job_client.delete_namespaced_job(
                name=self.job.metadata.name,
                namespace=self.job.metadata.namespace,
                propagation_policy=propagation_policy,
            )
        except ApiException as exc:
            if exc.status != 404:
                raise

    def on_kill(self) -> None:
        try:
            super().on_kill()  # deletes the Job with on_kill_propagation_policy
        except ApiException as exc:
            if exc.status != 404:
                raise


class _OfflineHook:
    """A ``KubernetesHook`` that answers "not in the cluster" without building an API client."""

    is_in_cluster = False

    def __init__(self, hook: Any) -> None:
        self._hook = hook

    def __getattr__(self, name: str) -> Any:
        return getattr(self._hook, name)


def server_version(conn_id: str | None) -> tuple[str, str]:
    """The API server's ``/version`` (major, minor) through the Kubernetes connection."""
    from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook
    from kubernetes.client import VersionApi

    info = VersionApi(KubernetesHook(conn_id=conn_id).api_client).get_code()
    return str(info.major), str(info.minor)
