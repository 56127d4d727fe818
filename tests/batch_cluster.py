"""A local AWS Batch for tests: moto on 127.0.0.1, and a compute environment of subprocesses.

``with LocalBatch(tmp_path) as batch:`` serves moto (Batch, CloudWatch Logs, S3, IAM, EC2,
Secrets Manager, SSM, ...) from a thread of this process on a free port, creates a Spot compute
environment and a job queue through the API, and then plays that compute environment. moto stores
the jobs, but its Batch either needs Docker or marks every job SUCCEEDED without running it; here
each job submitted through the API runs its container's command as a local subprocess in its own
process group, with the environment a Batch container gets, its output in CloudWatch Logs, and its
statuses, attempts and reasons reported as AWS reports them. MEMORY and attemptDurationSeconds are
enforced, retryStrategy (ignored by moto) is applied, array jobs fan out into children, and a test
can inject a host termination or an out-of-memory kill into a job's first attempt. A job
definition's ``Ref::name`` placeholders take the job's parameters (the submission's over the
definition's defaults), and what Batch refuses is refused: a RegisterJobDefinition over 24 KiB
and a SubmitJob over 30 KiB (a ClientException), and a job whose container overrides for ECS
would be over 8,192 characters (it fails as ECS fails it, never started).

A test session shares one LocalBatch (moto's lazy start-up costs seconds); ``reset()`` between
tests stops every job, checks that no process outlived it, and forgets jobs, history and faults.

The moto internals this relies on (moto 5.2.5 and 5.2.6): ``ThreadedMotoServer``;
``BatchResponse.submit_job`` (``submitjob`` before 5.2.6; patched while the harness runs, so the
whole request is read, ``retryStrategy`` included) and ``register_job_definition``
(``registerjobdefinition``; wrapped, to refuse what is too large);
``BatchBackend._jobs`` (the harness stores its own job objects there: moto's DescribeJobs,
TerminateJob and ``reset()`` call their ``describe``/``terminate``/``status``/``is_alive``/
``join``), ``get_job_definition``, ``get_job_queue``, ``get_job_by_id``, and ``list_jobs``/
``cancel_job`` (replaced on the backend instance, to follow AWS's ListJobs and CancelJob);
``JobDefinition`` attributes; and the CloudWatch Logs backend's ``create_log_stream`` and
``put_log_events``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from unittest import mock

import boto3
from moto.batch.exceptions import ClientException
from moto.batch.models import BatchBackend, batch_backends
from moto.batch.responses import BatchResponse
from moto.core import DEFAULT_ACCOUNT_ID
from moto.logs.models import logs_backends
from moto.server import ThreadedMotoServer

LOG_GROUP = "/aws/batch/job"
INSTANCE_ID = "i-0123456789abcdef0"
# Reasons as AWS writes them: ECS's stopped reason for an exited container (SUCCEEDED jobs
# too), ECS's container reason for an OOM kill (exit 137), the Batch timeout and Spot-reclaim
# reasons from AWS's job-timeout and retry docs and users' reports, and the RUNNABLE reason
# from the DescribeJobs API reference.
EXITED = "Essential container in task exited"
OOM = "OutOfMemoryError: Container killed due to memory usage"
TIMED_OUT = "Job attempt duration exceeded timeout"
HOST_TERMINATED = f"Host EC2 (instance {INSTANCE_ID}) terminated."
MAX_RESOURCE = (
    "MISCONFIGURATION:COMPUTE_ENVIRONMENT_MAX_RESOURCE - All compute environments have a "
    "maxVcpu setting that is smaller than the job requirements."
)
# ECS's RunTask refusal, as Batch reports it in the job's statusReason (ASFHyP3/hyp3 issue 3041).
OVERRIDES_TOO_LONG = "Container Overrides length must be at most 8192"
MAX_OVERRIDES = 8192
MAX_JOB_DEFINITION = 24 * 1024  # Batch's quotas: RegisterJobDefinition and SubmitJob requests
MAX_JOB = 30 * 1024
STATUSES = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED", "FAILED")
FINAL = ("SUCCEEDED", "FAILED")
_JOB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
Fault = Literal["host_termination", "oom"]


def now_ms() -> int:
    return int(time.time() * 1000)


def glob_matches(pattern: str, value: str | None) -> bool:
    """An evaluateOnExit pattern: an exact match, or a prefix if it ends with ``*``.

    An absent value counts as the empty string, so ``"*"`` matches a job with no reason.
    """
    value = value or ""
    return value.startswith(pattern[:-1]) if pattern.endswith("*") else value == pattern


def retries(strategy: dict[str, Any], attempt: dict[str, Any], number: int) -> bool:
    """Whether a failed attempt ``number`` is retried: the first matching rule's action,
    RETRY if none matches, and never past ``attempts``."""
    if number >= int(strategy.get("attempts") or 1):
        return False
    exit_code = attempt["container"].get("exitCode")
    have = {
        "onStatusReason": attempt.get("statusReason"),
        "onReason": attempt["container"].get("reason"),
        "onExitCode": None if exit_code is None else str(exit_code),
    }
    for rule in strategy.get("evaluateOnExit") or []:
        if all(glob_matches(rule[key], value) for key, value in have.items() if key in rule):
            return str(rule["action"]).upper() == "RETRY"
    return True


def group_status(pgid: int) -> list[str]:
    """/proc/<pid>/status of each live (not zombie) process in the process group ``pgid``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.getpgid(int(pid)) != pgid:
                continue
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:  # the process is gone
            continue
        if not re.search(r"^State:\s+Z", status, re.MULTILINE):
            found.append(status)
    return found


