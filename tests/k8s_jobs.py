"""Jobs (batch/v1) on the test cluster: what the API server refuses and defaults on create, and
a Job controller that runs them through the cluster's kubelet.

Create: :func:`admit_job` refuses what a 1.33 API server refuses (the OpenAPI schema, the batch
validation rules a client can trip, among them an Indexed Job whose last pod hostname
``<name>-<completions - 1>`` is no DNS label, and the pod template's own checks, as for a pod);
:func:`default_job` sets what it defaults (the selector and the template labels it matches,
``backoffLimit``, ``parallelism``, ``completionMode``...). An API server older than 1.29 drops
``backoffLimitPerIndex`` and ``maxFailedIndexes``, as one whose feature gate is off does.

:class:`JobController` does what kube-controller-manager's Job controller (1.33) does, for what
flowtask relies on: it creates a pod per index (generateName ``<job>-<index>-``, hostname
``<job>-<index>``, the ``batch.kubernetes.io/job-completion-index`` label and annotation, a
``JOB_COMPLETION_INDEX`` env var from that label, an owner reference to the Job), at most
``parallelism`` at a time; counts ``succeeded`` and ``failed`` pods and completed / failed
indexes; recreates a failed index's pod while ``backoffLimitPerIndex`` allows (after a backoff
of :data:`RETRY_BACKOFF_SECONDS`, doubling; the real controller starts at 10 s), or fails the
Job once ``backoffLimit`` is exceeded; fails it past ``activeDeadlineSeconds``; and sets its
conditions as 1.33 does: ``SuccessCriteriaMet`` then ``Complete``, or ``FailureTarget`` (active
pods are deleted) then ``Failed`` once no pod runs. It does not model pod failure policies,
success policies, suspension, the job-tracking finalizer or ``uncountedTerminatedPods``.

Deleting a Job honours ``propagationPolicy``: ``Background`` deletes the Job, then its pods;
``Foreground`` deletes its pods first (the Job shows a ``deletionTimestamp`` meanwhile);
``Orphan`` (batch/v1's default when the request names none) leaves the pods running.
"""

from __future__ import annotations

import asyncio
import copy
import re
import time
from collections.abc import Coroutine, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from k8s_admission import _DNS_LABEL, Invalid, _schema, _spec, _unmodelled, is_label_value

INDEX_KEY = "batch.kubernetes.io/job-completion-index"
FAILURE_COUNT = "batch.kubernetes.io/job-index-failure-count"
MAX_INT32 = 2**31 - 1
MAX_INDEXED_PARALLELISM = 100_000
COMPLETIONS_SOFT_LIMIT = 100_000  # above it, backoffLimitPerIndex needs maxFailedIndexes
RETRY_BACKOFF_SECONDS = 0.2
_DNS_SUBDOMAIN = re.compile(rf"{_DNS_LABEL}(\.{_DNS_LABEL})*")


def admit_job(job: dict[str, Any]) -> None:
    """Raise :class:`Invalid` for a Job the API server (or the test kubelet) refuses."""
    name = (job.get("metadata") or {}).get("name") or ""
    template = ((job.get("spec") or {}).get("template") or {}).get("spec") or {}
    unmodelled = [f"spec.template.{problem}" for problem in _unmodelled(template)]
    if unmodelled:
        raise Invalid(name, unmodelled, status=501, kind="Job.batch")
    problems = list(_schema(job, "batch/v1", "Job")) or list(_job_problems(name, job["spec"]))
    if problems:
        raise Invalid(name, problems, kind="Job.batch")


