"""What the worker hands the runtime: the function, its arguments and where to report."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

# How the result is stored: one artifact, one per list item (a mapped task reads its item
# only), or one per dict key (``multiple_outputs``).
ResultLayout = Literal["value", "items", "keys"]


@dataclass(frozen=True)
class Payload:
    """A unit of work, stored in the artifact store and run by ``python -m provider.runtime``."""

    function: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    layout: ResultLayout = "value"
    # Identity of the task try (dag_id, run_id, task_id, map_index, try_number, namespace, tags),
    # copied into the result manifest.
    identity: Mapping[str, Any] = field(default_factory=dict)
    # The plain values of the task's Airflow context (ds, params, logical_date, ...), read
    # with ``provider.flow_context()`` where the task runs.
    context: Mapping[str, Any] = field(default_factory=dict)
    # For ``.foreach``: how the items are split (a ``provider.runtime.foreach.ForeachPlan``).
    foreach: Any = None
    # What the try asks the machine for (cpu, memory_mib, gpu), recorded beside its usage.
    requested: Mapping[str, Any] = field(default_factory=dict)
