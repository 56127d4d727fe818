"""Everything a flow task try does before its compute target launches it."""

from __future__ import annotations

import time
from dataclasses import fields
from typing import Any

from provider.operators.targets import ComputeTarget, TaskRun


def prepare_try(op: Any, context: Any) -> tuple[TaskRun, ComputeTarget]:
    """Resolve the target, store the payload and the launch manifest; fail fast on what a retry
    cannot fix (a bad run param, an unavailable target, a spec the target refuses, a function
    that cannot be pickled)."""
    from airflow.sdk.exceptions import AirflowFailException

    from provider import config
    from provider.operators.by_value import dag_folder_of
    from provider.operators.foreach import ForeachInputError
    from provider.operators.run_context import RunParamError, resolve_compute, run_identity
    from provider.operators.targets import ComputeUnavailable, compute_target
    from provider.operators.task_context import ContextCannotCross
    from provider.specs import SpecError
    from provider.store import launch_manifest_key, manifest_key

    try:
        identity = run_identity(context)
        compute = resolve_compute(
            op.flow_spec.compute, context.get("params") or {}, config.default_compute()
        )
        target = compute_target(compute)
        target.check(op.flow_spec)
    except (RunParamError, ComputeUnavailable, SpecError) as exc:
        raise AirflowFailException(f"flow task {op.task_id} cannot run: {exc}") from None
    store = config.open_artifact_store()
    record_run(store, identity, context)
    key = manifest_key(
        identity["dag_id"],
        identity["run_id"],
        identity["task_id"],
        identity["map_index"],
        identity["try_number"],
    )
    try:
        spec = _grown_for_oom(op, store, key, identity)
        payload, plan = _store_payload(op, store, key, identity, context, compute, spec)
    except (UnpicklableTask, ContextCannotCross, ForeachInputError) as exc:
        raise AirflowFailException(f"flow task {op.task_id} cannot run: {exc}") from None
    run = TaskRun(
        task_id=op.task_id,
        spec=spec,
        function=op.python_callable,
        store=store,
        payload=payload,
        manifest_key=key,
        identity=identity,
        log=op.log,
        dag_folder=dag_folder_of(op.python_callable, _bundle_path(context)),
        foreach=plan,
    )
    try:
        kept = target.prepare(run)
        # What the try uses besides the payload (a code package) stays reachable for gc.
        # Not flushed to the disk: it only matters while the try runs, and a crash ends that.
        store.write_manifest(
            launch_manifest_key(key),
            {
                **identity,
                "compute": compute,
                "launched_at": time.time(),
                "requested": requested(run.spec),
                **{name: _json(ref) for name, ref in kept.items()},
                **({"foreach_items": plan.items} if plan is not None else {}),
            },
            durable=False,
        )
    except BaseException:
        store.discard(payload)
        raise
    op.log.info(
        "flow task %s: compute=%s, %s; payload %s (%d bytes, deleted when the try ends)",
        op.task_id,
        compute,
        _spec_summary(op.flow_spec),
        payload.uri,
        payload.size,
    )
    return run, target


def _json(kept: Any) -> Any:
    """A reference as JSON; a record (an environment's) as it is."""
    return kept.to_json() if hasattr(kept, "to_json") else kept


def requested(spec: Any) -> dict[str, Any]:
    """What a try asks the machine for: cores, MiB of memory, GPUs."""
    resources = spec.resources
    return {"cpu": resources.cpu, "memory_mib": resources.memory, "gpu": resources.gpu}


def _grown_for_oom(op: Any, store: Any, key: str, identity: dict[str, Any]) -> Any:
    """With ``Retry(on_oom="grow")``, a try after one killed for memory asks for more."""
    from dataclasses import replace

    from provider.store import MissingArtifact, manifest_key

    spec = op.flow_spec
    if spec.retry.on_oom != "grow" or identity["try_number"] <= 1:
        return spec
    previous = manifest_key(
        identity["dag_id"],
        identity["run_id"],
        identity["task_id"],
        identity["map_index"],
        identity["try_number"] - 1,
    )
    try:
        before = store.read_manifest(previous)
    except MissingArtifact:
        return spec
    asked = (before.get("requested") or {}).get("memory_mib")
    if before.get("failure_kind") != "oom" or not isinstance(asked, int):
        return spec
    memory = max(spec.retry.grown_memory(asked), spec.resources.memory)
    op.log.warning(
        "try %d ran out of memory with %d MiB: this try asks for %d MiB "
        "(Retry(on_oom='grow', oom_factor=%g%s))",
        identity["try_number"] - 1,
        asked,
        memory,
        spec.retry.oom_factor,
        f", max_memory={spec.retry.max_memory}" if spec.retry.max_memory else "",
    )
    return replace(spec, resources=replace(spec.resources, memory=memory))


