"""The ``[flow_task]`` Airflow config section, read where Airflow runs (worker, DAG parse)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from provider.specs import COMPUTE_TARGETS
from provider.store import ArtifactStore, open_store

SECTION = "flow_task"
DEFAULT_INLINE_MAX_BYTES = 1024


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
    hook = _s3_hook(aws_conn_id())
    env: dict[str, str] = {}
    credentials = hook.get_credentials()
    if credentials.access_key:
        env["AWS_ACCESS_KEY_ID"] = credentials.access_key
        env["AWS_SECRET_ACCESS_KEY"] = credentials.secret_key
        if credentials.token:
            env["AWS_SESSION_TOKEN"] = credentials.token
    endpoint = hook.conn_config.endpoint_url
    if endpoint:
        env["AWS_ENDPOINT_URL_S3"] = endpoint
    region = hook.conn_region_name
    if region:
        env["AWS_DEFAULT_REGION"] = region
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
