"""Compute targets behind one interface, chosen by name; each imports its provider lazily."""

from __future__ import annotations

import importlib

from provider.core.targets.base import (
    RESUME_KEY,
    ComputeTarget,
    ComputeUnavailable,
    Outcome,
    TaskRun,
)

_TARGETS = {
    "local": "provider.core.targets.local:LocalTarget",
    "kubernetes": "provider.operators.targets.kubernetes:KubernetesTarget",
    "batch": "provider.operators.targets.batch:BatchTarget",
}


def compute_target(name: str) -> ComputeTarget:
    """A fresh target for one task try."""
    if name not in _TARGETS:
        raise ComputeUnavailable(
            f"compute={name!r} is not available in this flowtask version. Run the DAG with the "
            "run param flow_compute set to 'local' (the trigger form's 'flowtask compute "
            """override', or `airflow dags test DAG -c '{"flow_compute": "local"}'`)"""
        )
    module, _, cls = _TARGETS[name].partition(":")
    target: ComputeTarget = getattr(importlib.import_module(module), cls)()
    return target


__all__ = [
    "RESUME_KEY",
    "ComputeTarget",
    "ComputeUnavailable",
    "Outcome",
    "TaskRun",
    "compute_target",
]
