"""Everything a flow task try does before its compute target launches it, without Airflow.

The operator hands over a :class:`TaskTry` (plain values: the function, its arguments, the
plain context, the try's identity, the specs) and the target; ``prepare_try`` records the run,
stores the payload and the launch manifest and lets the target prepare. What a retry cannot fix
raises ``CannotRun``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from provider.core.errors import CannotRun
from provider.core.targets.base import ComputeTarget, TaskRun
from provider.runtime.payload import ResultLayout
from provider.specs import TaskSpec
from provider.store import ArtifactStore


@dataclass(frozen=True)
class TaskTry:
    """One try of a flow task as plain values: what the operator hands the core."""

    task_id: str
    function: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]  # the task's own (references kept), without context values
    context_kwargs: Mapping[str, Any]  # the context values the function asks for
    context: Mapping[str, Any]  # the plain context (``flow_context()`` where it runs)
    identity: Mapping[str, Any]
    spec: TaskSpec
    compute: str
    layout: ResultLayout
    log: Any
    dag_folder: Path | None = None
    foreach_items: Any = None
    foreach_argument: str | None = None
    flow_task_ids: Sequence[str] | None = None  # the DAG's flow tasks (the run's status)
    reports_end: bool = False  # the DAG records its end with callbacks
    runtime_env: Mapping[str, str] = field(default_factory=dict)


class UnpicklableTask(CannotRun):
    """The function, one of its globals or an argument cannot be sent where the task runs."""


def prepare_try(task: TaskTry, target: ComputeTarget, store: ArtifactStore) -> TaskRun:
    """Record the run, store the payload and the launch manifest, and let the target prepare
    (code package, environments). ``CannotRun`` for what a retry cannot fix."""
    from provider.store import launch_manifest_key, manifest_key

    identity = task.identity
    target.check(task.spec)
    # A local try (not a .foreach, whose processes read the payload from the store) sends its
    # payload over the runtime's channel and writes its records while the runtime runs.
    background = None
    if target.is_local and task.foreach_items is None:
        from provider.core.records import Background

        background = Background()
        background.submit(
            record_run,
            store,
            identity,
            reports_end=task.reports_end,
            flow_tasks=task.flow_task_ids,
        )
    else:
        record_run(store, identity, reports_end=task.reports_end, flow_tasks=task.flow_task_ids)
    key = manifest_key(
        identity["dag_id"],
        identity["run_id"],
        identity["task_id"],
        identity["map_index"],
        identity["try_number"],
    )
    spec = _grown_for_oom(task, store, key)
    payload, plan, data = _store_payload(task, store, key, spec, target, inline=bool(background))
    run = TaskRun(
        task_id=task.task_id,
        spec=spec,
        function=task.function,
        store=store,
        payload=payload,
        manifest_key=key,
        identity=identity,
        log=task.log,
        dag_folder=task.dag_folder,
        foreach=plan,
        runtime_env=task.runtime_env,
        payload_data=data,
        background=background,
    )
    try:
        kept = target.prepare(run)
        # What the try uses besides the payload (a code package) stays reachable for gc.
        # Not flushed to the disk: it only matters while the try runs, and a crash ends that.
        launch = {
            **identity,
            "compute": task.compute,
            "launched_at": time.time(),
            "requested": requested(run.spec),
            **{name: _json(ref) for name, ref in kept.items()},
            **({"foreach_items": plan.items} if plan is not None else {}),
        }
        if background is not None:
            background.submit(store.write_manifest, launch_manifest_key(key), launch, durable=False)
        else:
            store.write_manifest(launch_manifest_key(key), launch, durable=False)
    except BaseException:
        if data is None:
            store.discard(payload)
        if background is not None:
            with contextlib.suppress(BaseException):
                background.wait()
            background.close()
        raise
    where = (
        "sent to the runtime" if data is not None else f"{payload.uri}, deleted when the try ends"
    )
    task.log.info(
        "flow task %s: compute=%s, %s; payload of %d bytes (%s)",
        task.task_id,
        task.compute,
        _spec_summary(task.spec),
        payload.size,
        where,
    )
    return run


def _json(kept: Any) -> Any:
    """A reference as JSON; a record (an environment's) as it is."""
    return kept.to_json() if hasattr(kept, "to_json") else kept


def requested(spec: Any) -> dict[str, Any]:
    """What a try asks the machine for: cores, MiB of memory, GPUs."""
    resources = spec.resources
    return {"cpu": resources.cpu, "memory_mib": resources.memory, "gpu": resources.gpu}


def _grown_for_oom(task: TaskTry, store: ArtifactStore, key: str) -> TaskSpec:
    """With ``Retry(on_oom="grow")``, a try after one killed for memory asks for more."""
    from provider.store import MissingArtifact, manifest_key

    spec, identity = task.spec, task.identity
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
    task.log.warning(
        "try %d ran out of memory with %d MiB: this try asks for %d MiB "
        "(Retry(on_oom='grow', oom_factor=%g%s))",
        identity["try_number"] - 1,
        asked,
        memory,
        spec.retry.oom_factor,
        f", max_memory={spec.retry.max_memory}" if spec.retry.max_memory else "",
    )
    return replace(spec, resources=replace(spec.resources, memory=memory))


def record_run(
    store: ArtifactStore,
    identity: Mapping[str, Any],
    *,
    reports_end: bool = False,
    flow_tasks: Sequence[str] | None = None,
) -> None:
    """The run's manifest and its start in the run index (``flowtask runs``), with its DAG's
    flow tasks, whose ends tell the run's status: written by its first flow task try, the
    manifest first; for the others one read, of the start's record, which is written last
    (present, and naming the same namespace and tags: both are on record)."""
    from provider.store.index import record_run_start, recorded_start

    started = recorded_start(store, identity["dag_id"], identity["run_id"])
    if started is not None and (started.get("namespace"), started.get("tags")) == (
        identity["namespace"],
        list(identity["tags"]),
    ):
        return
    _record_run_manifest(store, identity)
    record_run_start(store, identity, reports_end=reports_end, flow_tasks=flow_tasks)


def _record_run_manifest(store: ArtifactStore, identity: Mapping[str, Any]) -> None:
    from provider.store import run_manifest_key

    key = run_manifest_key(identity["dag_id"], identity["run_id"])
    fields_ = {k: identity[k] for k in ("dag_id", "run_id", "namespace", "tags")}
    unchanged = False
    with contextlib.suppress(Exception):  # missing or unreadable: write it (again)
        unchanged = store.read_manifest(key) == fields_
    if not unchanged:
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


def _store_payload(
    task: TaskTry,
    store: ArtifactStore,
    key: str,
    spec: TaskSpec,
    target: ComputeTarget,
    inline: bool = False,
) -> tuple[Any, Any, bytes | None]:
    """Store the try's payload; return its reference, the foreach plan (or None) and, with
    ``inline``, the payload's bytes instead of storing them (the reference it would have)."""
    from provider.core.by_value import pickled_by_value, unpicklable_part
    from provider.runtime import Payload
    from provider.runtime.context import PlainContext
    from provider.store import payload_key

    kwargs = {**task.kwargs, **task.context_kwargs}
    with pickled_by_value(task.function):
        try:
            plan = None
            if task.foreach_items is not None:
                plan = _plan_foreach(task, store, key, target)
            payload = Payload(
                function=task.function,
                args=task.args,
                kwargs=kwargs,
                layout=task.layout,
                identity=task.identity,
                context=PlainContext(task.context),
                foreach=plan,
                requested=requested(spec),
            )
            if inline:
                data, ref = _encoded(store, payload_key(key), payload)
                return ref, plan, data
            return store.put_at(payload_key(key), payload, by_value=True), plan, None
        except CannotRun:
            raise
        except Exception as exc:
            culprit = unpicklable_part(task.function, task.args, kwargs)
            if culprit is None:
                raise
            raise UnpicklableTask(
                f"it cannot be sent to where it runs: {culprit} cannot be "
                f"pickled ({type(exc).__name__}: {exc}). Create it inside the function, or "
                "pass what it is made from as an argument."
            ) from exc


def _encoded(store: ArtifactStore, key: str, payload: Any) -> tuple[bytes, Any]:
    """The payload's bytes, as ``put_at`` would store them (uncompressed: it goes over a local
    channel), and the reference they would have at ``key``."""
    from provider.store import Reference, codec

    encoded = codec.encode(payload, by_value=True)
    data = b"".join(encoded.frames)
    ref = Reference(
        uri=f"{store.root_uri}/{key}",
        sha256=encoded.sha256,
        size=encoded.size,
        type=codec.type_name(payload),
        encoding=codec.ENCODING,
    )
    return data, ref


def _plan_foreach(task: TaskTry, store: ArtifactStore, key: str, target: ComputeTarget) -> Any:
    """The foreach plan. Its identity is content another process or worker finds again: the
    code package (the DAG folder's modules and the runtime), the function's code and its
    arguments (not its context values: ``try_number`` changes with every try)."""
    import hashlib

    from provider.core.code_package import build_code_package
    from provider.core.foreach import plan_foreach
    from provider.store.fingerprint import fingerprint

    code = hashlib.sha256(build_code_package(task.dag_folder)).hexdigest()
    identity = fingerprint((code, task.function, (task.args, dict(task.kwargs))))
    chunked: Any = "items" if task.layout == "items" else "chunks"
    return plan_foreach(task, store, key, identity, target, layout=chunked)
