"""Run a stored flow task payload as a pod, through the official ``KubernetesPodOperator``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NoReturn

from provider.core.environments.tasks import container_environments
from provider.core.foreach import ChunkProgress
from provider.core.targets.base import RESUME_KEY, ComputeTarget, Launch, Outcome, TaskRun
from provider.specs import TaskSpec, check_secrets_for
from provider.store import Reference
from provider.translate.kubernetes import bootstrap_environments, pod_exit_code, pod_platform

JOB_POLL_SECONDS = 1.0  # between reads of a .foreach Job's status
PROGRESS_SECONDS = 5.0  # between progress lines of a .foreach Job


class KubernetesTarget(ComputeTarget):
    """``compute="kubernetes"``: a pod through the official ``KubernetesPodOperator``."""

    name = "kubernetes"

    def platform(self, spec: TaskSpec) -> str:
        return pod_platform(spec)

    def __init__(self) -> None:
        self._pod_operator: Any = None
        self._job_operator: Any = None
        self._code: Reference | None = None
        self._envs: Any = None

    def check(self, spec: TaskSpec) -> None:
        from provider import config
        from provider.operators.targets import ComputeUnavailable

        check_secrets_for(self.name, spec.environment.secrets)
        problem = config.kubernetes_unconfigured()
        if problem is not None:
            raise ComputeUnavailable(f"compute='kubernetes': {problem}")

    def prepare(self, run: TaskRun) -> dict[str, Reference]:
        from provider.core.code import stored_code_package
        from provider.translate.command import store_out_of_reach

        out_of_reach = store_out_of_reach(run.store.root_uri)
        if out_of_reach is not None:  # a pod may mount the folder (a volume at the same path)
            run.log.warning("%s", out_of_reach)
        self._code = stored_code_package(run)
        self._envs = container_environments(run, self.platform(run.spec))
        return {"code_package": self._code, **self._envs.records()}

    def run(self, run: TaskRun, context: Any) -> Outcome:
        from airflow.sdk.exceptions import TaskDeferred

        assert self._code is not None, "prepare() stores the code package first"
        self._pod_operator = pod_op = self._operator(run, self._code)
        if not pod_op.deferrable:
            return self._run_resubmitting(run, context)
        state = {"code": self._code.to_json(), "environments": self._envs.state()}
        resume = self.resume_state(run, state)
        pod_op.trigger_kwargs = {**(pod_op.trigger_kwargs or {}), RESUME_KEY: resume}
        try:
            return run_pod(pod_op, context, run.manifest_key, deferrable=True)
        except TaskDeferred as deferral:
            name = pod_op.pod.metadata.name
            run.log.info("pod %s runs deferred: the worker slot is free until it ends", name)
            _defer(deferral, resume)

    def _run_resubmitting(self, run: TaskRun, context: Any) -> Outcome:
        """Run the pod; one lost to the infrastructure (evicted, preempted, gone with its node)
        before its runtime reported is submitted again, ``Retry(infra=...)`` times, within this
        Airflow try: the user's retries are for the user's failures."""
        assert self._code is not None
        limit = run.spec.retry.infra
        for attempt in range(limit + 1):
            outcome = run_pod(self._pod_operator, context, run.manifest_key)
            if outcome.kind != "infrastructure" or attempt == limit or _reported(run, outcome):
                return outcome
            run.log.warning(
                "%s; submitting the pod again (%d of %d, Retry(infra=%d)), within this try: "
                "Airflow's retries are not spent",
                outcome.failure,
                attempt + 1,
                limit,
                limit,
            )
            self._pod_operator = self._operator(run, self._code)
        raise AssertionError("unreachable")

    def resume(self, run: TaskRun, context: Any, event: Any, state: Mapping[str, Any]) -> Outcome:
        from airflow.sdk.exceptions import AirflowException

        from provider.core.environments.tasks import ContainerEnvironments
        from provider.translate import describe_pod_failure
        from provider.translate.kubernetes import pod_failure_kind

        self._envs = ContainerEnvironments.from_state(state.get("environments"))
        self._pod_operator = pod_op = self._operator(run, Reference.from_json(state["code"]))
        failure = None
        try:
            pod_op.trigger_reentry(context, event)
        except AirflowException as exc:
            failure = describe_pod_failure(pod_op.pod) or str(exc).splitlines()[0]
        return Outcome(
            manifest_key=run.manifest_key,
            exit_code=pod_exit_code(pod_op.pod),
            failure=failure,
            kind=pod_failure_kind(pod_op.pod) if failure else None,
        )

    def _operator(self, run: TaskRun, code: Reference) -> Any:
        return pod_operator(run.task_id, run.spec, Launch.of(run, code, self._envs))

    def run_foreach(self, run: TaskRun, chunks: list[int], context: Any) -> Outcome:
        """One Indexed Job: pod ``i`` runs ``chunks[i]``; progress is logged as it goes."""
        from provider import settings
        from provider.operators.targets.job_operator import server_version
        from provider.translate.kubernetes_job import (
            describe_job_failure,
            supports_backoff_limit_per_index,
        )

        assert self._code is not None, "prepare() stores the code package first"
        major, minor = server_version(settings.value("kubernetes_conn_id"))
        per_index = supports_backoff_limit_per_index(major, minor)
        if not per_index:
            run.log.warning(
                "Kubernetes %s.%s has no backoffLimitPerIndex (1.29 and later): the Job's pods "
                "share one budget of %d failures (backoffLimit) instead of %d each",
                major,
                minor,
                run.spec.retry.infra * len(chunks),
                run.spec.retry.infra,
            )
        self._job_operator = job_op = job_operator(
            run.task_id,
            run.spec,
            Launch.of(run, self._code, self._envs),
            chunks=chunks,
            per_index=per_index,
            parallel=self.chunking(run.spec, run.foreach.length)[1],
        )
        if job_op.deferrable:
            run.log.info("a .foreach Job is watched from the worker (deferrable is for pods)")
        report = job_op.run_indexed(context, ChunkProgress(run, chunks, PROGRESS_SECONDS).see)
        failure = report.start_failure or describe_job_failure(report.state, report.pods, chunks)
        return Outcome(run.manifest_key, exit_code=0 if failure is None else 1, failure=failure)

    def kill(self) -> None:
        if self._pod_operator is not None:
            self._pod_operator.on_kill()
        if self._job_operator is not None:
            self._job_operator.on_kill()


def _translated(spec: TaskSpec, command: list[str], launch: Launch) -> dict[str, Any]:
    """The pod translation, shared by single pods and a Job's pods."""
    from provider import config, settings
    from provider.translate import pod_operator_kwargs
    from provider.translate.kubernetes import DEFAULT_GPU_TYPE_LABEL
    from provider.translate.pending import placement_hint

    options = spec.kubernetes.over(settings.kubernetes_defaults())
    kwargs = pod_operator_kwargs(
        spec,
        identity=launch.identity,
        command=command,
        image=spec.environment.image or config.default_image(),
        manifest_key=launch.manifest_key,
        options=options,
        env=config.pod_store_env(),
        secrets=settings.value("kubernetes_secrets"),
        conn_id=settings.value("kubernetes_conn_id"),
    )
    kwargs["schedule_timeout"] = config.kubernetes_schedule_timeout(options)
    kwargs["placement_hint"] = placement_hint(
        spec.resources.gpu_type, options.gpu_type_label or DEFAULT_GPU_TYPE_LABEL
    )
    kwargs["deferrable"] = bool(options.deferrable)
    if launch.environments is not None and launch.environments.archives:
        from provider.translate.environment import env_cache_volume

        volume, mount = env_cache_volume(settings.value("kubernetes_env_cache_path"))
        kwargs["volumes"] = [*kwargs.get("volumes", []), volume]
        kwargs["volume_mounts"] = [*kwargs.get("volume_mounts", []), mount]
    return kwargs


