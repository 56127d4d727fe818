"""``@flow_task`` (also ``@task.flow_task``): a TaskFlow decorator for flow tasks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from airflow.sdk.bases.decorator import TaskDecorator, task_decorator_factory

from provider.operators.flow_task import FlowTaskOperator, retry_kwargs_given
from provider.specs import SpecError, TaskSpec

_AIRFLOW_RETRY_KWARGS = {
    "retries": "retry",
    "retry_delay": "retry",
    "retry_exponential_backoff": "retry",
    "max_retry_delay": "retry",
    "execution_timeout": "timeout",
}


def flow_task(
    python_callable: Callable[..., Any] | None = None,
    *,
    resources: Any = None,
    retry: Any = None,
    timeout: Any = None,
    catch: Any = None,
    environment: Any = None,
    compute: str | None = None,
    kubernetes: Any = None,
    batch: Any = None,
    multiple_outputs: bool | None = None,
    **kwargs: Any,
) -> TaskDecorator:
    """Turn a function into a flow task.

    ``resources``, ``retry``, ``timeout``, ``catch``, ``environment``, ``compute``,
    ``kubernetes`` (:class:`provider.KubernetesOptions`) and ``batch``
    (:class:`provider.BatchOptions`) are checked
    here, when the DAG file is parsed; a bad value raises :class:`provider.SpecError`. ``retry``
    and ``timeout`` become Airflow's own ``retries``, ``retry_delay``,
    ``retry_exponential_backoff``, ``max_retry_delay`` and ``execution_timeout``. Every other
    keyword goes to the operator, as with ``@task``; ``.expand``, ``.partial`` and ``.override``
    work as for any TaskFlow task.
    """
    spec = TaskSpec.build(
        resources=resources,
        retry=retry,
        timeout=timeout,
        catch=catch,
        environment=environment,
        compute=compute,
        kubernetes=kubernetes,
        batch=batch,
    )
    for name, spec_field in _AIRFLOW_RETRY_KWARGS.items():
        given = retry if spec_field == "retry" else timeout
        if name in kwargs and given is not None:
            raise SpecError(
                name,
                kwargs[name],
                f"either {spec_field}= or {name}=, not both",
                f"{spec_field}= already sets it",
            )
    mapped = retry_kwargs_given(spec, retry=retry is not None, timeout=timeout is not None)
    return task_decorator_factory(
        python_callable=python_callable,
        multiple_outputs=multiple_outputs,
        decorated_operator_class=FlowTaskOperator,
        flow_spec=spec,
        **mapped,
        **kwargs,
    )
