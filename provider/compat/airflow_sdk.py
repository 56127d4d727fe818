"""What flowtask uses of Airflow's task SDK beyond its public API.

- ``_TaskDecorator`` and ``DecoratedMappedOperator``: ``@flow_task`` is a TaskFlow decorator
  whose ``.override`` takes specs and whose mapped tasks expand their arguments through
  ``provider.xcom.mapping`` (``_expand_mapped_kwargs``, ``_get_specified_expand_input``); the
  mapped operator's class is swapped for that subclass (:func:`use_mapped_class`).
- The expand inputs and XComArg kinds (``DictOfListsExpandInput``, ``ListOfDictsExpandInput``,
  ``PlainXComArg``, ``MapXComArg``, ``ZipXComArg``, ``ConcatXComArg``) and ``is_mappable``.
- ``LazyXComSequence``, a mapped upstream's results as the worker pulls them.
- ``_airflow_mapped_validation_only``: a ``.foreach`` operator binds its arguments before its
  items exist, as a mapped operator's validation does.
"""

from __future__ import annotations

from typing import Any

import airflow
from airflow.sdk.bases.decorator import DecoratedMappedOperator, _TaskDecorator
from airflow.sdk.definitions._internal.expandinput import (
    DictOfListsExpandInput,
    ListOfDictsExpandInput,
    is_mappable,
)
from airflow.sdk.definitions.xcom_arg import (
    ConcatXComArg,
    MapXComArg,
    PlainXComArg,
    XComArg,
    ZipXComArg,
)
from airflow.sdk.execution_time.lazy_sequence import LazyXComSequence

from provider.compat import absent, require

RELEASES = ("3.3.2", "3.4")  # as pyproject.toml bounds it
TaskDecoratorBase = _TaskDecorator
MAPPED_VALIDATION_ONLY = "_airflow_mapped_validation_only"

require(
    "apache-airflow",
    airflow.__version__,
    *RELEASES,
    missing=[
        *absent(DecoratedMappedOperator, ("_expand_mapped_kwargs", "_get_specified_expand_input")),
        *absent(_TaskDecorator, ("_expand", "override")),
        *absent(MapXComArg, ("arg", "callables")),
    ],
)


def use_mapped_class(xcom_arg: Any, cls: type) -> Any:
    """Make ``xcom_arg``'s mapped operator an instance of ``cls`` (same fields and slots)."""
    xcom_arg.operator.__class__ = cls
    return xcom_arg


def expand_input_of(mapped: Any) -> Any:
    """A mapped operator's expand input, as it resolves its arguments."""
    return mapped._get_specified_expand_input()


__all__ = [
    "MAPPED_VALIDATION_ONLY",
    "ConcatXComArg",
    "DecoratedMappedOperator",
    "DictOfListsExpandInput",
    "LazyXComSequence",
    "ListOfDictsExpandInput",
    "MapXComArg",
    "PlainXComArg",
    "TaskDecoratorBase",
    "XComArg",
    "ZipXComArg",
    "expand_input_of",
    "is_mappable",
    "use_mapped_class",
]
