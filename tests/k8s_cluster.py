"""A local Kubernetes for tests: kmock's API emulator on 127.0.0.1 and a kubelet of subprocesses.

``with LocalCluster(tmp_path) as cluster:`` serves a stateful Kubernetes API over plain HTTP on a
free port (in a background thread with its own event loop) and writes a kubeconfig for it. Every
pod created through the API is run by a small kubelet in that same loop: the first container's
``command + args`` become a local subprocess in its own process group, with the container's env
(values, Secrets, ConfigMaps), a memory limit, ``activeDeadlineSeconds`` and eviction enforced,
its state reported in the pod status as a real kubelet does, and its output served as pod logs.

What a real cluster refuses is refused here: the API server's checks on create
(``k8s_admission``), one node with labels, taints and allocatable resources that a pod must fit
or stay Pending as Unschedulable (``k8s_node``), images the "registry" does not have
(``k8s_images``), Secrets and PersistentVolumeClaims that do not exist. Volumes are checked,
not mounted: the container sees the machine's file system, except that the mount path of an
``emptyDir`` (a folder of the pod's own) or a ``hostPath`` (a folder of the node's, shared by
its pods) in the command's arguments names that local folder. Stopping a container is graceful:
SIGTERM, then SIGKILL after the grace period (the delete request's, else
``terminationGracePeriodSeconds``). ``$(VAR)`` in a command is expanded, and field references
(``metadata.labels['x']``) resolved, as a kubelet does.

Jobs (batch/v1) are admitted, defaulted and run by a Job controller (``k8s_jobs``) whose pods
go through the same kubelet; ``version`` is the Kubernetes 1.x that ``/version`` reports and the
API server behaves as (an API server before 1.29 drops ``backoffLimitPerIndex``).
"""

from __future__ import annotations

import asyncio
import base64
import copy
import itertools
import json
import os
import re
import signal
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Coroutine
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import aiohttp.web
import attrs
import kmock
from k8s_admission import Invalid, admit_pod
from k8s_images import interpreter, pull_error, python_of, shims
from k8s_jobs import JobController, admit_job, default_job
from k8s_node import NODE, Node, unschedulable

T = TypeVar("T")
PODS = kmock.resource("", "v1", "pods")
EVENTS = kmock.resource("", "v1", "events")
PVCS = kmock.resource("", "v1", "persistentvolumeclaims")
JOBS = kmock.resource("batch", "v1", "jobs")
DEFAULT_GRACE_SECONDS = 30  # terminationGracePeriodSeconds when the pod sets none
_UNITS = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
_UNITS |= {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "": 1}
# One selector requirement: `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`.
_REQUIREMENT = re.compile(
    r"\s*(!?)\s*([\w./-]+)(?:\s*(==|=|!=)\s*([\w./-]*)|\s+(in|notin)\s*\(([^)]*)\))?"
)
# A field reference to one label or annotation: ``metadata.labels['batch.kubernetes.io/x']``.
_REFERENCE = re.compile(r"(\$?)\$\(([-._a-zA-Z][-._a-zA-Z0-9]*)\)")
_FIELD_KEY = re.compile(r"metadata\.(labels|annotations)\['([^']+)'\]")
_KILL_STATUS = {  # why the kubelet killed a container -> the pod's status.reason and .message
    "DeadlineExceeded": "Pod was active on the node longer than the specified deadline",
    "Evicted": "The node was low on resource: memory.",
}


