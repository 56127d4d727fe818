"""Batch API calls of the batch target: job definitions, and finding a job to reattach to.

Both take a boto3 Batch client and import nothing from Airflow.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from provider.store import ArtifactStore, MissingArtifact, Reference
from provider.translate.batch import TAG_PREFIX
from provider.translate.batch_status import ACTIVE

STOPPED_TAG = f"{TAG_PREFIX}stopped"

_definitions: dict[tuple[str, str, str], str] = {}
_definitions_lock = threading.Lock()


def job_definition_arn(client: Any, request: Mapping[str, Any]) -> tuple[str, bool]:
    """The ARN of an ACTIVE job definition with ``request``'s content; True if registered now.

    The name is a hash of the content, so any ACTIVE revision of it will do: look it up, and
    register only when there is none. Answers are cached for the life of the process; two
    workers that register at once make two equal revisions, which is harmless.
    """
    name = request["jobDefinitionName"]
    key = (str(client.meta.endpoint_url), str(client.meta.region_name), name)
    with _definitions_lock:
        if key in _definitions:
            return _definitions[key], False
        found = client.describe_job_definitions(jobDefinitionName=name, status="ACTIVE")
        revisions = sorted(found["jobDefinitions"], key=lambda d: d["revision"])
        if revisions:
            arn, registered = revisions[-1]["jobDefinitionArn"], False
        else:
            arn, registered = client.register_job_definition(**request)["jobDefinitionArn"], True
        _definitions[key] = arn
        return arn, registered


def forget_job_definitions() -> None:
    """Clear the cache (as a fresh worker process starts)."""
    with _definitions_lock:
        _definitions.clear()


@dataclass(frozen=True)
class RunningJob:
    """A job an earlier try of the same task instance submitted, still queued or running."""

    job_id: str
    status: str
    manifest_key: str
    payload: Mapping[str, Any] | None
    foreach: str | None = None  # the .foreach plan (its store prefix) it runs chunks of
    chunks: tuple[int, ...] = ()  # which, child by child


def running_job(client: Any, queue: str, name: str, store: ArtifactStore) -> RunningJob | None:
    """The newest active job named ``name`` on ``queue`` whose try has not ended, if any.

    Every try of a task instance submits under one name, so a job found here was left running
    by a try whose worker died. A try that ended wrote its result manifest; a job flowtask
    stopped carries the ``flowtask.io/stopped`` tag: neither is reattached to.
    """
    jobs = running_jobs(client, queue, name, store)
    return next((job for job in jobs if job.foreach is None), None)


def running_jobs(client: Any, queue: str, name: str, store: ArtifactStore) -> list[RunningJob]:
    """Every job :func:`running_job` could reattach to, newest first: a ``.foreach`` try may
    have left several (array jobs, or jobs of a few chunks)."""
    found = listed_jobs(client, jobQueue=queue, filters=[{"name": "JOB_NAME", "values": [name]}])
    ids = [job["jobId"] for job in found if job["status"] in ACTIVE]
    jobs = []
    for start in range(0, len(ids), 100):  # DescribeJobs takes at most 100 ids
        jobs += client.describe_jobs(jobs=ids[start : start + 100])["jobs"]
    left = []
    for job in sorted(jobs, key=lambda j: j.get("createdAt", 0), reverse=True):
        if job["status"] not in ACTIVE or (job.get("tags") or {}).get(STOPPED_TAG):
            continue
        container = job.get("container") or {}
        env = {v["name"]: v.get("value", "") for v in container.get("environment") or []}
        manifest = env.get("FLOWTASK_MANIFEST")
        if not manifest or _exists(store, manifest):
            continue
        foreach = env.get("FLOWTASK_FOREACH")
        parameters = job.get("parameters") or {}
        chunks = _chunks(parameters) if foreach else ()
        payload = _payload(parameters)
        left.append(RunningJob(job["jobId"], job["status"], manifest, payload, foreach, chunks))
    return left


def listed_jobs(client: Any, **request: Any) -> list[dict[str, Any]]:
    """Every job summary ``ListJobs`` returns for ``request``, page after page."""
    summaries: list[dict[str, Any]] = []
    while True:
        page = client.list_jobs(**request)
        summaries += page["jobSummaryList"]
        if not page.get("nextToken"):
            return summaries
        request = {**request, "nextToken": page["nextToken"]}


def mark_stopped(client: Any, job_id: str, reason: str) -> str | None:
    """Terminate the job and tag it, so that no later try reattaches to it while it stops.

    Returns why the tag could not be set (the job is terminated all the same), else None.
    """
    client.terminate_job(jobId=job_id, reason=reason)
    try:
        [job] = client.describe_jobs(jobs=[job_id])["jobs"]
        client.tag_resource(resourceArn=job["jobArn"], tags={STOPPED_TAG: "true"})
    except Exception as exc:  # e.g. no batch:TagResource: a stopping job may be reattached
        return f"{type(exc).__name__}: {exc}"
    return None


def discard_payload(store: ArtifactStore, payload: Mapping[str, Any] | None) -> None:
    """Delete the payload of a reattached job's try: its own worker is gone and cannot."""
    if payload is not None:
        store.discard(Reference.from_json(payload))


def _exists(store: ArtifactStore, manifest_key: str) -> bool:
    try:
        store.read_manifest(manifest_key)
    except MissingArtifact:
        return False
    return True


def _chunks(parameters: Mapping[str, str]) -> tuple[int, ...]:
    """The chunks a ``.foreach`` job runs, from its parameters (``chunks`` or ``one_chunk``)."""
    from provider.runtime.foreach import parse_chunks

    if "chunks" in parameters:
        return tuple(parse_chunks(parameters["chunks"]))
    if parameters.get("one_chunk", "").isdigit():
        return (int(parameters["one_chunk"]),)
    return ()


def _payload(parameters: Mapping[str, str]) -> Mapping[str, Any] | None:
    """The payload reference of a job's try, from its parameters."""
    try:
        payload = json.loads(parameters.get("payload") or "")
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None