def pod_operator(task_id: str, spec: TaskSpec, launch: Launch) -> Any:
    """A ``KubernetesPodOperator`` (not attached to any DAG) that runs the payload."""
    from provider.operators.targets.pod_operator import FlowPodOperator
    from provider.translate import bootstrap_command

    command = bootstrap_command(
        launch.store_uri,
        launch.code,
        launch.payload,
        launch.manifest_key,
        **bootstrap_environments(launch.environments),
    )
    return FlowPodOperator(task_id=task_id, **_translated(spec, command, launch))


def job_operator(
    task_id: str,
    spec: TaskSpec,
    launch: Launch,
    *,
    chunks: list[int],
    per_index: bool,
    parallel: int,
) -> Any:
    """A ``KubernetesJobOperator`` whose Indexed Job runs ``chunks`` of a ``.foreach`` payload,
    its pods translated as single pods are."""
    from provider.operators.targets.job_operator import FlowJobOperator
    from provider.translate import bootstrap_command
    from provider.translate.kubernetes_job import foreach_mode, indexed_job_kwargs

    command = bootstrap_command(
        launch.store_uri,
        launch.code,
        launch.payload,
        launch.manifest_key,
        foreach=foreach_mode(chunks),
        **bootstrap_environments(launch.environments),
    )
    kwargs = _translated(spec, command, launch)
    kwargs |= indexed_job_kwargs(
        str(launch.identity["task_id"]),
        chunks,
        max_parallel=parallel,
        retries=spec.retry.infra,
        per_index=per_index,
    )
    # ``deferrable`` is kept for the target to read: the Job is watched from the worker.
    return FlowJobOperator(task_id=task_id, job_poll_interval=JOB_POLL_SECONDS, **kwargs)


