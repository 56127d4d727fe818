"""``[flow_task]`` where Airflow runs: Airflow's config is where the settings are read from, and
what needs Airflow's connections (the store's AWS credentials, the Kubernetes cluster) is read
here. The settings themselves are declared in ``provider.settings``."""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

from provider import settings
from provider.settings import SECTION
from provider.specs import KubernetesOptions
from provider.store import ArtifactStore, open_store


def _airflow_source(key: str) -> str | None:
    from airflow.sdk.configuration import conf

    found = conf.get(SECTION, key, fallback=None)
    return None if found is None else str(found)


settings.use_source(_airflow_source)


@lru_cache(maxsize=4)
def _s3_hook(conn_id: str) -> Any:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    from provider.store.s3 import botocore_config

    return S3Hook(aws_conn_id=conn_id, config=botocore_config())


def open_artifact_store() -> ArtifactStore:
    """The configured store; S3 credentials and endpoint come from ``aws_conn_id``."""
    uri = settings.artifact_store_uri()
    if uri.startswith("s3://"):
        return _open_s3_store(uri, settings.value("aws_conn_id"))
    return open_store(uri)


@lru_cache(maxsize=4)
def _open_s3_store(uri: str, conn_id: str) -> ArtifactStore:
    return open_store(uri, s3_client=_s3_hook(conn_id).get_conn())


def runtime_aws_env() -> dict[str, str]:
    """AWS variables that let a local runtime reach the store the worker uses."""
    if not settings.artifact_store_uri().startswith("s3://"):
        return {}
    env = pod_store_env()
    credentials = _s3_hook(settings.value("aws_conn_id")).get_credentials()
    if credentials.access_key:
        env["AWS_ACCESS_KEY_ID"] = credentials.access_key
        env["AWS_SECRET_ACCESS_KEY"] = credentials.secret_key
        if credentials.token:
            env["AWS_SESSION_TOKEN"] = credentials.token
    return env


def pod_store_env() -> dict[str, str]:
    """Where pods find an s3:// store: the connection's endpoint and region, never its keys."""
    uri = settings.artifact_store_uri()
    if not uri.startswith("s3://"):
        return {}
    return dict(_store_location(uri, settings.value("aws_conn_id")))


@lru_cache(maxsize=4)
def _store_location(uri: str, conn_id: str) -> dict[str, str]:
    """The connection's endpoint and region: read once per process (each reading of the
    hook's connection costs tens of milliseconds)."""
    hook = _s3_hook(conn_id)
    env = {}
    if hook.conn_config.endpoint_url:
        env["AWS_ENDPOINT_URL_S3"] = hook.conn_config.endpoint_url
    if hook.conn_region_name:
        env["AWS_DEFAULT_REGION"] = hook.conn_region_name
    return env


def default_image() -> str:
    """``[flow_task] default_image``, else the slim Python image of the worker's version."""
    from provider.translate.command import worker_python

    return settings.value("default_image") or f"python:{worker_python()}-slim"


def kubernetes_schedule_timeout(options: KubernetesOptions) -> float:
    """Seconds an unschedulable pod waits for a node (``options`` laid over the settings)."""
    from provider.specs import parse_duration

    timeout = options.schedule_timeout
    if timeout is None:
        default = settings.SETTINGS["kubernetes_schedule_timeout"].default
        timeout = parse_duration(default, "kubernetes_schedule_timeout")
    return float(timeout.total_seconds())


DEFAULT_KUBERNETES_CONN = settings.SETTINGS["kubernetes_conn_id"].default
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

    conn_id, found = settings.value("kubernetes_conn_id"), "has no cluster in it"
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
