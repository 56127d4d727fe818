"""``.foreach`` on Kubernetes as one Indexed Job (pure): its arguments on top of a pod's, and
what its status and its pods say.

Pod ``i`` of the Job runs the chunk at index ``i`` of the pending chunks (``--chunk-env
JOB_COMPLETION_INDEX --chunks 0-9,12``): the Job spec names chunks, never items, so it is the
same size whatever the number of items. An infrastructure failure of a pod (OOMKilled, evicted,
a lost node) retries that index only, with ``backoffLimitPerIndex`` (Kubernetes >= 1.29).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from provider.runtime.foreach import format_chunks, parse_chunks
from provider.translate.kubernetes import describe_pod_failure, pod_name
from provider.translate.pending import StartWatch, Verdict, unschedulable_message

INDEX_ENV = "JOB_COMPLETION_INDEX"
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
JOB_NAME_LABEL = "job-name"  # set by every Job controller version (and batch.kubernetes.io/...)
#: ``backoffLimitPerIndex`` is beta and on by default from 1.29 (GA in 1.33); older API servers
#: drop the field, and the Job falls back to ``backoffLimit``'s default of 6 failures in all.
PER_INDEX_SINCE = (1, 29)
#: A Job that outlives its worker (a killed worker) is deleted this long after it finished.
FINISHED_TTL_SECONDS = 600
_LABEL_MAX = 63
_KJO_PREFIX = "job-"  # KubernetesJobOperator's, before the name
_RANDOM_SUFFIX = 9  # "-" and 8 characters


def foreach_mode(chunks: Sequence[int]) -> list[str]:
    """The runtime's ``foreach`` arguments: the chunk at index ``$JOB_COMPLETION_INDEX``."""
    return ["--chunk-env", INDEX_ENV, "--chunks", format_chunks(chunks)]


def job_name(task_id: str, completions: int) -> str:
    """A Job name stem for ``KubernetesJobOperator`` (which adds ``job-`` and a random suffix).

    Each pod's hostname is ``<job name>-<index>``, a DNS label of at most 63 characters: the API
    server refuses an Indexed Job whose last index would not fit.
    """
    room = _LABEL_MAX - len(_KJO_PREFIX) - _RANDOM_SUFFIX - len(f"-{max(completions - 1, 0)}")
    return pod_name(task_id)[-room:].lstrip("-") or "foreach"


def supports_backoff_limit_per_index(major: str, minor: str) -> bool:
    """Whether an API server of this version (``/version``'s ``major``, ``minor``: "1", "29+")
    keeps ``backoffLimitPerIndex``."""
    numbers = tuple(int(re.sub(r"\D", "", part) or 0) for part in (major, minor))
    return numbers >= PER_INDEX_SINCE


def indexed_job_kwargs(
    task_id: str, chunks: Sequence[int], *, max_parallel: int, retries: int, per_index: bool
) -> dict[str, Any]:
    """``KubernetesJobOperator`` arguments of the Indexed Job that runs ``chunks``.

    ``retries`` (the task's ``Retry.infra``: tries lost to the platform are run again within the
    same Airflow try) is each index's budget of pod failures with ``per_index``; without it, the
    Job's budget in all is the same number per index, shared.
    """
    completions = len(chunks)
    kwargs: dict[str, Any] = {
        "name": job_name(task_id, completions),
        "completion_mode": "Indexed",
        "completions": completions,
        "parallelism": min(max_parallel, completions),
        "ttl_seconds_after_finished": FINISHED_TTL_SECONDS,
    }
    if per_index:
        kwargs["backoff_limit_per_index"] = retries  # backoffLimit then defaults to no limit
    else:
        kwargs["backoff_limit"] = retries * completions
    return kwargs


@dataclass(frozen=True)
class JobState:
    """A Job's status as the API reports it."""

    name: str
    active: int = 0
    ready: int = 0
    succeeded: int = 0
    failed: int = 0
    completed: tuple[int, ...] = ()  # indexes whose pod succeeded
    failed_indexes: tuple[int, ...] = ()  # indexes out of retries (backoffLimitPerIndex)
    finished: str | None = None  # Complete or Failed
    reason: str | None = None
    message: str | None = None

    @property
    def started(self) -> bool:
        return bool(self.ready or self.succeeded or self.failed)


