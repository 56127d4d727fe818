"""One interface for every compute target: check, prepare, run to the end, report, kill.

The operator builds a :class:`TaskRun` (the stored payload and where the result manifest goes),
asks the target named by the task's ``compute`` for it, and reads the outcome; it never
branches on the target. A target is one small class: the Airflow-side delegation to the
official provider's operator lives here, the pure translation in ``provider.translate``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from provider.core.errors import CannotRun
from provider.specs import TaskSpec
from provider.store import ArtifactStore, Reference

RESUME_KEY = "flowtask_resume"


class ComputeUnavailable(CannotRun):
    """The compute target the task resolved to cannot run in this version, or here."""


@dataclass(frozen=True)
class TaskRun:
    """One try of a flow task, ready to launch."""

    task_id: str
    spec: TaskSpec
    function: Callable[..., Any]
    store: ArtifactStore
    payload: Reference
    manifest_key: str
    identity: Mapping[str, Any]
    log: Any
    dag_folder: Path | None = None  # its modules travel in the code package
    foreach: Any = None  # a ``ForeachPlan`` for ``.foreach``: the chunks to run
    # Variables a local runtime needs to reach the store (the worker's S3 connection's).
    runtime_env: Mapping[str, str] = field(default_factory=dict)
    # A local try's payload as the store would hold it, sent over the runtime's channel
    # instead (``provider.runtime.channel``); None: the runtime reads ``payload`` from the store.
    payload_data: bytes | None = None
    # The launch records being written while the runtime runs (``provider.core.records``).
    background: Any = None
    # What settling the try found: its result manifest (``settled["manifest"]``).
    settled: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Launch:
    """What a container needs to run a try: the store, the code package, the payload, where the
    result manifest goes, the try's identity and its environments (archives and their machine).
    ``with_payload`` stands for what is known only when the try runs (``flowtask render``)."""

    store_uri: str
    code: Reference
    payload: Mapping[str, Any]
    manifest_key: str
    identity: Mapping[str, Any]
    environments: Any = None

    @classmethod
    def of(cls, run: TaskRun, code: Reference, environments: Any = None) -> Launch:
        return cls(
            run.store.root_uri,
            code,
            run.payload.to_json(),
            run.manifest_key,
            run.identity,
            environments,
        )


@dataclass(frozen=True)
class Outcome:
    """How a launch ended, as the platform saw it; the result manifest says the rest.

    ``manifest_key`` is where the runtime wrote (or would have written) its manifest: a pod
    reattached after a worker restart reports its own try's. ``failure`` is the platform's
    account of a failure (an OOMKilled or evicted pod, a lost host), in words.
    """

    manifest_key: str
    exit_code: int | None
    failure: str | None = None
    # What ended a failed launch, where the platform says: "oom" (killed for memory),
    # "infrastructure" (an evicted pod, a lost node or host), "timeout".
    kind: str | None = None
    # For ``.foreach``: why each chunk that wrote no last manifest ended, where known.
    lost: Mapping[int, str] | None = None
    # What the platform knows of where the try ran that the runtime could not (a Batch job's
    # CloudWatch log group and stream): added to the ``where`` of the try's manifest.
    where: Mapping[str, Any] | None = None
    # What the runtime sent back over its channel (``provider.runtime.channel``): its result
    # manifest, for the worker to store, and the blobs that manifest names.
    report: Mapping[str, Any] | None = None


class ComputeTarget(ABC):
    """Where a flow task runs: ``local``, ``kubernetes`` or ``batch``."""

    name: ClassVar[str]
    is_local: ClassVar[bool] = False  # runs on this worker (its Python, its platform)
    killed = False  # set when Airflow kills the task: nothing more is launched

    def check(self, spec: TaskSpec) -> None:  # noqa: B027 - most targets accept every spec
        """Refuse, before anything is stored, a spec this target cannot run (a SpecError)."""

    def platform(self, spec: TaskSpec) -> str | None:
        """The platform ``Environment(pip=...)`` is built for; None: this worker's own."""
        return None

    def chunking(self, spec: TaskSpec, length: int) -> tuple[int, int]:
        """A ``.foreach`` of ``length`` items: its chunk size and how many chunks run at once.
        On a cluster: at most a thousand pods or jobs, each doing real work; ``[flow_task]
        foreach_max_parallel`` at once unless the task says."""
        from provider import settings

        parallel = spec.foreach.max_parallel or settings.value("foreach_max_parallel")
        return spec.foreach.chunk_size or max(1, math.ceil(length / 1000)), parallel

    def prepare(self, run: TaskRun) -> dict[str, Any]:
        """Store what the target needs besides the payload (a code package, environments).

        What it returns (references, or records holding references) is recorded in the try's
        launch manifest, which keeps them alive for ``flowtask gc`` while the try runs and after.
        """
        return {}

    @abstractmethod
    def run(self, run: TaskRun, context: Any) -> Outcome:
        """Launch the payload and observe it to its end."""

    def run_foreach(self, run: TaskRun, chunks: list[int], context: Any) -> Outcome:
        """Run these chunks of ``run.foreach`` to their end (each writes its own manifest)."""
        raise NotImplementedError(f"compute={self.name!r} cannot run .foreach yet")

    @abstractmethod
    def kill(self) -> None:
        """Stop what :meth:`run` started (called from Airflow's ``on_kill``)."""

    def resume(self, run: TaskRun, context: Any, event: Any, state: Mapping[str, Any]) -> Outcome:
        """Observe to its end what :meth:`run` deferred, once the trigger fired with ``event``;
        ``state`` is what the target deferred with (see :meth:`resume_state`)."""
        raise NotImplementedError(f"compute={self.name!r} does not defer")

    def resume_state(self, run: TaskRun, state: Mapping[str, Any]) -> dict[str, Any]:
        """What a deferred try resumes from: the try, and the target's own ``state`` (JSON).

        A target puts it in its trigger's events too, under :data:`RESUME_KEY`: ``airflow dags
        test`` resumes a task with the event alone, where a triggerer adds the event to the
        deferral's keyword arguments.
        """
        return {
            "compute": self.name,
            "payload": run.payload.to_json(),
            "manifest_key": run.manifest_key,
            "identity": dict(run.identity),
            "target": dict(state),
        }