def record_run(store: Any, identity: dict[str, Any], context: Any) -> None:
    """The run's manifest and its start in the run index (``flowtask runs``), with its DAG's
    flow tasks, whose ends tell the run's status: written by its first flow task try, a stat
    or two for the others."""
    from provider.store.index import record_run_start

    dag = context.get("dag")
    _record_run(store, identity)
    record_run_start(store, identity, dag, flow_task_ids(dag) if dag is not None else None)


def flow_task_ids(dag: Any) -> list[str]:
    """The ids of the DAG's flow tasks, mapped ones included."""
    from provider.operators.flow_task import FlowTaskOperator

    def is_flow(task: Any) -> bool:
        kind = getattr(task, "operator_class", type(task))  # a mapped task's operator class
        return isinstance(kind, type) and issubclass(kind, FlowTaskOperator)

    return [task.task_id for task in dag.tasks if is_flow(task)]


def _record_run(store: Any, identity: dict[str, Any]) -> None:
    """The run's namespace and tags, written by its first flow task (a stat for the others)."""
    from provider.store import run_manifest_key

    key = run_manifest_key(identity["dag_id"], identity["run_id"])
    fields_ = {k: identity[k] for k in ("dag_id", "run_id", "namespace", "tags")}
    if store.backend.stat(key) is not None:
        try:
            if store.read_manifest(key) == fields_:
                return
        except Exception:  # unreadable: write it again
            pass
    store.write_manifest(key, fields_)


def _spec_summary(spec: Any) -> str:
    """The specs that differ from the defaults (env values show as ***)."""
    default = type(spec)()
    changed = [
        f"{f.name}={getattr(spec, f.name)!r}"
        for f in fields(spec)
        if getattr(spec, f.name) != getattr(default, f.name)
    ]
    return "specs: " + ", ".join(changed) if changed else "default specs"


def _bundle_path(context: Any) -> Any:
    bundle = getattr(context.get("ti"), "bundle_instance", None)
    return getattr(bundle, "path", None)


class UnpicklableTask(ValueError):
    """The function, one of its globals or an argument cannot be sent where the task runs."""


def _store_payload(
    op: Any,
    store: Any,
    key: str,
    identity: dict[str, Any],
    context: Any,
    compute: str,
    spec: Any,
) -> tuple[Any, Any]:
    """Store the try's payload; return its reference and the foreach plan (or None)."""
    from provider.operators.by_value import pickled_by_value, unpicklable_part
    from provider.operators.task_context import context_arguments, plain_context
    from provider.runtime import Payload
    from provider.store import payload_key
    from provider.xcom.references import references_kept

    with references_kept():
        args = tuple(_materialize(arg) for arg in op.op_args)
        kwargs = {name: _materialize(arg) for name, arg in op.op_kwargs.items()}
    arguments = (args, dict(kwargs))  # the task's own, without its context values
    kwargs.update(context_arguments(op.python_callable, args, kwargs, context))
    layout = op.result_layout(identity["map_index"])
    with pickled_by_value(op.python_callable):
        try:
            plan = None
            if op.foreach_items is not None:
                plan = _plan_foreach(op, store, key, arguments, compute, layout, context)
            payload = Payload(
                function=op.python_callable,
                args=args,
                kwargs=kwargs,
                layout=layout,
                identity=identity,
                context=plain_context(context),
                foreach=plan,
                requested=requested(spec),
            )
            return store.put_at(payload_key(key), payload, by_value=True), plan
        except Exception as exc:
            culprit = unpicklable_part(op.python_callable, args, kwargs)
            if culprit is None:
                raise
            raise UnpicklableTask(
                f"it cannot be sent to where it runs: {culprit} cannot be "
                f"pickled ({type(exc).__name__}: {exc}). Create it inside the function, or "
                "pass what it is made from as an argument."
            ) from exc


def _plan_foreach(
    op: Any, store: Any, key: str, arguments: Any, compute: str, layout: str, context: Any
) -> Any:
    """The foreach plan. Its identity is content another process or worker finds again: the
    code package (the DAG folder's modules and the runtime), the function's code and its
    arguments (not its context values: ``try_number`` changes with every try)."""
    import hashlib

    from provider.compute import build_code_package
    from provider.operators.by_value import dag_folder_of
    from provider.operators.foreach import plan_foreach
    from provider.store.fingerprint import fingerprint

    dag_folder = dag_folder_of(op.python_callable, _bundle_path(context))
    code = hashlib.sha256(build_code_package(dag_folder)).hexdigest()
    identity = fingerprint((code, op.python_callable, arguments))
    chunked: Any = "items" if layout == "items" else "chunks"
    return plan_foreach(op, store, key, identity, local=compute == "local", layout=chunked)


def _materialize(value: Any) -> Any:
    """Turn lazily pulled XCom sequences (a mapped upstream's results) into lists."""
    from airflow.sdk.execution_time.lazy_sequence import LazyXComSequence

    if isinstance(value, LazyXComSequence):
        return list(value[:])  # one request; iterating would read one past the end
    return value
