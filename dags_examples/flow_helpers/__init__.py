"""Helpers next to the example DAGs: imported by a DAG file, pickled by value with its tasks."""


def polynomial(x: float) -> float:
    """A helper in a module of the DAG folder; the runtime never imports this module."""
    return 3 * x * x + 2 * x + 1
