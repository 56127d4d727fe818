"""Pickle a task function together with the DAG folder's own modules, by value."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import CodeType, ModuleType
from typing import Any


def dag_folder_modules(function: Callable[..., Any]) -> list[ModuleType]:
    """The function's module and every loaded module whose file sits in that module's folder tree.

    A function defined in a DAG file lives in a module that exists only in the process that
    parsed the DAG; helper modules next to the DAG file are importable only where the DAG folder
    is on ``sys.path``. Pickling them by value lets the runtime run anywhere.
    """
    home = sys.modules.get(getattr(function, "__module__", "") or "")
    home_file = getattr(home, "__file__", None)
    if home is None or home_file is None:
        return []
    folder = Path(home_file).resolve().parent
    found = [home]
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if module is home or file is None or name == "__main__":
            continue
        path = Path(file).resolve()
        if path.is_relative_to(folder) and "site-packages" not in path.parts:
            found.append(module)
    return found


@contextmanager
def pickled_by_value(function: Callable[..., Any]) -> Iterator[None]:
    """Within the block, cloudpickle serializes the DAG folder's modules by value."""
    import cloudpickle

    registered = []
    for module in dag_folder_modules(function):
        try:
            cloudpickle.register_pickle_by_value(module)
        except ValueError:  # already registered (nested use) or not importable by name
            continue
        registered.append(module)
    try:
        yield
    finally:
        for module in registered:
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
