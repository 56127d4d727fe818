"""Previews and cards for the UI, made where the task runs (``provider.runtime.views``)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from datetime import timedelta

import cloudpickle
import numpy as np
import pandas as pd
import pytest

from provider.runtime import Failure, Payload, cards
from provider.runtime.views import (
    IMAGE_TYPE,
    MAX_IMAGE_BYTES,
    MAX_VIEW_BYTES,
    VIEW_TYPE,
    image_format,
    item_previews,
    picture,
    record,
)
from provider.store import manifest_key, open_store
from provider.store.gc import collect_garbage
from provider.translate import runtime_command

cloudpickle.register_pickle_by_value(sys.modules[__name__])

IDENTITY = {
    "dag_id": "d",
    "run_id": "r1",
    "task_id": "t",
    "map_index": -1,
    "try_number": 1,
    "namespace": "user:test",
    "tags": ["unit"],
}
KEY = manifest_key("d", "r1", "t", -1, 1)


@pytest.fixture
def store(tmp_path):
    return open_store((tmp_path / "artifacts").as_uri())


def _view(store, value) -> dict:
    views = record(store, value)
    ref = views["result"]
    assert ref["type"] == VIEW_TYPE and ref["encoding"] == "json"
    body = store.get_bytes(ref)
    assert len(body) <= MAX_VIEW_BYTES
    return json.loads(body)


def test_a_dataframe_shows_its_first_rows_and_dtypes(store):
    names = [f"n{i}" for i in range(1000)]
    frame = pd.DataFrame({"id": range(1000), "score": np.linspace(0, 1, 1000), "name": names})
    view = _view(store, frame)
    assert view["kind"] == "table" and view["type"] == "pandas.DataFrame"
    assert view["shape"] == [1000, 3]
    assert view["columns"] == ["id", "score", "name"]
    assert view["dtypes"] == ["int64", "float64", str(frame.dtypes["name"])]
    assert view["rows"][:2] == [[0, 0.0, "n0"], [1, pytest.approx(1 / 999), "n1"]]
    assert len(view["rows"]) == 20 and view["index"][:3] == [0, 1, 2]


def test_a_series_is_a_one_column_table(store):
    view = _view(store, pd.Series([1.5, 2.5], name="x"))
    assert (view["kind"], view["columns"], view["rows"]) == ("table", ["x"], [[1.5], [2.5]])


def test_an_array_shows_shape_dtype_and_statistics(store):
    values = np.arange(12, dtype=np.float32).reshape(3, 4)
    view = _view(store, values)
    assert view["kind"] == "array" and view["shape"] == [3, 4] and view["dtype"] == "float32"
    assert view["stats"] == {
        "min": 0.0,
        "max": 11.0,
        "mean": 5.5,
        "std": pytest.approx(float(values.std())),
        "nan": 0,
    }
    assert view["head"][:3] == [0.0, 1.0, 2.0]


def test_non_finite_numbers_stay_valid_json(store):
    view = _view(store, np.array([1.0, np.inf, np.nan]))
    assert view["stats"] == {"min": 1.0, "max": "inf", "mean": "inf", "std": "nan", "nan": 1}
    assert view["head"][2] == "nan"
    table = _view(store, pd.DataFrame({"x": [np.nan]}))
    assert table["rows"] == [["nan"]]


def test_lists_and_dicts_show_their_first_items(store):
    view = _view(store, list(range(1_000_000)))
    assert view == {
        "kind": "items",
        "type": "builtins.list",
        "length": 1_000_000,
        "items": [f"int: {i}" for i in range(20)],
    }
    mapping = _view(store, {"a": 1, "b": [1, 2]})
    assert mapping["kind"] == "mapping" and mapping["length"] == 2
    assert mapping["items"] == [["a", "int: 1"], ["b", "list of 2: [1, 2]"]]


def test_scalars_and_strings_are_text(store):
    assert _view(store, 42)["text"] == "42"
    assert _view(store, "hello")["text"] == "hello"
    long = _view(store, "x" * 100_000)
    assert long["kind"] == "text" and len(long["text"]) <= 4000


def test_a_failure_shows_type_message_and_traceback(store):
    try:
        raise KeyError("missing column")
    except KeyError as exc:
        failure = Failure.from_exception(exc)
    view = _view(store, failure)
    assert view["kind"] == "failure"
    assert view["failure_type"] == "builtins.KeyError"
    assert view["message"] == "'missing column'"
    assert "raise KeyError" in view["traceback"]


class Opaque:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def test_types_with_no_preview_say_so(store):
    view = _view(store, Opaque())
    assert view["kind"] == "none" and view["type"].endswith("Opaque")
    assert view["preview"].startswith("Opaque: <Opaque instance at 0x")  # reprlib's own
    assert _view(store, b"\x00\x01")["kind"] == "text"  # bytes that are no picture


def test_every_document_is_capped(store):
    wide = pd.DataFrame({f"column {i} " + "w" * 300: ["v" * 500] * 50 for i in range(300)})
    view = _view(store, wide)  # cut to fit, still a table
    assert view["kind"] == "table" and view["shape"] == [50, 300]
    nested = _view(store, [["x" * 10_000] * 100] * 100)
    assert nested["kind"] == "items" and nested["length"] == 100
    huge = pd.DataFrame({"x": range(10)}, index=["i" * 100_000] * 10)
    assert _view(store, huge)["kind"] == "table"


def _png_size(data: bytes) -> tuple[int, int]:
    from PIL import Image

    return Image.open(io.BytesIO(data)).size


def test_a_matplotlib_figure_is_a_png(store):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4, 3))
    figure.add_subplot().plot([1, 3, 2])
    views = record(store, figure)
    view = json.loads(store.get_bytes(views["result"]))
    assert view["kind"] == "image" and view["format"] == "png"
    (image,) = views["images"]
    assert image["type"] == IMAGE_TYPE and image["encoding"] == "png"
    assert image["sha256"] == view["image"]
    data = bytes(store.get_bytes(image))
    assert image_format(data) == "png" and len(data) <= MAX_IMAGE_BYTES


def test_a_large_figure_is_made_smaller_to_fit(store):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(30, 30))  # 3000 pixels at 100 dpi: drawn at 1600, then smaller
    noise = np.random.default_rng(0).random((400, 400))
    figure.add_subplot().imshow(noise, interpolation="nearest")
    data, kind = picture(figure)
    assert kind == "png" and len(data) <= MAX_IMAGE_BYTES


def test_pil_images_and_image_bytes(store):
    from PIL import Image

    noise = np.random.default_rng(1).integers(0, 255, (1000, 1000, 3), dtype=np.uint8)
    image = Image.fromarray(noise)
    data, kind = picture(image)
    assert kind == "png" and len(data) <= MAX_IMAGE_BYTES and max(_png_size(data)) <= 1600
    small = io.BytesIO()
    Image.new("RGB", (10, 10), "red").save(small, format="JPEG")
    assert picture(small.getvalue()) == (small.getvalue(), "jpeg")  # kept as it is
    big = io.BytesIO()
    image.save(big, format="PNG")
    assert len(big.getvalue()) > MAX_IMAGE_BYTES
    data, kind = picture(big.getvalue())  # over the cap: scaled down
    assert kind == "png" and len(data) <= MAX_IMAGE_BYTES
    assert picture(b"GIF89a") is None and picture("text") is None


def test_views_import_no_plotting_or_data_library():
    code = (
        "import sys, provider, provider.card, provider.runtime.views, provider.runtime.run; "
        "print([m for m in ('matplotlib', 'PIL', 'numpy', 'pandas') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_cards_outside_a_run_are_dropped_and_bad_input_named():
    from provider import card

    card.markdown("dropped")  # no collector: nothing happens
    with cards.collect() as added:
        card.markdown("# hi")
        card.table([{"a": 1}, {"a": 2, "b": "x"}])
        card.table([(1, 2)], headers=["x", "y"])
        card.table(pd.DataFrame({"c": [1.5]}))
    assert added == [
        {"kind": "markdown", "text": "# hi"},
        {"kind": "table", "headers": ["a", "b"], "rows": [[1, None], [2, "x"]]},
        {"kind": "table", "headers": ["x", "y"], "rows": [[1, 2]]},
        {"kind": "table", "headers": ["c"], "rows": [[1.5]]},
    ]
    with pytest.raises(TypeError, match=r"card\.image"):
        card.image("not a picture")
    with pytest.raises(TypeError, match=r"card\.table"):
        card.table("abc")
    with pytest.raises(TypeError, match=r"card\.markdown"):
        card.markdown(3)  # type: ignore[arg-type]


def test_foreach_item_previews_fit_and_name_failures(store):
    ref = item_previews(store, [7, Failure("builtins.ValueError", "bad\nsecond line", "")])
    assert ref is not None
    assert json.loads(store.get_bytes(ref)) == ["int: 7", "Failure builtins.ValueError: bad"]
    ref = item_previews(store, [f"item {i}" for i in range(20_000)])  # too many: the first
    assert ref is not None and len(store.get_bytes(ref)) <= MAX_VIEW_BYTES
    lines = json.loads(store.get_bytes(ref))
    assert 1000 < len(lines) < 20_000 and lines[:2] == ["str of 6: 'item 0'", "str of 6: 'item 1'"]


def reports(n):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from provider import card

    figure = Figure(figsize=(3, 2))
    figure.add_subplot().bar(["a", "b"], [n, n + 1])
    card.markdown(f"## Report {n}")
    card.table([{"metric": "n", "value": n}])
    card.image(figure, title="bars")
    if n < 0:
        raise ValueError("negative")
    return pd.DataFrame({"n": [n]})


def _run(store, payload: Payload):
    ref = store.put(payload, by_value=True)
    argv = runtime_command(store.root_uri, ref.to_json(), KEY, python=sys.executable)
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("n", [3, -1])
def test_the_runtime_stores_views_and_cards_that_gc_keeps(store, n):
    proc = _run(store, Payload(reports, (n,), identity=IDENTITY))
    assert proc.returncode == (0 if n >= 0 else 1), proc.stderr
    manifest = store.read_manifest(KEY)
    views = manifest["views"]
    assert manifest["where"]["platform"] == "local"
    shown = json.loads(store.get_bytes(views["result"]))
    assert shown["kind"] == ("table" if n >= 0 else "failure")
    elements = json.loads(store.get_bytes(views["cards"]))["cards"]
    assert [e["kind"] for e in elements] == ["markdown", "table", "image"]
    assert elements[0]["text"] == f"## Report {n}" and elements[2]["title"] == "bars"
    assert [i["sha256"] for i in views["images"]] == [elements[2]["image"]]
    # gc (grace 0) keeps every view, card and picture the manifest names.
    collect_garbage(store, grace=timedelta(0), delete=True, now=time.time() + 10)
    for ref in [views["result"], views["cards"], *views["images"]]:
        assert store.has(ref)
