"""``flowtask render``: what a flow task would submit, built offline by the real operators.

For Kubernetes, the pod (``build_pod_request_obj(dry_run=True)``), or for a ``.foreach`` the
Indexed Job (``KubernetesJobOperator.build_job_request_obj``, built the same way); for AWS
Batch, the ``register_job_definition`` request (the command, with ``Ref::`` placeholders, and
the variables) and the ``submit_job`` request ``BatchOperator`` sends (the placeholders'
values and the short overrides; recorded from its own ``submit_job`` by a client that sends
nothing).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from provider.core.targets.base import Launch

#: The payload is pickled from upstream results when the task runs; a render has none.
PAYLOAD_AT_RUN_TIME = {"uri": "<stored when the task runs>"}
#: A foreach's plan is named by its items' content, and an upstream's items come at run time.
PLAN_AT_RUN_TIME = "<plan: named when the task runs>"
CHUNKS_AT_RUN_TIME = "<chunks: known when the task runs>"
RENDER_RUN_ID = "manual__render"


class RenderError(ValueError):
    """The DAG or task cannot be rendered; the message says what to pass instead."""


def _flow_task(dags_folder: Path, dag_id: str, task_id: str) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    # As in Airflow's own processes, DAG files import helpers from their folder.
    folder = str(dags_folder.resolve())
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        bag = DagBag(dag_folder=folder, bundle_path=dags_folder)
    finally:
        if added:
            sys.path.remove(folder)
    dag = bag.dags.get(dag_id)
    if dag is None:
        errors = "".join(f"\n  {path}: {error}" for path, error in bag.import_errors.items())
        raise RenderError(
            f"no DAG {dag_id!r} in {dags_folder}; DAGs found: {sorted(bag.dags)}{errors}"
        )
    if task_id not in dag.task_dict:
        raise RenderError(f"DAG {dag_id!r} has no task {task_id!r}; tasks: {sorted(dag.task_dict)}")
    return dag, dag.task_dict[task_id]


def render_pod(
    dag_id: str,
    task_id: str,
    *,
    compute: str | None = None,
    dags_folder: Path | None = None,
    items: int | None = None,
) -> dict[str, Any]:
    """What ``task_id`` would submit in a manual run of ``dag_id``, as JSON: the pod for
    Kubernetes (the Indexed Job for a ``.foreach``, over ``items`` items or its literal list's),
    ``{"register_job_definition": ..., "submit_job": ...}`` for Batch.

    Needs no cluster, no credentials and no database: the code package's address is computed,
    not stored.
    """
    from airflow.sdk.configuration import conf

    from provider import settings
    from provider.core.code import code_package, code_reference
    from provider.core.run_context import (
        default_namespace,
        resolve_compute,
        run_namespace,
        run_tags,
    )
    from provider.specs import SpecError
    from provider.store import manifest_key

    folder = dags_folder or Path(conf.get("core", "dags_folder"))
    dag, task = _flow_task(folder, dag_id, task_id)
    partial = getattr(task, "partial_kwargs", None)  # a mapped task keeps its kwargs here
    spec = partial.get("flow_spec") if partial is not None else getattr(task, "flow_spec", None)
    if spec is None:
        raise RenderError(f"{dag_id}.{task_id} is a {type(task).__name__}, not a flow task")
    params = dag.params.dump()
    target = compute or resolve_compute(spec.compute, params, settings.value("default_compute"))
    if target not in ("kubernetes", "batch"):
        raise RenderError(
            f"{dag_id}.{task_id} runs with compute={target!r}, which submits nothing; "
            "pass --compute kubernetes or --compute batch to see what it would submit there"
        )
    map_index = -1 if partial is None else 0
    identity: dict[str, Any] = {
        "dag_id": dag_id,
        "run_id": RENDER_RUN_ID,
        "task_id": task_id,
        "map_index": map_index,
        "try_number": 1,
        "namespace": run_namespace(params, default_namespace(dag_id, "manual", None)),
        "tags": run_tags(params),
    }
    store_uri = settings.artifact_store_uri()
    key = manifest_key(dag_id, RENDER_RUN_ID, task_id, map_index, 1)
    code = code_reference(store_uri, code_package(folder))
    launch = Launch(store_uri, code, PAYLOAD_AT_RUN_TIME, key, identity)
    if target == "batch":
        try:
            return _batch_requests(task_id, spec, launch, getattr(task, "foreach_items", None))
        except SpecError as exc:
            raise RenderError(f"{dag_id}.{task_id} cannot run on Batch: {exc}") from None
    if getattr(task, "foreach_items", None) is not None:
        return _job(task_id, spec, launch, _foreach_length(dag_id, task, items))
    return _pod(task_id, spec, launch)


def _foreach_length(dag_id: str, task: Any, items: int | None) -> int:
    """How many items a ``.foreach`` runs over: ``items``, else its literal list's length."""
    if items is not None:
        return items
    if isinstance(task.foreach_items, (list, tuple, dict)):
        return len(task.foreach_items)
    raise RenderError(
        f"{dag_id}.{task.task_id} runs .foreach over an upstream's list, whose length is known "
        "when it runs: pass --items N"
    )


def _job(task_id: str, spec: Any, launch: Launch, length: int) -> dict[str, Any]:
    """The Indexed Job of a ``.foreach`` over ``length`` items, every chunk pending, as on a
    Kubernetes >= 1.29 (``backoffLimitPerIndex``)."""
    import math

    from kubernetes.client import ApiClient

    from provider.operators.targets import compute_target
    from provider.operators.targets.kubernetes import job_operator

    chunk_size, parallel = compute_target("kubernetes").chunking(spec, length)
    chunks = list(range(max(1, math.ceil(length / chunk_size))))
    job = job_operator(
        task_id, spec, launch, chunks=chunks, per_index=True, parallel=parallel
    ).render_job()
    return dict(ApiClient().sanitize_for_serialization(job))


def _pod(task_id: str, spec: Any, launch: Launch) -> dict[str, Any]:
    from kubernetes.client import ApiClient

    from provider.operators.targets.kubernetes import pod_operator

    pod = pod_operator(task_id, spec, launch).build_pod_request_obj(dry_run=True)
    return dict(ApiClient().sanitize_for_serialization(pod))


class _RecordingClient:
    """A Batch client that records ``submit_job`` and sends nothing."""

    def __init__(self) -> None:
        self.submitted: dict[str, Any] = {}

    def submit_job(self, **kwargs: Any) -> dict[str, Any]:
        self.submitted = kwargs
        return {"jobId": "<assigned by Batch>"}


def _batch_requests(task_id: str, spec: Any, launch: Launch, items: Any = None) -> dict[str, Any]:
    """The requests; of a ``.foreach`` task, its first array job's (the first of several only
    past 10,000 chunks, or under ``max_parallel``)."""
    from types import SimpleNamespace

    from provider.compat.amazon import share_hook
    from provider.operators.targets.batch import batch_operator, batch_requests

    job = None if items is None else _first_job(spec, launch.manifest_key, items)
    definition, request = batch_requests(spec, launch, foreach=job)
    op = batch_operator(task_id, request)
    client = _RecordingClient()
    # The operator's own submit_job builds the request; its links need no context here.
    share_hook(op, SimpleNamespace(client=client, conn_region_name="", conn_partition=""))
    op.submit_job(None)
    submitted = client.submitted
    if items is not None and not isinstance(items, (list, tuple, dict)):
        _chunks_at_run_time(submitted)  # an upstream's items: their number comes at run time
    return {"register_job_definition": definition, "submit_job": submitted}


def _first_job(spec: Any, manifest_key: str, items: Any) -> Any:
    """The first Batch job of a foreach over ``items`` (two chunks stand in for an upstream's)."""
    import math

    from provider.operators.targets import compute_target
    from provider.translate.batch_array import ChunkJob, chunk_jobs

    prefix = f"{manifest_key.rsplit('/', 2)[0]}/foreach/{PLAN_AT_RUN_TIME}"
    if not isinstance(items, (list, tuple, dict)):
        return ChunkJob(prefix, (0, 1))
    if not items:
        raise RenderError(".foreach over no items submits nothing")
    size, _ = compute_target("batch").chunking(spec, len(items))
    chunks = math.ceil(len(items) / size)
    return chunk_jobs(prefix, range(min(chunks, spec.foreach.max_parallel or chunks)))[0]


def _chunks_at_run_time(request: dict[str, Any]) -> None:
    request["arrayProperties"] = {"size": CHUNKS_AT_RUN_TIME}
    request["parameters"]["chunks"] = CHUNKS_AT_RUN_TIME


def resolve_lock(
    dag_id: str,
    task_id: str,
    *,
    compute: str | None = None,
    dags_folder: Path | None = None,
) -> str:
    """``flowtask env``: the lock ``Environment(pip=[...])`` of ``task_id`` resolves to on its
    target (its compute, or ``compute``), with a header naming the target and the environment's
    id. Resolution only: nothing is built, stored or run. Raises :class:`RenderError`, and
    ``EnvironmentFailure`` with the resolver's words."""
    import logging

    from airflow.sdk.configuration import conf

    from provider import settings
    from provider.core.environments.tasks import resolve_layer
    from provider.core.run_context import resolve_compute
    from provider.operators.targets import compute_target
    from provider.translate.environment import environment_id, remote_target, worker_target

    folder = dags_folder or Path(conf.get("core", "dags_folder"))
    dag, task = _flow_task(folder, dag_id, task_id)
    partial = getattr(task, "partial_kwargs", None)
    spec = partial.get("flow_spec") if partial is not None else getattr(task, "flow_spec", None)
    if spec is None:
        raise RenderError(f"{dag_id}.{task_id} is a {type(task).__name__}, not a flow task")
    target_name = compute or resolve_compute(
        spec.compute, dag.params.dump(), settings.value("default_compute")
    )
    requirements = tuple(spec.environment.pip)
    if not requirements:
        raise RenderError(f"{dag_id}.{task_id} has no Environment(pip=[...]) to resolve")
    platform = compute_target(target_name).platform(spec)
    target = worker_target() if platform is None else remote_target(platform)
    installed = _installed() if platform is None else {}
    lock, from_worker = resolve_layer(
        requirements, target, installed, False, logging.getLogger(__name__)
    )
    lines = [
        f"# flowtask env {dag_id} {task_id}: compute={target_name}, {target.describe()}",
        f"# requirements: {', '.join(requirements)}",
        f"# environment id: {environment_id(lock, target)}",
    ]
    lines += [
        f"# from the worker: {name}=={version}" for name, version in sorted(from_worker.items())
    ]
    return "\n".join(lines) + "\n" + lock


def _installed() -> dict[str, str]:
    from provider.core.environments.build import installed_versions

    return installed_versions()
