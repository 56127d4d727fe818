"""Provider metadata, found by Airflow through the ``apache_airflow_provider`` entry point."""

from __future__ import annotations

from typing import Any


def _option(description: str, default: str, example: str, kind: str = "string") -> dict[str, Any]:
    return {
        "description": description,
        "version_added": "0.1.0",
        "type": kind,
        "example": example,
        "default": default,
    }


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "airflow-provider-flowtask",
        "name": "flowtask",
        "description": (
            "Declare what a task needs (CPUs, memory, GPUs, retries, timeout, image) and run it "
            "locally, on Kubernetes or on AWS Batch; results are content-addressed artifacts."
        ),
        "versions": ["0.1.0"],
        "task-decorators": [{"name": "flow_task", "class-name": "provider.decorators.flow_task"}],
        "config": {
            "flow_task": {
                "description": "flowtask: where artifacts live and where flow tasks run.",
                "options": {
                    "artifact_store": _option(
                        "Root of the artifact store: file:///path or s3://bucket/prefix. Empty "
                        "means file://$AIRFLOW_HOME/flow_artifacts.\n",
                        "",
                        "file:///data/flow_artifacts",
                    ),
                    "aws_conn_id": _option(
                        "Airflow AWS connection whose credentials and endpoint the worker uses "
                        "for an s3:// artifact store. Where the runtime runs (pods, Batch, "
                        "local subprocesses) it uses the ordinary AWS credential chain; local "
                        "subprocesses get this connection's credentials and endpoint.\n",
                        "aws_default",
                        "aws_artifacts",
                    ),
                    "default_compute": _option(
                        "Compute target of flow tasks that set none: local, kubernetes or batch. "
                        "A run's flow_compute param overrides every task.\n",
                        "local",
                        "kubernetes",
                    ),
                    "xcom_inline_max_bytes": _option(
                        "With the flowtask XCom backend, JSON values up to this many bytes stay "
                        "in the XCom row; larger or non-JSON values go to the artifact store. "
                        "0 stores every value.\n",
                        "1024",
                        "0",
                        kind="integer",
                    ),
                },
            }
        },
    }
