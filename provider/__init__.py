"""flowtask: declare what an Airflow task needs and run it locally, on Kubernetes or AWS Batch.

Importing ``provider`` is cheap: every name loads on first access (the specs, the decorator),
and boto3 / kubernetes / the Airflow providers are never imported here.
"""

from __future__ import annotations

# ``typing.TYPE_CHECKING`` without importing typing, which costs a cold interpreter ~10 ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from provider.decorators.flow_task import flow_task
    from provider.decorators.params import flow_params
    from provider.decorators.run_state import record_run_state
    from provider.runtime.context import flow_context
    from provider.runtime.failure import Failure
    from provider.specs import (
        BatchOptions,
        Environment,
        ForeachOptions,
        KubernetesOptions,
        Resources,
        Retry,
        SpecError,
        TaskSpec,
    )

__version__ = "0.1.0"

__all__ = [
    "BatchOptions",
    "Environment",
    "Failure",
    "ForeachOptions",
    "KubernetesOptions",
    "Resources",
    "Retry",
    "SpecError",
    "TaskSpec",
    "__version__",
    "flow_context",
    "flow_params",
    "flow_task",
    "record_run_state",
]

# Everything loads on first access: a DAG file pays for the specs and the decorator, the
# runtime (which imports this package first, where the task runs) for neither.
_LAZY = {
    **dict.fromkeys(
        (
            "BatchOptions",
            "Environment",
            "ForeachOptions",
            "KubernetesOptions",
            "Resources",
            "Retry",
            "SpecError",
            "TaskSpec",
        ),
        "provider.specs",
    ),
    "Failure": "provider.runtime.failure",
    "flow_context": "provider.runtime.context",
    "flow_task": "provider.decorators",
    "flow_params": "provider.decorators",
    "record_run_state": "provider.decorators",
}


def __getattr__(name: str) -> Any:
    if name == "card":  # provider.card.markdown(...) in a flow task's function
        import importlib

        return importlib.import_module("provider.card")
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'provider' has no attribute {name!r}")
