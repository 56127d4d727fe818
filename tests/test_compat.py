"""Other projects' internals, each used in one place (``provider/compat/``) and checked there:
the installed releases are ones flowtask works with; a release outside the range, or one that
lost an internal, is refused with a message naming both; the ranges are pyproject.toml's."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

from provider.compat import IncompatibleRelease, absent, require

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
MODULES = {
    "provider.compat.airflow_sdk": "apache-airflow",
    "provider.compat.kubernetes": "apache-airflow-providers-cncf-kubernetes",
    "provider.compat.amazon": "apache-airflow-providers-amazon",
}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_the_installed_releases_are_accepted(module: str):
    assert importlib.import_module(module).RELEASES


@pytest.mark.parametrize(("module", "project"), sorted(MODULES.items()))
def test_each_range_is_the_one_pyproject_bounds(module: str, project: str):
    """The lowest lower bound and the upper bound pyproject.toml gives the project (over its
    Python markers): the range a compat module accepts says the same, once more."""
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    bounds = [Requirement(d).specifier for d in dependencies if Requirement(d).name == project]
    lows = {s.version for spec in bounds for s in spec if s.operator == ">="}
    highs = {s.version for spec in bounds for s in spec if s.operator == "<"}
    low, high = importlib.import_module(module).RELEASES
    assert (low, {high}) == (min(lows, key=lambda v: tuple(map(int, v.split(".")))), highs)


def test_a_release_outside_the_range_is_refused_naming_both():
    with pytest.raises(IncompatibleRelease) as refused:
        require("apache-airflow-providers-cncf-kubernetes", "11.0.0", "10.10", "11")
    assert str(refused.value) == (
        "flowtask works with apache-airflow-providers-cncf-kubernetes >=10.10,<11, which it "
        "was tested with; 11.0.0 is installed. Install a release in that range (pip install "
        "'apache-airflow-providers-cncf-kubernetes>=10.10,<11') or a flowtask release made "
        "for 11.0.0"
    )
    require("x", "10.25.0", "10.10", "11")  # inside: nothing to say
    require("x", "3.3.2.post1", "3.3.2", "3.4")
    with pytest.raises(IncompatibleRelease):
        require("x", "3.4.0rc1", "3.3.2", "3.4")


def test_a_release_that_lost_an_internal_is_refused_naming_it():
    class KubernetesPodOperator:
        def invoke_defer_method(self) -> None: ...

    gone = absent(KubernetesPodOperator, ("await_pod_start", "invoke_defer_method"))
    assert gone == ["KubernetesPodOperator.await_pod_start"]
    with pytest.raises(IncompatibleRelease, match=r"10.25.0 is installed \(it has no "):
        require("apache-airflow-providers-cncf-kubernetes", "10.25.0", "10.10", "11", missing=gone)


def test_importing_a_target_under_an_incompatible_provider_fails_loudly(monkeypatch):
    """The refusal reaches whoever imports the target: a clear error, not a misbehaviour."""
    import airflow.providers.cncf.kubernetes as kubernetes

    monkeypatch.setattr(kubernetes, "__version__", "11.2.0")
    for name in ("provider.compat.kubernetes", "provider.operators.targets.pod_operator"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    with pytest.raises(IncompatibleRelease, match=r"11\.2\.0 is installed"):
        importlib.import_module("provider.operators.targets.pod_operator")


def test_the_store_reads_s3_straight_from_the_socket_with_the_installed_botocore(moto):
    """The one internal that degrades instead of refusing (botocore's body over urllib3's over
    http.client): with the installed pair it is the fast path, or this fails."""
    import http.client

    from conftest import BUCKET, s3_client

    from provider.compat.botocore import http_response

    client = s3_client(moto.endpoint)
    client.put_object(Bucket=BUCKET, Key="compat/probe", Body=b"x" * 10)
    body = client.get_object(Bucket=BUCKET, Key="compat/probe")["Body"]
    assert isinstance(http_response(body), http.client.HTTPResponse)
    body.close()
