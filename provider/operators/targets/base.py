"""One interface for every compute target: check, prepare, run to the end, report, kill.

The operator builds a :class:`TaskRun` (the stored payload and where the result manifest goes),
asks the target named by the task's ``compute`` for it, and reads the outcome; it never
branches on the target. A target is one small class: the Airflow-side delegation to the
official provider's operator lives here, the pure translation in ``provider.compute``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NoReturn

from provider.specs import TaskSpec
from provider.store import ArtifactStore, Reference

RESUME_KEY = "flowtask_resume"


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


class ComputeTarget(ABC):
    """Where a flow task runs: ``local``, ``kubernetes`` or ``batch``."""

    name: ClassVar[str]
    killed = False  # set when Airflow kills the task: nothing more is launched

    def check(self, spec: TaskSpec) -> None:  # noqa: B027 - most targets accept every spec
        """Refuse, before anything is stored, a spec this target cannot run (a SpecError)."""

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
        ``state`` is what :meth:`defer` was given."""
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

    def defer(self, deferral: Any, resume: Mapping[str, Any]) -> NoReturn:
        """Hand ``deferral`` (the official operator's ``TaskDeferred``) to Airflow, resuming in
        the flow task operator's ``execute_complete`` and then in :meth:`resume`."""
        from airflow.sdk.exceptions import TaskDeferred

        raise TaskDeferred(
            trigger=deferral.trigger,
            method_name="execute_complete",
            kwargs={"resume": dict(resume)},
            timeout=deferral.timeout,
        )
