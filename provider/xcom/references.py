"""Which XCom values are artifact references, and whether a reader wants them unloaded."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from provider.store import ArtifactStore, is_reference

_keep_references: ContextVar[bool] = ContextVar("flowtask_keep_references", default=False)


@contextmanager
def references_kept() -> Iterator[None]:
    """XComs read within the block come back as references, not loaded values.

    Flow tasks read their inputs this way: the runtime loads each input where the work runs,
    so data never passes through the Airflow worker.
    """
    token = _keep_references.set(True)
    try:
        yield
    finally:
        _keep_references.reset(token)


@contextmanager
def references_loaded() -> Iterator[None]:
    """XComs read within the block are loaded values, as for any task (Jinja templates)."""
    token = _keep_references.set(False)
    try:
        yield
    finally:
        _keep_references.reset(token)


def keeping_references() -> bool:
    return _keep_references.get()


def holds_references(value: Any) -> bool:
    """A reference, or a non-empty list / dict of references (mapped or multiple outputs)."""
    if is_reference(value):
        return True
    if isinstance(value, list) and value:
        return all(is_reference(item) for item in value)
    if isinstance(value, dict) and value:
        return all(is_reference(item) for item in value.values())
    return False


def load_references(value: Any, store: ArtifactStore) -> Any:
    """Load what ``holds_references`` accepted."""
    if is_reference(value):
        return store.get(value)
    if isinstance(value, list):
        return [store.get(item) for item in value]
    return {key: store.get(item) for key, item in value.items()}