def parse_quantity(quantity: str | int) -> int:
    """Bytes in a Kubernetes memory quantity: ``"512Mi"``, ``"1Gi"``, ``"100M"``, ``"1000"``."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kMGT]i?|)", str(quantity).strip())
    if not match:
        raise ValueError(f"unsupported quantity: {quantity!r}")
    return int(float(match[1]) * _UNITS[match[2]])


def timestamp(ns: int | None = None, *, nanos: bool = False) -> str:
    """RFC 3339 UTC time of ``ns`` (default: now), with nanoseconds as in logs, or seconds."""
    ns = time.time_ns() if ns is None else ns
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 10**9))
    return f"{seconds}.{ns % 10**9:09d}Z" if nanos else f"{seconds}Z"


def selected(get: Callable[[str], Any], selector: str) -> bool:
    """Whether a label or field selector matches; ``get`` looks a label or field up by name."""
    for negated, key, op, value, set_op, values in _REQUIREMENT.findall(selector):
        have = get(key)
        have = None if have is None else str(have)
        if op:
            ok = (have == value) == (op != "!=")
        elif set_op:
            ok = (have in {v.strip() for v in values.split(",")}) == (set_op == "in")
        else:
            ok = (have is None) == bool(negated)
        if not ok:
            return False
    return True


def dig(obj: Any, path: str) -> Any:
    """``obj["a"]["b"]`` for the path ``"a.b"``, or None if any part is missing."""
    for part in path.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else None
    return obj


def expand(arg: str, env: dict[str, str]) -> str:
    """``$(VAR)`` in a command or its args, as the kubelet expands it (``$$(VAR)`` escapes)."""
    return _REFERENCE.sub(lambda m: m[0][1:] if m[1] else env.get(m[2], m[0]), arg)


def field_value(obj: dict[str, Any], path: str) -> str:
    """A downward-API field: ``metadata.name``, ``metadata.labels['x']``, ``spec.nodeName``."""
    if match := _FIELD_KEY.fullmatch(path):
        return str((obj["metadata"].get(match[1]) or {}).get(match[2], ""))
    return str(dig(obj, path) or "")


def group_rss(pgid: int) -> int:
    """Resident bytes of all processes in the process group ``pgid``, summed from /proc."""
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.getpgid(int(pid)) != pgid:
                continue
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:  # the process is gone
            continue
        if match := re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE):
            total += int(match[1]) * 1024
    return total


def condition(
    kind: str, status: bool, reason: str | None = None, message: str | None = None
) -> dict[str, Any]:
    cond = {"type": kind, "status": str(status), "lastTransitionTime": timestamp()}
    return cond | ({"reason": reason} if reason else {}) | ({"message": message} if message else {})


def grace_seconds(request: kmock.Request, pod: dict[str, Any]) -> float:
    """The grace period of a DELETE: the request's, else the pod's, else 30 s."""
    options = request.data if isinstance(request.data, dict) else {}
    given = request.params.get("gracePeriodSeconds", options.get("gracePeriodSeconds"))
    if given is None:
        given = pod["spec"].get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS)
    return float(given)


class _Api(kmock.KubernetesEmulator):
    """kmock's stateful API, plus server-set metadata, selectors, and the kubelet's endpoints."""

    kubelet: Kubelet
    jobs: JobController
    history: list[dict[str, Any]]
    job_history: list[dict[str, Any]]
    versions: itertools.count[int]
    minor: int  # the Kubernetes 1.x this API server reports and behaves as
    changed: asyncio.Event  # replaced whenever a pod changes (the Job controller waits on it)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.fallback["get /version/"] << self._serve_server_version  # the client's URL

    def touch(self, resource: kmock.resource) -> None:
        if resource == PODS:
            event, self.changed = self.changed, asyncio.Event()
            event.set()

    async def _serve_server_version(self, request: kmock.Request) -> dict[str, str]:
        version = {"major": "1", "minor": str(self.minor), "gitVersion": f"v1.{self.minor}.0"}
        version |= {"gitCommit": "0" * 40, "gitTreeState": "clean", "buildDate": timestamp()}
        return version | {"goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64"}

    def stamp(self, obj: dict[str, Any], namespace: str | None) -> None:
        """Set the metadata that the API server sets on creation."""
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if namespace:
            meta["namespace"] = namespace
        meta |= {"uid": str(uuid.uuid4()), "creationTimestamp": timestamp()}
        meta["resourceVersion"] = str(next(self.versions))

    def find(self, resource: kmock.resource, namespace: str, name: str) -> Any:
        """The stored object (kmock's ``Object``) unless absent or deleted; use under the lock."""
        with suppress(KeyError):
            obj = self.objects[resource, namespace, name]
            return None if obj.deleted else obj
        return None

    async def live(self, resource: kmock.resource, namespace: str, name: str) -> Any:
        async with self._lock:
            return self.find(resource, namespace, name)

    async def update(
        self, resource: kmock.resource, key: tuple[str, str], uid: str, patch: dict
    ) -> None:
        """Merge ``patch`` into an object if it still is the one with ``uid``; tell watchers."""
        async with self._lock:
            obj = self.find(resource, *key)
            if obj is None or obj["metadata"].get("uid") != uid:
                return
            obj.patch(patch)
            await self._buses[resource].put({"type": "MODIFIED", "object": obj.raw})
        self.touch(resource)

    async def remove(self, resource: kmock.resource, key: tuple[str, str], uid: str) -> None:
        """Delete an object that ended its graceful deletion; tell watchers."""
        async with self._lock:
            obj = self.find(resource, *key)
            if obj is None or obj["metadata"].get("uid") != uid:
                return
            raw = obj.raw
            obj.delete()
            await self._buses[resource].put({"type": "DELETED", "object": raw})
        self.touch(resource)

    async def create(self, resource: kmock.resource, obj: dict[str, Any]) -> None:
        """Store a new object as if it were POSTed (used for events)."""
        meta = obj["metadata"]
        self.stamp(obj, meta["namespace"])
        async with self._lock:
            self.objects[resource, meta["namespace"], meta["name"]] = obj
            await self._buses[resource].put({"type": "ADDED", "object": obj})
        self.touch(resource)

    async def create_pod(self, pod: dict[str, Any], job: dict[str, Any]) -> dict[str, Any] | None:
        """A pod the Job controller creates: refused as a client's would be (a FailedCreate
        event on the Job), else stored and run."""
        meta = pod["metadata"]
        meta["name"] = meta.get("name") or meta["generateName"] + uuid.uuid4().hex[:5]
        try:
            admit_pod(pod)
        except Invalid as refused:
            await self.job_event(job, "Warning", "FailedCreate", f"Error creating: {refused}")
            return None
        pod["status"] = {"phase": "Pending"}
        await self.create(PODS, pod)
        self.history.append(copy.deepcopy(pod))
        self.kubelet.schedule(pod)
        name = pod["metadata"]["name"]
        await self.job_event(job, "Normal", "SuccessfulCreate", f"Created pod: {name}")
        return pod

    async def job_event(self, job: dict[str, Any], kind: str, reason: str, message: str) -> None:
        meta = job["metadata"]
        involved = {"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"]}
        involved |= {"namespace": meta["namespace"], "uid": meta["uid"]}
        now = timestamp()
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{meta['name']}.{uuid.uuid4().hex[:16]}",
                "namespace": meta["namespace"],
            },
            "type": kind,
            "reason": reason,
            "message": message,
            "count": 1,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "source": {"component": "job-controller"},
            "involvedObject": involved,
        }
        await self.create(EVENTS, event)

    async def delete_pod(self, key: tuple[str, str], grace: float | None = None) -> bool:
        """Stop a pod as the kubelet does on delete: SIGKILL at once when nothing runs or
        ``grace`` is 0 (False: remove it now), else SIGTERM and a grace period (``grace``, else
        the pod's), the pod staying with a ``deletionTimestamp`` until its processes stopped."""
        obj = await self.live(PODS, *key)
        p = self.kubelet.pods.get(key)
        if obj is None or p is None or p.done.is_set() or p.uid != obj["metadata"]["uid"]:
            if p is not None:
                self.kubelet.kill(key, "Deleted")
            return False
        if grace is None:
            grace = float(p.pod["spec"].get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS))
        if p.proc is None or grace <= 0:
            self.kubelet.kill(key, "Deleted")
            return False
        await self.update(
            PODS,
            key,
            p.uid,
            {"metadata": {"deletionTimestamp": timestamp(), "deletionGracePeriodSeconds": grace}},
        )
        self.kubelet.kill(key, "Deleted", grace)
        p.on_done.append(lambda: self.remove(PODS, key, p.uid))
        return True

    async def collect_pod(self, key: tuple[str, str]) -> None:
        """Delete a pod whose owner went or failed (the garbage collector, the Job controller)."""
        if not await self.delete_pod(key) and (obj := await self.live(PODS, *key)) is not None:
            await self.remove(PODS, key, obj["metadata"]["uid"])

    async def list_objects(
        self, resource: kmock.resource, namespace: str | None, labels: str = "", fields: str = ""
    ) -> dict[str, Any]:
        """A LIST response (all namespaces if ``namespace`` is None), with selectors applied."""
        async with self._lock:
            items = [
                copy.deepcopy(obj.raw)
                for (kind, obj_namespace, _), obj in self.objects.items()
                if kind == resource and namespace in (None, obj_namespace) and not obj.deleted
                if selected((obj.get("metadata", {}).get("labels") or {}).get, labels)
                and selected(lambda path, o=obj: dig(o.raw, path), fields)
            ]
        version = str(next(self.versions))
        return {"apiVersion": "v1", "metadata": {"resourceVersion": version}, "items": items}

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        is_pod, is_job = request.resource == PODS, request.resource == JOBS
        if request.action == kmock.action.LIST and request.params.get("watch") == "True":
            # The official client says "True"; kmock knows "true" and finds requests by identity.
            index = self._requests.index(request)
            request = self._requests[index] = attrs.evolve(request, action=kmock.action.WATCH)
        if is_pod and request.subresource == "log":
            return await self.kubelet.serve_log(request)
        if request.action == kmock.action.LIST and request.resource and request.resource.plural:
            labels, fields = (request.params.get(p, "") for p in ("labelSelector", "fieldSelector"))
            listed = await self.list_objects(request.resource, request.namespace, labels, fields)
            return aiohttp.web.json_response(listed)
        created = request.action == kmock.action.CREATE and isinstance(request.data, dict)
        if created:
            submitted = copy.deepcopy(request.data)
            if is_pod:
                try:
                    admit_pod(request.data)
                except Invalid as refused:
                    raise kmock.KubernetesError(
                        status=refused.status, reason=refused.reason, message=str(refused)
                    ) from None
                request.data.setdefault("status", {"phase": "Pending"})
            if is_job:
                try:
                    admit_job(request.data)
                except Invalid as refused:
                    raise kmock.KubernetesError(
                        status=refused.status, reason=refused.reason, message=str(refused)
                    ) from None
            self.stamp(request.data, request.namespace)
            if is_job:
                default_job(request.data, self.minor)
        if is_pod and request.action == kmock.action.DELETE:
            key = (request.namespace or "", request.name or "")
            if (graceful := await self.delete_gracefully(request, key)) is not None:
                return graceful
        if is_job and request.action == kmock.action.DELETE and request.name:
            options = request.data if isinstance(request.data, dict) else {}
            policy = request.params.get("propagationPolicy", options.get("propagationPolicy"))
            key = (request.namespace or "", request.name)
            deleted = await self.jobs.delete(key, policy or "Orphan")  # batch/v1's default
            if deleted is None:
                raise kmock.KubernetesObjectNotFoundError()
            return aiohttp.web.json_response(deleted)
        response = await super()._handle(request)
        if created and is_pod and response.status < 300:
            self.history.append(submitted)
            self.kubelet.schedule(request.data)
            self.touch(PODS)
        if created and is_job and response.status < 300:
            self.job_history.append(submitted)
            self.jobs.start(request.data)
        return response

    async def delete_gracefully(
        self, request: kmock.Request, key: tuple[str, str]
    ) -> aiohttp.web.StreamResponse | None:
        """Stop a running pod's container with its grace period, as the kubelet does on delete.

        The pod stays, with a ``deletionTimestamp``, until its container has stopped; None when
        there is nothing to wait for (the pod is deleted at once).
        """
        obj, p = await self.live(PODS, *key), self.kubelet.pods.get(key)
        if obj is None or not await self.delete_pod(key, grace_seconds(request, p.pod) if p else 0):
            return None
        live = await self.live(PODS, *key)
        return aiohttp.web.json_response(copy.deepcopy(live.raw if live else obj.raw))


