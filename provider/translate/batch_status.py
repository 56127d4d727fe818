"""Read a Batch job's ``DescribeJobs`` record: is it active, how did it end, where are its logs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ACTIVE = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING")
OUT_OF_MEMORY = "OutOfMemoryError"
HOST_LOST = "Host EC2"
TIMED_OUT = "Job attempt duration exceeded timeout"
DEFAULT_LOG_GROUP = "/aws/batch/job"


def _last_attempt(job: Mapping[str, Any]) -> Mapping[str, Any]:
    attempts = job.get("attempts") or []
    return attempts[-1] if attempts else {}


def job_exit_code(job: Mapping[str, Any]) -> int | None:
    """The exit code of the job's last attempt; None when its container never exited."""
    container = _last_attempt(job).get("container") or job.get("container") or {}
    code = container.get("exitCode")
    return None if code is None else int(code)


def log_streams(job: Mapping[str, Any]) -> list[str]:
    """The CloudWatch log stream of every attempt so far, oldest first."""
    names = [(a.get("container") or {}).get("logStreamName") for a in job.get("attempts") or []]
    names.append((job.get("container") or {}).get("logStreamName"))
    return list(dict.fromkeys(name for name in names if name))


def job_failure_kind(job: Mapping[str, Any]) -> str | None:
    """``oom``, ``infrastructure`` (its host was lost), ``timeout``, or None: what ended it."""
    if job.get("status") != "FAILED":
        return None
    attempt = _last_attempt(job)
    reason = (attempt.get("container") or {}).get("reason") or ""
    status_reason = attempt.get("statusReason") or job.get("statusReason") or ""
    if reason.startswith(OUT_OF_MEMORY):
        return "oom"
    if status_reason.startswith(HOST_LOST):
        return "infrastructure"
    if status_reason == TIMED_OUT:
        return "timeout"
    return None


def describe_job_failure(job: Mapping[str, Any], memory_mib: int) -> str | None:
    """Why a finished job failed, in words; None if it succeeded or has not finished.

    ``memory_mib`` is the MEMORY the job was given (DescribeJobs may show the definition's).
    """
    if job.get("status") != "FAILED":
        return None
    name = f"Batch job {job.get('jobName')} ({job.get('jobId')})"
    attempts = job.get("attempts") or []
    attempt = _last_attempt(job)
    container = attempt.get("container") or {}
    reason = container.get("reason") or ""
    status_reason = attempt.get("statusReason") or job.get("statusReason") or ""
    if not attempts:
        return f"{name} never ran: {status_reason or 'no reason given'}"
    if reason.startswith(OUT_OF_MEMORY):
        return (
            f"{name} ran out of memory (limit {memory_mib} MiB); give the task more with "
            "Resources(memory=...)"
        )
    if status_reason.startswith(HOST_LOST):
        return (
            f"{name} lost its host on its last Batch attempt ({len(attempts)} of "
            f"{(job.get('retryStrategy') or {}).get('attempts', 1)}): {status_reason}; "
            "BatchOptions(attempts=...) sets how often Batch tries again"
        )
    if status_reason == TIMED_OUT:
        seconds = (job.get("timeout") or {}).get("attemptDurationSeconds")
        return (
            f"{name} ran longer than its Batch timeout (attemptDurationSeconds={seconds}, from "
            "timeout=) and was stopped"
        )
    code = job_exit_code(job)
    exited = "no exit code" if code is None else f"exit code {code}"
    return f"{name} failed: {exited} ({reason or status_reason or 'no reason given'})"


def short_reason(job: Mapping[str, Any]) -> str:
    """A failed job's reason in a few words, from what a ListJobs summary holds too."""
    container = job.get("container") or {}
    reason = container.get("reason") or ""
    status_reason = job.get("statusReason") or ""
    if reason.startswith(OUT_OF_MEMORY):
        return "out of memory"
    if status_reason.startswith(HOST_LOST):
        return "host lost on the last attempt"
    if status_reason == TIMED_OUT:
        return "over the Batch timeout"
    code = container.get("exitCode")
    if code is not None:
        return f"exit code {code}"
    return (reason or status_reason or "no reason given")[:200]


def log_location(job: Mapping[str, Any]) -> tuple[str, str] | None:
    """The CloudWatch log group and stream of the job's last attempt, if it has one."""
    streams = log_streams(job)
    if not streams:
        return None
    options = ((job.get("container") or {}).get("logConfiguration") or {}).get("options") or {}
    return options.get("awslogs-group", DEFAULT_LOG_GROUP), streams[-1]
