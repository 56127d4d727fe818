"""What the client raises when something it was asked for is not in the store."""

from __future__ import annotations


class NotFound(LookupError):
    """A DAG, run, task or result that the store does not hold."""


class UnknownDag(NotFound):
    """No run of this DAG is in the store."""


class UnknownRun(NotFound):
    """The DAG has no run with this id in the store."""


class UnknownTask(NotFound):
    """The run stored nothing for this task (or this map index)."""


class NoResult(NotFound):
    """The task has no successful try whose result is in the store."""
