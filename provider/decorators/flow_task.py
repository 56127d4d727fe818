"""``@flow_task`` (also ``@task.flow_task``): a TaskFlow decorator for flow tasks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Any

import attr
from airflow.sdk.bases.decorator import TaskDecorator

from provider.compat.airflow_sdk import (
    DecoratedMappedOperator,
    TaskDecoratorBase,
    expand_input_of,
    is_mappable,
    use_mapped_class,
)
from provider.operators.flow_task import FlowTaskOperator
from provider.specs import SpecError, TaskSpec, airflow_retry_kwargs
from provider.specs.task import AIRFLOW_KWARGS
from provider.xcom.references import references_kept

SPEC_FIELDS = tuple(f.name for f in fields(TaskSpec))


def fold_specs(spec: TaskSpec, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Move the spec keywords of ``kwargs`` into ``flow_spec`` (checked now, at parse time).

    ``resources=`` and the like never reach ``BaseOperator``, whose own ``resources``
    argument means something else; ``retry`` and ``timeout`` become Airflow's own arguments.
    """
    given = {name: kwargs.pop(name) for name in SPEC_FIELDS if name in kwargs}
    for spec_field, names in AIRFLOW_KWARGS.items():
        for name in names:
            if name in kwargs and given.get(spec_field) is not None:
                raise SpecError(
                    name,
                    kwargs[name],
                    f"either {spec_field}= or {name}=, not both",
                    f"{spec_field}= already sets it",
                )
    folded = spec.with_overrides(**given)
    set_here = [name for name in AIRFLOW_KWARGS if given.get(name) is not None]
    airflow = airflow_retry_kwargs(folded, set_here)
    if "retry" in set_here and folded.retry.on:
        from provider.operators.retry_policy import FlowRetryPolicy

        airflow["retry_policy"] = FlowRetryPolicy(folded.retry.on)
    return {**kwargs, **airflow, "flow_spec": folded}


@attr.define(kw_only=True, repr=False)
class FlowMappedOperator(DecoratedMappedOperator):
    """A mapped flow task: its mapped arguments stay references while they are expanded, so
    each instance's runtime loads its own item where it runs (never through the worker).

    Airflow's mapping sees each upstream value with its own shape (``provider.xcom.mapping``):
    every mapping form gives the items a plain ``@task`` gets, whatever the values' sizes.
    """

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        with references_kept():
            super().render_template_fields(context, jinja_env)

    def _expand_mapped_kwargs(self, context: Any) -> tuple[dict[str, Any], set[int]]:
        from provider.xcom.mapping import viewed_expand_input

        with references_kept():
            expand_input = viewed_expand_input(expand_input_of(self))
            op_kwargs, resolved_oids = expand_input.resolve(context)
        return {"op_kwargs": op_kwargs}, resolved_oids


@attr.define(slots=False)
class FlowTaskDecorator(TaskDecoratorBase):
    """``_TaskDecorator`` whose ``.override`` takes specs and whose mapped tasks keep
    references."""

    def override(self, **kwargs: Any) -> Any:
        spec = self.kwargs.get("flow_spec") or TaskSpec()
        return super().override(**fold_specs(spec, kwargs))

    def foreach(self, **mapped: Any) -> Any:
        """One task that runs the function once per item of a list (or an upstream's list):
        ``fit.foreach(shard=shards)``. Unlike ``.expand``, Airflow sees one task instance; the
        items run on a local worker pool, an Indexed Job or a Batch array job."""
        if len(mapped) != 1:
            raise TypeError(
                f".foreach takes exactly one keyword, the argument each item is passed as "
                f"(got {sorted(mapped)}); use .foreach_kwargs([{{...}}, ...]) for several"
            )
        ((argument, items),) = mapped.items()
        return self._foreach(items, argument)

    def foreach_kwargs(self, items: Any) -> Any:
        """Like :meth:`foreach`, each item a dict of keyword arguments."""
        return self._foreach(items, None)

    def _foreach(self, items: Any, argument: str | None) -> Any:
        _check_items(self.function.__name__, argument, items)
        kwargs = dict(self.kwargs)
        partial = kwargs.pop("op_kwargs", {})  # from .partial(...)
        one = attr.evolve(self, kwargs={**kwargs, "foreach_items": items})
        one.kwargs["foreach_argument"] = argument
        return one(**partial)

    def _expand(self, expand_input: Any, *, strict: bool) -> Any:
        # Same fields, same slots: only the expansion behaviour above differs.
        return use_mapped_class(super()._expand(expand_input, strict=strict), FlowMappedOperator)


def flow_task(
    python_callable: Callable[..., Any] | None = None,
    *,
    multiple_outputs: bool | None = None,
    **kwargs: Any,
) -> TaskDecorator:
    """Turn a function into a flow task.

    ``resources``, ``retry``, ``timeout``, ``catch``, ``environment``, ``compute``, the
    target options (``kubernetes=KubernetesOptions(...)``, ``batch=BatchOptions(...)``) and
    ``foreach=ForeachOptions(...)`` are checked here, when the DAG file is parsed; a bad value
    raises :class:`provider.SpecError`. ``retry`` and ``timeout`` become Airflow's own
    ``retries``, ``retry_delay``, ``retry_exponential_backoff``, ``max_retry_delay`` and
    ``execution_timeout``. Every other keyword goes to the operator, as
    with ``@task``; ``.expand``, ``.partial`` and ``.override`` (specs included) work as for any
    TaskFlow task.
    """
    operator_kwargs = fold_specs(TaskSpec(), kwargs)

    def decorate(function: Callable[..., Any]) -> Any:
        inferred: Any = attr.NOTHING  # _TaskDecorator infers it from the return annotation
        return FlowTaskDecorator(
            function=function,
            multiple_outputs=inferred if multiple_outputs is None else multiple_outputs,
            operator_class=FlowTaskOperator,
            kwargs=dict(operator_kwargs),
        )

    if python_callable is not None:
        if not callable(python_callable):
            raise TypeError("flow_task takes keyword arguments only, e.g. @flow_task(retry=3)")
        return decorate(python_callable)
    return decorate  # type: ignore[return-value]


def _check_items(task_id: str, argument: str | None, items: Any) -> None:
    """At parse time: what ``.expand`` maps over (a list, a tuple, a range, a dict, an
    upstream's result), never text or a one-shot iterator."""
    if not is_mappable(items):
        name = f"{argument}=" if argument else ""
        raise ValueError(
            f"{task_id}.foreach({name}...) got an unexpected type {type(items).__name__!r}: "
            "it runs over a list, a tuple, a range, a dict or an upstream task's result"
        )
