"""A flow task that imports Airflow and a provider hook, checked by a plain task downstream."""

from __future__ import annotations

from airflow.sdk import dag, task

from provider import flow_params, flow_task, record_run_state


@dag(
    schedule=None,
    catchup=False,
    params=flow_params(tags=["deploy"]),
    tags=["deploy"],
    on_success_callback=record_run_state,  # the dag-processor records the run's end
    on_failure_callback=record_run_state,
)
def deploy_imports_airflow():
    @flow_task
    def hook_name() -> str:
        import airflow
        from airflow.providers.standard.hooks.filesystem import FSHook

        return f"{FSHook.__name__} from airflow {airflow.__version__}"

    @task
    def check(value: str) -> str:
        assert value.startswith("FSHook from airflow 3."), value
        return value

    check(hook_name())


deploy_imports_airflow()
