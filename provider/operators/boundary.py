"""Where Airflow's objects become plain values, and plain failures Airflow's exceptions.

``provider.core`` runs a flow task's try without Airflow: it is handed plain values (the try's
identity, the plain context, the arguments with lazily pulled XCom sequences made lists) and
raises plain errors (``CannotRun``, ``FlowTaskFailed``). This module makes those values from
Airflow's context and turns ``CannotRun`` into ``AirflowFailException`` (no retry).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from provider.compat.airflow_sdk import LazyXComSequence
from provider.core.context import context_arguments, plain_context
from provider.core.errors import CannotRun
from provider.core.run_context import default_namespace, run_namespace, run_tags
from provider.specs import SpecError


def run_identity(context: Mapping[str, Any], *, lenient: bool = False) -> dict[str, Any]:
    """The identity written into every manifest of this task try. ``lenient``: a run param
    that cannot be used counts as not given (to put on record a try that it failed)."""
    from provider.core.run_context import RunParamError

    ti = context["ti"]
    dag_run = context["dag_run"]
    params = context.get("params") or {}
    default = default_namespace(
        ti.dag_id,
        str(getattr(dag_run.run_type, "value", dag_run.run_type)),
        getattr(dag_run, "triggering_user_name", None),
    )
    try:
        namespace, tags = run_namespace(params, default), run_tags(params)
    except RunParamError:
        if not lenient:
            raise
        namespace, tags = default, []
    return {
        "dag_id": ti.dag_id,
        "run_id": ti.run_id,
        "task_id": ti.task_id,
        "map_index": ti.map_index,
        "try_number": ti.try_number,
        "namespace": namespace,
        "tags": tags,
    }


@contextmanager
def fail_at_once(task_id: str) -> Iterator[None]:
    """What a retry cannot fix (``CannotRun``, a spec the target refuses) fails the task at
    once: ``AirflowFailException``, which Airflow does not retry."""
    try:
        yield
    except (CannotRun, SpecError) as exc:
        raise AirflowFailException(f"flow task {task_id} cannot run: {exc}") from None


def materialized(value: Any) -> Any:
    """A lazily pulled XCom sequence (a mapped upstream's results) as a list."""
    if isinstance(value, LazyXComSequence):
        return list(value[:])  # one request; iterating would read one past the end
    return value


def bundle_path(context: Mapping[str, Any]) -> Path | None:
    """The folder of the DAG bundle the task was parsed from, where Airflow knows it."""
    bundle = getattr(context.get("ti"), "bundle_instance", None)
    path = getattr(bundle, "path", None)
    return None if path is None else Path(path)


def mapped_instances(
    context: Mapping[str, Any], identity: Mapping[str, Any], log: Any
) -> int | None:
    """How many instances the task has in this run: 1 unless mapped; None if unknown."""
    if identity["map_index"] < 0:
        return 1
    try:
        count = context["ti"].get_ti_count(
            dag_id=identity["dag_id"], task_ids=[identity["task_id"]], run_ids=[identity["run_id"]]
        )
    except Exception as exc:  # an Execution API that does not answer: the status waits
        log.warning("could not count the instances of the mapped task: %s", exc)
        return None
    return int(count)


def task_try(op: Any, context: Mapping[str, Any]) -> Any:
    """The flow task ``op``'s try as plain values (``provider.core.launch.TaskTry``)."""
    from provider import config, settings
    from provider.core.by_value import dag_folder_of
    from provider.core.launch import TaskTry
    from provider.core.run_context import resolve_compute
    from provider.store.index import reports_run_state
    from provider.xcom.references import references_kept

    identity = run_identity(context)
    params = context.get("params") or {}
    compute = resolve_compute(op.flow_spec.compute, params, settings.value("default_compute"))
    with references_kept():
        args = tuple(materialized(arg) for arg in op.op_args)
        kwargs = {name: materialized(arg) for name, arg in op.op_kwargs.items()}
        items = materialized(op.foreach_items)
    dag = context.get("dag")
    return TaskTry(
        task_id=op.task_id,
        function=op.python_callable,
        args=args,
        kwargs=kwargs,
        context_kwargs=context_arguments(op.python_callable, args, kwargs, context),
        context=plain_context(context),
        identity=identity,
        spec=op.flow_spec,
        compute=compute,
        layout=op.result_layout(identity["map_index"]),
        log=op.log,
        dag_folder=dag_folder_of(op.python_callable, bundle_path(context)),
        foreach_items=items,
        foreach_argument=op.foreach_argument,
        flow_task_ids=None if dag is None else flow_task_ids(dag),
        reports_end=reports_run_state(dag),
        runtime_env=config.runtime_aws_env(),
    )


def flow_task_ids(dag: Any) -> list[str]:
    """The ids of the DAG's flow tasks, mapped ones included."""
    from provider.operators.flow_task import FlowTaskOperator

    def is_flow(task: Any) -> bool:
        kind = getattr(task, "operator_class", type(task))  # a mapped task's operator class
        return isinstance(kind, type) and issubclass(kind, FlowTaskOperator)

    return [task.task_id for task in dag.tasks if is_flow(task)]
