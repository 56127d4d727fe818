"""What the UI shows of a try, made where the task runs: previews, cards, where it ran.

The API server never unpickles anything, so everything the Flow tabs show is made here, at
store time, as small JSON documents and PNG / JPEG pictures, each capped in size
(``MAX_VIEW_BYTES``, ``MAX_IMAGE_BYTES``) and stored content-addressed. The try's manifest
names every one of them by a plain reference (``views``), so ``flowtask gc`` keeps them for as
long as the try's result.

A view document (``type`` ``flowtask.view``, encoding ``json``) is one of these ``kind``\\ s:

- ``table``: a DataFrame or Series: ``shape``, ``columns``, ``dtypes``, the first ``rows``;
- ``array``: an ndarray: ``shape``, ``dtype``, ``stats`` (min, max, mean, std) and ``head``;
- ``items`` / ``mapping``: a list, tuple or set / a dict: ``length`` and the first items' previews;
- ``image``: a matplotlib figure, a PIL image, PNG or JPEG bytes: ``image`` is the picture's
  SHA-256 (its reference is among the manifest's ``views.images``);
- ``text``: a scalar or a string, its text (cut);
- ``failure``: a ``Failure``: ``failure_type``, ``message``, ``traceback`` (cut);
- ``none``: a type with no preview; ``preview`` is the one-line preview the XCom row holds.

matplotlib, PIL, numpy and pandas are never imported here: a value is recognised by the module
of its type, and only a module that value's type already loaded is used.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

from provider.runtime.failure import Failure
from provider.runtime.preview import preview

log = logging.getLogger("provider.runtime")

MAX_VIEW_BYTES = 64 * 1024  # one view or card document, as JSON
MAX_IMAGE_BYTES = 512 * 1024  # one picture
MAX_IMAGES = 16  # pictures one try keeps (its result's and its cards')
MAX_IMAGE_SIDE = 1600  # pixels: a larger PIL image is scaled down first
VIEW_TYPE = "flowtask.view"
CARDS_TYPE = "flowtask.cards"
IMAGE_TYPE = "flowtask.image"
ITEM_PREVIEWS_TYPE = "flowtask.item_previews"
VIEW_ENCODING = "json"
IMAGE_ENCODINGS = {"png": b"\x89PNG\r\n\x1a\n", "jpeg": b"\xff\xd8\xff"}
# How much of a value a document shows, from the most to the least; the first that fits.
_BUDGETS = ((20, 200), (10, 120), (5, 80), (2, 40), (0, 0))
_TEXT_MAX = 4000
_TRACEBACK_MAX = 16000


class ImageTooLarge(ValueError):
    """A picture over ``MAX_IMAGE_BYTES`` even at the smallest size tried."""


def image_format(data: bytes | bytearray | memoryview) -> str | None:
    """``png`` or ``jpeg`` when ``data`` starts like one, else None."""
    head = bytes(data[:8])
    for name, magic in IMAGE_ENCODINGS.items():
        if head.startswith(magic):
            return name
    return None


def _loaded(module: str, name: str) -> Any:
    """``module.name`` if the module is already imported (by the value's owner), else None."""
    found = sys.modules.get(module)
    return getattr(found, name, None) if found is not None else None


def _is_instance(value: Any, module: str, name: str) -> bool:
    kind = _loaded(module, name)
    return kind is not None and isinstance(value, kind)


def _of_module(value: Any, root: str) -> bool:
    return type(value).__module__.split(".")[0] == root


def picture(value: Any) -> tuple[bytes, str] | None:
    """``(bytes, "png" | "jpeg")`` of a figure, an image or image bytes; None for anything else.

    ``ImageTooLarge`` when it cannot be brought under ``MAX_IMAGE_BYTES``.
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        kind = image_format(value)
        if kind is None:
            return None
        data = bytes(value)
        if len(data) <= MAX_IMAGE_BYTES:
            return data, kind
        pil = _loaded("PIL.Image", "open")
        if pil is None:
            raise ImageTooLarge(f"a {kind} of {len(data)} bytes (at most {MAX_IMAGE_BYTES})")
        return _pil_png(pil(io.BytesIO(data))), "png"
    if _is_instance(value, "matplotlib.figure", "Figure"):
        return _figure_png(value), "png"
    if _is_instance(value, "PIL.Image", "Image"):
        return _pil_png(value), "png"
    return None


def _figure_png(figure: Any) -> bytes:
    """At 100 dpi with its longer side at most ``MAX_IMAGE_SIDE`` pixels; smaller until the PNG
    fits, down to about 128 pixels."""
    inches = max(float(x) for x in figure.get_size_inches())
    dpi = min(100.0, MAX_IMAGE_SIDE / inches)
    while True:
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=dpi)
        if buffer.tell() <= MAX_IMAGE_BYTES:
            return buffer.getvalue()
        if dpi * inches * 0.6 < 128:
            raise ImageTooLarge(f"a figure of {buffer.tell()} bytes at {dpi:.0f} dpi")
        dpi *= 0.6


def _pil_png(image: Any) -> bytes:
    image = image.copy()
    if image.mode not in ("RGB", "RGBA", "L", "LA", "P"):
        image = image.convert("RGBA")
    side = MAX_IMAGE_SIDE
    while side >= 64:
        image.thumbnail((side, side))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        if buffer.tell() <= MAX_IMAGE_BYTES:
            return buffer.getvalue()
        side //= 2
    raise ImageTooLarge(f"an image of {buffer.tell()} bytes at {image.size}")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"


def _cell(value: Any, width: int) -> Any:
    """One table cell or statistic as JSON: numbers as numbers (finite), the rest as text."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int) and abs(value) < 2**53:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    number = _as_number(value)
    if number is not None:
        return number
    try:
        return _cut(str(value), width)
    except Exception:  # a broken __str__ shows as its type
        return f"<{type(value).__name__}>"


def _as_number(value: Any) -> float | int | None:
    """A numpy scalar as a Python number."""
    if _of_module(value, "numpy") and hasattr(value, "item"):
        item = value.item()
        if isinstance(item, bool):
            return None
        if isinstance(item, int) and abs(item) < 2**53:
            return item
        if isinstance(item, float) and math.isfinite(item):
            return item
    return None


def _table(value: Any, rows: int, width: int) -> dict[str, Any]:
    frame = value.to_frame() if hasattr(value, "to_frame") and value.ndim == 1 else value
    head = frame.head(rows)
    return {
        "kind": "table",
        "shape": list(value.shape),
        "columns": [_cut(str(c), width or 40) for c in frame.columns],
        "dtypes": [str(d) for d in frame.dtypes],
        "index": [_cell(i, width) for i in head.index],
        "rows": [[_cell(v, width) for v in row] for row in head.itertuples(index=False)],
    }


def _array(value: Any, rows: int, width: int) -> dict[str, Any]:
    document: dict[str, Any] = {
        "kind": "array",
        "shape": list(value.shape),
        "dtype": str(value.dtype),
        "head": [_cell(v, width) for v in value.reshape(-1)[:rows]] if value.size else [],
    }
    numpy = sys.modules.get("numpy")
    if numpy is not None and value.size and value.dtype.kind in "iuf":
        with numpy.errstate(all="ignore"):  # a mean of infinities; all NaN
            stats = {name: getattr(numpy, f"nan{name}")(value) for name in _STATS}
            if value.dtype.kind == "f":
                stats["nan"] = int(numpy.isnan(value).sum())
        document["stats"] = {name: _cell(number, 40) for name, number in stats.items()}
    return document


_STATS = ("min", "max", "mean", "std")  # NaN left out, as numpy's nanmin and the rest do


def _short(value: Any, width: int) -> str:
    return _cut(preview(value), width)


def describe(value: Any, rows: int = 20, width: int = 200) -> dict[str, Any]:
    """The view document of ``value`` showing at most ``rows`` rows or items (no pictures)."""
    kind = type(value)
    base = {"type": f"{kind.__module__}.{kind.__qualname__}"}
    if isinstance(value, Failure):
        return {
            **base,
            "kind": "failure",
            "failure_type": value.type,
            "message": _cut(value.message, _TEXT_MAX if rows else 200),
            "traceback": _cut(value.traceback, _TRACEBACK_MAX if rows else 0),
        }
    if _of_module(value, "pandas") and hasattr(value, "head") and hasattr(value, "dtypes"):
        return {**base, **_table(value, rows, width)}
    if _of_module(value, "numpy") and hasattr(value, "dtype") and bool(getattr(value, "ndim", 0)):
        return {**base, **_array(value, rows, width)}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = list(itertools.islice(value, rows))
        return {
            **base,
            "kind": "items",
            "length": len(value),
            "items": [_short(item, width) for item in items],
        }
    if isinstance(value, Mapping):
        pairs = list(itertools.islice(value.items(), rows))
        return {
            **base,
            "kind": "mapping",
            "length": len(value),
            "items": [
                [_cut(k, width) if isinstance(k, str) else _short(k, width), _short(v, width)]
                for k, v in pairs
            ],
        }
    if isinstance(value, (str, int, float, complex, bool)) or value is None:
        text = value if isinstance(value, str) else repr(value)
        return {**base, "kind": "text", "text": _cut(text, _TEXT_MAX if rows else 200)}
    if isinstance(value, (bytes, bytearray)):
        return {**base, "kind": "text", "text": _cut(repr(bytes(value[:600])), 600 if rows else 80)}
    return {**base, "kind": "none", "preview": preview(value)}


def fit(make: Callable[[int, int], dict[str, Any]]) -> bytes:
    """The JSON of the richest ``make(rows, width)`` within ``MAX_VIEW_BYTES``."""
    for rows, width in _BUDGETS:
        body = _dumps(make(rows, width))
        if len(body) <= MAX_VIEW_BYTES:
            return body
    raise ValueError(f"a view document of {len(body)} bytes even when cut to nothing")


def _dumps(document: Any) -> bytes:
    return json.dumps(document, sort_keys=True, allow_nan=False, default=str).encode()


class _Images:
    """Pictures a try keeps: stored content-addressed, at most ``MAX_IMAGES``."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.refs: list[dict[str, Any]] = []

    def add(self, data: bytes, kind: str) -> dict[str, Any]:
        """``{"image": sha256, "format": kind}``, or a note why the picture is not kept."""
        if len(self.refs) >= MAX_IMAGES:
            return {"omitted": f"more than {MAX_IMAGES} pictures in one try"}
        ref = self.store.put_bytes(data, type_name=IMAGE_TYPE, encoding=kind).to_json()
        if all(r["sha256"] != ref["sha256"] for r in self.refs):
            self.refs.append(ref)
        return {"image": ref["sha256"], "format": kind, "bytes": len(data)}


def _value_view(value: Any, images: _Images) -> bytes:
    try:
        shown = picture(value)
    except Exception as error:  # a figure that cannot render: the other fields still show
        kind, reason = type(value), f"{type(error).__name__}: {error}"
        return fit(
            lambda rows, width: {
                "type": f"{kind.__module__}.{kind.__qualname__}",
                "kind": "image",
                "omitted": _cut(reason, width or 80),
            }
        )
    if shown is not None:
        kind = type(value)
        described = {"type": f"{kind.__module__}.{kind.__qualname__}", "kind": "image"}
        described.update(images.add(*shown))
        return fit(lambda rows, width: described)
    return fit(lambda rows, width: describe(value, rows, width))


def record(store: Any, value: Any, cards: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Store the view of ``value`` (a result or a ``Failure``) and the try's cards; return the
    manifest's ``views`` entry: ``{"result", "cards", "images"}``, each a reference."""
    images = _Images(store)
    body = _value_view(value, images)
    views: dict[str, Any] = {
        "result": store.put_bytes(body, type_name=VIEW_TYPE, encoding=VIEW_ENCODING).to_json()
    }
    if cards:
        shown = [_card_element(card, images) for card in cards]
        body = fit(lambda rows, width: {"cards": [_cut_card(c, rows, width) for c in shown]})
        views["cards"] = store.put_bytes(
            body, type_name=CARDS_TYPE, encoding=VIEW_ENCODING
        ).to_json()
    if images.refs:
        views["images"] = images.refs
    return views


def _card_element(card: dict[str, Any], images: _Images) -> dict[str, Any]:
    if card["kind"] == "image":
        element = {"kind": "image", "title": card.get("title")}
        if "data" in card:
            element.update(images.add(card["data"], card["format"]))
        else:
            element["omitted"] = card["omitted"]
        return element
    return card


def _cut_card(card: dict[str, Any], rows: int, width: int) -> dict[str, Any]:
    """A card element within a budget: markdown cut, a table's first rows."""
    if card["kind"] == "markdown":
        return {"kind": "markdown", "text": _cut(card["text"], 200 * width if rows else 200)}
    if card["kind"] == "table":
        return {
            **card,
            "headers": [_cut(h, width or 40) for h in card["headers"]],
            "rows": [[_cell(v, width) for v in row] for row in card["rows"][: rows * 10]],
        }
    return card


def item_previews(store: Any, values: list[Any]) -> dict[str, Any] | None:
    """One line per item of a ``.foreach`` chunk, stored as JSON, for the chunk manifest to name;
    None (logged) when they cannot be made or do not fit."""

    try:
        body = _lines_that_fit(values)
        ref = store.put_bytes(body, type_name=ITEM_PREVIEWS_TYPE, encoding=VIEW_ENCODING)
    except Exception as error:
        log.warning("flowtask: no item previews of this chunk for the UI: %s", error)
        return None
    return dict(ref.to_json())


def _lines_that_fit(values: list[Any]) -> bytes:
    """The items' lines, shorter until they fit; past that, only the first ones."""
    for width in (120, 60, 24):
        body = _dumps([_item_line(value, width) for value in values])
        if len(body) <= MAX_VIEW_BYTES:
            return body
    lines = [_item_line(value, 24) for value in values]
    keep = len(lines) * MAX_VIEW_BYTES * 9 // (10 * len(body))
    return _dumps(lines[:keep])


def _item_line(value: Any, width: int) -> str:
    if isinstance(value, Failure):
        first = (value.message.splitlines() or [""])[0]
        return _cut(f"Failure {value.type}: {first}", width)
    if isinstance(value, Mapping) and value.get("__flowtask_ref__") == 1:
        return _cut(f"stored {value.get('type')} ({value.get('size')} bytes)", width)
    return _cut(preview(value), width)


def where() -> dict[str, Any]:
    """Where this runtime runs: an AWS Batch job, a Kubernetes pod, or a local process."""
    env = os.environ
    if env.get("AWS_BATCH_JOB_ID"):
        found = {"platform": "batch", "batch_job_id": env["AWS_BATCH_JOB_ID"]}
        for name, key in (
            ("AWS_BATCH_JOB_ATTEMPT", "attempt"),
            ("AWS_BATCH_JQ_NAME", "job_queue"),
            ("AWS_BATCH_CE_NAME", "compute_environment"),
            ("AWS_REGION", "region"),
        ):
            if env.get(name):
                found[key] = env[name]
        return found
    if env.get("KUBERNETES_SERVICE_HOST") or env.get("FLOWTASK_POD_NAME"):
        pod = env.get("FLOWTASK_POD_NAME") or os.uname().nodename
        found = {"platform": "kubernetes", "pod": pod}
        namespace = env.get("FLOWTASK_POD_NAMESPACE") or _service_account_namespace()
        if namespace:
            found["namespace"] = namespace
        return found
    return {"platform": "local", "host": os.uname().nodename, "pid": os.getpid()}


def _service_account_namespace() -> str | None:
    try:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as file:
            return file.read().strip() or None
    except OSError:
        return None


def try_views(store: Any, value: Any, cards: list[dict[str, Any]] | None) -> dict[str, Any]:
    """``{"views": ..., "where": ...}`` for a try's manifest; never fails the try (a view that
    cannot be made is logged and left out)."""
    found: dict[str, Any] = {"where": where()}
    try:
        found["views"] = record(store, value, cards)
    except Exception as error:
        log.warning("flowtask: no preview of this result for the UI: %s: %s", type(error), error)
    return found
