"""Namespaces, as in Metaflow: your own runs land in ``user:<you>``.

``user:<you>`` is ``user:$FLOWTASK_USER`` (for an Airflow login that differs from the OS one),
else ``user:<OS login>``. A run you trigger from the UI lands in ``user:<Airflow login>``; a run
of ``airflow dags test`` in ``user:<you>`` of the shell that ran it (see
``provider.core.run_context``); runs the deployment starts itself in ``production:<dag_id>``.
"""

from __future__ import annotations

import getpass
import os

USER_ENV = "FLOWTASK_USER"
MAX_LENGTH = 500


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
