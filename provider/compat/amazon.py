"""What flowtask uses of the amazon provider beyond its public API.

``BatchOperator._get_batch_log_fetcher`` gives a job's CloudWatch log fetcher, which
``AttemptsLogFetcher`` extends (its stop event, ``_event``); every submission of a try shares
one Batch client by setting the operator's cached ``hook`` (:func:`share_hook`).
"""

from __future__ import annotations

from typing import Any

import airflow.providers.amazon as provider
from airflow.providers.amazon.aws.operators.batch import BatchOperator
from airflow.providers.amazon.aws.utils.task_log_fetcher import AwsTaskLogFetcher

from provider.compat import absent, require

RELEASES = ("9.20", "10")  # as pyproject.toml bounds it (9.39 from Python 3.11)

require(
    "apache-airflow-providers-amazon",
    provider.__version__,
    *RELEASES,
    missing=[
        *absent(BatchOperator, ("_get_batch_log_fetcher", "submit_job", "hook")),
        *absent(AwsTaskLogFetcher, ("_forward_log_events", "run")),
    ],
)


def batch_log_fetcher(op: Any, job_id: str) -> Any:
    """The job's CloudWatch log fetcher (a thread not started yet), or None without logs."""
    return op._get_batch_log_fetcher(job_id)


def stopped(fetcher: Any, wait_seconds: float) -> bool:
    """Whether the fetcher was told to stop, waiting up to ``wait_seconds`` for it."""
    return bool(fetcher._event.wait(wait_seconds))


def share_hook(op: Any, hook: Any) -> None:
    """``op`` submits through ``hook`` (a cached property: an instance's value wins)."""
    op.__dict__["hook"] = hook
