"""Run a stored flow task payload as a pod, through the official ``KubernetesPodOperator``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from provider.specs import TaskSpec
from provider.store import ArtifactStore, Reference, bytes_reference

CODE_PACKAGE_TYPE = "flowtask.code_package"
CODE_PACKAGE_ENCODING = "zip"


@dataclass(frozen=True)
class PodResult:
    """Where the pod's runtime wrote its manifest, and why the pod failed if it did."""

    manifest_key: str
    exit_code: int | None
    failure: str | None


def code_package(function: Callable[..., Any]) -> bytes:
    """The runtime, cloudpickle and the modules of ``function``'s DAG folder, as one zip."""
    from provider.compute import build_code_package
    from provider.operators.by_value import dag_folder_modules

    return build_code_package(dag_folder_modules(function))


def store_code_package(store: ArtifactStore, package: bytes) -> Reference:
    """Store the code package (once per content); its reference is ``code_reference``'s."""
    return store.put_bytes(package, type_name=CODE_PACKAGE_TYPE, encoding=CODE_PACKAGE_ENCODING)


def code_reference(store_uri: str, package: bytes) -> Reference:
    """The reference the code package has in the store at ``store_uri``, without storing it."""
    return bytes_reference(
        store_uri, package, type_name=CODE_PACKAGE_TYPE, encoding=CODE_PACKAGE_ENCODING
    )


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


def run_pod(pod_op: Any, context: Any, manifest_key: str) -> PodResult:
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
    return PodResult(
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
