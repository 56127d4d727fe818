"""The official ``BatchOperator``, watching a job at a steady pace and logging every attempt.

Two things of amazon provider 9.39 do not suit a flow task, and are changed here only:
its hook waits a random 1-10 s before each stage and backs off to 10 minutes between status
checks (a 6-hour job is noticed finished up to 10 minutes late), and its CloudWatch log fetcher
follows the log stream of the first attempt it sees, so an attempt Batch retried after a lost
host would not reach the task log.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, cast

from airflow.providers.amazon.aws.hooks.batch_client import BatchClientHook
from airflow.providers.amazon.aws.hooks.logs import AwsLogsHook
from airflow.providers.amazon.aws.operators.batch import BatchOperator
from airflow.providers.amazon.aws.utils.task_log_fetcher import AwsTaskLogFetcher

from provider.compat.amazon import stopped
from provider.translate.batch_status import log_location, log_streams

#: Status checks are bounded by the task's own timeout, not by a count.
UNBOUNDED_CHECKS = 10**9
OVERRIDES_LINE = "AWS Batch job - container overrides"
TAIL_LINES = 20


class PacedBatchHook(BatchClientHook):
    """``BatchClientHook`` that checks a job every ``poll_seconds``, without growing pauses."""

    def __init__(self, *args: Any, poll_seconds: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.poll_seconds = poll_seconds

    def delay(self, delay: float | None = None) -> None:  # type: ignore[override]
        time.sleep(self.poll_seconds)

    def exponential_delay(self, tries: int) -> float:  # type: ignore[override]
        return self.poll_seconds


class AttemptsLogFetcher(AwsTaskLogFetcher):
    """Forward one attempt's CloudWatch stream after the other, as Batch starts them."""

    def __init__(self, *, streams: Callable[[], list[str]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._streams = streams

    def run(self) -> None:
        token = AwsLogsHook.ContinuationToken()
        while not stopped(self, self.fetch_interval.total_seconds()):
            token = self._forward(token)
        self._forward(token)  # what the last attempts wrote before the job ended

    def _forward(self, token: AwsLogsHook.ContinuationToken) -> AwsLogsHook.ContinuationToken:
        self._forward_log_events(token)
        for stream in self._later_streams():
            self.logger.info("Batch started another attempt; its log stream: %s", stream)
            self.log_stream_name = stream
            token = AwsLogsHook.ContinuationToken()
            self._forward_log_events(token)
        return token

    def _later_streams(self) -> list[str]:
        try:
            streams = self._streams()
        except Exception as exc:  # the next round tries again; the job's end is not ours to judge
            self.logger.warning("could not list the job's attempts: %s", exc)
            return []
        if self.log_stream_name not in streams:
            return []
        return streams[streams.index(self.log_stream_name) + 1 :]


class _WithoutOverrides:
    """A task logger that leaves out the container overrides (logged once per foreach try)."""

    def __init__(self, log: Any) -> None:
        self._log = log

    def info(self, message: Any, *args: Any, **kwargs: Any) -> None:
        if not str(message).startswith(OVERRIDES_LINE):
            self._log.info(message, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)


class FlowBatchOperator(BatchOperator):
    """``BatchOperator`` with :class:`PacedBatchHook` and :class:`AttemptsLogFetcher`; with
    ``log_overrides = False`` (a foreach's later jobs) it does not log the command again."""

    aws_hook_class = PacedBatchHook  # type: ignore[assignment]
    log_overrides = True

    def submit_job(self, context: Any) -> None:
        if self.log_overrides:
            return super().submit_job(context)
        log = self.log
        self._log = cast(Any, _WithoutOverrides(log))
        try:
            return super().submit_job(context)
        finally:
            self._log = log

    def __init__(self, *, poll_seconds: float, **kwargs: Any) -> None:
        self.poll_seconds = poll_seconds
        super().__init__(
            max_retries=UNBOUNDED_CHECKS,
            awslogs_enabled=True,
            awslogs_fetch_interval=timedelta(seconds=poll_seconds),
            deferrable=False,
            do_xcom_push=False,
            **kwargs,
        )

    @property
    def _hook_parameters(self) -> dict[str, Any]:
        return {**super()._hook_parameters, "poll_seconds": self.poll_seconds}

    def _get_batch_log_fetcher(self, job_id: str) -> AwsTaskLogFetcher | None:
        info = self.hook.get_job_awslogs_info(job_id)
        if not info:
            return None
        return AttemptsLogFetcher(
            streams=lambda: log_streams(self.hook.get_job_description(job_id)),
            aws_conn_id=self.aws_conn_id,
            region_name=info["awslogs_region"],
            log_group=info["awslogs_group"],
            log_stream_name=info["awslogs_stream_name"],
            fetch_interval=self.awslogs_fetch_interval,
            logger=self.log,
        )


def log_tail(op: FlowBatchOperator, job: Any, lines: int = TAIL_LINES) -> list[str]:
    """The last ``lines`` of the CloudWatch log of the job's last attempt."""
    location = log_location(job)
    if location is None:
        return []
    group, stream = location
    logs = AwsLogsHook(aws_conn_id=op.aws_conn_id, region_name=op.hook.conn_region_name)
    try:
        found = logs.conn.get_log_events(
            logGroupName=group, logStreamName=stream, limit=lines, startFromHead=False
        )
    except Exception as exc:  # no logs:GetLogEvents, or the stream is gone: say so, go on
        return [f"(could not read {group} {stream}: {type(exc).__name__}: {exc})"]
    return [event["message"] for event in found["events"]] or ["(it wrote nothing)"]
