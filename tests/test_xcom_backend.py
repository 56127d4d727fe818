"""`FlowXCom` in process: what goes into the XCom row and what comes back out."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from provider.store import is_reference, open_store
from provider.xcom import FlowXCom
from provider.xcom.references import references_kept


@pytest.fixture
def store(tmp_path, monkeypatch):
    uri = (tmp_path / "artifacts").as_uri()
    monkeypatch.setenv("AIRFLOW__FLOW_TASK__ARTIFACT_STORE", uri)
    monkeypatch.setenv("AIRFLOW__FLOW_TASK__XCOM_INLINE_MAX_BYTES", "64")
    return open_store(uri)


def _row(value):
    return SimpleNamespace(value=FlowXCom.serialize_value(value, key="return_value"))


def test_small_json_stays_inline(store):
    row = _row({"a": 1})
    assert row.value == {"a": 1}
    assert FlowXCom.deserialize_value(row) == {"a": 1}


def test_large_and_non_json_values_go_to_the_store(store):
    array = np.arange(10_000)
    row = _row(array)
    assert is_reference(row.value)
    np.testing.assert_array_equal(store.get(row.value), array)
    np.testing.assert_array_equal(FlowXCom.deserialize_value(row), array)
    big = _row(list(range(1000)))
    assert is_reference(big.value)
    assert FlowXCom.deserialize_value(big) == list(range(1000))


@pytest.mark.parametrize(
    "value", [(1, 2), {1: "int key"}, {"a": {1, 2}}, b"bytes", "x" * 100, list(range(40))]
)
def test_only_small_plain_json_stays_inline(store, value):
    row = _row(value)
    assert is_reference(row.value)
    assert FlowXCom.deserialize_value(row) == value


def test_a_reference_is_not_stored_again(store):
    ref = store.put(np.ones(5)).to_json()
    assert _row(ref).value == ref
    assert _row([ref, ref]).value == [ref, ref]
    assert _row({"x": ref}).value == {"x": ref}


def test_references_kept_for_flow_task_readers(store):
    ref = store.put("payload").to_json()
    row = _row(ref)
    with references_kept():
        assert FlowXCom.deserialize_value(row) == ref
    assert FlowXCom.deserialize_value(row) == "payload"
    rows = _row([ref, ref])
    assert FlowXCom.deserialize_value(rows) == ["payload", "payload"]


def test_zero_inline_limit_stores_everything(store, monkeypatch):
    monkeypatch.setenv("AIRFLOW__FLOW_TASK__XCOM_INLINE_MAX_BYTES", "0")
    row = _row(1)
    assert is_reference(row.value)
    assert FlowXCom.deserialize_value(row) == 1


def test_a_long_unicode_key_is_stored_under_a_short_file_name(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW__FLOW_TASK__ARTIFACT_STORE", tmp_path.as_uri())
    key = "métriques-" + "é" * 500  # Airflow takes XCom keys up to 512 characters
    ref = FlowXCom.serialize_value(
        list(range(3000)), key=key, dag_id="d", run_id="r", task_id="t", map_index=-1
    )
    (manifest,) = (tmp_path / "runs").rglob("*.json")
    assert len(manifest.name.encode()) <= 255
    assert json.loads(manifest.read_text())["key"] == key  # the full key is kept inside
    other = FlowXCom.serialize_value(
        list(range(4000)), key=key[:-1] + "x", dag_id="d", run_id="r", task_id="t", map_index=-1
    )
    assert other != ref and len(list((tmp_path / "runs").rglob("*.json"))) == 2
