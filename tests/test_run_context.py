"""Run identity (from Airflow's context), namespaces, tags and the compute override."""

from __future__ import annotations

import getpass
from types import SimpleNamespace

import pytest

from provider.client.namespaces import default_namespace as client_namespace
from provider.core.run_context import (
    RunParamError,
    default_namespace,
    resolve_compute,
    run_tags,
)
from provider.operators.boundary import run_identity


def test_default_namespace(monkeypatch):
    monkeypatch.delenv("FLOWTASK_USER", raising=False)
    assert default_namespace("etl", "scheduled", None) == "production:etl"
    assert default_namespace("etl", "manual", "alice") == "user:alice"
    # `airflow dags test` triggers as "dag_test": the run is yours, where the client looks.
    yours = f"user:{getpass.getuser()}"
    assert default_namespace("etl", "manual", "dag_test") == yours == client_namespace()
    assert default_namespace("etl", "manual", None) == yours
    monkeypatch.setenv("FLOWTASK_USER", "alice")
    assert default_namespace("etl", "manual", "dag_test") == "user:alice" == client_namespace()
    # Runs the deployment starts by itself are production, whoever the worker's OS user is.
    for run_type in ("asset_triggered", "backfill", "operator_triggered", "asset_materialization"):
        assert default_namespace("etl", run_type, None) == "production:etl"


@pytest.mark.parametrize(
    ("task", "params", "default", "expected"),
    [
        (None, {}, "local", "local"),
        ("kubernetes", {}, "local", "kubernetes"),
        ("kubernetes", {"flow_compute": None}, "local", "kubernetes"),
        ("kubernetes", {"flow_compute": "local"}, "local", "local"),
        (None, {"flow_compute": "batch"}, "local", "batch"),
        (None, {}, "kubernetes", "kubernetes"),
    ],
)
def test_resolve_compute_precedence(task, params, default, expected):
    assert resolve_compute(task, params, default) == expected


def test_resolve_compute_rejects_unknown_override():
    with pytest.raises(RunParamError, match="flow_compute='gpu'"):
        resolve_compute(None, {"flow_compute": "gpu"}, "local")


def test_run_tags():
    assert run_tags({"flow_tags": ["a", "b", "a"]}) == ["a", "b"]
    assert run_tags({}) == []
    with pytest.raises(RunParamError, match="flow_tags"):
        run_tags({"flow_tags": "a"})


def test_run_identity_from_context():
    ti = SimpleNamespace(dag_id="d", run_id="manual__1", task_id="t", map_index=-1, try_number=2)
    dag_run = SimpleNamespace(run_type="manual", triggering_user_name="bob")
    ident = run_identity({"ti": ti, "dag_run": dag_run, "params": {"flow_tags": ["x"]}})
    assert ident == {
        "dag_id": "d",
        "run_id": "manual__1",
        "task_id": "t",
        "map_index": -1,
        "try_number": 2,
        "namespace": "user:bob",
        "tags": ["x"],
    }
    ident = run_identity({"ti": ti, "dag_run": dag_run, "params": {"flow_namespace": "team:ml"}})
    assert ident["namespace"] == "team:ml"


@pytest.mark.parametrize(
    ("given", "expected"),
    [(" team:x ", "team:x"), ("   ", "user:bob"), ("", "user:bob"), (None, "user:bob")],
)
def test_the_namespace_from_the_form_is_stripped_and_a_blank_one_is_the_default(given, expected):
    ti = SimpleNamespace(dag_id="d", run_id="manual__1", task_id="t", map_index=-1, try_number=1)
    dag_run = SimpleNamespace(run_type="manual", triggering_user_name="bob")
    params = {"flow_namespace": given}
    assert run_identity({"ti": ti, "dag_run": dag_run, "params": params})["namespace"] == expected


@pytest.mark.parametrize("given", ["team\nml", "x" * 501, 7, ["team:ml"]])
def test_a_namespace_that_cannot_be_one_is_refused(given):
    ti = SimpleNamespace(dag_id="d", run_id="manual__1", task_id="t", map_index=-1, try_number=1)
    dag_run = SimpleNamespace(run_type="manual", triggering_user_name="bob")
    with pytest.raises(RunParamError, match=r"flow_namespace=.* is invalid. Accepted: a name"):
        run_identity({"ti": ti, "dag_run": dag_run, "params": {"flow_namespace": given}})