def _job_problems(name: str, spec: dict[str, Any]) -> Iterator[str]:
    """pkg/apis/batch/validation: ValidateJob and validateJobSpec, the rules flowtask can trip."""
    if not (len(name) <= 253 and _DNS_SUBDOMAIN.fullmatch(name)):
        yield f'metadata.name: Invalid value: "{name}": a lowercase RFC 1123 subdomain'
    indexed = spec.get("completionMode") == "Indexed"
    completions, parallelism = spec.get("completions"), spec.get("parallelism")
    for key in ("parallelism", "completions", "activeDeadlineSeconds", "backoffLimit"):
        if (spec.get(key) or 0) < 0:
            yield f"spec.{key}: Invalid value: {spec[key]}: must be greater than or equal to 0"
    for key in ("backoffLimitPerIndex", "maxFailedIndexes"):
        if spec.get(key) is not None and not indexed:
            yield f"spec.{key}: Invalid value: {spec[key]}: requires indexed completion mode"
    if spec.get("maxFailedIndexes") is not None and spec.get("backoffLimitPerIndex") is None:
        yield "spec.backoffLimitPerIndex: Required value: when maxFailedIndexes is specified"
    if indexed:
        if completions is None:
            yield "spec.completions: Required value: when completion mode is Indexed"
        if (parallelism or 0) > MAX_INDEXED_PARALLELISM:
            yield (
                f"spec.parallelism: Invalid value: {parallelism}: must be less than or equal to "
                f"{MAX_INDEXED_PARALLELISM} when completion mode is Indexed"
            )
        over = (completions or 0) > COMPLETIONS_SOFT_LIMIT and "backoffLimitPerIndex" in spec
        if over and spec.get("maxFailedIndexes") is None:
            yield (
                "spec.maxFailedIndexes: Required value: must be specified when completions "
                f"is above {COMPLETIONS_SOFT_LIMIT}"
            )
        hostname = f"{name}-{(completions or 1) - 1}"
        if completions and not (len(hostname) <= 63 and re.fullmatch(_DNS_LABEL, hostname)):
            yield (
                f'metadata.name: Invalid value: "{name}": will not able to create pod with '
                f"invalid DNS label: {hostname}"
            )
    template = spec["template"]
    for value in ((template.get("metadata") or {}).get("labels") or {}).values():
        if not is_label_value(str(value)):
            yield f'spec.template.metadata.labels: Invalid value: "{value}": a valid label'
    policy = template["spec"].get("restartPolicy") or "Always"
    if policy == "Always":
        yield 'spec.template.spec.restartPolicy: Required value: valid values: "OnFailure", "Never"'
    for problem in _spec(template["spec"]):
        yield "spec.template." + problem


def default_job(job: dict[str, Any], minor: int) -> None:
    """What the API server sets on a created Job (its uid is already stamped)."""
    meta, spec = job["metadata"], job["spec"]
    if minor < 29:  # the JobBackoffLimitPerIndex gate was off: the fields are dropped
        spec.pop("backoffLimitPerIndex", None)
        spec.pop("maxFailedIndexes", None)
    generated = {
        "batch.kubernetes.io/controller-uid": meta["uid"],
        "batch.kubernetes.io/job-name": meta["name"],
        "controller-uid": meta["uid"],
        "job-name": meta["name"],
    }
    template_meta = spec["template"].setdefault("metadata", {})
    template_meta["labels"] = (template_meta.get("labels") or {}) | generated
    spec.setdefault("selector", {"matchLabels": {k: generated[k] for k in list(generated)[:1]}})
    spec.setdefault("manualSelector", None)
    spec.setdefault("parallelism", 1)
    spec.setdefault("completions", 1)
    spec.setdefault("completionMode", "NonIndexed")
    spec.setdefault("suspend", False)
    spec.setdefault("podReplacementPolicy", "TerminatingOrFailed")
    default_limit = MAX_INT32 if spec.get("backoffLimitPerIndex") is not None else 6
    spec.setdefault("backoffLimit", default_limit)
    if not meta.get("labels"):
        meta["labels"] = dict(template_meta["labels"])
    job["status"] = {}


def owner_uid(pod: dict[str, Any]) -> str | None:
    for ref in pod["metadata"].get("ownerReferences") or []:
        if ref.get("kind") == "Job" and ref.get("controller"):
            return str(ref["uid"])
    return None


