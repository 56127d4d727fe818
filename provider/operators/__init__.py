"""Thin Airflow operators: pick the compute target, store the payload, read back the result."""

from provider.operators.flow_task import ComputeUnavailable, FlowTaskFailed, FlowTaskOperator

__all__ = ["ComputeUnavailable", "FlowTaskFailed", "FlowTaskOperator"]
