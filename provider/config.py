"""The ``[flow_task]`` Airflow config section, read where Airflow runs (worker, DAG parse)."""

from __future__ import annotations

import os
from pathlib import Path

from provider.specs import COMPUTE_TARGETS

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