def run_pod(pod_op: Any, context: Any, manifest_key: str, *, deferrable: bool = False) -> Outcome:
    """Run the pod to its end; a failed pod is described, not raised, so the manifest decides.

    A deferrable operator raises ``TaskDeferred`` once its pod runs.
    """
    from airflow.sdk.exceptions import AirflowException, AirflowTaskTimeout

    from provider.translate import describe_pod_failure
    from provider.translate.kubernetes import MANIFEST_ANNOTATION, pod_failure_kind

    failure = None
    context = without_pod_xcoms(context)
    try:
        if deferrable:
            pod_op.execute(context)  # the name check, then create, watch the start, defer
        else:
            # execute() adds only a name check (pod_name's names pass it) to this.
            pod_op.execute_sync(context)
    except AirflowTaskTimeout:
        raise
    except AirflowException as exc:
        if isinstance(exc.__context__, AirflowTaskTimeout):  # raised again by the pod cleanup
            raise exc.__context__ from None
        failure = (
            getattr(pod_op, "start_failure", None)  # a FlowPodOperator's account of its start
            or describe_pod_failure(pod_op.remote_pod or pod_op.pod)
            or str(exc).splitlines()[0]
        )
    # A pod reattached after a worker restart belongs to an earlier try: read its manifest.
    annotations = (pod_op.pod.metadata.annotations if pod_op.pod else None) or {}
    return Outcome(
        manifest_key=annotations.get(MANIFEST_ANNOTATION, manifest_key),
        exit_code=pod_exit_code(pod_op.remote_pod),
        failure=failure,
        kind=pod_failure_kind(pod_op.remote_pod or pod_op.pod) if failure else None,
    )


class _TaskInstanceWithoutPodXComs:
    """The task instance as the pod operator sees it: everything but its ``pod_name`` and
    ``pod_namespace`` XComs, which a flow task's users did not ask for (its XCom is its
    result; the pod is named in the task log)."""

    _DROPPED = frozenset({"pod_name", "pod_namespace"})

    def __init__(self, ti: Any) -> None:
        self._ti = ti

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ti, name)

    def xcom_push(self, key: str, value: Any, *args: Any, **kwargs: Any) -> Any:
        if key in self._DROPPED:
            return None
        return self._ti.xcom_push(key, value, *args, **kwargs)


def without_pod_xcoms(context: Any) -> Any:
    """``context`` with a task instance that does not push the pod's name and namespace."""
    ti = context.get("ti")
    if ti is None or isinstance(ti, _TaskInstanceWithoutPodXComs):
        return context
    quiet = _TaskInstanceWithoutPodXComs(ti)
    return {**context, "ti": quiet, "task_instance": quiet}


def _reported(run: TaskRun, outcome: Outcome) -> bool:
    """Whether the runtime wrote its manifest (then the try has its outcome: no new pod)."""
    return run.store.backend.stat(outcome.manifest_key) is not None


def _defer(deferral: Any, resume: Mapping[str, Any]) -> NoReturn:
    """Hand ``deferral`` (the official operator's ``TaskDeferred``) to Airflow, resuming in the
    flow task operator's ``execute_complete`` and then in ``KubernetesTarget.resume``."""
    from airflow.sdk.exceptions import TaskDeferred

    raise TaskDeferred(
        trigger=deferral.trigger,
        method_name="execute_complete",
        kwargs={"resume": dict(resume)},
        timeout=deferral.timeout,
    )
