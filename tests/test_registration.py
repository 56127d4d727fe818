"""The provider registers with Airflow: providers list, config section, `@task.flow_task`."""

from __future__ import annotations

import subprocess

from conftest import AIRFLOW, EXAMPLES, airflow_env


def _airflow(tmp_path, *args: str) -> str:
    proc = subprocess.run(
        [AIRFLOW, *args],
        env=airflow_env(tmp_path, EXAMPLES),
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout


def test_providers_list_shows_flowtask(tmp_path):
    out = _airflow(tmp_path, "providers", "list", "--output", "plain")
    assert "airflow-provider-flowtask" in out


def test_config_list_shows_flow_task_section(tmp_path):
    out = _airflow(tmp_path, "config", "list", "--section", "flow_task", "--defaults")
    for key in ("artifact_store", "default_compute", "xcom_inline_max_bytes"):
        assert key in out


def test_task_flow_task_resolves_to_our_decorator():
    from airflow.sdk import task

    from provider.decorators import flow_task

    assert task.flow_task is flow_task or task.flow_task.func is flow_task
