"""What a flow task can read of its Airflow context where it runs: plain values only."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

_current: Mapping[str, Any] | None = None

#: Context entries that are Airflow objects or reach back into Airflow: they cannot cross.
CANNOT_CROSS = frozenset(
    {
        "ti",
        "task_instance",
        "dag_run",
        "dag",
        "task",
        "conn",
        "var",
        "macros",
        "inlets",
        "outlets",
        "inlet_events",
        "outlet_events",
        "triggering_asset_events",
        "task_state_store",
        "asset_state_store",
        "exception",
    }
)

CANNOT_CROSS_HINT = (
    "A flow task runs outside the Airflow worker (a subprocess, a pod, a Batch job): Airflow's "
    "task context, Variables and Connections are not there. Read plain context values with "
    "provider.flow_context() or as arguments (ds=None, params=None, ...); pass a Variable or a "
    "Connection's fields as arguments (templates such as '{{ var.value.x }}'), secrets as "
    "Environment(secrets=[...]) or env vars."
)


class PlainContext(dict[str, Any]):
    """The plain context values, as ``**context`` receives them; asking for an entry that
    cannot cross says so instead of a bare KeyError."""

    def __missing__(self, key: str) -> Any:
        if key in CANNOT_CROSS:
            raise KeyError(f"{key!r} is not available in a flow task. {CANNOT_CROSS_HINT}")
        raise KeyError(key)


def flow_context() -> PlainContext:
    """The plain values of this task try's Airflow context: ``ds``, ``ts``, ``run_id``,
    ``logical_date``, ``data_interval_start`` / ``_end``, ``params``, ``try_number``, ...

    Airflow's ``get_current_context()`` works only inside the Airflow worker; this works where
    a flow task runs.
    """
    if _current is None:
        raise RuntimeError("flow_context() is only available while a flow task runs")
    return PlainContext(_current)


@contextmanager
def flow_context_of(values: Mapping[str, Any]) -> Iterator[None]:
    global _current
    previous, _current = _current, values
    try:
        yield
    finally:
        _current = previous


_AIRFLOW_ONLY = (
    "no context was found",  # get_current_context() outside a task
    "SUPERVISOR_COMMS",  # Variable.get, Connection lookups, XCom calls outside a task
    "Database access is disabled",
)


def explain_airflow_access(exc: BaseException) -> None:
    """Add a note saying what to do instead when the function reached for Airflow's task
    machinery, which does not exist where a flow task runs."""
    text = f"{type(exc).__name__}: {exc}"
    if any(marker in text for marker in _AIRFLOW_ONLY) and hasattr(exc, "add_note"):
        exc.add_note(CANNOT_CROSS_HINT)
