"""Namespaces, as in Metaflow: your own runs land in ``user:<you>`` and are listed from there.

``user:<you>`` is ``user:$FLOWTASK_USER`` (for an Airflow login that differs from the OS one),
else ``user:<OS login>``. A run you trigger from the UI lands in ``user:<Airflow login>``; a run
of ``airflow dags test`` in ``user:<you>`` of the shell that ran it (see
``provider.operators.run_context``).
"""

from __future__ import annotations

import getpass
import os

USER_ENV = "FLOWTASK_USER"
MAX_LENGTH = 500


class _Default:
    def __repr__(self) -> str:
        return "<the current namespace>"


CURRENT = _Default()  # the default of ``namespace=`` arguments
_current: str | _Default | None = CURRENT


def default_namespace() -> str:
    """``user:<login>``: ``$FLOWTASK_USER`` (for an Airflow login that differs from the OS
    one), else the OS login."""
    return f"user:{os.environ.get(USER_ENV) or _login()}"


def _login() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name (a container without a passwd entry)
        return str(os.getuid())


def checked_namespace(name: object, field: str = "namespace") -> str:
    """A namespace a person gave: stripped of surrounding spaces (a form field keeps them);
    ``ValueError`` naming ``field`` for anything but 1 to 500 printable characters."""
    text = name.strip() if isinstance(name, str) else None
    if not text or len(text) > MAX_LENGTH or not text.isprintable():
        raise ValueError(
            f"{field}={name!r} is invalid. Accepted: a name of 1 to {MAX_LENGTH} printable "
            "characters, e.g. 'team:ml' or 'user:alice' (surrounding spaces are dropped)"
        )
    return text


def namespace(name: str | None) -> str | None:
    """Set the namespace this process lists runs from; ``None`` lists every namespace."""
    global _current
    _current = None if name is None else checked_namespace(name)
    return _current


def get_namespace() -> str | None:
    """The namespace runs are listed from: as set by ``namespace()``, else the default."""
    return default_namespace() if isinstance(_current, _Default) else _current


def resolve(name: str | _Default | None) -> str | None:
    if isinstance(name, _Default):
        return get_namespace()
    return None if name is None else checked_namespace(name)
