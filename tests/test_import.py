"""`import provider` must stay cheap: DAG parsing pays for it on every file."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("boto3", "botocore", "kubernetes", "pandas", "airflow.providers")


def _modules_after(statement: str) -> list[str]:
    code = f"import sys, json; {statement}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def _heavy(modules: list[str]) -> list[str]:
    return [m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY)]


def test_import_provider_loads_no_heavy_modules():
    modules = _modules_after("import provider")
    assert _heavy(modules) == []
    assert not any(m == "airflow" or m.startswith("airflow.") for m in modules)


def test_specs_import_without_airflow():
    modules = _modules_after("from provider import Resources, Retry, Environment, SpecError")
    assert not any(m == "airflow" or m.startswith("airflow.") for m in modules)


def test_decorator_import_adds_nothing_heavy_to_airflow_sdk():
    # `import airflow.sdk` alone reads every provider's get_provider_info; we add nothing heavy.
    baseline = set(_modules_after("import airflow.sdk"))
    modules = _modules_after("import airflow.sdk; from provider import flow_task, flow_params")
    assert _heavy(sorted(set(modules) - baseline)) == []
    assert not any(m.startswith(("boto3", "botocore", "kubernetes", "pandas")) for m in modules)


def test_runtime_and_store_import_without_airflow():
    modules = _modules_after("import provider.runtime.run, provider.runtime.__main__")
    assert not any(m == "airflow" or m.startswith("airflow.") for m in modules)
    assert _heavy(modules) == []


def test_the_client_imports_without_airflow_or_boto3():
    """A notebook needs only the store's credentials; boto3 comes with an s3:// store."""
    modules = _modules_after("import provider.client, provider.client.cli")
    assert not any(m == "airflow" or m.startswith("airflow.") for m in modules)
    assert _heavy(modules) == []
