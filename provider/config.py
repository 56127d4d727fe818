"""The ``[flow_task]`` Airflow config section, read where Airflow runs (worker, DAG parse)."""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from provider.runtime.preload import DEFAULT_BUDGET_MIB as DEFAULT_PRELOAD_MIB
from provider.runtime.preload import PreloadSettings
from provider.runtime.preload import parse_settings as parse_preload
from provider.specs import COMPUTE_TARGETS, BatchOptions, KubernetesOptions, SpecError
from provider.store import ArtifactStore, open_store

SECTION = "flow_task"
DEFAULT_INLINE_MAX_BYTES = 1024
DEFAULT_WARM_RUNTIME_IDLE = "120"


def _get(key: str, fallback: str) -> str:
    from airflow.sdk.configuration import conf

    value = conf.get(SECTION, key, fallback=fallback)
    return (value or fallback).strip()


def airflow_home() -> Path:
    return Path(os.environ.get("AIRFLOW_HOME") or Path.home() / "airflow").expanduser().resolve()


def artifact_store_uri() -> str:
    """``[flow_task] artifact_store``, or ``file://$AIRFLOW_HOME/flow_artifacts`` when unset."""
    return _get("artifact_store", "") or (airflow_home() / "flow_artifacts").as_uri()


def aws_conn_id() -> str:
    return _get("aws_conn_id", "aws_default")


@lru_cache(maxsize=4)
def _s3_hook(conn_id: str) -> Any:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    from provider.store.s3 import botocore_config

    return S3Hook(aws_conn_id=conn_id, config=botocore_config())


def open_artifact_store() -> ArtifactStore:
    """The configured store; S3 credentials and endpoint come from ``aws_conn_id``."""
    uri = artifact_store_uri()
    if uri.startswith("s3://"):
        return _open_s3_store(uri, aws_conn_id())
    return open_store(uri)


@lru_cache(maxsize=4)
def _open_s3_store(uri: str, conn_id: str) -> ArtifactStore:
    return open_store(uri, s3_client=_s3_hook(conn_id).get_conn())


def runtime_aws_env() -> dict[str, str]:
    """AWS variables that let a local runtime reach the store the worker uses."""
    if not artifact_store_uri().startswith("s3://"):
        return {}
    env = pod_store_env()
    credentials = _s3_hook(aws_conn_id()).get_credentials()
    if credentials.access_key:
        env["AWS_ACCESS_KEY_ID"] = credentials.access_key
        env["AWS_SECRET_ACCESS_KEY"] = credentials.secret_key
        if credentials.token:
            env["AWS_SESSION_TOKEN"] = credentials.token
    return env


def default_compute() -> str:
    value = _get("default_compute", "local")
    if value not in COMPUTE_TARGETS:
        raise ValueError(
            f"[{SECTION}] default_compute={value!r} is invalid. Accepted: one of {COMPUTE_TARGETS}"
        )
    return value


def xcom_inline_max_bytes() -> int:
    raw = _get("xcom_inline_max_bytes", str(DEFAULT_INLINE_MAX_BYTES))
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(
            f"[{SECTION}] xcom_inline_max_bytes={raw!r} is invalid. "
            "Accepted: a non-negative int of bytes (0 stores every value in the artifact store)"
        )
    return value


def warm_runtime_idle_seconds() -> float:
    """``[flow_task] warm_runtime_idle``: how long a warm runtime waits for the next local task
    (seconds; 0 starts every local runtime as a new interpreter)."""
    raw = _get("warm_runtime_idle", DEFAULT_WARM_RUNTIME_IDLE)
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise ValueError(
            f"[{SECTION}] warm_runtime_idle={raw!r} is invalid. Accepted: seconds, a "
            "non-negative number (0 turns warm runtimes off)"
        )
    return value


def warm_runtime_preload() -> PreloadSettings:
    """``[flow_task] warm_runtime_preload`` (``auto``, ``off`` or ``numpy,pandas``) and
    ``warm_runtime_preload_mib``: what a warm runtime imports for its tasks before forking."""
    return parse_preload(
        _get("warm_runtime_preload", "auto"),
        _get("warm_runtime_preload_mib", str(DEFAULT_PRELOAD_MIB)),
    )


def default_image() -> str:
    """``[flow_task] default_image``, else the slim Python image of the worker's version."""
    from provider.compute.command import worker_python

    return _get("default_image", "") or f"python:{worker_python()}-slim"


DEFAULT_KUBERNETES_CONN = "kubernetes_default"


def kubernetes_conn_id() -> str:
    return _get("kubernetes_conn_id", DEFAULT_KUBERNETES_CONN)


_IN_CLUSTER_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