@dataclass
class _Pod:
    """What the kubelet knows about one pod it runs."""

    pod: dict[str, Any]
    logs: list[tuple[int, bytes]] = field(default_factory=list)  # (time in ns, line)
    changed: asyncio.Event = field(default_factory=asyncio.Event)  # replaced at each change
    done: asyncio.Event = field(default_factory=asyncio.Event)
    proc: asyncio.subprocess.Process | None = None
    killed: str | None = None  # OOMKilled, DeadlineExceeded, Evicted, Deleted
    bound: bool = False  # scheduled onto the node: it takes its requests from it
    on_done: list[Callable[[], Coroutine[Any, Any, None]]] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str]:
        return self.pod["metadata"]["namespace"], self.pod["metadata"]["name"]

    @property
    def uid(self) -> str:
        return self.pod["metadata"]["uid"]

    @property
    def container(self) -> dict[str, Any]:
        return self.pod["spec"]["containers"][0]

    def touch(self) -> None:
        """Wake whoever waits for news of this pod (log followers)."""
        event, self.changed = self.changed, asyncio.Event()
        event.set()


class Kubelet:
    """Runs pods as local subprocesses and reports their status through the API."""

    def __init__(
        self, api: _Api, root: Path, node: Node, missing_images: set[str] | None = None
    ) -> None:
        self.api, self.root, self.node = api, root, node
        self.missing_images = missing_images if missing_images is not None else set()
        self.pods: dict[tuple[str, str], _Pod] = {}
        self.started_at: dict[str, float] = {}
        self.lifetimes: dict[str, tuple[float, float | None]] = {}  # created, ended
        self.tasks: set[asyncio.Task[None]] = set()
        self.freed = asyncio.Event()  # replaced whenever a bound pod ends: capacity came back

    def schedule(self, pod: dict[str, Any]) -> None:
        p = _Pod(copy.deepcopy(pod))
        self.pods[p.key] = p
        self.lifetimes[p.key[1]] = (time.time(), None)
        task = asyncio.create_task(self.run(p))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def kill(self, key: tuple[str, str], why: str, grace: float = 0) -> None:
        """Stop the pod's process group, remembering why (the first reason wins): SIGTERM, then
        SIGKILL after ``grace`` seconds (at once when ``grace`` is 0)."""
        if (p := self.pods.get(key)) is None or p.done.is_set():
            return
        p.killed = p.killed or why
        p.touch()
        if p.proc is None:
            return
        if grace <= 0:
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(p.proc.pid, signal.SIGKILL)
            return
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(p.proc.pid, signal.SIGTERM)
        task = asyncio.create_task(self._kill_after(p, grace))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _kill_after(self, p: _Pod, grace: float) -> None:
        with suppress(asyncio.TimeoutError):
            await asyncio.wait_for(p.done.wait(), grace)
        if not p.done.is_set() and p.proc is not None:
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(p.proc.pid, signal.SIGKILL)

    async def evict(self, key: tuple[str, str]) -> None:
        self.kill(key, "Evicted")
        await self.event(self.pods[key], "Warning", "Evicted", _KILL_STATUS["Evicted"])
        await self.pods[key].done.wait()

    async def report(self, p: _Pod, status: dict[str, Any]) -> None:
        await self.api.update(PODS, p.key, p.uid, {"status": status})

    async def event(
        self, p: _Pod, kind: str, reason: str, message: str, component: str = "kubelet"
    ) -> None:
        namespace, name = p.key
        meta = {"name": f"{name}.{uuid.uuid4().hex[:16]}", "namespace": namespace}
        involved = {"apiVersion": "v1", "kind": "Pod", "namespace": namespace, "name": name}
        now = timestamp()
        event = {"apiVersion": "v1", "kind": "Event", "metadata": meta, "type": kind}
        event |= {"reason": reason, "message": message, "count": 1, "firstTimestamp": now}
        source = {"component": component} | ({"host": NODE} if component == "kubelet" else {})
        event |= {"lastTimestamp": now, "source": source}
        await self.api.create(EVENTS, event | {"involvedObject": involved | {"uid": p.uid}})

    def container_status(self, p: _Pod, state: dict[str, Any], ready: bool = False) -> dict:
        c = p.container
        status = {"name": c["name"], "image": c.get("image", ""), "imageID": "", "restartCount": 0}
        return status | {"ready": ready, "started": "running" in state, "state": state}

    async def run(self, p: _Pod) -> None:
        try:
            await self._run(p)
        except Exception:
            traceback.print_exc()
            await self.report(p, {"phase": "Failed", "reason": "KubeletError"})
        finally:
            p.done.set()
            p.touch()
            self.lifetimes[p.key[1]] = (self.lifetimes[p.key[1]][0], time.time())
            if p.bound:
                freed, self.freed = self.freed, asyncio.Event()
                freed.set()
            for callback in p.on_done:
                await callback()

    async def bind(self, p: _Pod) -> bool:
        """Wait until the node can host the pod (False if it is deleted first), as the
        scheduler does: Unschedulable with its message and a FailedScheduling event meanwhile."""
        told = None
        while not p.killed:
            running = [q.pod for q in self.pods.values() if q.bound and not q.done.is_set()]
            message = await self.missing_claim(p) or unschedulable(p.pod, self.node, running)
            if message is None:
                p.bound = True
                await self.api.update(PODS, p.key, p.uid, {"spec": {"nodeName": self.node.name}})
                return True
            if message != told:
                status = {"phase": "Pending", "conditions": []}
                status["conditions"] = [condition("PodScheduled", False, "Unschedulable", message)]
                await self.report(p, status)
                await self.event(
                    p, "Warning", "FailedScheduling", message, component="default-scheduler"
                )
                told = message
            freed, changed = self.freed, p.changed
            waits = [asyncio.create_task(e.wait()) for e in (freed, changed)]
            _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
        return False

    async def missing_claim(self, p: _Pod) -> str | None:
        """The scheduler's message for a pod whose PersistentVolumeClaim does not exist."""
        for volume in p.pod["spec"].get("volumes") or []:
            claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
            if claim and await self.api.live(PVCS, p.key[0], claim) is None:
                return (
                    f'0/1 nodes are available: persistentvolumeclaim "{claim}" not found. '
                    "preemption: 0/1 nodes are available: 1 Preemption is not helpful for "
                    "scheduling."
                )
        return None

    async def wait_pending(self, p: _Pod, state: dict[str, Any]) -> None:
        """Report a container that cannot start, and keep the pod Pending until it is deleted."""
        await self.report(p, {"containerStatuses": [self.container_status(p, state)]})
        while not p.killed:
            await p.changed.wait()

    async def pull(self, p: _Pod) -> str | None:
        """The interpreter for the container's image, or None after a pull that never succeeds
        (ErrImagePull, then ImagePullBackOff, until the pod is deleted)."""
        image = p.container.get("image", "")
        python = None if image in self.missing_images else interpreter(image)
        if python is not None:
            return python
        error = pull_error(image)
        if image not in self.missing_images:
            version = python_of(image)
            error += f" (the test cluster has no Python {version} on this machine)"
        await self.event(p, "Normal", "Pulling", f'Pulling image "{image}"')
        await self.event(p, "Warning", "Failed", f'Failed to pull image "{image}": {error}')
        await self.event(p, "Warning", "Failed", "Error: ErrImagePull")
        state = {"waiting": {"reason": "ErrImagePull", "message": error}}
        await self.report(p, {"containerStatuses": [self.container_status(p, state)]})
        if not p.killed:  # a real kubelet backs off for 10 s, then longer; here for 1 s
            with suppress(asyncio.TimeoutError):
                await asyncio.wait_for(p.changed.wait(), 1)
        if not p.killed:
            await self.event(p, "Normal", "BackOff", f'Back-off pulling image "{image}"')
            await self.event(p, "Warning", "Failed", "Error: ImagePullBackOff")
            message = f'Back-off pulling image "{image}": ErrImagePull: {error}'
            await self.wait_pending(
                p, {"waiting": {"reason": "ImagePullBackOff", "message": message}}
            )
        return None

    def mounted(self, p: _Pod, work: Path, argv: list[str]) -> list[str]:
        """``argv`` with each emptyDir's and hostPath's mount path replaced by its local folder
        (the pod's ``volumes/NAME``, the node's ``nodes/PATH``)."""
        volumes = {v["name"]: v for v in p.pod["spec"].get("volumes") or []}
        for mount in p.container.get("volumeMounts") or []:
            volume = volumes.get(mount["name"], {})
            if "emptyDir" in volume:
                folder = work / "volumes" / mount["name"]
            elif "hostPath" in volume:
                folder = self.root.parent / "nodes" / volume["hostPath"]["path"].lstrip("/")
            else:
                continue
            folder.mkdir(parents=True, exist_ok=True)
            path = mount["mountPath"].rstrip("/")
            argv = [
                str(folder) + a[len(path) :] if a == path or a.startswith(path + "/") else a
                for a in argv
            ]
        return argv

    async def _run(self, p: _Pod) -> None:
        start_time, t0 = timestamp(), time.monotonic()
        if not await self.bind(p):
            return
        waiting = self.container_status(p, {"waiting": {"reason": "ContainerCreating"}})
        await self.report(
            p,
            {
                "phase": "Pending",
                "hostIP": "127.0.0.1",
                "startTime": start_time,
                "conditions": [condition("PodScheduled", True)],
                "containerStatuses": [waiting],
            },
        )
        await self.event(
            p,
            "Normal",
            "Scheduled",
            f"Successfully assigned {'/'.join(p.key)} to {NODE}",
            component="default-scheduler",
        )
        python = await self.pull(p)
        if python is None:
            return await self.finish(p, 137, start_time)
        work = Path(tempfile.mkdtemp(prefix=f"{p.key[1]}-", dir=self.root))
        for name in ("home", "tmp"):
            (work / name).mkdir()
        try:
            env = await self.environment(p, work, python)
        except LookupError as e:  # a real kubelet keeps such a pod Pending (until deleted)
            await self.event(p, "Warning", "Failed", f"Error: {e}")
            state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(e)}}
            await self.wait_pending(p, state)
            return await self.finish(p, 137, start_time)
        argv = [
            expand(a, env) for a in [*p.container.get("command", []), *p.container.get("args", [])]
        ]
        argv = self.mounted(p, work, argv)
        if p.killed:  # deleted or evicted before it started
            return await self.finish(p, 137, start_time)
        try:
            p.proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=work,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        except (OSError, IndexError) as e:  # no such command, or none at all
            state = {"reason": "StartError", "message": str(e), "exitCode": 128}
            return await self.finish(p, 128, start_time, state)
        self.started_at[p.key[1]] = time.time()
        started = timestamp()
        running = self.container_status(p, {"running": {"startedAt": started}}, ready=True)
        conditions = ["PodScheduled", "Initialized", "ContainersReady", "Ready"]
        await self.report(
            p,
            {
                "phase": "Running",
                "podIP": "127.0.0.1",
                "conditions": [condition(c, True) for c in conditions],
                "containerStatuses": [running],
            },
        )
        await self.event(p, "Normal", "Started", f"Started container {p.container['name']}")
        reader = asyncio.create_task(self.read_output(p))
        watchdog = asyncio.create_task(self.watchdog(p, t0))
        returncode = await p.proc.wait()
        watchdog.cancel()
        with suppress(ProcessLookupError, PermissionError):  # the container's other processes
            os.killpg(p.proc.pid, signal.SIGKILL)
        with suppress(asyncio.TimeoutError):
            await asyncio.wait_for(reader, 10)
        exit_code = 128 - returncode if returncode < 0 else returncode
        await self.finish(p, exit_code, started)

    async def finish(
        self, p: _Pod, exit_code: int, started: str, state: dict[str, Any] | None = None
    ) -> None:
        """Report the terminated container and the pod's final phase."""
        if p.killed in ("OOMKilled", "Evicted") or (p.killed and p.proc is None):
            exit_code = 137
        reason = (
            "Completed" if exit_code == 0 else "OOMKilled" if p.killed == "OOMKilled" else "Error"
        )
        terminated = {"exitCode": exit_code, "reason": reason, "startedAt": started}
        terminated |= (state or {}) | {"finishedAt": timestamp()}
        phase = "Succeeded" if exit_code == 0 and p.killed not in _KILL_STATUS else "Failed"
        status: dict[str, Any] = {"phase": phase}
        if p.killed in _KILL_STATUS:
            status |= {"reason": p.killed, "message": _KILL_STATUS[p.killed]}
        ready_reason = "PodCompleted" if phase == "Succeeded" else "PodFailed"
        status["conditions"] = [condition("PodScheduled", True), condition("Initialized", True)]
        status["conditions"] += [
            condition(c, False, ready_reason) for c in ("ContainersReady", "Ready")
        ]
        status["containerStatuses"] = [self.container_status(p, {"terminated": terminated})]
        await self.report(p, status)

    async def read_output(self, p: _Pod) -> None:
        """Store the subprocess's merged stdout/stderr as timestamped log lines."""
        assert p.proc is not None and p.proc.stdout is not None
        partial = b""
        while chunk := await p.proc.stdout.read(65536):
            *lines, partial = (partial + chunk).split(b"\n")
            now = time.time_ns()
            p.logs.extend((now, line + b"\n") for line in lines)
            p.touch()
        if partial:
            p.logs.append((time.time_ns(), partial))
            p.touch()

    async def watchdog(self, p: _Pod, t0: float) -> None:
        """Kill the pod at its memory limit or at ``activeDeadlineSeconds``."""
        assert p.proc is not None
        deadline = p.pod["spec"].get("activeDeadlineSeconds")
        limit = ((p.container.get("resources") or {}).get("limits") or {}).get("memory")
        limit = None if limit is None else parse_quantity(limit)
        while deadline is not None or limit is not None:
            if deadline is not None and time.monotonic() - t0 > deadline:
                grace = p.pod["spec"].get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS)
                self.kill(p.key, "DeadlineExceeded", grace)
                return await self.event(
                    p, "Normal", "DeadlineExceeded", _KILL_STATUS["DeadlineExceeded"]
                )
            if limit is not None and group_rss(p.proc.pid) > limit:
                return self.kill(p.key, "OOMKilled")
            await asyncio.sleep(0.02)

    async def environment(self, p: _Pod, work: Path, python: str) -> dict[str, str]:
        """The container's env: a minimal one, then envFrom, then env (values, keys, fields)."""
        bin_ = shims(self.root, python)
        hostname = p.pod["spec"].get("hostname") or p.key[1]
        env = {"PATH": f"{bin_}:/usr/local/bin:/usr/bin:/bin", "HOSTNAME": hostname}
        env |= {"HOME": str(work / "home"), "TMPDIR": str(work / "tmp")}
        for source in p.container.get("envFrom") or []:
            kind, ref = next((k, source[k]) for k in ("secretRef", "configMapRef") if source.get(k))
            data = await self.lookup(p.key[0], kind, ref["name"], ref.get("optional"))
            env |= {source.get("prefix", "") + k: v for k, v in data.items()}
        for var in p.container.get("env") or []:
            value_from = var.get("valueFrom")
            if not value_from:
                env[var["name"]] = var.get("value", "")
            elif ref := value_from.get("fieldRef"):
                env[var["name"]] = field_value(p.pod, ref["fieldPath"])
            else:
                kind = next(k for k in ("secretKeyRef", "configMapKeyRef") if value_from.get(k))
                ref = value_from[kind]
                data = await self.lookup(p.key[0], kind, ref["name"], ref.get("optional"))
                if ref["key"] in data:
                    env[var["name"]] = data[ref["key"]]
                elif not ref.get("optional"):
                    raise LookupError(f"couldn't find key {ref['key']} in {ref['name']}")
        return env

    async def lookup(self, namespace: str, kind: str, name: str, optional: bool | None) -> dict:
        """The decoded data of a Secret or ConfigMap (``kind`` is the kind of reference)."""
        plural = "secrets" if kind.startswith("secret") else "configmaps"
        obj = await self.api.live(kmock.resource("", "v1", plural), namespace, name)
        if obj is None:
            if optional:
                return {}
            raise LookupError(f'{plural[:-1]} "{name}" not found')
        data = dict(obj.get("data") or {})
        if plural == "secrets":
            data = {k: base64.b64decode(v).decode() for k, v in data.items()}
        return data | dict(obj.get("stringData") or {})

    async def serve_log(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        """GET pods/{name}/log: follow, timestamps, sinceSeconds, sinceTime, tailLines."""
        p = self.pods.get((request.namespace or "", request.name or ""))
        if p is None or await self.api.live(PODS, *p.key) is None:
            raise kmock.KubernetesObjectNotFoundError()
        params, name = request.params, p.container["name"]
        if params.get("container", name) != name:
            message = f"container {params['container']} is not valid for pod {p.key[1]}"
            raise kmock.KubernetesError(status=400, reason="BadRequest", message=message)
        if p.proc is None and not p.done.is_set():
            message = f'container "{name}" in pod "{p.key[1]}" is waiting to start'
            raise kmock.KubernetesError(status=400, reason="BadRequest", message=message)
        since = 0
        if "sinceSeconds" in params:
            since = time.time_ns() - int(params["sinceSeconds"]) * 10**9
        elif "sinceTime" in params:
            since = int(
                datetime.fromisoformat(params["sinceTime"].replace("Z", "+00:00")).timestamp()
                * 10**9
            )
        index = next((i for i, (ns, _) in enumerate(p.logs) if ns >= since), len(p.logs))
        if "tailLines" in params:
            index = max(index, len(p.logs) - int(params["tailLines"]))
        stamps = params.get("timestamps", "").lower() == "true"
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request._raw_request)
        with suppress(ConnectionError):
            while True:
                changed, lines = p.changed, p.logs[index:]
                index += len(lines)
                if lines:
                    await response.write(
                        b"".join(
                            (timestamp(ns, nanos=True).encode() + b" " if stamps else b"") + line
                            for ns, line in lines
                        )
                    )
                if params.get("follow", "").lower() != "true" or (
                    p.done.is_set() and index == len(p.logs)
                ):
                    break
                await changed.wait()
            await response.write_eof()
        return response


