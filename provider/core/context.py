"""The plain values of a task's context, as a flow task receives them.

The operator hands these functions Airflow's context (a mapping, read by key and duck-typed:
nothing of Airflow is imported here); what comes out is plain data that crosses to where the
task runs: standard ``datetime`` values, dicts, the try's identity.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime
from typing import Any

from provider.core.errors import CannotRun
from provider.runtime.context import CANNOT_CROSS, CANNOT_CROSS_HINT, PlainContext

# What @task fills in that is plain data (the keys PythonVirtualenvOperator also serializes);
# datetimes become the standard library's, so nothing of pendulum needs to be where it runs.
PLAIN_KEYS = (
    "ds",
    "ds_nodash",
    "ts",
    "ts_nodash",
    "ts_nodash_with_tz",
    "run_id",
    "task_instance_key_str",
    "expanded_ti_count",
    "test_mode",
    "try_number",
    "task_reschedule_count",
    "map_index_template",
    "partition_key",
    "partition_date",
    "logical_date",
    "data_interval_start",
    "data_interval_end",
    "params",
    "templates_dict",
)
# Looked up from the API server when read: only given to a function that names them.
ON_REQUEST_KEYS = (
    "prev_data_interval_start_success",
    "prev_data_interval_end_success",
    "prev_start_date_success",
    "prev_end_date_success",
)


class ContextCannotCross(CannotRun):
    """The function asks for a context entry that cannot reach where it runs."""


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return datetime.fromisoformat(value.isoformat())  # pendulum -> datetime, same instant
    if isinstance(value, date):
        return date(value.year, value.month, value.day)
    if isinstance(value, Mapping):
        dump = getattr(value, "dump", None)  # Airflow's ParamsDict
        items = dump() if callable(dump) else value
        return {key: _plain(item) for key, item in items.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(item) for item in value)
    return value


def plain_context(context: Mapping[str, Any], keys: Sequence[str] = PLAIN_KEYS) -> PlainContext:
    """The entries of ``context`` a flow task can receive, as plain Python values, plus the
    try's own ``dag_id``, ``task_id``, ``map_index`` and ``try_number``."""
    values = {key: _plain(context[key]) for key in keys if key in context}
    ti = context.get("ti")
    for name in ("dag_id", "task_id", "map_index", "try_number"):
        if name not in values and getattr(ti, name, None) is not None:
            values[name] = getattr(ti, name)
    return PlainContext(values)


def context_arguments(
    function: Callable[..., Any],
    op_args: Sequence[Any],
    op_kwargs: Mapping[str, Any],
    context: Mapping[str, Any],
) -> dict[str, Any]:
    """The keyword arguments ``@task`` would fill from the context, made plain.

    A parameter named like a context key and left unset by the call gets its value; a
    ``**kwargs`` parameter gets every plain value. A parameter named like an entry that cannot
    cross (``ti``, ``dag_run``, ...) is refused with what to do instead.
    """
    signature = inspect.signature(function)
    try:
        bound = signature.bind_partial(*op_args, **op_kwargs).arguments
    except TypeError:
        return {}  # the call itself is wrong: let the function say so where it runs
    plain = plain_context(context)
    filled: dict[str, Any] = {}
    for name, parameter in signature.parameters.items():
        if name in bound:
            continue
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            filled.update({k: v for k, v in plain.items() if k not in signature.parameters})
        elif name in CANNOT_CROSS:
            raise ContextCannotCross(
                f"the function's argument {name!r} asks for Airflow's {name!r}, which is not "
                f"available in a flow task. {CANNOT_CROSS_HINT}"
            )
        elif name in plain:
            filled[name] = plain[name]
        elif name in ON_REQUEST_KEYS and name in context:
            filled[name] = _plain(context[name])
    return filled
