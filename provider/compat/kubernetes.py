"""What flowtask uses of the cncf-kubernetes provider beyond its public API.

``FlowPodOperator`` overrides ``KubernetesPodOperator.await_pod_start`` (its start, watched
with the scheduler's reasons) and ``invoke_defer_method`` (a deferrable pod defers once it
runs), and watches events with ``PodManager.watch_pod_events``. ``FlowJobOperator`` renders a
Job without a cluster by replacing the cached ``hook`` for a moment (:func:`with_hook`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import airflow.providers.cncf.kubernetes as provider
from airflow.providers.cncf.kubernetes.operators.job import KubernetesJobOperator
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.cncf.kubernetes.utils.pod_manager import PodManager

from provider.compat import absent, require

RELEASES = ("10.10", "11")  # as pyproject.toml bounds it (10.25 from Python 3.11)

require(
    "apache-airflow-providers-cncf-kubernetes",
    provider.__version__,
    *RELEASES,
    missing=[
        *absent(KubernetesPodOperator, ("await_pod_start", "invoke_defer_method", "hook")),
        *absent(KubernetesJobOperator, ("build_job_request_obj", "hook")),
        *absent(PodManager, ("watch_pod_events", "read_pod")),
    ],
)


def watch_pod_events(manager: Any, pod: Any, interval: float) -> Any:
    """The coroutine that logs a starting pod's events (``PodManager.watch_pod_events``)."""
    return manager.watch_pod_events(pod, interval)


@contextmanager
def with_hook(op: Any, hook: Any) -> Iterator[None]:
    """``op.hook`` is ``hook`` within the block (``hook`` is a cached property: an instance's
    own value wins over it)."""
    before = op.__dict__.get("hook")
    op.__dict__["hook"] = hook
    try:
        yield
    finally:
        if before is None:
            op.__dict__.pop("hook", None)
        else:
            op.__dict__["hook"] = before
