"""Provider metadata, found by Airflow through the ``apache_airflow_provider`` entry point;
its config options come from the declarations in ``provider.settings``."""

from __future__ import annotations

from typing import Any

from provider.settings import provider_info_options


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
        # The Flow tabs (provider.ui). Airflow loads providers' plugins only with
        # [core] lazy_discover_providers = False.
        "plugins": [{"name": "flowtask", "plugin-class": "provider.ui.plugin.FlowtaskPlugin"}],
        "config": {
            "flow_task": {
                "description": "flowtask: where artifacts live and where flow tasks run.",
                "options": provider_info_options(),
            }
        },
    }