def kubernetes_unconfigured() -> str | None:
    """Why pods have no cluster to go to, or None when one is configured.

    The same places ``KubernetesHook.get_conn`` looks, in its order, without importing
    kubernetes: the connection ``kubernetes_conn_id`` names (its in-cluster flag, kubeconfig
    path or kubeconfig); ``kubernetes_default`` may be missing, and then, as for an empty
    connection, the worker's own cluster (in-cluster) or its kubeconfig file.
    """
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    conn_id, found = kubernetes_conn_id(), "has no cluster in it"
    try:
        extras = BaseHook.get_connection(conn_id).extra_dejson
    except AirflowNotFoundException:
        found = "does not exist"
        if conn_id != DEFAULT_KUBERNETES_CONN:
            return (
                f"the Airflow connection [{SECTION}] kubernetes_conn_id={conn_id!r} names does "
                "not exist; create it (a Kubernetes connection to your cluster)"
            )
        extras = {}
    for field in ("in_cluster", "kube_config_path", "kube_config"):
        if extras.get(field) or extras.get(f"extra__kubernetes__{field}"):
            return None
    in_cluster = os.environ.get("KUBERNETES_SERVICE_HOST") and os.path.exists(_IN_CLUSTER_TOKEN)
    configs = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    if in_cluster or any(os.path.isfile(path) for path in configs.split(os.pathsep) if path):
        return None
    return (
        f"no Kubernetes cluster is configured: set [{SECTION}] kubernetes_conn_id to an Airflow "
        f"Kubernetes connection (now {conn_id!r}, which {found}), or give the worker a "
        "kubeconfig (~/.kube/config or $KUBECONFIG)"
    )


_KUBERNETES_JSON = (
    "node_selector",
    "tolerations",
    "labels",
    "annotations",
    "persistent_volume_claims",
    "security_context",
)
_KUBERNETES_LISTS = ("image_pull_secrets",)
_KUBERNETES_TEXT = (
    "namespace",
    "service_account",
    "gpu_vendor",
    "gpu_type_label",
    "schedule_timeout",
    "qos",
    "image_pull_policy",
    "termination_message_policy",
    "pod_template_file",
)
_KUBERNETES_BOOLS = ("deferrable",)
DEFAULT_SCHEDULE_TIMEOUT = "10m"


def kubernetes_defaults() -> KubernetesOptions:
    """The ``[flow_task] kubernetes_*`` settings that every flow task's pod starts from."""
    given: dict[str, Any] = {}
    names = (*_KUBERNETES_JSON, *_KUBERNETES_LISTS, *_KUBERNETES_TEXT, *_KUBERNETES_BOOLS)
    for name in (*names, "cpu_limit_ratio"):
        raw = _get(f"kubernetes_{name}", "")
        if not raw:
            continue
        try:
            if name in _KUBERNETES_JSON:
                given[name] = json.loads(raw)
            elif name in _KUBERNETES_LISTS:
                given[name] = _comma_list(raw)
            elif name == "cpu_limit_ratio":
                given[name] = float(raw)
            elif name in _KUBERNETES_BOOLS:
                given[name] = _boolean(raw)
            else:
                given[name] = raw
            options = KubernetesOptions(**{name: given[name]})
        except (ValueError, SpecError) as exc:
            raise ValueError(f"[{SECTION}] kubernetes_{name}={raw!r} is invalid: {exc}") from None
        given[name] = getattr(options, name)
    return KubernetesOptions(**given)


def kubernetes_secrets() -> tuple[str, ...]:
    """Secrets every pod gets as environment variables (such as the store's credentials)."""
    from provider.specs import Environment

    raw = _get("kubernetes_secrets", "")
    try:
        return tuple(Environment(secrets=_comma_list(raw)).secrets)
    except SpecError as exc:
        raise ValueError(f"[{SECTION}] kubernetes_secrets={raw!r} is invalid: {exc}") from None


_BATCH_SETTINGS = {  # [flow_task] key -> BatchOptions field
    "batch_job_queue": "queue",
    "batch_job_role_arn": "job_role_arn",
    "batch_execution_role_arn": "execution_role_arn",
    "batch_platform": "platform",
}
DEFAULT_BATCH_POLL_SECONDS = 10.0


def batch_defaults() -> BatchOptions:
    """The ``[flow_task] batch_*`` settings that every flow task's Batch job starts from."""
    given: dict[str, Any] = {}
    for key, name in _BATCH_SETTINGS.items():
        raw = _get(key, "")
        if not raw:
            continue
        try:
            BatchOptions(**{name: raw})  # type: ignore[arg-type]
        except SpecError as exc:
            raise ValueError(f"[{SECTION}] {key}={raw!r} is invalid: {exc}") from None
        given[name] = raw
    return BatchOptions(**given)


