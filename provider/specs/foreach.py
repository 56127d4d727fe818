"""``ForeachOptions``: how ``.foreach`` spreads items over workers, pods or Batch children."""

from __future__ import annotations

from dataclasses import dataclass

from provider.specs.errors import SpecError

MAX_PARALLEL = 10_000
MAX_CHUNK = 100_000


def _positive(value: object, field: str, limit: int, example: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= limit:
        raise SpecError(field, value, f"an int from 1 to {limit}, such as {example}, or None")
    return value


@dataclass(frozen=True)
class ForeachOptions:
    """``max_parallel`` bounds how many workers, pods or jobs run at once (default: the CPU
    count locally, ``[flow_task] foreach_max_parallel`` on a cluster); ``chunk_size`` is how
    many items one of them runs in a row (default: chosen so each does real work)."""

    max_parallel: int | None = None
    chunk_size: int | None = None

    def __post_init__(self) -> None:
        _positive(self.max_parallel, "foreach.max_parallel", MAX_PARALLEL, "8")
        _positive(self.chunk_size, "foreach.chunk_size", MAX_CHUNK, "100")
