"""The namespace this process lists runs from, as in Metaflow (``provider.specs.namespaces``
says where runs land)."""

from __future__ import annotations

from provider.specs.namespaces import (  # noqa: F401  (the client's names too)
    USER_ENV,
    checked_namespace,
    default_namespace,
)


class _Default:
    def __repr__(self) -> str:
        return "<the current namespace>"


CURRENT = _Default()  # the default of ``namespace=`` arguments
_current: str | _Default | None = CURRENT


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
