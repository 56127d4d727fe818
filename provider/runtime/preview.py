"""A short, safe description of a result for the task log and the XCom view."""

from __future__ import annotations

import reprlib
from typing import Any

from provider.runtime.failure import Failure

MAX_PREVIEW = 160

_repr = reprlib.Repr()
_repr.maxlevel = 2
_repr.maxlist = _repr.maxtuple = _repr.maxset = _repr.maxdict = 6
_repr.maxstring = 80
_repr.maxother = 80


def preview(value: Any) -> str:
    """Type, then shape or length where there is one, then a truncated repr.

    ``ndarray (2000, 500) float64``, ``list of 3: [1, 2, 3]``, ``int: 42``, a caught failure
    as ``Failure: KeyError 'missing-column'``. Large containers are never rendered in full
    (``reprlib`` stops after a few items).
    """
    if isinstance(value, Failure):
        return _cut(f"Failure: {value.short_type} {value.first_line}".rstrip())
    kind = type(value).__qualname__
    shape = getattr(value, "shape", None)
    if isinstance(shape, tuple):
        dtype = getattr(value, "dtype", None)  # a DataFrame has dtypes, one per column
        return f"{kind} {shape} {dtype}" if dtype is not None else f"{kind} {shape}"
    try:
        text = _repr.repr(value)
    except Exception as exc:  # a broken __repr__ must not fail the task
        text = f"<repr failed: {type(exc).__name__}>"
    sized = f"{kind} of {len(value)}" if isinstance(value, (list, tuple, dict, set, str)) else kind
    return _cut(f"{sized}: {text}")


def _cut(line: str) -> str:
    return line if len(line) <= MAX_PREVIEW else line[: MAX_PREVIEW - 3] + "..."
