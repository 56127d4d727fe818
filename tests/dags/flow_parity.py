"""The differential parity table: every mapping pattern with plain ``@task`` and ``@flow_task``.

Each cell is (pattern, producer) in a DAG per value size (``flow_parity_tiny``: inline in the
XCom row; ``flow_parity_past``: just past ``xcom_inline_max_bytes``; ``flow_parity_large``:
over 1 MiB). A cell's producer (a plain ``@task``, a flow task, or a literal in this file)
feeds the pattern twice, once with the plain ``@task`` functions and once with the same
functions as flow tasks (``.foreach`` against ``.expand``), and the cell's join checks both
against the values computed here, types included. tests/test_parity.py runs each DAG with
``FlowXCom`` and with Airflow's default XCom backend and names every cell that differs.

To add a cell: add a pattern to ``PATTERNS`` (a function that builds both sides from a
producer and says what the mapped function receives for each item), or a producer kind to
``PRODUCERS``; a new mapping feature lands only with its cells here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from airflow.sdk import dag, task

from provider import flow_task

SIZES = {"tiny": 8, "past": 340, "large": 400_000}  # characters of text per item
COUNT = 3
FLOW_XCOM = os.environ.get("AIRFLOW__CORE__XCOM_BACKEND", "").endswith("FlowXCom")


def make_items(size: str) -> list[dict[str, Any]]:
    pad = SIZES[size]
    return [{"i": i, "s": chr(ord("a") + i) * pad} for i in range(COUNT)]


def summary(x: Any) -> Any:
    """What a mapped function saw, types included, small enough to compare anywhere."""
    if isinstance(x, dict):
        return ("dict", tuple(sorted((str(k), summary(v)) for k, v in x.items())))
    if isinstance(x, (list, tuple)):
        return (type(x).__name__, tuple(summary(v) for v in x))
    if isinstance(x, str):
        return ("str", len(x), x[:4])
    return (type(x).__name__, x)


def apply(x: Any, k: int = 0) -> tuple[Any, int]:
    return (summary(x), k)


def tag(x: Any) -> dict[str, Any]:
    return {"tagged": x}


# What the mapped function receives, per producer kind: "list" produces make_items(size),
# "dict" a dict of them, "kwargs" a list of keyword dicts.
def _list(size: str) -> list[Any]:
    return make_items(size)


def _dict(size: str):  # no return annotation: one dict value, not multiple_outputs
    return {f"k{i}": item for i, item in enumerate(make_items(size))}


def _kwargs(size: str) -> list[dict[str, Any]]:
    return [{"x": item, "k": i} for i, item in enumerate(make_items(size))]


VALUES: dict[str, Callable[[str], Any]] = {"list": _list, "dict": _dict, "kwargs": _kwargs}


def _expected(pattern: str, size: str) -> list[Any]:
    items = make_items(size)
    if pattern in ("expand", "foreach"):
        return [apply(x) for x in items]
    if pattern in ("partial_expand", "partial_foreach"):
        return [apply(x, k=1) for x in items]
    if pattern in ("expand_kwargs", "foreach_kwargs"):
        return [apply(**kw) for kw in _kwargs(size)]
    if pattern == "chained":
        return [apply(apply(x)) for x in items]
    if pattern in ("over_dict", "foreach_dict"):
        return [apply(pair) for pair in _dict(size).items()]
    if pattern == "map":
        return [apply(tag(x)) for x in items]
    if pattern == "zip":
        return [apply((x, x)) for x in items]
    raise KeyError(pattern)


# How a pattern maps ``apply`` over a producer's output ``source``, with the decorator ``side``
# (``task`` or ``flow_task``); flow tasks' ``.foreach`` forms are compared with ``.expand``.
def _build(pattern: str, side: Any, name: str, source: Any, flow: bool) -> Any:
    fn = side(apply).override(task_id=name)
    if pattern == "expand":
        return fn.expand(x=source)
    if pattern == "partial_expand":
        return fn.partial(k=1).expand(x=source)
    if pattern == "expand_kwargs":
        return fn.expand_kwargs(source)
    if pattern == "chained":
        first = side(apply).override(task_id=f"{name}_first")
        return fn.expand(x=first.expand(x=source))
    if pattern == "over_dict":
        return fn.expand(x=source)
    if pattern == "map":
        return fn.expand(x=source.map(tag))
    if pattern == "zip":
        return fn.expand(x=source.zip(source))
    if pattern == "foreach":
        return fn.foreach(x=source) if flow else fn.expand(x=source)
    if pattern == "partial_foreach":
        return fn.partial(k=1).foreach(x=source) if flow else fn.partial(k=1).expand(x=source)
    if pattern == "foreach_kwargs":
        return fn.foreach_kwargs(source) if flow else fn.expand_kwargs(source)
    if pattern == "foreach_dict":
        return fn.foreach(x=source) if flow else fn.expand(x=source)
    raise KeyError(pattern)


PATTERNS = {
    "expand": "list",
    "partial_expand": "list",
    "expand_kwargs": "kwargs",
    "chained": "list",
    "over_dict": "dict",
    "map": "list",
    "zip": "list",
    "foreach": "list",
    "partial_foreach": "list",
    "foreach_kwargs": "kwargs",
    "foreach_dict": "dict",
}
PRODUCERS = ("plain", "flow", "literal")
NEEDS_XCOM_ARG = {"map", "zip"}  # .map / .zip exist on an upstream's output only


def cells(size: str) -> list[tuple[str, str]]:
    return [
        (pattern, producer)
        for pattern in PATTERNS
        for producer in PRODUCERS
        if not (producer == "literal" and (pattern in NEEDS_XCOM_ARG or size == "large"))
    ]


def _typed(value: Any) -> Any:
    """A value with its containers' types spelled out, so (1,) and [1] differ."""
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [_typed(v) for v in value])
    if isinstance(value, dict):
        return ("dict", {k: _typed(v) for k, v in value.items()})
    return (type(value).__name__, value)