def group_rss(pgid: int) -> int:
    """Resident bytes of all processes in the process group ``pgid``."""
    matches = (re.search(r"^VmRSS:\s+(\d+) kB", s, re.MULTILINE) for s in group_status(pgid))
    return sum(int(m[1]) * 1024 for m in matches if m)


def killpg(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def substitute(arg: str, parameters: dict[str, str]) -> str:
    """A command argument with its ``Ref::name`` placeholders replaced by parameter values;
    one without a value stays as it is. (AWS documents whole arguments, ``"Ref::inputfile"``;
    like moto, the harness also replaces a placeholder within a longer argument.)"""
    for name, value in parameters.items():
        arg = arg.replace(f"Ref::{name}", value)
    return arg


def compact_size(value: Any) -> int:
    """Bytes of ``value`` as compact JSON."""
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def merge_environment(*lists: list[dict[str, str]] | None) -> list[dict[str, str]]:
    """Name/value lists merged in order, a later value replacing an earlier one's."""
    merged: dict[str, str] = {}
    for variables in lists:
        merged |= {v["name"]: v.get("value", "") for v in variables or []}
    return [{"name": k, "value": v} for k, v in merged.items()]


def resources(props: dict[str, Any], overrides: dict[str, Any]) -> dict[str, str]:
    """The effective VCPU/MEMORY/GPU: legacy ``vcpus``/``memory`` and ``resourceRequirements``
    of the job definition, then of ``containerOverrides``."""
    result: dict[str, str] = {}
    for source in (props, overrides):
        for legacy, kind in (("vcpus", "VCPU"), ("memory", "MEMORY")):
            if source.get(legacy) is not None:
                result[kind] = str(source[legacy])
        result |= {r["type"]: str(r["value"]) for r in source.get("resourceRequirements") or []}
    return result


@dataclass
class JobRun:
    """One job the compute environment ran (an array child counts, its parent does not)."""

    job_id: str
    name: str
    image: str
    command: list[str]
    resources: dict[str, str]  # {"VCPU": "2", "MEMORY": "2048", "GPU": "1"}
    timeout: int | None
    retry_strategy: dict[str, Any]
    array_index: int | None
    request: dict[str, Any]  # the SubmitJob request, as sent
    environment: dict[str, str] = field(default_factory=dict)  # the last attempt's, as run
    statuses: list[str] = field(default_factory=list)  # every status it went through, in order
    attempts: list[dict[str, Any]] = field(default_factory=list)  # as DescribeJobs shows them
    status: str = "SUBMITTED"


@dataclass
class _Fault:
    kind: Fault
    job_name: str | None
    after: float


class _Job:
    """A Batch job that the harness runs, stored in moto's backend and described as AWS does.

    moto's DescribeJobs, TerminateJob and ``reset()`` only use ``describe``, ``terminate``,
    ``status``, ``arn``, ``stop``, ``is_alive`` and ``join``: this class has them.
    """

    def __init__(
        self,
        batch: LocalBatch,
        backend: BatchBackend,
        request: dict[str, Any],
        parent: _Job | None = None,
        index: int | None = None,
    ) -> None:
        job_def = backend.get_job_definition(request["jobDefinition"])
        queue = backend.get_job_queue(request["jobQueue"])
        assert job_def is not None and queue is not None
        self.batch, self.backend, self.request = batch, backend, request
        self.job_definition, self.job_queue = job_def, queue
        self.parent, self.index = parent, index
        self.job_name = request["jobName"]
        self.job_id: str = str(uuid.uuid4()) if parent is None else f"{parent.job_id}:{index}"
        self.arn = f"arn:aws:batch:{batch.region}:{batch.account_id}:job/{self.job_id}"
        if parent is None and request.get("tags"):
            backend.tag_resource(self.arn, request["tags"])
        self.parameters = job_def.parameters | (request.get("parameters") or {})
        self.timeout = request.get("timeout") or job_def.timeout or None
        self.strategy = request.get("retryStrategy") or job_def.retry_strategy or {}
        self.children: list[_Job] = []
        self._status = "PENDING" if parent else "SUBMITTED"  # children are spawned PENDING
        self.created_at = now_ms()
        self.started_at: int | None = None
        self.stopped_at: int | None = None
        self.status_reason: str | None = None
        self.stop_request: str | None = None  # the reason given to TerminateJob / CancelJob
        self.is_cancelled = self.is_terminated = False
        self.live: dict[str, Any] = {}  # container fields of the current (or last) attempt
        self.proc: subprocess.Popen[bytes] | None = None
        self.thread = threading.Thread(target=self.run, name=f"batch-{self.job_id}", daemon=True)
        props = job_def.container_properties or {}
        overrides = request.get("containerOverrides") or {}
        command = [
            substitute(arg, self.parameters)
            for arg in overrides.get("command", props.get("command") or [])
        ]
        self.environment = merge_environment(props.get("environment"), overrides.get("environment"))
        # What Batch hands ECS for the container, per job: the command with its parameters
        # substituted, the submission's variables with Batch's own, and the resources. The
        # definition's image, variables and secrets are ECS's task definition, not overrides.
        own = [
            {"name": name, "value": value}
            for name, value in batch.batch_variables(self, 1, queue.name).items()
        ]
        self.ecs_overrides = len(
            json.dumps(
                {
                    "command": command,
                    "environment": [*(overrides.get("environment") or []), *own],
                    "resourceRequirements": overrides.get("resourceRequirements") or [],
                },
                separators=(",", ":"),
                ensure_ascii=False,
            )
        )
        self.run_record = JobRun(
            job_id=self.job_id,
            name=self.job_name,
            image=props.get("image", ""),
            command=command,
            resources=resources(props, overrides),
            timeout=(self.timeout or {}).get("attemptDurationSeconds"),
            retry_strategy=self.strategy,
            array_index=index,
            request=request,
        )

    def is_alive(self) -> bool:
        return self.thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        if self.thread.ident is not None:
            self.thread.join(timeout)

    # --- what moto calls -------------------------------------------------------------------

    @property
    def status(self) -> str:
        """The status; an array parent's follows its children as AWS documents it."""
        if not self.children:
            return self._status
        statuses = [child.status for child in self.children]
        if all(s in FINAL for s in statuses):
            return "SUCCEEDED" if all(s == "SUCCEEDED" for s in statuses) else "FAILED"
        return "SUBMITTED" if all(s in ("SUBMITTED", "PENDING") for s in statuses) else "PENDING"

    def terminate(self, reason: str) -> None:
        """TerminateJob: cancel a job that has not started, stop a running one."""
        for child in self.children:
            child.terminate(reason)
        if self.stop_request is None and self._status not in FINAL:
            self.stop_request = reason

    def cancel(self, reason: str) -> None:
        """CancelJob: only jobs that have not reached STARTING are cancelled."""
        for child in self.children:
            child.cancel(reason)
        if self._status in ("SUBMITTED", "PENDING", "RUNNABLE") and self.stop_request is None:
            self.stop_request = reason

    def describe_short(self) -> dict[str, Any]:
        """A ListJobs JobSummary."""
        summary = {k: v for k, v in self.describe().items() if k in _SUMMARY_KEYS}
        container = {k: self.live[k] for k in ("exitCode", "reason") if k in self.live}
        summary.pop("container")
        if container:
            summary["container"] = container
        if self.children:
            summary["arrayProperties"] = {"size": len(self.children)}
        return summary

    def describe(self) -> dict[str, Any]:
        """A DescribeJobs JobDetail."""
        status = self.status
        detail: dict[str, Any] = {
            "jobArn": self.arn,
            "jobName": self.job_name,
            "jobId": self.job_id,
            "jobQueue": self.job_queue.arn,
            "status": status,
            "attempts": [dict(a) for a in self.run_record.attempts],
            "createdAt": self.created_at,
            "dependsOn": [],
            "jobDefinition": self.job_definition.arn,
            "parameters": self.parameters,
            "container": self.container_detail(),
            "tags": self.backend.list_tags_for_resource(self.arn),
            "propagateTags": bool(self.job_definition.propagate_tags),
            "platformCapabilities": self.job_definition.platform_capabilities or ["EC2"],
        }
        optional = {
            "retryStrategy": self.strategy,
            "timeout": self.timeout,
            "statusReason": self.status_reason,
            "startedAt": self.started_at,
            "stoppedAt": self.stopped_at if status in FINAL else None,
            "isCancelled": self.is_cancelled,
            "isTerminated": self.is_terminated,
        }
        detail |= {k: v for k, v in optional.items() if v}
        if self.children:
            summary = dict.fromkeys(STATUSES, 0)
            for child in self.children:
                summary[child.status] += 1
            detail["arrayProperties"] = {
                "statusSummary": summary,
                "statusSummaryLastUpdatedAt": now_ms(),
                "size": len(self.children),
            }
            if status in FINAL:
                detail["stoppedAt"] = max(child.stopped_at or 0 for child in self.children)
        elif self.index is not None:
            detail["arrayProperties"] = {"index": self.index}
        return detail

    def container_detail(self) -> dict[str, Any]:
        """The job definition's container, with the overrides and the latest attempt's state."""
        props = dict(self.job_definition.container_properties or {})
        requirements = [{"type": k, "value": v} for k, v in self.run_record.resources.items()]
        props |= {"command": self.run_record.command, "environment": self.environment}
        return props | {"resourceRequirements": requirements, "networkInterfaces": []} | self.live

    # --- the compute environment -------------------------------------------------------------

    def set_status(self, status: str) -> None:
        self._status = status
        self.run_record.statuses.append(status)
        self.run_record.status = status

    def finish(self, status: str, reason: str | None) -> None:
        self.status_reason = reason
        self.stopped_at = now_ms()
        self.set_status(status)

    def stopped_before_start(self) -> bool:
        """If TerminateJob or CancelJob came before STARTING, end the job as cancelled."""
        if self.stop_request is None:
            return False
        self.is_cancelled = True
        self.finish("FAILED", self.stop_request)
        return True

    def run(self) -> None:
        """The job's life, from SUBMITTED to SUCCEEDED or FAILED (in its own thread)."""
        try:
            self._run()
        except Exception as e:
            traceback.print_exc()
            self.finish("FAILED", f"test harness error: {e!r}")

    def _run(self) -> None:
        batch = self.batch
        self.run_record.statuses.append(self._status)
        if self.parent is None:
            time.sleep(batch.step)
            self.set_status("PENDING")
        for number in itertools.count(1):
            time.sleep(batch.step)
            self.set_status("RUNNABLE")
            if float(self.run_record.resources.get("VCPU", 1)) > batch.max_vcpus:
                self.status_reason = MAX_RESOURCE  # stays RUNNABLE, as on AWS
            while self.status_reason == MAX_RESOURCE or not batch.slots.acquire(timeout=0.02):
                if self.stopped_before_start():
                    return
                time.sleep(0.02 if self.status_reason == MAX_RESOURCE else 0)
            try:
                if self.stopped_before_start():
                    return
                if self.ecs_overrides > MAX_OVERRIDES:  # ECS's RunTask refuses it: never starts
                    return self.finish("FAILED", OVERRIDES_TOO_LONG)
                self.set_status("STARTING")
                attempt, why = self.attempt(number)
            finally:
                batch.slots.release()
            self.run_record.attempts.append(attempt)
            self.status_reason = attempt["statusReason"]
            if why is None and attempt["container"].get("exitCode") == 0:
                return self.finish("SUCCEEDED", attempt["statusReason"])
            if why in ("terminated", "timeout") or not retries(self.strategy, attempt, number):
                self.is_terminated = why == "terminated"
                return self.finish("FAILED", attempt["statusReason"])

    def attempt(self, number: int) -> tuple[dict[str, Any], str | None]:
        """Run one attempt; return it as AWS records it, and why it was stopped (if it was)."""
        batch = self.batch
        task_id = uuid.uuid4().hex
        props = self.job_definition.container_properties or {}
        options = (props.get("logConfiguration") or {}).get("options") or {}
        group = options.get("awslogs-group", LOG_GROUP)
        prefix = options.get("awslogs-stream-prefix", self.job_definition.name)
        stream = f"{prefix}/default/{task_id}"
        self.live = {
            "containerInstanceArn": batch.container_instance_arn,
            "taskArn": f"{batch.task_arn_prefix}/{task_id}",
        }
        time.sleep(batch.step)
        work = Path(tempfile.mkdtemp(prefix=f"{self.job_id.replace(':', '-')}-", dir=batch.root))
        for name in ("home", "tmp"):
            (work / name).mkdir()
        try:
            env = batch.container_environment(self, number, work)
        except Exception as e:  # a secret that cannot be read: the task never starts
            reason = f"ResourceInitializationError: unable to pull secrets: {e}"  # approximate
            return self.ended({}, now_ms(), reason), "secrets"
        self.run_record.environment = env
        if group not in batch.logs_backend.groups:
            batch.logs_backend.create_log_group(group, {})
        batch.logs_backend.create_log_stream(group, stream)
        fault = batch.take_fault(self) if number == 1 else None
        started = now_ms()
        try:
            self.proc = subprocess.Popen(
                self.run_record.command,
                cwd=work,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except (OSError, IndexError) as e:  # no such executable, or no command at all
            reason = f"CannotStartContainerError: Error response from daemon: {e}"
            return self.ended({"reason": reason}, started, EXITED), "start"
        self.live |= {"logStreamName": stream}
        self.started_at = started
        self.set_status("RUNNING")
        reader = threading.Thread(target=batch.forward_output, args=(self.proc, group, stream))
        reader.start()
        why = self.watch(self.proc, fault)
        killpg(self.proc.pid, signal.SIGKILL)  # whatever the container left behind
        reader.join(10)
        code = self.proc.returncode
        exit_code = 128 - code if code < 0 else code
        if why == "host_termination":
            return self.ended({}, started, HOST_TERMINATED), why
        if why == "oom":
            return self.ended({"exitCode": 137, "reason": OOM}, started, EXITED), why
        reasons = {"timeout": TIMED_OUT, "terminated": self.stop_request or ""}
        reason = reasons.get(why or "", EXITED)
        return self.ended({"exitCode": exit_code}, started, reason), why

    def watch(self, proc: subprocess.Popen[bytes], fault: _Fault | None) -> str | None:
        """Wait for the process; stop it on TerminateJob, timeout, memory, or injected fault."""
        batch, t0 = self.batch, time.monotonic()
        duration = (self.timeout or {}).get("attemptDurationSeconds")
        deadline = None if duration is None else t0 + duration * batch.timeout_scale
        memory = self.run_record.resources.get("MEMORY")
        limit = None if memory is None else int(memory) * 2**20
        why: str | None = None
        kill_at: float | None = None
        while proc.poll() is None:
            now = time.monotonic()
            if why is None:
                if self.stop_request is not None:
                    why = "terminated"
                elif deadline is not None and now >= deadline:
                    why = "timeout"
                elif fault is not None and now >= t0 + fault.after:
                    why = fault.kind
                elif limit is not None and group_rss(proc.pid) > limit:
                    why = "oom"
                if why in ("terminated", "timeout"):  # docker stop: SIGTERM, then SIGKILL
                    killpg(proc.pid, signal.SIGTERM)
                    kill_at = now + batch.stop_grace
                elif why is not None:
                    killpg(proc.pid, signal.SIGKILL)
            elif kill_at is not None and now >= kill_at:
                killpg(proc.pid, signal.SIGKILL)
                kill_at = None
            time.sleep(0.02)
        return why

    def ended(self, container: dict[str, Any], started: int, reason: str | None) -> dict:
        """An AttemptDetail, and the job's container fields updated to match."""
        self.live |= container
        return {
            "container": self.live | {"networkInterfaces": []},
            "startedAt": started,
            "stoppedAt": now_ms(),
            "statusReason": reason,
        }


_SETTINGS = ("step", "stop_grace", "timeout_scale", "max_vcpus")
_SUMMARY_KEYS = {  # the JobDetail fields that a ListJobs JobSummary has too
    *("jobArn", "jobId", "jobName", "jobDefinition", "createdAt", "startedAt", "stoppedAt"),
    *("status", "statusReason", "container", "arrayProperties", "isCancelled", "isTerminated"),
}


def _handler(*names: str) -> str:
    """The name moto's release gives a request handler (5.2.6 renamed them to snake_case)."""
    import moto

    for name in names:
        if hasattr(BatchResponse, name):
            return name
    raise RuntimeError(
        f"moto {moto.__version__}: BatchResponse has none of {names}; the Batch harness patches "
        "that handler and needs to learn its new name"
    )


_SUBMIT = _handler("submit_job", "submitjob")
_REGISTER_NAME = _handler("register_job_definition", "registerjobdefinition")
_REGISTER = getattr(BatchResponse, _REGISTER_NAME)


def _registerjobdefinition(response: BatchResponse) -> str:
    """moto's RegisterJobDefinition, after Batch's quota on the request's size."""
    size = compact_size(json.loads(response.body or "{}"))
    if size > MAX_JOB_DEFINITION:  # the quota is AWS's; these words are the harness's
        raise ClientException(f"Job definition size must be at most 24 KiB, got {size} bytes")
    return _REGISTER(response)


def _submitjob(response: BatchResponse) -> str:
    """moto's SubmitJob handler, replaced: the harness reads the whole request."""
    job = LocalBatch.active().submit(response.batch_backend, json.loads(response.body or "{}"))
    return json.dumps({"jobArn": job.arn, "jobName": job.job_name, "jobId": job.job_id})


class LocalBatch:
    """AWS Batch on 127.0.0.1 whose jobs run as local subprocesses (see the module doc)."""

    _active: LocalBatch | None = None

    def __init__(
        self,
        root: Path | str,
        *,
        region: str = "us-east-1",
        queue: str = "flowtask-queue",
        compute_environment: str = "flowtask-spot",
        slots: int = 2,
        max_vcpus: int = 16,
        step: float = 0.05,
        stop_grace: float = 1.0,
        timeout_scale: float = 1.0,
    ) -> None:
        """``slots``: jobs running at once (the others wait RUNNABLE); ``max_vcpus``: the
        compute environment's maxvCpus; ``step``: seconds between status changes;
        ``stop_grace``: SIGTERM to SIGKILL (30 s on AWS); ``timeout_scale``: real seconds per
        ``attemptDurationSeconds`` second (AWS refuses timeouts under 60 s). A test may change
        ``step``, ``stop_grace``, ``timeout_scale`` and ``max_vcpus``; ``reset()`` restores them."""
        self.root = Path(root) / "batch"
        self.region, self.queue, self.compute_environment = region, queue, compute_environment
        self.account_id = DEFAULT_ACCOUNT_ID
        self.slots = threading.BoundedSemaphore(slots)
        self.max_vcpus, self.step = max_vcpus, step
        self.stop_grace, self.timeout_scale = stop_grace, timeout_scale
        self._settings = {k: getattr(self, k) for k in _SETTINGS}
        self.history: list[JobRun] = []  # every job run, in submission order
        self.requests: list[dict[str, Any]] = []  # every SubmitJob request, as sent
        self.jobs: list[_Job] = []
        self.faults: list[_Fault] = []
        self.lock = threading.Lock()
        self._clients: dict[str, Any] = {}
        self.endpoint = ""

    @classmethod
    def active(cls) -> LocalBatch:
        assert cls._active is not None, "no LocalBatch is running"
        return cls._active

    # --- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> LocalBatch:
        assert LocalBatch._active is None, "one LocalBatch at a time (moto's state is global)"
        (self.root / "bin").mkdir(parents=True, exist_ok=True)
        for name in ("python", "python3"):
            shim = self.root / "bin" / name
            shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
            shim.chmod(0o755)
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._server = ThreadedMotoServer("127.0.0.1", 0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        self._patch = mock.patch.multiple(
            BatchResponse, **{_SUBMIT: _submitjob, _REGISTER_NAME: _registerjobdefinition}
        )
        self._patch.start()
        LocalBatch._active = self
        try:
            self._reset_moto()
            self._create_compute_environment()
        except BaseException:
            self._close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.reset()
        finally:
            self._close()

    def reset(self) -> None:
        """Between tests: stop every job (failing if a process outlives it), forget the jobs,
        the history and the faults, and restore the settings. The compute environment, the
        queue and the job definitions stay."""
        self.stop_grace = 0.0
        for job in self.jobs:
            job.terminate("test harness reset")
        for job in self.jobs:
            job.join(15)
        deadline = time.monotonic() + 5  # killed processes take a moment to disappear
        while (left := [j.job_id for j in self.jobs if j.is_alive() or self._alive(j)]) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.05)
        for job in self.jobs:
            if job.proc is not None:
                killpg(job.proc.pid, signal.SIGKILL)
        backend = batch_backends[self.account_id][self.region]
        for job in self.jobs:
            backend._jobs.pop(job.job_id, None)
        self.jobs.clear()
        self.history.clear()
        self.requests.clear()
        self.faults.clear()
        for name, value in self._settings.items():
            setattr(self, name, value)
        assert not left, f"jobs still running after the test: {left}"

    def _close(self) -> None:
        with contextlib.suppress(Exception):
            self._reset_moto()
        self._server.stop()
        self._patch.stop()
        LocalBatch._active = None
        shutil.rmtree(self.root, ignore_errors=True)

    @staticmethod
    def _alive(job: _Job) -> bool:
        """Whether any process of the job's process group is still running."""
        return job.proc is not None and bool(group_status(job.proc.pid))

    def _reset_moto(self) -> None:
        """Forget every moto backend's state (moto's own reset endpoint)."""
        import urllib.request

        urllib.request.urlopen(
            urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST"), timeout=10
        ).close()

    def _create_compute_environment(self) -> None:
        """A managed Spot compute environment and a job queue, made through the API."""
        iam, ec2, batch = self.client("iam"), self.client("ec2"), self.client("batch")
        trust = {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Principal": {"Service": s}, "Action": "sts:AssumeRole"}
                for s in ("batch.amazonaws.com", "ec2.amazonaws.com")
            ],
        }
        role = iam.create_role(
            RoleName="flowtask-batch", AssumeRolePolicyDocument=json.dumps(trust)
        )
        profile = iam.create_instance_profile(InstanceProfileName="flowtask-ecs-instance")
        iam.add_role_to_instance_profile(
            InstanceProfileName="flowtask-ecs-instance", RoleName="flowtask-batch"
        )
        subnets = [s["SubnetId"] for s in ec2.describe_subnets()["Subnets"]]
        groups = ec2.describe_security_groups(GroupNames=["default"])["SecurityGroups"]
        batch.create_compute_environment(
            computeEnvironmentName=self.compute_environment,
            type="MANAGED",
            state="ENABLED",
            serviceRole=role["Role"]["Arn"],
            computeResources={
                "type": "SPOT",
                "allocationStrategy": "SPOT_CAPACITY_OPTIMIZED",
                "minvCpus": 0,
                "desiredvCpus": 0,
                "maxvCpus": self.max_vcpus,
                "instanceTypes": ["optimal"],
                "subnets": subnets[:2],
                "securityGroupIds": [groups[0]["GroupId"]],
                "instanceRole": profile["InstanceProfile"]["Arn"],
            },
        )
        batch.create_job_queue(
            jobQueueName=self.queue,
            state="ENABLED",
            priority=1,
            computeEnvironmentOrder=[{"order": 1, "computeEnvironment": self.compute_environment}],
        )
        backend = batch_backends[self.account_id][self.region]
        backend.list_jobs = self._list_jobs  # type: ignore[method-assign, assignment]
        backend.cancel_job = self._cancel_job  # type: ignore[method-assign]
        ce = backend.get_compute_environment_by_name(self.compute_environment)
        assert ce is not None
        prefix = f"arn:aws:ecs:{self.region}:{self.account_id}"
        self.task_arn_prefix = f"{prefix}:task/{ce.ecs_name}"
        self.container_instance_arn = (
            f"{prefix}:container-instance/{ce.ecs_name}/{uuid.uuid4().hex}"
        )
        self.logs_backend = logs_backends[self.account_id][self.region]

    # --- the API, as the harness serves it --------------------------------------------------

    def submit(self, backend: BatchBackend, request: dict[str, Any]) -> _Job:
        """SubmitJob: validate as AWS does, store the job(s) in moto, and start running them."""
        name = request.get("jobName") or ""
        if not _JOB_NAME.fullmatch(name):
            raise ClientException("Job name should match valid pattern")
        job_def = backend.get_job_definition(request.get("jobDefinition") or "")
        if job_def is None:
            raise ClientException(f"Job definition {request.get('jobDefinition')} does not exist")
        if job_def.container_properties is None or job_def.type != "container":
            raise ClientException("the test compute environment runs container jobs only")
        if backend.get_job_queue(request.get("jobQueue") or "") is None:
            raise ClientException(f"Job queue {request.get('jobQueue')} does not exist")
        strategy = request.get("retryStrategy") or {}
        if not 1 <= int(strategy.get("attempts", 1)) <= 10:
            raise ClientException("Retry strategy attempts must be between 1 and 10")
        if len(strategy.get("evaluateOnExit") or []) > 5:
            raise ClientException("evaluateOnExit can have at most 5 entries")
        if strategy.get("evaluateOnExit") and "attempts" not in strategy:
            raise ClientException("evaluateOnExit requires attempts")
        duration = (request.get("timeout") or job_def.timeout or {}).get("attemptDurationSeconds")
        if duration is not None and int(duration) < 60:
            raise ClientException("timeout.attemptDurationSeconds must be at least 60 seconds")
        for var in (request.get("containerOverrides") or {}).get("environment") or []:
            if var["name"].startswith("AWS_BATCH"):
                raise ClientException(
                    "Environment variable names starting with AWS_BATCH are reserved"
                )
        if request.get("dependsOn"):  # Airflow orders flow tasks; Batch need not
            raise ClientException("the test compute environment does not run dependent jobs")
        size = (request.get("arrayProperties") or {}).get("size")
        if size is not None and not 2 <= int(size) <= 10_000:
            raise ClientException("Array size must be between 2 and 10000")
        parameters = request.get("parameters") or {}
        if not all(isinstance(v, str) for v in [*parameters, *parameters.values()]):
            raise ClientException("parameters must be a string to string map")
        if compact_size(request) > MAX_JOB:
            kib = -(-compact_size(request) // 1024)
            raise ClientException(f"Job size must be less than 30 KiB, got {kib} KiB")
        with self.lock:
            self.requests.append(request)
            job = _Job(self, backend, request)
            backend._jobs[job.job_id] = job  # type: ignore[assignment]
            job.children = [_Job(self, backend, request, job, i) for i in range(size or 0)]
            self.jobs.append(job)
            for runner in job.children or [job]:
                backend._jobs[runner.job_id] = runner  # type: ignore[assignment]
                if runner is not job:
                    self.jobs.append(runner)
                self.history.append(runner.run_record)
                runner.thread.start()
        return job

    def _list_jobs(
        self,
        job_queue_name: str | None,
        array_job_id: str | None,
        job_status: str | None = None,
        filters: list[dict[str, Any]] | None = None,
    ) -> list[_Job]:
        """ListJobs as AWS documents it: RUNNING jobs unless a status or a filter is given;
        filters see all statuses but not array children; newest first."""
        backend = batch_backends[self.account_id][self.region]
        if array_job_id:
            parent = backend.get_job_by_id(array_job_id)
            jobs = list(getattr(parent, "children", []))
        else:
            queue = backend.get_job_queue(job_queue_name or "")
            if queue is None:
                raise ClientException(f"Job queue {job_queue_name} does not exist")
            jobs = [j for j in self.jobs if j.job_queue is queue and j.parent is None]
        if filters:
            jobs = [j for j in jobs if all(_filter_matches(j, f) for f in filters)]
        else:
            jobs = [j for j in jobs if j.status == (job_status or "RUNNING")]
        return sorted(jobs, key=lambda j: j.created_at, reverse=True)

    def _cancel_job(self, job_id: str, reason: str) -> None:
        if not job_id or not reason:
            raise ClientException("'jobId' and 'reason' are required fields")
        job = batch_backends[self.account_id][self.region].get_job_by_id(job_id)
        if isinstance(job, _Job):
            job.cancel(reason)

    # --- what the compute environment does for a job ----------------------------------------

    def container_environment(self, job: _Job, attempt: int, work: Path) -> dict[str, str]:
        """What the container's process sees: a minimal base, credentials and endpoint standing
        in for the instance role, the job's environment, its secrets, and AWS_BATCH_*."""
        env = {
            "PATH": f"{self.root / 'bin'}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(work / "home"),
            "TMPDIR": str(work / "tmp"),
            "HOSTNAME": "ip-10-0-0-1.ec2.internal",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint,
        }
        env |= {var["name"]: var["value"] for var in job.environment}
        for secret in (job.job_definition.container_properties or {}).get("secrets") or []:
            env[secret["name"]] = self.secret(secret["valueFrom"])
        return env | self.batch_variables(job, attempt, job.job_queue.name)

    def batch_variables(self, job: _Job, attempt: int, queue: str) -> dict[str, str]:
        """The AWS_BATCH_* variables Batch gives an attempt of ``job``."""
        variables = {
            "AWS_BATCH_JOB_ID": job.job_id,
            "AWS_BATCH_JOB_ATTEMPT": str(attempt),
            "AWS_BATCH_JQ_NAME": queue,
            "AWS_BATCH_CE_NAME": self.compute_environment,
        }
        if job.index is not None:
            variables["AWS_BATCH_JOB_ARRAY_INDEX"] = str(job.index)
        return variables

    def secret(self, value_from: str) -> str:
        """A ``secrets[].valueFrom``: a Secrets Manager ARN (optionally ``:json-key:stage:
        version``) or an SSM parameter ARN or name, read from moto."""
        if ":secretsmanager:" in value_from:
            parts = value_from.split(":")
            key, stage, version = [*parts[7:], "", "", ""][:3]
            args = {"SecretId": ":".join(parts[:7])}
            args |= {"VersionStage": stage} if stage else {}
            args |= {"VersionId": version} if version else {}
            value = self.client("secretsmanager").get_secret_value(**args)["SecretString"]
            return str(json.loads(value)[key]) if key else value
        parameter = self.client("ssm").get_parameter(Name=value_from, WithDecryption=True)
        return str(parameter["Parameter"]["Value"])

    def forward_output(self, proc: subprocess.Popen[bytes], group: str, stream: str) -> None:
        """The container's merged stdout/stderr, line by line, into CloudWatch Logs."""
        assert proc.stdout is not None
        for line in iter(proc.stdout.readline, b""):
            message = line.decode(errors="replace").rstrip("\n")
            event = {"timestamp": now_ms(), "message": message}
            self.logs_backend.put_log_events(group, stream, [event])

    def take_fault(self, job: _Job) -> _Fault | None:
        """The first injected fault that names this job (or any job), removed from the list."""
        with self.lock:
            for fault in self.faults:
                if fault.job_name is None or glob_matches(fault.job_name, job.job_name):
                    self.faults.remove(fault)
                    return fault
        return None

    # --- for tests ---------------------------------------------------------------------------

    def inject(self, kind: Fault, job_name: str | None = None, after: float = 0.0) -> None:
        """Make the next job to start (or the next one named ``job_name``, which may end in
        ``*`` to match a prefix as evaluateOnExit patterns do) lose its first
        attempt ``after`` seconds into RUNNING: ``"host_termination"`` (a Spot reclaim: no exit
        code, statusReason ``Host EC2 (instance ...) terminated.``) or ``"oom"`` (exit 137,
        ``OutOfMemoryError: ...``). Its retryStrategy then decides what happens."""
        with self.lock:
            self.faults.append(_Fault(kind, job_name, after))

    def client(self, service: str) -> Any:
        """A boto3 client for ``service`` on this endpoint (made once; clients are thread-safe)."""
        with self.lock:
            if service not in self._clients:
                self._clients[service] = boto3.session.Session().client(
                    service,
                    endpoint_url=self.endpoint,
                    region_name=self.region,
                    aws_access_key_id="testing",
                    aws_secret_access_key="testing",
                )
            return self._clients[service]

    def register(self, name: str, command: list[str], **container: Any) -> str:
        """Register a container job definition (1 vCPU, 512 MiB unless said otherwise)."""
        container.setdefault("image", "python:3.11-slim")
        container.setdefault(
            "resourceRequirements",
            [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "512"}],
        )
        response = self.client("batch").register_job_definition(
            jobDefinitionName=name,
            type="container",
            containerProperties={"command": command, **container},
        )
        return str(response["jobDefinitionArn"])

    def describe(self, job_id: str) -> dict[str, Any]:
        [job] = self.client("batch").describe_jobs(jobs=[job_id])["jobs"]
        return dict(job)

    def wait(self, job_id: str, timeout: float = 20) -> dict[str, Any]:
        """Poll DescribeJobs until the job is SUCCEEDED or FAILED; return its description."""
        deadline = time.monotonic() + timeout
        while (job := self.describe(job_id))["status"] not in FINAL:
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout} s")
            time.sleep(0.05)
        return job

    def logs(self, stream: str, group: str = LOG_GROUP) -> list[str]:
        """The messages of a CloudWatch log stream, read through the API."""
        events = self.client("logs").get_log_events(
            logGroupName=group, logStreamName=stream, startFromHead=True
        )["events"]
        return [e["message"] for e in events]

    def run_of(self, job_id: str) -> JobRun:
        return next(run for run in self.history if run.job_id == job_id)

    def running(self) -> Iterator[str]:
        """Ids of jobs whose process group is still alive."""
        return (job.job_id for job in self.jobs if self._alive(job))

    def airflow_connection_json(self) -> str:
        """``AIRFLOW_CONN_AWS_DEFAULT``: an ``aws`` connection to this endpoint."""
        extra = {"endpoint_url": self.endpoint, "region_name": self.region}
        return json.dumps(
            {"conn_type": "aws", "login": "testing", "password": "testing", "extra": extra}
        )


def _filter_matches(job: _Job, spec: dict[str, Any]) -> bool:
    """One ListJobs filter: JOB_NAME (case-insensitive) or JOB_DEFINITION (name or ARN)."""
    name, values = spec["name"], spec.get("values") or []
    if name == "JOB_NAME":
        return any(glob_matches(v.lower(), job.job_name.lower()) for v in values)
    if name == "JOB_DEFINITION":
        definition = job.job_definition
        return any(v == definition.arn or glob_matches(v, definition.name) for v in values)
    raise ClientException(f"the test compute environment does not filter on {name}")
