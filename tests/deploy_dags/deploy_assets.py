"""A producer with an outlet asset, and a consumer scheduled on it that runs a flow task."""

from __future__ import annotations

from airflow.sdk import Asset, dag, task

from provider import flow_params, flow_task

DATA = Asset("flowtask-deploy-data")


@dag(schedule=None, catchup=False, tags=["deploy"])
def deploy_asset_producer():
    @task(outlets=[DATA])
    def produce() -> None:
        print("updated", DATA.uri)

    produce()


@dag(schedule=[DATA], catchup=False, params=flow_params(), tags=["deploy"])
def deploy_asset_consumer():
    @flow_task
    def consume() -> str:
        return "consumed"

    consume()


deploy_asset_producer()
deploy_asset_consumer()
