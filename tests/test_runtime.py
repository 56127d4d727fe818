"""`python -m provider.runtime` as a subprocess: the same command a pod runs."""

from __future__ import annotations

import subprocess
import sys
from collections import OrderedDict
from typing import NamedTuple

import cloudpickle
import numpy as np
import pytest

from provider.runtime import Failure, Payload
from provider.runtime.preview import preview
from provider.store import manifest_key, open_store
from provider.translate import runtime_command

# Functions of this test module reach the subprocess by value, as a DAG file's functions do.
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


def add_rows(matrix, offset, *, scale=1):
    return (matrix + offset) * scale


def fails(reason):
    raise ValueError(reason)


def airflow_loaded():
    return "airflow" in sys.modules


def pairs(n):
    return [(i, i * i) for i in range(n)]


def outputs():
    return {"low": 1, "high": np.arange(3)}


@pytest.fixture
def store(tmp_path):
    return open_store((tmp_path / "artifacts").as_uri())


def _run(store, payload: Payload, **kwargs):
    ref = store.put(payload, by_value=True)
    argv = runtime_command(store.root_uri, ref.to_json(), KEY, python=sys.executable)
    if "python" in kwargs:
        argv[argv.index("--python") + 1] = kwargs["python"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def test_runs_function_with_referenced_and_plain_arguments(store):
    matrix = np.ones((200, 50))
    upstream = store.put(matrix).to_json()
    proc = _run(store, Payload(add_rows, (upstream, 1), {"scale": 3}, identity=IDENTITY))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    manifest = store.read_manifest(KEY)
    assert manifest["status"] == "succeeded"
    assert manifest["namespace"] == "user:test" and manifest["tags"] == ["unit"]
    assert manifest["peak_rss_mib"] > 0 and manifest["seconds"] >= manifest["function_seconds"]
    result = store.get(manifest["result"])
    np.testing.assert_array_equal(result, np.full((200, 50), 6.0))


def test_failure_exits_nonzero_with_traceback_and_failure_manifest(store):
    proc = _run(store, Payload(fails, ("bad input",), identity=IDENTITY))
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "ValueError: bad input" in proc.stderr
    manifest = store.read_manifest(KEY)
    assert manifest["status"] == "failed"
    assert manifest["error"] == {
        "type": "builtins.ValueError",
        "message": "bad input",
        "types": [
            "builtins.ValueError",
            "builtins.Exception",
            "builtins.BaseException",
            "builtins.object",
        ],
    }
    failure = store.get(manifest["failure"])
    assert isinstance(failure, Failure) and not failure
    assert "fails" in failure.traceback
    # Previewed as a result is, for the task log and the XCom view of a caught failure.
    assert manifest["failure"]["preview"] == "Failure: ValueError bad input"


@pytest.mark.parametrize(
    ("failure", "shown"),
    [
        (
            Failure("builtins.KeyError", "'missing-column'", ""),
            "Failure: KeyError 'missing-column'",
        ),
        (
            Failure("etl.errors.BadShard", "shard 3\nis empty", ""),
            "Failure: etl.errors.BadShard shard 3",
        ),
        (
            Failure("builtins.RuntimeError", "x" * 500, ""),
            "Failure: RuntimeError " + "x" * 135 + "...",
        ),
    ],
)
def test_a_failure_previews_as_its_type_and_first_line(failure, shown):
    assert preview(failure) == shown


def test_runtime_does_not_import_airflow(store):
    proc = _run(store, Payload(airflow_loaded, identity=IDENTITY))
    assert proc.returncode == 0, proc.stderr
    assert store.get(store.read_manifest(KEY)["result"]) is False


def test_items_layout_stores_one_artifact_per_item(store):
    proc = _run(store, Payload(pairs, (3,), layout="items", identity=IDENTITY))
    assert proc.returncode == 0, proc.stderr
    refs = store.read_manifest(KEY)["result"]
    assert [store.get(r) for r in refs] == [(0, 0), (1, 1), (2, 4)]


def test_keys_layout_stores_one_artifact_per_key(store):
    proc = _run(store, Payload(outputs, layout="keys", identity=IDENTITY))
    assert proc.returncode == 0, proc.stderr
    refs = store.read_manifest(KEY)["result"]
    assert store.get(refs["low"]) == 1
    np.testing.assert_array_equal(store.get(refs["high"]), np.arange(3))


def test_items_layout_stores_a_dict_per_key_and_rejects_a_scalar(store):
    # Airflow maps downstream tasks over a dict's (key, value) pairs.
    proc = _run(store, Payload(outputs, layout="items", identity=IDENTITY))
    assert proc.returncode == 0, proc.stderr
    assert store.get(store.read_manifest(KEY)["result"]["low"]) == 1
    proc = _run(store, Payload(len, ("abc",), layout="items", identity=IDENTITY))
    assert proc.returncode == 1
    assert "must return a list, a tuple or a dict with string keys, got int" in proc.stderr


class Config(NamedTuple):
    lr: float
    layers: int


def learning_rate(cfg: Config, extra: OrderedDict) -> tuple[float, str, str]:
    return cfg.lr, type(cfg).__name__, type(extra).__name__


def test_arguments_keep_their_types_while_references_are_resolved(store):
    ref = store.put(7).to_json()
    payload = Payload(
        learning_rate,
        (Config(lr=0.1, layers=ref), OrderedDict(a=1)),  # a reference inside a NamedTuple
        identity=IDENTITY,
    )
    proc = _run(store, payload)
    assert proc.returncode == 0, proc.stderr
    assert store.get(store.read_manifest(KEY)["result"]) == (0.1, "Config", "OrderedDict")


def opens_a_file(path):
    return open(path)


def test_an_open_file_result_is_refused_not_turned_into_a_stringio(store, tmp_path):
    (tmp_path / "f.txt").write_text("contents")
    proc = _run(store, Payload(opens_a_file, (str(tmp_path / "f.txt"),), identity=IDENTITY))
    assert proc.returncode == 1
    assert "an open file" in proc.stderr and "return its path or its contents" in proc.stderr


def test_python_version_mismatch_names_both_versions(store):
    proc = _run(store, Payload(pairs, (1,), identity=IDENTITY), python="2.7")
    assert proc.returncode == 2
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert "Python 2.7" in proc.stderr and f"Python {running}" in proc.stderr


def test_reference_outside_the_store_is_refused(store, tmp_path):
    other = open_store((tmp_path / "elsewhere").as_uri())
    foreign = other.put(np.zeros(3)).to_json()
    proc = _run(store, Payload(add_rows, (foreign, 1), identity=IDENTITY))
    assert proc.returncode == 1
    assert store.read_manifest(KEY)["status"] == "failed"


def allocate(mib):
    block = bytearray(mib * 1024 * 1024)
    block[::4096] = b"x" * len(block[::4096])  # touch every page
    return len(block)


def test_peak_rss_is_the_runtimes_own(store):
    proc = _run(store, Payload(allocate, (200,), identity=IDENTITY))
    assert proc.returncode == 0, proc.stderr
    peak = store.read_manifest(KEY)["peak_rss_mib"]
    assert 200 < peak < 400, peak
    proc = _run(store, Payload(allocate, (1,), identity=IDENTITY))
    assert store.read_manifest(KEY)["peak_rss_mib"] < 150
