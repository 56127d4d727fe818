"""A deferred flow task try, rebuilt where it resumes (``FlowTaskOperator.execute_complete``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from provider.core.targets.base import TaskRun
from provider.specs import TaskSpec
from provider.store import ArtifactStore, Reference


def resumed_run(
    task_id: str,
    spec: TaskSpec,
    function: Callable[..., Any],
    store: ArtifactStore,
    resume: Mapping[str, Any],
    log: Any,
) -> TaskRun:
    """The try, from what the target recorded when it deferred (``resume_state``)."""
    return TaskRun(
        task_id=task_id,
        spec=spec,
        function=function,
        store=store,
        payload=Reference.from_json(resume["payload"]),
        manifest_key=resume["manifest_key"],
        identity=dict(resume["identity"]),
        log=log,
    )