def check(cell: str, size: str, flow_results: Any, plain_results: Any = None) -> str:
    pattern = cell.split("__")[0]
    expected = _typed(_expected(pattern, size))
    flow = _typed(list(flow_results))
    assert flow == expected, f"{cell}: flow tasks gave {flow!r}, expected {expected!r}"
    if plain_results is not None:
        plain = _typed(list(plain_results))
        assert plain == expected, f"{cell}: @task gave {plain!r}, expected {expected!r}"
    return "same"


def _source(producer: str, kind: str, size: str, cell: str, side: str) -> Any:
    """The producer's output; one producer per side, so each side's upstream stores its
    result as that side's consumer alone makes it do."""
    if producer == "literal":
        return VALUES[kind](size)
    make = task if producer == "plain" else flow_task
    return make(VALUES[kind]).override(task_id=f"{cell}__{side}_source")(size)


def parity_dag(size: str) -> None:
    @dag(dag_id=f"flow_parity_{size}", schedule=None, catchup=False)
    def parity() -> None:
        # With Airflow's default XCom backend a plain @task receives a flow task's reference
        # dict (the README says so), so there the join is a flow task and compares the flow
        # side; with FlowXCom the join is a plain @task and compares both sides.
        checker = task(check) if FLOW_XCOM else flow_task(check)
        for pattern, producer in cells(size):
            cell = f"{pattern}__{producer}"

            source = _source(producer, PATTERNS[pattern], size, cell, "flow")
            flow = _build(pattern, flow_task, f"{cell}__flow", source, flow=True)
            plain = None
            if FLOW_XCOM or producer != "flow":
                source = _source(producer, PATTERNS[pattern], size, cell, "plain")
                plain = _build(pattern, task, f"{cell}__plain", source, flow=False)
            checker.override(task_id=f"{cell}__check")(cell, size, flow, plain)

    parity()


for _size in SIZES:
    parity_dag(_size)