class LocalCluster:
    """A Kubernetes API on 127.0.0.1 whose pods run as local subprocesses (see module doc)."""

    def __init__(
        self,
        root: Path | str,
        node: Node | None = None,
        missing_images: set[str] | None = None,
        version: str = "1.33",
    ) -> None:
        self.version = version
        self.node = node or Node()
        self.missing_images = missing_images if missing_images is not None else set()
        self.root = Path(root) / "k8s"
        self.kubeconfig = self.root / "kubeconfig"
        self.history: list[dict[str, Any]] = []  # every pod as submitted, in order
        self.job_history: list[dict[str, Any]] = []  # every Job as submitted, in order
        self.url = ""

    def __enter__(self) -> LocalCluster:
        (self.root / "pods").mkdir(parents=True, exist_ok=True)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="k8s", daemon=True)
        self._thread.start()
        try:
            self._call(self._start())
        except BaseException:
            self._close()
            raise
        context = {"cluster": "local", "user": "local", "namespace": "default"}
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "local", "cluster": {"server": self.url}}],
            "users": [{"name": "local", "user": {}}],
            "contexts": [{"name": "local", "context": context}],
            "current-context": "local",
        }
        self.kubeconfig.write_text(json.dumps(config, indent=2))  # JSON is YAML
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self._call(self._stop())
        finally:
            self._close()

    def _close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _start(self) -> None:
        self._api = _Api()
        self._api.history, self._api.versions = self.history, itertools.count(1)
        self._api.job_history, self._api.changed = self.job_history, asyncio.Event()
        self._api.minor = int(self.version.split(".")[1])
        self._api.jobs = JobController(self._api, JOBS, PODS)
        self._kubelet = self._api.kubelet = Kubelet(
            self._api, self.root / "pods", self.node, self.missing_images
        )
        self._server = kmock.Server(self._api)
        await self._api.__aenter__()
        await self._server.__aenter__()
        self.url = f"http://127.0.0.1:{self._server.port}"

    async def _stop(self) -> None:
        for task in list(self._api.jobs.tasks):
            task.cancel()
        for key in list(self._kubelet.pods):
            self._kubelet.kill(key, "Deleted")
        if self._kubelet.tasks:
            await asyncio.wait(self._kubelet.tasks, timeout=10)
        await self._server.__aexit__(None, None, None)
        await self._api.__aexit__(None, None, None)

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def airflow_connection_json(self) -> str:
        """``AIRFLOW_CONN_KUBERNETES_DEFAULT``: a ``kubernetes`` connection to this cluster."""
        extra = {
            "kube_config_path": str(self.kubeconfig),
            "in_cluster": False,
            "namespace": "default",
        }
        return json.dumps({"conn_type": "kubernetes", "extra": extra})

    def core_v1(self) -> Any:
        """A ``kubernetes.client.CoreV1Api`` for this cluster."""
        from kubernetes import client, config

        return client.CoreV1Api(config.new_client_from_config(str(self.kubeconfig)))

    def pods(self) -> list[dict[str, Any]]:
        """Every pod the API holds now (deleted ones are gone)."""
        return self._call(self._api.list_objects(PODS, None))["items"]

    def jobs(self) -> list[dict[str, Any]]:
        """Every Job the API holds now."""
        return self._call(self._api.list_objects(JOBS, None))["items"]

    def job_lifetime(self, name: str) -> tuple[float, float | None]:
        """When the Job was created and when a DELETE of it came, by ``time.time()``."""
        return self._api.jobs.created_at[name], self._api.jobs.deleted_at.get(name)

    def batch_v1(self) -> Any:
        """A ``kubernetes.client.BatchV1Api`` for this cluster."""
        from kubernetes import client, config

        return client.BatchV1Api(config.new_client_from_config(str(self.kubeconfig)))

    def started_at(self, pod_name: str) -> float | None:
        """When the pod's subprocess started (``time.time()``), or None if it has not."""
        return self._kubelet.started_at.get(pod_name)

    def lifetime(self, pod_name: str) -> tuple[float, float | None]:
        """When the pod was created and when it ended (stopped or deleted), by ``time.time()``."""
        return self._kubelet.lifetimes[pod_name]

    def logs(self, pod_name: str, namespace: str = "default") -> str:
        """The pod's output so far."""
        return b"".join(line for _, line in self._kubelet.pods[namespace, pod_name].logs).decode()

    def evict(self, pod_name: str, namespace: str = "default") -> None:
        """Kill the pod as a node under memory pressure does; return once it is reported Failed."""
        self._call(self._kubelet.evict((namespace, pod_name)))
