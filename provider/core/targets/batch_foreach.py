"""``.foreach`` on AWS Batch, seen from the worker: array jobs submitted (all at once, or rolling
under ``max_parallel``), their progress, and which chunks wrote no result and why.

It takes a boto3 Batch client and a ``submit`` function (the target submits through
``BatchOperator``), and imports nothing from Airflow.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from provider.core.foreach import ForeachProgress
from provider.core.targets.batch_jobs import listed_jobs
from provider.runtime.foreach import ForeachPlan, is_final
from provider.store import ArtifactStore
from provider.translate.batch_array import ChunkJob, chunk_jobs

FINAL = ("SUCCEEDED", "FAILED")
STARTED = ("RUNNING", *FINAL)
STATUSES = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", *FINAL)
DESCRIBE_AT_ONCE = 100  # DescribeJobs takes at most 100 job ids
PROGRESS_EVERY = 5.0  # seconds between progress lines in the task log
SHOWN = 5  # lost chunks described one by one

Submit = Callable[[ChunkJob], str]
#: Given a started child's id, start following its log; return what stops it (or None).
Follow = Callable[[str], Callable[[], None] | None]


@dataclass
class WatchedJob:
    """One submitted job (an array parent, or a plain job of one chunk) and its last status."""

    job: ChunkJob
    job_id: str
    status: str = "SUBMITTED"
    summary: dict[str, int] = field(default_factory=dict)  # an array's statusSummary
    detail: Mapping[str, Any] = field(default_factory=dict)  # its last DescribeJobs detail

    @property
    def ended(self) -> bool:
        return self.status in FINAL

    def children(self) -> dict[str, int]:
        """How many of its chunks are in each status."""
        if self.job.array_size is None:
            return {self.status: 1}
        if self.ended or not self.summary:
            return self.summary or {self.status: len(self.job.chunks)}
        return self.summary

    def in_flight(self) -> int:
        """Its chunks that have not ended."""
        if self.ended:
            return 0
        children = self.children()
        return len(self.job.chunks) - children.get("SUCCEEDED", 0) - children.get("FAILED", 0)

    @property
    def first_child(self) -> str:
        return self.job_id if self.job.array_size is None else f"{self.job_id}:0"


class ChunkReports:
    """Which of ``chunks`` wrote their manifest during this try, and their failed items.

    A manifest an earlier try left (of a chunk with failed items) counts once it is rewritten.
    """

    def __init__(self, store: ArtifactStore, plan: ForeachPlan, chunks: Sequence[int]) -> None:
        self.store, self.plan = store, plan
        self._keys = {plan.chunk_key(chunk): chunk for chunk in chunks}
        self.answered: dict[int, int] = {}  # chunk -> its failed items
        earlier = store.read_manifests(self._present())
        self._earlier = {self._keys[k]: m.get("finished_at") for k, m in earlier.items()}

    def _present(self) -> list[str]:
        return [key for key in self.store.list_manifests(self.plan.prefix) if key in self._keys]

    def refresh(self) -> None:
        """Read the manifests of the chunks not answered yet, ``reads_in_flight`` at a time."""
        keys = [key for key in self._present() if self._keys[key] not in self.answered]
        for key, manifest in self.store.read_manifests(keys).items():
            chunk = self._keys[key]
            if not is_final(manifest):  # a checkpoint of a chunk still running
                continue
            if chunk in self._earlier and manifest.get("finished_at") == self._earlier[chunk]:
                continue
            self.answered[chunk] = len(manifest.get("failed") or [])

    @property
    def failed_items(self) -> int:
        return sum(self.answered.values())


class ArrayWatch:
    """Run ``chunks`` of ``plan`` as Batch jobs and watch them to their end.

    Without ``max_parallel`` every chunk is submitted at once (one array job per 10,000);
    with it, at most that many chunks are queued or running: more are submitted, as one array
    job, whenever children end.
    """

    def __init__(
        self,
        client: Any,
        store: ArtifactStore,
        plan: ForeachPlan,
        chunks: Sequence[int],
        *,
        submit: Submit,
        log: Any,
        poll_seconds: float,
        max_parallel: int | None = None,
        follow: Follow | None = None,
    ) -> None:
        self.client, self.store, self.plan, self.log = client, store, plan, log
        self.submit, self.follow = submit, follow
        self.poll_seconds, self.max_parallel = poll_seconds, max_parallel
        self.jobs: list[WatchedJob] = []
        self.todo: list[int] = sorted(chunks)
        self.reports = ChunkReports(store, plan, chunks)
        self.progress = ForeachProgress(log, plan, list(chunks))
        self._stopped = False
        self._lock = threading.Lock()
        self._followed = False
        self._unfollow: Callable[[], None] | None = None
        self._children_line = ""

    def adopt(self, job_id: str, chunks: Sequence[int]) -> None:
        """Watch a job an earlier try submitted; its chunks are not submitted again."""
        covered = set(chunks)
        self.jobs.append(WatchedJob(ChunkJob(self.plan.prefix, tuple(chunks)), job_id))
        self.todo = [chunk for chunk in self.todo if chunk not in covered]

    def run(self) -> None:
        """Submit, and poll every ``poll_seconds`` until every job ended (after :meth:`stop`,
        submitting nothing more)."""
        logged = time.monotonic()
        try:
            while True:
                self._submit_more()
                self._poll()
                if all(job.ended for job in self.jobs) and not self.todo:
                    break
                if time.monotonic() - logged >= PROGRESS_EVERY:
                    logged = time.monotonic()
                    self._log_progress()
                time.sleep(self.poll_seconds)
        finally:
            if self._unfollow is not None:
                self._unfollow()
        self._log_progress()

    def stop(self) -> list[str]:
        """Submit nothing more; return the jobs that have not ended, for the caller to end."""
        with self._lock:
            self._stopped = True
            self.todo = []
            return [job.job_id for job in self.jobs if not job.ended]

    def _submit_more(self) -> None:
        with self._lock:
            if not self.todo or self._stopped:
                return
            free = len(self.todo)
            if self.max_parallel is not None:
                free = self.max_parallel - sum(job.in_flight() for job in self.jobs)
            if free <= 0:
                return
            now, self.todo = self.todo[:free], self.todo[free:]
            for job in chunk_jobs(self.plan.prefix, now):
                self.jobs.append(WatchedJob(job, self.submit(job)))

    def _poll(self) -> None:
        by_id = {job.job_id: job for job in self.jobs if not job.ended}
        sample = self.jobs[0].first_child if self.jobs and not self._followed else None
        ids = [*by_id, *([sample] if sample and sample not in by_id else [])]
        for start in range(0, len(ids), DESCRIBE_AT_ONCE):
            found = self.client.describe_jobs(jobs=ids[start : start + DESCRIBE_AT_ONCE])
            for detail in found["jobs"]:
                job = by_id.get(detail["jobId"])
                if job is not None:
                    job.status, job.detail = detail["status"], detail
                    array = detail.get("arrayProperties") or {}
                    job.summary = dict(array.get("statusSummary") or {})
                started = detail["status"] in STARTED
                if sample is not None and detail["jobId"] == sample and started:
                    self._follow(sample)

    def _follow(self, child_id: str) -> None:
        self._followed = True
        if self.follow is not None:
            self._unfollow = self.follow(child_id)

    def _log_progress(self) -> None:
        self.reports.refresh()
        self.progress.log_line(self.reports.answered, self.reports.failed_items)
        counts: Counter[str] = Counter()
        for job in self.jobs:
            counts.update(job.children())
        line = ", ".join(f"{counts[s]} {s}" for s in STATUSES if counts[s])
        if self.todo:
            line += f"; {len(self.todo)} chunks wait for max_parallel={self.max_parallel}"
        if line != self._children_line:
            self._children_line = line
            self.log.info("Batch children: %s (%d jobs)", line, len(self.jobs))

    def lost(self) -> list[tuple[int, Mapping[str, Any]]]:
        """(chunk, its job) for each failed child whose chunk wrote no result, in chunk order:
        a DescribeJobs detail for the first few, a ListJobs summary for the rest."""
        found: list[tuple[int, Mapping[str, Any]]] = []
        for job in self.jobs:
            if job.job.array_size is None:
                if job.status == "FAILED":
                    found.append((job.job.chunks[0], job.detail))
                continue
            if not job.children().get("FAILED"):
                continue
            for child in listed_jobs(self.client, arrayJobId=job.job_id, jobStatus="FAILED"):
                found.append((job.job.chunk_of(child["jobId"]), child))
        found = sorted(
            ((c, j) for c, j in found if c not in self.reports.answered), key=lambda cj: cj[0]
        )
        ids = [job["jobId"] for _, job in found[:SHOWN] if "attempts" not in job]
        details = {}
        if ids:
            details = {d["jobId"]: d for d in self.client.describe_jobs(jobs=ids)["jobs"]}
        return [(chunk, details.get(job["jobId"], job)) for chunk, job in found]
