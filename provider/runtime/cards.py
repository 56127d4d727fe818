"""Cards: what a flow task's function adds to its try's Flow tab (``provider.card``).

    from provider import card

    @flow_task
    def train(data):
        ...
        card.markdown(f"## Accuracy {accuracy:.3f}")
        card.table([{"epoch": 1, "loss": 0.3}, {"epoch": 2, "loss": 0.2}])
        card.image(figure)                 # a matplotlib figure, a PIL image, PNG or JPEG bytes

Elements are made at the call (a figure is drawn then, so changing it later changes nothing)
and stored with the try's result, capped like every view (``provider.runtime.views``). Outside
a flow task's run (a unit test of the function, a ``.foreach`` item) they are dropped.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

MAX_ROWS = 200  # rows of one card table kept at the call; the stored document cuts further
MAX_TEXT = 64 * 1024

_collected: list[dict[str, Any]] | None = None


@contextlib.contextmanager
def collect() -> Iterator[list[dict[str, Any]]]:
    """Collect the cards added while the block runs (the runtime, around the function)."""
    global _collected
    outer, _collected = _collected, []
    try:
        yield _collected
    finally:
        _collected = outer


def _add(element: dict[str, Any]) -> None:
    if _collected is not None:
        _collected.append(element)


def markdown(text: str) -> None:
    """A block of Markdown (CommonMark; raw HTML is shown as text)."""
    if not isinstance(text, str):
        raise TypeError(f"card.markdown(text) takes a str, got {type(text).__name__}")
    _add({"kind": "markdown", "text": text[:MAX_TEXT]})


def table(rows: Any, headers: Sequence[str] | None = None) -> None:
    """A table: a list of dicts (their keys are the headers), a list of lists or tuples (with
    ``headers``), or a DataFrame. The first ``MAX_ROWS`` rows are kept."""
    if hasattr(rows, "itertuples") and hasattr(rows, "columns"):  # a DataFrame
        headers = [str(c) for c in rows.columns] if headers is None else list(headers)
        body = [list(r) for r in rows.head(MAX_ROWS).itertuples(index=False)]
    elif isinstance(rows, Sequence) and not isinstance(rows, (str, bytes)):
        kept = list(rows[:MAX_ROWS])
        if kept and all(isinstance(r, Mapping) for r in kept):
            names: dict[str, None] = {}
            for row in kept:
                names.update(dict.fromkeys(str(k) for k in row))
            headers = list(names) if headers is None else list(headers)
            body = [[row.get(h) for h in headers] for row in kept]
        elif all(isinstance(r, Sequence) and not isinstance(r, (str, bytes)) for r in kept):
            body = [list(r) for r in kept]
            width = max((len(r) for r in body), default=0)
            headers = [str(i) for i in range(width)] if headers is None else list(headers)
        else:
            raise TypeError("card.table(rows): rows must all be dicts, or all lists or tuples")
    else:
        raise TypeError(
            f"card.table(rows) takes a list of dicts or of lists, or a DataFrame; "
            f"got {type(rows).__name__}"
        )
    _add({"kind": "table", "headers": [str(h) for h in headers], "rows": body})


def image(value: Any, title: str | None = None) -> None:
    """A picture: a matplotlib figure, a PIL image, or PNG / JPEG bytes."""
    from provider.runtime.views import ImageTooLarge, picture

    try:
        shown = picture(value)
    except ImageTooLarge as error:
        _add({"kind": "image", "title": title, "omitted": f"too large: {error}"})
        return
    if shown is None:
        raise TypeError(
            "card.image() takes a matplotlib figure, a PIL image, or PNG or JPEG bytes; "
            f"got {type(value).__name__}"
        )
    data, kind = shown
    _add({"kind": "image", "title": title, "data": data, "format": kind})