def aws_region() -> str | None:
    """``[flow_task] aws_region`` for Batch; empty means the AWS connection's region."""
    return _get("aws_region", "") or None


def batch_poll_seconds() -> float:
    """Seconds between status checks of a Batch job (and fetches of its CloudWatch logs)."""
    raw = _get("batch_poll_interval", str(DEFAULT_BATCH_POLL_SECONDS))
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= 600:
        raise ValueError(
            f"[{SECTION}] batch_poll_interval={raw!r} is invalid. Accepted: seconds, more than "
            "0 and at most 600"
        )
    return value


DEFAULT_FOREACH_MAX_PARALLEL = 100


def foreach_max_parallel() -> int:
    """How many pods of a ``.foreach`` on Kubernetes run at once, unless the task says."""
    from provider.specs.foreach import MAX_PARALLEL

    raw = _get("foreach_max_parallel", str(DEFAULT_FOREACH_MAX_PARALLEL))
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_PARALLEL:
        raise ValueError(
            f"[{SECTION}] foreach_max_parallel={raw!r} is invalid. Accepted: an int from 1 to "
            f"{MAX_PARALLEL}"
        )
    return value


def foreach_checkpoint_seconds() -> float:
    """How often a running ``.foreach`` chunk keeps the results of the items it finished."""
    from provider.runtime.foreach import CHECKPOINT_SECONDS

    raw = _get("foreach_checkpoint_seconds", str(CHECKPOINT_SECONDS))
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 3600:
        raise ValueError(
            f"[{SECTION}] foreach_checkpoint_seconds={raw!r} is invalid. Accepted: seconds "
            "from 0 (after every item) to 3600"
        )
    return value


def pod_store_env() -> dict[str, str]:
    """Where pods find an s3:// store: the connection's endpoint and region, never its keys."""
    if not artifact_store_uri().startswith("s3://"):
        return {}
    hook = _s3_hook(aws_conn_id())
    env = {}
    if hook.conn_config.endpoint_url:
        env["AWS_ENDPOINT_URL_S3"] = hook.conn_config.endpoint_url
    if hook.conn_region_name:
        env["AWS_DEFAULT_REGION"] = hook.conn_region_name
    return env


def kubernetes_schedule_timeout(options: KubernetesOptions) -> float:
    """Seconds an unschedulable pod waits for a node: the task's, the setting's, else 10m."""
    from provider.specs import parse_duration

    timeout = options.schedule_timeout
    if timeout is None:
        timeout = parse_duration(DEFAULT_SCHEDULE_TIMEOUT, "kubernetes_schedule_timeout")
    return float(timeout.total_seconds())


def _boolean(raw: str) -> bool:
    lowered = raw.lower()
    if lowered not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError("Accepted: true or false")
    return lowered in ("true", "1", "yes")


def _comma_list(raw: str) -> list[str]:
    return [item.strip() for item in raw.split(",") if item.strip()]


DEFAULT_ENVIRONMENT_CACHE = "10Gi"


def target_platform() -> str:
    """``[flow_task] target_platform``: what ``Environment(pip=...)`` is built for on
    Kubernetes and Batch, unless the task's options say."""
    from provider.specs.platforms import DEFAULT_PLATFORM
    from provider.specs.platforms import target_platform as checked

    raw = _get("target_platform", DEFAULT_PLATFORM)
    try:
        return checked(raw, "target_platform")
    except SpecError as exc:
        raise ValueError(f"[{SECTION}] target_platform={raw!r} is invalid: {exc}") from None


def kubernetes_env_cache_path() -> str | None:
    """``[flow_task] kubernetes_env_cache_path``: a node folder where pods unpack environments,
    shared by the pods of a node (empty: each pod unpacks into an emptyDir)."""
    raw = _get("kubernetes_env_cache_path", "")
    if raw and not raw.startswith("/"):
        raise ValueError(
            f"[{SECTION}] kubernetes_env_cache_path={raw!r} is invalid. Accepted: an absolute "
            "path on the nodes, such as /var/cache/flowtask-env, or empty for an emptyDir"
        )
    return raw.rstrip("/") or None


def environment_cache_bytes() -> int:
    """``[flow_task] environment_cache_size``: how much the worker keeps of built environments
    under ``$AIRFLOW_HOME/flowtask/environments`` (least recently used out)."""
    from provider.specs import parse_mebibytes

    raw = _get("environment_cache_size", DEFAULT_ENVIRONMENT_CACHE)
    try:
        return parse_mebibytes(raw, "environment_cache_size") * 2**20
    except SpecError as exc:
        raise ValueError(f"[{SECTION}] environment_cache_size={raw!r} is invalid: {exc}") from None


def environment_cache_root() -> Path:
    return airflow_home() / "flowtask" / "environments"
