"""Finished pods as the Kubernetes API reports them, for tests of how we read them."""

from __future__ import annotations

from kubernetes.client import models as k8s


def finished_pod(
    *,
    reason: str | None = None,
    container_reason: str | None = None,
    exit_code: int = 1,
    annotations: dict[str, str] | None = None,
) -> k8s.V1Pod:
    """A Failed pod ``fit-abc`` (memory limit 64Mi, deadline 60 s) whose container ended."""
    terminated = k8s.V1ContainerStateTerminated(exit_code=exit_code, reason=container_reason)
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name="fit-abc", annotations=annotations),
        spec=k8s.V1PodSpec(
            active_deadline_seconds=60,
            containers=[
                k8s.V1Container(
                    name="base",
                    resources=k8s.V1ResourceRequirements(limits={"memory": "64Mi"}),
                )
            ],
        ),
        status=k8s.V1PodStatus(
            phase="Failed",
            reason=reason,
            message="The node was low on resource: memory." if reason == "Evicted" else None,
            container_statuses=[
                k8s.V1ContainerStatus(
                    name="base",
                    image="i",
                    image_id="",
                    ready=False,
                    restart_count=0,
                    state=k8s.V1ContainerState(terminated=terminated),
                )
            ],
        ),
    )


def pending_pod(
    *, waiting: tuple[str, str] | None = None, unschedulable: str | None = None
) -> k8s.V1Pod:
    """A Pending pod ``fit-abc`` whose container waits (reason, message), or that no node takes."""
    conditions = [
        k8s.V1PodCondition(
            type="PodScheduled",
            status="False" if unschedulable else "True",
            reason="Unschedulable" if unschedulable else None,
            message=unschedulable,
        )
    ]
    statuses = None
    if waiting is not None:
        state = k8s.V1ContainerState(
            waiting=k8s.V1ContainerStateWaiting(reason=waiting[0], message=waiting[1])
        )
        statuses = [
            k8s.V1ContainerStatus(
                name="base", image="nope:1", image_id="", ready=False, restart_count=0, state=state
            )
        ]
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name="fit-abc"),
        spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="base", image="nope:1")]),
        status=k8s.V1PodStatus(phase="Pending", conditions=conditions, container_statuses=statuses),
    )
