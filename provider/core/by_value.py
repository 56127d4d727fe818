"""Pickle a task function by value; name what cannot be pickled."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import CodeType
from typing import Any


def dag_folder_of(function: Callable[..., Any], bundle_path: Any = None) -> Path | None:
    """The folder whose modules import by name where Airflow runs the DAG: the DAG bundle's
    root when known, else the folder of the function's file."""
    if bundle_path is not None:
        return Path(bundle_path).resolve()
    module = sys.modules.get(getattr(function, "__module__", "") or "")
    file = getattr(module, "__file__", None)
    return Path(file).resolve().parent if file else None


@contextmanager
def pickled_by_value(function: Callable[..., Any]) -> Iterator[None]:
    """Within the block, cloudpickle serializes the function's own module by value.

    A DAG file is imported under a name that exists only in the process that parsed it, so its
    functions and classes travel by value. Every other module of the DAG folder travels in the
    code package and is pickled by reference, as on the worker: one class, one identity.
    """
    import cloudpickle

    module = sys.modules.get(getattr(function, "__module__", "") or "")
    if module is None or getattr(module, "__file__", None) is None:
        yield
        return
    try:
        cloudpickle.register_pickle_by_value(module)
    except ValueError:  # already registered (nested use) or not importable by name
        yield
        return
    try:
        yield
    finally:
        cloudpickle.unregister_pickle_by_value(module)


def unpicklable_part(
    function: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> str | None:
    """Which argument or global of ``function`` cannot be pickled, in words; None if none.

    Call it where the payload is pickled (inside :func:`pickled_by_value`), so modules travel
    the same way as in the payload.
    """
    import cloudpickle

    def fails(value: Any) -> bool:
        try:
            cloudpickle.dumps(value)
        except Exception:
            return True
        return False

    for index, value in enumerate(args):
        if fails(value):
            return f"its argument {index} (a {type(value).__qualname__})"
    for name, value in kwargs.items():
        if fails(value):
            return f"its argument {name!r} (a {type(value).__qualname__})"
    for name, value in _referenced_globals(function):
        if fails(value):
            return f"the global {name!r} (a {type(value).__qualname__})"
    return None


def _referenced_globals(function: Callable[..., Any]) -> Iterator[tuple[str, Any]]:
    """The globals and closure values ``function``'s code (and nested code) refers to."""
    code = getattr(function, "__code__", None)
    if code is None:
        return
    namespace = getattr(function, "__globals__", {})
    for cell_name, cell in zip(code.co_freevars, function.__closure__ or (), strict=False):
        try:
            yield cell_name, cell.cell_contents
        except ValueError:  # an empty cell
            continue
    stack, seen = [code], set()
    while stack:
        current = stack.pop()
        for name in current.co_names:
            if name in namespace and name not in seen:
                seen.add(name)
                yield name, namespace[name]
        stack.extend(const for const in current.co_consts if isinstance(const, CodeType))
