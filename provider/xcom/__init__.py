"""The flowtask XCom backend: ``AIRFLOW__CORE__XCOM_BACKEND=provider.xcom.FlowXCom``."""

from provider.xcom.backend import FlowXCom

__all__ = ["FlowXCom"]