def job_state(job: Any) -> JobState:
    """A ``V1Job``'s status; ``finished`` is its terminal condition (set once its pods ended)."""
    status = job.status
    finished = reason = message = None
    for cond in (status.conditions if status else None) or []:
        if cond.type in ("Complete", "Failed") and cond.status == "True":
            finished, reason, message = cond.type, cond.reason, cond.message
    if status is None:
        return JobState(job.metadata.name)
    return JobState(
        name=job.metadata.name,
        active=status.active or 0,
        ready=status.ready or 0,
        succeeded=status.succeeded or 0,
        failed=status.failed or 0,
        completed=tuple(parse_chunks(status.completed_indexes or "")),
        failed_indexes=tuple(parse_chunks(status.failed_indexes or "")),
        finished=finished,
        reason=reason,
        message=message,
    )


def pod_index(pod: Any) -> int | None:
    annotations = pod.metadata.annotations or {}
    value = annotations.get(INDEX_ANNOTATION)
    return int(value) if value is not None and value.isdigit() else None


@dataclass
class JobStartWatch:
    """Follows the pods of a Job that has not started: ``see`` each listing of them.

    A missing Secret or an image the registry refuses fails the Job at once, as for a single
    pod (:class:`provider.translate.pending.StartWatch`). An unschedulable pod fails it only while
    none of its pods has run: once one has, the others wait for capacity, as a Job's pods do.
    """

    schedule_timeout: float
    placement_hint: str | None = None
    started: bool = False
    _pods: dict[str, StartWatch] = field(default_factory=dict)

    def see(self, pods: Iterable[Any], now: float) -> Verdict:
        pods = list(pods)
        if any((p.status.phase if p.status else "Pending") not in ("Pending", None) for p in pods):
            self.started = True
        notes = []
        for pod in pods:
            if pod.status is None or pod.status.phase not in ("Pending", None):
                continue
            watch = self._pods.setdefault(
                pod.metadata.name, StartWatch(self.schedule_timeout, self.placement_hint)
            )
            verdict = watch.see(pod, now)
            waits_for_capacity = self.started and unschedulable_message(pod) is not None
            if verdict.failure and not waits_for_capacity:
                return verdict
            if verdict.note and not waits_for_capacity:
                notes.append(verdict.note)
        return Verdict(note=notes[0] if notes else None)


def describe_job_failure(
    state: JobState, pods: Iterable[Any], chunks: Sequence[int], shown: int = 5
) -> str | None:
    """Why chunks of the Job wrote no manifest: the Job's condition, and for each index whose pod
    never succeeded, its pods' reasons (OOMKilled, evicted, exit codes). None if every index
    succeeded."""
    unreported = [i for i in range(len(chunks)) if i not in set(state.completed)]
    if not unreported:
        return None
    reasons: dict[int, list[str]] = {}
    for pod in sorted(pods, key=lambda p: str(p.metadata.creation_timestamp or "")):
        index = pod_index(pod)
        if index is None or index not in unreported or pod.status is None:
            continue
        if pod.status.phase == "Failed":
            reasons.setdefault(index, []).append(describe_pod_failure(pod) or "failed")
        elif pod.status.phase == "Pending":
            reasons.setdefault(index, []).append(f"pod {pod.metadata.name} never started")
    parts = []
    for index in unreported[:shown]:
        said = reasons.get(index) or ["no pod of it finished"]
        tries = f" ({len(said)} pods)" if len(said) > 1 else ""
        parts.append(f"index {index} (chunk {chunks[index]}){tries}: {said[-1]}")
    more = f"; and {len(unreported) - shown} more" if len(unreported) > shown else ""
    job = f"job {state.name}"
    job += f" {state.finished}: {state.reason}: {state.message}" if state.finished else ""
    return f"{job}; {len(unreported)} of {len(chunks)} indexes did not succeed: " + (
        "; ".join(parts) + more
    )


@dataclass
class JobReport:
    """How the Job ended: its last state, its pods then, or why it could not start."""

    state: JobState
    pods: list[Any] = field(default_factory=list)
    start_failure: str | None = None


def api_message(exc: Any) -> str:
    """The API server's own words from an error response (its Status ``message``)."""
    try:
        return str(json.loads(exc.body)["message"])
    except (TypeError, ValueError, KeyError):
        return f"{exc.status} {exc.reason}"
