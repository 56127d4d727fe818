"""A deferred flow task try, rebuilt where it resumes (``FlowTaskOperator.execute_complete``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from provider.operators.targets import ComputeTarget, TaskRun


def resumed_try(op: Any, resume: Mapping[str, Any]) -> tuple[TaskRun, ComputeTarget]:
    """The try and its target, from what ``ComputeTarget.defer`` recorded."""
    from provider import config
    from provider.operators.targets import compute_target
    from provider.store import Reference

    run = TaskRun(
        task_id=op.task_id,
        spec=op.flow_spec,
        function=op.python_callable,
        store=config.open_artifact_store(),
        payload=Reference.from_json(resume["payload"]),
        manifest_key=resume["manifest_key"],
        identity=dict(resume["identity"]),
        log=op.log,
    )
    return run, compute_target(resume["compute"])
