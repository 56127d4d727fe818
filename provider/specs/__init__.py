"""Task specs: frozen, hashable, validated when the DAG file is parsed. No Airflow imports."""

from provider.specs.batch import BatchOptions, check_fargate, secret_variables
from provider.specs.environment import Environment
from provider.specs.errors import SpecError
from provider.specs.foreach import ForeachOptions
from provider.specs.kubernetes import KubernetesOptions
from provider.specs.resources import Resources
from provider.specs.retry import Retry
from provider.specs.task import (
    COMPUTE_TARGETS,
    TaskSpec,
    airflow_retry_kwargs,
    check_batch_env,
    check_secrets_for,
)
from provider.specs.units import parse_cpu, parse_duration, parse_mebibytes

__all__ = [
    "COMPUTE_TARGETS",
    "BatchOptions",
    "Environment",
    "ForeachOptions",
    "KubernetesOptions",
    "Resources",
    "Retry",
    "SpecError",
    "TaskSpec",
    "airflow_retry_kwargs",
    "check_batch_env",
    "check_fargate",
    "check_secrets_for",
    "parse_cpu",
    "parse_duration",
    "parse_mebibytes",
    "secret_variables",
]
