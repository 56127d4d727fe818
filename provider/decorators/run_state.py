"""``record_run_state``: the DAG callback that records a run's final state in the run index."""

from __future__ import annotations

import logging
from typing import Any

from provider.store.index import RUN_STATE_MARKER


def record_run_state(context: Any) -> None:
    """Record the run's end (``success`` or ``failed``) for ``provider.client`` and ``flowtask
    runs``; use it as both DAG callbacks::

        @dag(on_success_callback=record_run_state, on_failure_callback=record_run_state)

    Airflow runs DAG callbacks in the dag-processor (in-process under ``airflow dags test``)
    with ``reason`` ``"success"`` for a run that succeeded and the cause otherwise
    (``task_failure``, ``timed_out``, ...). Runs whose DAG lacks either callback show the status
    ``unknown``.
    """
    from provider import config
    from provider.store import rollup
    from provider.store.index import record_run_end
    from provider.store.keys import run_prefix

    reason = context.get("reason")
    state = "success" if reason == "success" else "failed"
    store = config.open_artifact_store()
    dag_id, run_id = context["dag"].dag_id, context["run_id"]
    record_run_end(store, dag_id, run_id, state, reason=reason)
    try:  # the run's manifests in one object, for the UI's run tab (a big run's only)
        rollup.build(store, run_prefix(dag_id, run_id))
    except Exception as error:  # the end is recorded; the tab reads the manifests
        logging.getLogger("provider").warning("could not roll up run %s: %s", run_id, error)


setattr(record_run_state, RUN_STATE_MARKER, True)
