"""Runs written into a store the way a worker and the runtime write them, without Airflow.

``make_run`` writes ``run.json`` and records the run's start in the index (as
``provider.core.launch`` does), then each task try's ``result.json`` as the runtime does
(results stored with ``store_result``, failures as stored ``Failure`` values), and optionally the
run's end (as the ``record_run_state`` DAG callback does).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any

from provider.runtime import Failure
from provider.runtime.run import store_result
from provider.store import ArtifactStore, manifest_key, run_manifest_key
from provider.store.index import (
    RUN_STATE_MARKER,
    record_run_end,
    record_run_start,
    reports_run_state,
)


def _records_state(context: Any) -> None:
    """Stands for ``provider.record_run_state`` (which needs Airflow's config to open a store)."""


setattr(_records_state, RUN_STATE_MARKER, True)
RECORDING_DAG = SimpleNamespace(
    on_success_callback=_records_state, on_failure_callback=[print, _records_state]
)


class Fails:
    """A try that failed with this error (stored as a ``Failure``, as the runtime does)."""

    def __init__(self, message: str, kind: str = "ValueError") -> None:
        self.message = message
        self.kind = kind


def write_try(
    store: ArtifactStore,
    identity: Mapping[str, Any],
    task_id: str,
    outcome: Any,
    *,
    map_index: int = -1,
    try_number: int = 1,
    layout: str = "value",
) -> None:
    """One task try's result manifest: ``outcome`` is the value returned, or ``Fails(...)``."""
    ident = {**identity, "task_id": task_id, "map_index": map_index, "try_number": try_number}
    manifest: dict[str, Any] = {
        **ident,
        "started_at": 1.0,
        "finished_at": 2.5,
        "seconds": 1.5,
        "function_seconds": 1.25,
        "peak_rss_mib": 64.0,
        "host": "test",
    }
    if isinstance(outcome, Fails):
        failure = Failure(type=outcome.kind, message=outcome.message, traceback="Traceback ...")
        manifest.update(
            status="failed",
            error={"type": outcome.kind, "message": outcome.message},
            failure=store.put(failure).to_json(),
        )
    else:
        manifest.update(status="succeeded", result=store_result(outcome, layout, store))
    key = manifest_key(ident["dag_id"], ident["run_id"], task_id, map_index, try_number)
    store.write_manifest(key, manifest)


def make_run(
    store: ArtifactStore,
    dag_id: str,
    run_id: str,
    *,
    namespace: str = "user:alice",
    tags: Sequence[str] = (),
    tasks: Mapping[str, Any] | None = None,
    mapped: Mapping[str, Sequence[Any]] | None = None,
    end: str | None = None,
    dag: Any = RECORDING_DAG,
) -> dict[str, Any]:
    """A run with one try per task (``tasks``: task id -> value or ``Fails``; a list of those
    means one try each) and one instance per item of each ``mapped`` task."""
    identity = {"dag_id": dag_id, "run_id": run_id, "namespace": namespace, "tags": list(tags)}
    store.write_manifest(run_manifest_key(dag_id, run_id), identity)
    record_run_start(store, identity, reports_end=reports_run_state(dag))
    for task_id, outcomes in (tasks or {}).items():
        tries = outcomes if isinstance(outcomes, list) else [outcomes]
        for number, outcome in enumerate(tries, start=1):
            write_try(store, identity, task_id, outcome, try_number=number)
    for task_id, items in (mapped or {}).items():
        for index, item in enumerate(items):
            write_try(store, identity, task_id, item, map_index=index)
    if end is not None:
        record_run_end(store, dag_id, run_id, end, reason=end)
    return identity
