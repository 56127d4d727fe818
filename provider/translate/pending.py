"""Why a Pending pod is not starting, and whether to stop waiting for it (pure).

A pod that waits for a missing Secret, an image that cannot be pulled, or a node that can host
it, stays Pending until someone deletes it. :class:`StartWatch` reads the pod as the API reports
it and says when to give up, with the reason in words (``pod fit-x cannot start: secret
"db-creds" not found``): at once for a missing Secret or ConfigMap and for an image the registry
refuses, and after ``schedule_timeout`` seconds for an unschedulable pod, which a cluster
autoscaler may still find a node for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# The kubelet retries these on its own; they say nothing certain about the pod.
_TRANSIENT_PULL = (
    "rate limit",
    "too many requests",
    "quota exceeded",
    "temporarily unavailable",
    "timeout",
    "bad gateway",
    "service unavailable",
    "gateway timeout",
)
_IMAGE_REASONS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull")
_CONFIG_REASONS = ("CreateContainerConfigError", "CreateContainerError")


@dataclass(frozen=True)
class Verdict:
    """``failure``: stop waiting, this is why; ``note``: log this once, and keep waiting."""

    failure: str | None = None
    note: str | None = None


def _waiting(pod: Any) -> tuple[str, str] | None:
    for status in (pod.status.container_statuses if pod.status else None) or []:
        waiting = status.state.waiting if status.state else None
        if waiting is not None and waiting.reason not in (None, "ContainerCreating"):
            return waiting.reason, waiting.message or ""
    return None


def unschedulable_message(pod: Any) -> str | None:
    """The scheduler's message on an Unschedulable pod's ``PodScheduled`` condition."""
    for cond in (pod.status.conditions if pod.status else None) or []:
        if (cond.type, cond.status, cond.reason) == ("PodScheduled", "False", "Unschedulable"):
            return cond.message or "no node can host it"
    return None


@dataclass
class StartWatch:
    """Follows one pod's start; :meth:`see` each reading of it, with the time it was read.

    ``placement_hint`` is added to an unschedulable pod's failure (what the task's placement
    asked for, and what nodes are usually labelled with).
    """

    schedule_timeout: float
    placement_hint: str | None = None
    _unschedulable_since: float | None = None
    _noted: set[str] = field(default_factory=set)

    def see(self, pod: Any, now: float) -> Verdict:
        name = pod.metadata.name
        waiting = _waiting(pod)
        if waiting is not None:
            reason, message = waiting
            if reason in _CONFIG_REASONS:
                return Verdict(failure=f"pod {name} cannot start: {message or reason}")
            if reason in _IMAGE_REASONS:
                if any(p in message.lower() for p in _TRANSIENT_PULL):
                    return self._note(f"pod {name}: {reason}, retrying: {message}")
                image = next(
                    (c.image for c in pod.spec.containers if c.name == "base"),
                    pod.spec.containers[0].image,
                )
                return Verdict(
                    failure=f'pod {name} cannot start: image "{image}" cannot be pulled '
                    f"({reason}): {message}"
                )
        unschedulable = unschedulable_message(pod)
        if unschedulable is None:
            self._unschedulable_since = None
            return Verdict()
        if self._unschedulable_since is None:
            self._unschedulable_since = now
        if now - self._unschedulable_since >= self.schedule_timeout:
            hint = f"; {self.placement_hint}" if self.placement_hint else ""
            waited = (
                f" (waited {self.schedule_timeout:g}s for a node)" if self.schedule_timeout else ""
            )
            return Verdict(failure=f"pod {name} cannot start: {unschedulable}{waited}{hint}")
        return self._note(
            f"pod {name} is unschedulable: {unschedulable} Waiting up to "
            f"{self.schedule_timeout:g}s for a cluster autoscaler to add a node or for capacity "
            "to free up (KubernetesOptions(schedule_timeout=...), "
            "[flow_task] kubernetes_schedule_timeout)"
        )

    def _note(self, note: str) -> Verdict:
        if note in self._noted:
            return Verdict()
        self._noted.add(note)
        return Verdict(note=note)


def placement_hint(gpu_type: str | None, label: str) -> str | None:
    """What ``gpu_type`` selected on, for an unschedulable pod's failure."""
    if gpu_type is None:
        return None
    return (
        f"gpu_type={gpu_type!r} selects nodes labelled {label}={gpu_type}: the value must be "
        "the label's exact value, such as 'NVIDIA-A100-SXM4-80GB' for nvidia.com/gpu.product "
        "(NVIDIA GPU feature discovery) or 'nvidia-tesla-a100' for "
        "cloud.google.com/gke-accelerator (kubectl get nodes -L " + label + ")"
    )
