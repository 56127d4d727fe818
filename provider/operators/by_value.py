"""Pickle a task function together with the DAG folder's own modules, by value."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
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
