"""Run a stored flow task payload as a pod, through the official ``KubernetesPodOperator``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from provider.operators.targets.base import ComputeTarget, Outcome, TaskRun
from provider.specs import TaskSpec, check_secrets_for
from provider.store import Reference


class KubernetesTarget(ComputeTarget):
    """``compute="kubernetes"``: a pod through the official ``KubernetesPodOperator``."""

    name = "kubernetes"

    def __init__(self) -> None:
        self._pod_operator: Any = None
        self._code: Reference | None = None

    def check(self, spec: TaskSpec) -> None:
        check_secrets_for(self.name, spec.environment.secrets)

    def prepare(self, run: TaskRun) -> dict[str, Reference]:
        from provider.operators.targets.code import stored_code_package

        if run.store.root_uri.startswith("file://"):
            run.log.warning(
                "the artifact store %s is a local folder: pods can only use it where they "
                "mount the same path; set [flow_task] artifact_store to an s3:// URI",
                run.store.root_uri,
            )
        self._code = stored_code_package(run)
        return {"code_package": self._code}

    def run(self, run: TaskRun, context: Any) -> Outcome:
        assert self._code is not None, "prepare() stores the code package first"
        self._pod_operator = pod_operator(
            run.task_id,
            run.spec,
            store_uri=run.store.root_uri,
            code=self._code,
            payload=run.payload.to_json(),
            manifest_key=run.manifest_key,
            identity=run.identity,
        )
        return run_pod(self._pod_operator, context, run.manifest_key)

    def kill(self) -> None:
        if self._pod_operator is not None:
            self._pod_operator.on_kill()


def pod_operator(
    task_id: str,
    spec: TaskSpec,
    *,
    store_uri: str,
    code: Reference,
    payload: Mapping[str, Any],
    manifest_key: str,
    identity: Mapping[str, Any],
) -> Any:
    """A ``KubernetesPodOperator`` (not attached to any DAG) that runs the payload."""
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    from provider import config
    from provider.compute import bootstrap_command, pod_operator_kwargs

    command = bootstrap_command(store_uri, code, payload, manifest_key, pip=spec.environment.pip)
    kwargs = pod_operator_kwargs(
        spec,
        identity=identity,
        command=command,
        image=spec.environment.image or config.default_image(),
        manifest_key=manifest_key,
        options=spec.kubernetes.over(config.kubernetes_defaults()),
        env=config.pod_store_env(),
        secrets=config.kubernetes_secrets(),
        conn_id=config.kubernetes_conn_id(),
    )
    return KubernetesPodOperator(task_id=task_id, **kwargs)


def run_pod(pod_op: Any, context: Any, manifest_key: str) -> Outcome:
    """Run the pod to its end; a failed pod is described, not raised, so the manifest decides."""
    from airflow.sdk.exceptions import AirflowException, AirflowTaskTimeout

    from provider.compute import describe_pod_failure
    from provider.compute.kubernetes import MANIFEST_ANNOTATION

    failure = None
    try:
        # execute() only adds a name check (pod_name's names pass it) and a deferrable branch.
        pod_op.execute_sync(context)
    except AirflowTaskTimeout:
        raise
    except AirflowException as exc:
        if isinstance(exc.__context__, AirflowTaskTimeout):  # raised again by the pod cleanup
            raise exc.__context__ from None
        failure = describe_pod_failure(pod_op.remote_pod) or str(exc).splitlines()[0]
    # A pod reattached after a worker restart belongs to an earlier try: read its manifest.
    annotations = (pod_op.pod.metadata.annotations if pod_op.pod else None) or {}
    return Outcome(
        manifest_key=annotations.get(MANIFEST_ANNOTATION, manifest_key),
        exit_code=_exit_code(pod_op.remote_pod),
        failure=failure,
    )


def _exit_code(pod: Any) -> int | None:
    statuses = (pod.status.container_statuses if pod and pod.status else None) or []
    for state in statuses:
        if state.name == "base" and state.state and state.state.terminated:
            return int(state.state.terminated.exit_code)
    return None
