"""``.foreach`` on AWS Batch (pure): which jobs run which chunks, and how lost chunks read.

Child ``i`` of an array job reads ``AWS_BATCH_JOB_ARRAY_INDEX`` and runs the chunk at index ``i``
of the list in its command (``--chunks 0-9,12``); every child shares one request. Batch takes
arrays of 2 to 10,000 children, so one chunk is a plain job (``--chunk N``), and more chunks than
one array holds make several jobs. So does a chunk list too scattered to write in a few hundred
characters (a retry of every other chunk): the container overrides ECS accepts are short.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from provider.runtime.foreach import format_chunks
from provider.translate.batch_status import describe_job_failure, short_reason

ARRAY_INDEX_ENV = "AWS_BATCH_JOB_ARRAY_INDEX"
MAX_ARRAY_SIZE = 10_000  # Batch's largest array; its smallest is 2
MAX_CHUNKS_TEXT = 512  # characters of one job's chunk list (a contiguous range takes a dozen)
SHOWN = 5  # lost chunks described one by one; the rest are counted by reason


@dataclass(frozen=True)
class ChunkJob:
    """The chunks of the foreach plan at ``prefix`` that one Batch job runs: child ``i`` of
    an array job runs ``chunks[i]``; a job of one chunk is a plain job."""

    prefix: str
    chunks: tuple[int, ...]

    @property
    def array_size(self) -> int | None:
        return len(self.chunks) if len(self.chunks) > 1 else None

    @property
    def runtime_mode(self) -> list[str]:
        """The ``python -m provider.runtime foreach`` arguments that pick the chunk."""
        if len(self.chunks) == 1:
            return ["--chunk", str(self.chunks[0])]
        return ["--chunk-env", ARRAY_INDEX_ENV, "--chunks", format_chunks(self.chunks)]

    def chunk_of(self, job_id: str) -> int:
        """The chunk a child (``<parent id>:<index>``) or the plain job itself runs."""
        if self.array_size is None:
            return self.chunks[0]
        return self.chunks[int(job_id.rpartition(":")[2])]


def _width(first: int, last: int) -> int:
    """The characters of one run of chunks in ``format_chunks``: ``7`` or ``7-12``."""
    return len(str(first)) if first == last else len(str(first)) + 1 + len(str(last))


def chunk_jobs(
    prefix: str,
    chunks: Iterable[int],
    *,
    limit: int = MAX_ARRAY_SIZE,
    max_text: int = MAX_CHUNKS_TEXT,
) -> list[ChunkJob]:
    """The chunks in order, in as few jobs as Batch takes: at most ``limit`` chunks each, whose
    list writes in at most ``max_text`` characters."""
    jobs: list[ChunkJob] = []
    current: list[int] = []
    first = last = -2
    length = 0
    for chunk in sorted(chunks):
        if current and chunk == last + 1:
            grown = length - _width(first, last) + _width(first, chunk)
        else:
            grown = length + (1 if current else 0) + _width(chunk, chunk)
        if current and (len(current) >= limit or grown > max_text):
            jobs.append(ChunkJob(prefix, tuple(current)))
            current, grown = [], _width(chunk, chunk)
        if current and chunk == last + 1:
            last = chunk
        else:
            first = last = chunk
        current.append(chunk)
        length = grown
    if current:
        jobs.append(ChunkJob(prefix, tuple(current)))
    return jobs


def describe_lost_chunks(
    lost: Sequence[tuple[str, Mapping[str, Any]]], memory_mib: int, shown: int = SHOWN
) -> str | None:
    """Why chunks wrote no result, in Batch's words: the first ``shown`` one by one, the rest
    counted by reason. ``lost`` holds (what the chunk covers, its job): a DescribeJobs detail
    for the first ``shown``, a ListJobs summary (enough to count) for the rest."""
    if not lost:
        return None
    parts = [
        f"{label}: {describe_job_failure(job, memory_mib) or short_reason(job)}"
        for label, job in lost[:shown]
    ]
    rest = Counter(short_reason(job) for _, job in lost[shown:])
    if rest:
        counted = ", ".join(f"{n} {kind}" for kind, n in rest.most_common())
        parts.append(f"and {len(lost) - shown} more ({counted})")
    noun = "child" if len(lost) == 1 else "children"
    return f"{len(lost)} Batch {noun} wrote no result: " + "; ".join(parts)


def chunk_label(plan: Any, chunk: int) -> str:
    """``chunk 3 (items 30-39)``, or ``chunk 3 (item 30)`` for a chunk of one."""
    start, stop = plan.bounds(chunk)
    return (
        f"chunk {chunk} (item {start})"
        if stop == start + 1
        else (f"chunk {chunk} (items {start}-{stop - 1})")
    )
