"""Thin Airflow operators: pick the compute target, store the payload, read back the result."""

from provider.core.outcome import FlowTaskFailed
from provider.operators.flow_task import FlowTaskOperator
from provider.operators.targets import ComputeUnavailable

__all__ = ["ComputeUnavailable", "FlowTaskFailed", "FlowTaskOperator"]
