"""The current namespace, as in Metaflow: runs are listed from ``user:<login>`` unless told."""

from __future__ import annotations

import getpass
import os

USER_ENV = "FLOWTASK_USER"


class _Default:
    def __repr__(self) -> str:
        return "<the current namespace>"


CURRENT = _Default()  # the default of ``namespace=`` arguments
_current: str | _Default | None = CURRENT


def default_namespace() -> str:
    """``user:<login>``: ``$FLOWTASK_USER`` (for an Airflow login that differs from the OS
    one), else the OS login."""
    return f"user:{os.environ.get(USER_ENV) or getpass.getuser()}"


def namespace(name: str | None) -> str | None:
    """Set the namespace this process lists runs from; ``None`` lists every namespace."""
    global _current
    if name is not None and (not isinstance(name, str) or not name):
        raise ValueError(f"namespace {name!r} is invalid. Accepted: None or e.g. 'team:ml'")
    _current = name
    return name


def get_namespace() -> str | None:
    """The namespace runs are listed from: as set by ``namespace()``, else the default."""
    return default_namespace() if isinstance(_current, _Default) else _current


def resolve(name: str | _Default | None) -> str | None:
    return get_namespace() if isinstance(name, _Default) else name