def condition(kind: str, reason: str, message: str) -> dict[str, Any]:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {
        "type": kind,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastProbeTime": now,
        "lastTransitionTime": now,
    }


def format_indexes(indexes: set[int]) -> str:
    """``{0, 1, 2, 5}`` -> ``"0-2,5"``, as ``completedIndexes`` reads."""
    parts, run = [], []
    for index in sorted(indexes):
        if run and index == run[-1] + 1:
            run.append(index)
            continue
        if run:
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [index]
    if run:
        parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(parts)


@dataclass
class _Tracked:
    """What the controller knows about one Job."""

    key: tuple[str, str]
    uid: str
    started: float = field(default_factory=time.monotonic)
    pods: dict[str, int] = field(default_factory=dict)  # pod uid -> index
    counted: set[str] = field(default_factory=set)  # pod uids counted as ended
    succeeded: set[int] = field(default_factory=set)
    failures: dict[int, int] = field(default_factory=dict)  # index -> failed pods
    failed_indexes: set[int] = field(default_factory=set)
    failed: int = 0
    retry_at: dict[int, float] = field(default_factory=dict)  # index -> earliest new pod
    conditions: list[dict[str, Any]] = field(default_factory=list)


class JobController:
    """Runs the Jobs of an API (``k8s_cluster._Api``), one coroutine per Job (see module doc).

    ``api`` gives: ``find``/``live``/``update``/``remove``, ``list_objects``, ``create_pod``
    (admit, store and schedule a pod), ``collect_pod`` (a graceful delete), ``job_event`` and
    ``changed`` (an event replaced whenever a pod changes).
    """

    def __init__(self, api: Any, jobs: Any, pods: Any) -> None:
        self.api, self.jobs_resource, self.pods_resource = api, jobs, pods
        self.tasks: set[asyncio.Task[None]] = set()
        self.created_at: dict[str, float] = {}  # job name -> time.time() of its creation
        self.deleted_at: dict[str, float] = {}  # job name -> time.time() of its DELETE

    def start(self, job: dict[str, Any]) -> None:
        meta = job["metadata"]
        self.created_at[meta["name"]] = time.time()
        tracked = _Tracked((meta["namespace"], meta["name"]), meta["uid"])
        self._spawn(self._run(tracked))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _owned(self, job: _Tracked) -> list[dict[str, Any]]:
        listed = await self.api.list_objects(self.pods_resource, job.key[0])
        return [pod for pod in listed["items"] if owner_uid(pod) == job.uid]

    async def _run(self, job: _Tracked) -> None:
        try:
            while await self._sync(job):
                changed = self.api.changed
                waits = [t - time.monotonic() for t in job.retry_at.values()]
                timeout = max(0.01, min(waits)) if waits else 1.0
                with suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(changed.wait(), timeout)
        except Exception:  # a broken controller must not pass for a stuck Job
            import traceback

            traceback.print_exc()

    async def _sync(self, job: _Tracked) -> bool:
        """One pass of the controller; False once the Job is finished or gone."""
        obj = await self.api.live(self.jobs_resource, *job.key)
        if obj is None or obj["metadata"].get("uid") != job.uid:
            return False
        raw = copy.deepcopy(obj.raw)
        if raw["metadata"].get("deletionTimestamp"):
            return False
        spec = raw["spec"]
        pods = await self._owned(job)
        by_uid = {pod["metadata"]["uid"]: pod for pod in pods}
        per_index = spec.get("backoffLimitPerIndex")
        for uid, index in job.pods.items():
            if uid in job.counted:
                continue
            pod = by_uid.get(uid)
            phase = (pod.get("status") or {}).get("phase") if pod else "Failed"  # deleted
            if phase == "Succeeded":
                job.counted.add(uid)
                job.succeeded.add(index)
            elif phase == "Failed":
                job.counted.add(uid)
                job.failed += 1
                job.failures[index] = job.failures.get(index, 0) + 1
                if per_index is not None and job.failures[index] > per_index:
                    job.failed_indexes.add(index)
                delay = RETRY_BACKOFF_SECONDS * 2 ** (job.failures[index] - 1)
                job.retry_at[index] = time.monotonic() + delay
        active = [u for u in job.pods if u not in job.counted]
        completions = spec["completions"]
        failure = self._failure(job, spec)
        if job.conditions:  # FailureTarget already: its reason stands
            failure = job.conditions[0]["reason"], job.conditions[0]["message"]
        if failure is not None:
            return await self._fail(job, raw, active, *failure)
        if len(job.succeeded) >= completions and not active:
            message = "Reached expected number of succeeded pods"
            job.conditions = [
                condition(kind, "CompletionsReached", message)
                for kind in ("SuccessCriteriaMet", "Complete")
            ]
            await self._status(job, raw, active, done=True)
            return False
        await self._create(job, raw, active)
        await self._status(job, raw, [u for u in job.pods if u not in job.counted])
        return True

    def _failure(self, job: _Tracked, spec: dict[str, Any]) -> tuple[str, str] | None:
        if job.failed > spec["backoffLimit"]:
            return "BackoffLimitExceeded", "Job has reached the specified backoff limit"
        deadline = spec.get("activeDeadlineSeconds")
        if deadline is not None and time.monotonic() - job.started > deadline:
            return "DeadlineExceeded", "Job was active longer than specified deadline"
        if spec.get("backoffLimitPerIndex") is not None and job.failed_indexes:
            max_failed = spec.get("maxFailedIndexes")
            if max_failed is not None and len(job.failed_indexes) > max_failed:
                message = "Job has exceeded the specified maximal number of failed indexes"
                return "MaxFailedIndexesExceeded", message
            if len(job.failed_indexes) + len(job.succeeded) >= spec["completions"]:
                return "FailedIndexes", "Job has failed indexes"
        return None

    async def _fail(
        self, job: _Tracked, raw: dict[str, Any], active: list[str], reason: str, message: str
    ) -> bool:
        """FailureTarget at once (active pods deleted), Failed once none is left."""
        if not job.conditions:
            job.conditions = [condition("FailureTarget", reason, message)]
            for pod in await self._owned(job):
                if pod["metadata"]["uid"] in active:
                    await self.api.collect_pod(
                        (pod["metadata"]["namespace"], pod["metadata"]["name"])
                    )
        done = not active
        if done:
            job.conditions.append(condition("Failed", reason, message))
        await self._status(job, raw, active, done=done)
        return not done

    async def _create(self, job: _Tracked, raw: dict[str, Any], active: list[str]) -> None:
        spec = raw["spec"]
        busy = {job.pods[u] for u in active}
        wanted = [
            i
            for i in range(spec["completions"])
            if i not in job.succeeded and i not in job.failed_indexes and i not in busy
            if job.retry_at.get(i, 0) <= time.monotonic()
        ]
        room = spec["parallelism"] - len(active)
        for index in wanted[: max(room, 0)]:
            pod = self._pod(job, raw, index)
            created = await self.api.create_pod(pod, raw)
            if created is None:  # refused: the API said why in a FailedCreate event
                return
            job.pods[created["metadata"]["uid"]] = index
            job.retry_at.pop(index, None)

    def _pod(self, job: _Tracked, raw: dict[str, Any], index: int) -> dict[str, Any]:
        """The pod of ``index``, from the template, as the Job controller makes it."""
        name = raw["metadata"]["name"]
        template = copy.deepcopy(raw["spec"]["template"])
        meta = template.get("metadata") or {}
        labels = (meta.get("labels") or {}) | {INDEX_KEY: str(index)}
        annotations = (meta.get("annotations") or {}) | {INDEX_KEY: str(index)}
        if raw["spec"].get("backoffLimitPerIndex") is not None:
            annotations[FAILURE_COUNT] = str(job.failures.get(index, 0))
        owner = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "name": name,
            "uid": job.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
        spec = template["spec"] | {"hostname": f"{name}-{index}"}
        field_path = f"metadata.labels['{INDEX_KEY}']"
        for container in spec["containers"]:
            env = container.setdefault("env", [])
            if not any(var["name"] == "JOB_COMPLETION_INDEX" for var in env):
                env.append(
                    {
                        "name": "JOB_COMPLETION_INDEX",
                        "valueFrom": {"fieldRef": {"fieldPath": field_path}},
                    }
                )
        metadata = {
            "generateName": f"{name}-{index}-",
            "namespace": job.key[0],
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [owner],
        }
        return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}

    async def _status(
        self, job: _Tracked, raw: dict[str, Any], active: list[str], done: bool = False
    ) -> None:
        pods = {p["metadata"]["uid"]: p for p in await self._owned(job)}
        running = [pods[u] for u in active if u in pods]
        terminating = sum(1 for p in running if p["metadata"].get("deletionTimestamp"))
        ready = sum(
            1
            for p in running
            if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in (p.get("status") or {}).get("conditions") or []
            )
        )
        status: dict[str, Any] = {
            "startTime": raw["status"].get("startTime")
            or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "active": len(active) - terminating,
            "ready": ready,
            "terminating": terminating,
            "succeeded": len(job.succeeded),
            "failed": job.failed,
            "uncountedTerminatedPods": {},
        }
        if job.succeeded:
            status["completedIndexes"] = format_indexes(job.succeeded)
        if raw["spec"].get("backoffLimitPerIndex") is not None:
            status["failedIndexes"] = format_indexes(job.failed_indexes)
        if job.conditions:
            status["conditions"] = job.conditions
        if done and job.conditions[-1]["type"] == "Complete":
            status["completionTime"] = job.conditions[-1]["lastTransitionTime"]
        if status != raw["status"]:
            await self.api.update(self.jobs_resource, job.key, job.uid, {"status": status})
        raw["status"] = status

    async def delete(self, key: tuple[str, str], policy: str) -> dict[str, Any] | None:
        """DELETE a Job with ``policy``; returns the Job as the response shows it."""
        obj = await self.api.live(self.jobs_resource, *key)
        if obj is None:
            return None
        raw, uid = copy.deepcopy(obj.raw), obj["metadata"]["uid"]
        self.deleted_at.setdefault(key[1], time.time())
        job = _Tracked(key, uid)
        dependents = await self._owned(job)
        if policy == "Orphan":
            for pod in dependents:
                pod_key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
                patch = {"metadata": {"ownerReferences": []}}
                await self.api.update(self.pods_resource, pod_key, pod["metadata"]["uid"], patch)
            await self.api.remove(self.jobs_resource, key, uid)
            return raw
        if policy == "Foreground":
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            patch = {"metadata": {"deletionTimestamp": stamp, "finalizers": ["foregroundDeletion"]}}
            await self.api.update(self.jobs_resource, key, uid, patch)
            raw = copy.deepcopy((await self.api.live(self.jobs_resource, *key)).raw)
            self._spawn(self._collect(job, remove_job=True))
        else:  # Background
            await self.api.remove(self.jobs_resource, key, uid)
            self._spawn(self._collect(job, remove_job=False))
        return raw

    async def _collect(self, job: _Tracked, remove_job: bool) -> None:
        """The garbage collector: delete the Job's pods; with Foreground, then the Job."""
        for pod in await self._owned(job):
            await self.api.collect_pod((pod["metadata"]["namespace"], pod["metadata"]["name"]))
        while await self._owned(job):
            changed = self.api.changed
            with suppress(asyncio.TimeoutError):
                await asyncio.wait_for(changed.wait(), 1.0)
        if remove_job:
            await self.api.remove(self.jobs_resource, job.key, job.uid)
