"""``compute="local"``: the runtime as a subprocess of the worker, in the worker's environment
with the task's own (``Environment(pip=[...])``, built once and cached) laid in front of it."""

from __future__ import annotations

import math
import os
import sys
from typing import TYPE_CHECKING, Any

from provider.core.targets.base import ComputeTarget, Outcome, TaskRun
from provider.specs import TaskSpec

CHUNKS_PER_PROCESS = 4
MAX_CHUNK = 1000

if TYPE_CHECKING:
    from provider.core.local.oom import OomWatch
    from provider.core.local.runner import RuntimeProcess

SIGKILLED = (-9, 137)  # SIGKILL: what the kernel's OOM killer sends, and `kill -9`


class LocalTarget(ComputeTarget):
    name = "local"
    is_local = True

    def chunking(self, spec: TaskSpec, length: int) -> tuple[int, int]:
        """A few chunks per local process (they balance load), each at most a thousand items;
        one process per CPU unless the task says."""
        parallel = spec.foreach.max_parallel or os.cpu_count() or 1
        per_chunk = math.ceil(length / (parallel * CHUNKS_PER_PROCESS))
        return spec.foreach.chunk_size or max(1, min(per_chunk, MAX_CHUNK)), parallel

    def __init__(self) -> None:
        self._process: RuntimeProcess | None = None
        self._code_path: str | None = None
        self._pool: Any = None
        self._killed = False
        self._envs: Any = None
        self._oom: OomWatch | None = None
        self._channel: Any = None  # a ChannelPeer, when the payload travels over the channel

    def prepare(self, run: TaskRun) -> dict[str, Any]:
        from provider.core.code import local_code_package
        from provider.core.environments.tasks import task_environments

        self._envs = task_environments(run, local=True)
        # The DAG folder's modules import from the code package, as in a pod or a job; it is
        # stored while the runtime runs when the try writes its records then.
        ref, path = local_code_package(run, later=run.background)
        self._code_path = str(path)
        return {"code_package": ref, **self._envs.records()}

    def run(self, run: TaskRun, context: Any) -> Outcome:
        from provider import settings
        from provider.core.local.runner import run_local
        from provider.core.local.warm import WarmRuntimeLost
        from provider.translate import runtime_command

        argv = runtime_command(
            run.store.root_uri,
            run.payload.to_json(),
            run.manifest_key,
            python=sys.executable,
            code_path=self._code_path,
        )
        if run.payload_data is not None:  # the payload and the report over a channel
            from provider.core.local.channel import ChannelPeer

            at = argv.index("--payload")
            self._channel = ChannelPeer(run.payload_data, settings.value("xcom_inline_max_bytes"))
            argv[at : at + 2] = ["--channel", str(self._channel.child_fd)]
        try:
            code = run_local(
                argv,
                env=self._environment(run),
                log_line=lambda line: run.log.info("%s", line),
                log_error=lambda line: run.log.warning("%s", line),
                on_start=self._started,
                warm_idle_seconds=settings.value("warm_runtime_idle"),
                warm_preload=preload_settings(),
                channel=None if self._channel is None else self._channel.child_fd,
            )
            report = None if self._channel is None else self._channel.finish()
            if code in SIGKILLED and not self._killed:
                return self._sigkilled(run, code)
            return Outcome(manifest_key=run.manifest_key, exit_code=code, report=report)
        except WarmRuntimeLost as lost:  # the exit code is unknown: say what ended the run
            return Outcome(manifest_key=run.manifest_key, exit_code=None, failure=str(lost))
        finally:
            if self._channel is not None:
                self._channel.finish()
            if self._oom is not None:
                self._oom.close()

    def _sigkilled(self, run: TaskRun, code: int) -> Outcome:
        """Out of memory only where the kernel says so (``provider.core.local.oom``)."""
        evidence = self._oom.evidence() if self._oom is not None else None
        asked = f"the task asked for {run.spec.resources.memory} MiB"
        if evidence is None:
            if self._oom is not None and self._oom.can_tell:
                who = "not the kernel's out-of-memory killer, which recorded no kill of it"
            else:  # no cgroup counter and no kernel log to read: say so, claim nothing
                who = "this machine shows no record that could tell whether it was for memory"
            return Outcome(
                manifest_key=run.manifest_key,
                exit_code=code,
                failure=f"the runtime was killed by SIGKILL ({who}; {asked})",
            )
        return Outcome(
            manifest_key=run.manifest_key,
            exit_code=code,
            failure=(
                f"the runtime ran out of memory: the kernel's out-of-memory killer ended it "
                f"({evidence}); {asked}: give it more with Resources(memory=...) or free the "
                "machine's memory"
            ),
            kind="oom",
        )

    def run_foreach(self, run: TaskRun, chunks: list[int], context: Any) -> Outcome:
        """A pool of runtime processes (the CPU count, or ``max_parallel``), each loading the
        payload and the items once and running chunk after chunk."""
        from provider.core.foreach import ForeachProgress
        from provider.core.local.pool import ChunkPool
        from provider.translate.command import foreach_command

        plan = run.foreach
        size = min(self.chunking(run.spec, run.foreach.length)[1], len(chunks))

        def argv(reply_fd: int) -> list[str]:
            mode = ["--serve-fd", str(reply_fd)]
            return foreach_command(
                run.store.root_uri,
                run.payload.to_json(),
                mode,
                python=sys.executable,
                code_path=self._code_path,
            )

        progress = ForeachProgress(run.log, plan, chunks)
        run.log.info("foreach: %d chunks on %d local workers", len(chunks), size)
        self._pool = ChunkPool(
            argv,
            env=self._environment(run),
            size=size,
            log_line=lambda line: run.log.info("%s", line),
            log_error=lambda line: run.log.warning("%s", line),
            progress=lambda report, total: progress.log_line(report.answered, report.failed_items),
        )
        report = self._pool.run(chunks)
        lost = {
            c: report.lost.get(c, "its worker died") for c in chunks if c not in report.answered
        }
        failure = None
        if lost:
            shown = "; ".join(f"chunk {c}: {why}" for c, why in list(lost.items())[:5])
            failure = f"{len(lost)} chunks did not finish ({shown})"
        return Outcome(run.manifest_key, exit_code=1 if lost else 0, failure=failure, lost=lost)

    def _environment(self, run: TaskRun) -> dict[str, str]:
        from provider.core.local.runner import runtime_environment
        from provider.runtime.lifetime import PARENT_PID_ENV

        if run.spec.environment.secrets:
            run.log.info(
                "secrets %s: local compute reads secret values from the local environment",
                list(run.spec.environment.secrets),
            )
        return runtime_environment(
            os.environ,
            {
                **run.runtime_env,
                **run.spec.environment.env_dict,
                "PYTHONUNBUFFERED": "1",
                PARENT_PID_ENV: str(os.getpid()),
                **_in_front(self._envs),
            },
        )

    def _started(self, process: RuntimeProcess) -> None:
        from provider.core.local.oom import OomWatch

        self._process = process
        if self._channel is not None:
            self._channel.started()
        self._oom = OomWatch.start(process.pid)

    def kill(self) -> None:
        from provider.core.local.runner import terminate_group

        self._killed = True
        if self._process is not None:
            terminate_group(self._process, grace_seconds=3.0)
        if self._pool is not None:
            self._pool.kill()


def _in_front(envs: Any) -> dict[str, str]:
    """``PYTHONPATH`` (and ``PATH``) that put the task's environment in front of the worker's."""
    path = None if envs is None else envs.pythonpath
    if path is None:
        return {}
    found = {"PYTHONPATH": os.pathsep.join(filter(None, [path, os.environ.get("PYTHONPATH")]))}
    found["PATH"] = os.pathsep.join(filter(None, [f"{path}/bin", os.environ.get("PATH")]))
    return found


def preload_settings() -> Any:
    """``[flow_task] warm_runtime_preload`` and ``warm_runtime_preload_mib``: what a warm
    runtime imports for its tasks before forking (a ``PreloadSettings``)."""
    from provider import settings
    from provider.runtime.preload import parse_settings

    return parse_settings(
        settings.value("warm_runtime_preload"), str(settings.value("warm_runtime_preload_mib"))
    )
