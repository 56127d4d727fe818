"""The test cluster's one node, and the scheduler's verdict on a pod for it.

:func:`unschedulable` runs the default scheduler's filters in their order (TaintToleration,
NodeAffinity with the node selector, NodeResourcesFit) and, when one fails, returns the message a
real kube-scheduler (1.30+) writes on the pod's ``PodScheduled`` condition and its
``FailedScheduling`` event, such as ``0/1 nodes are available: 1 Insufficient nvidia.com/gpu.
preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod.``
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from k8s_admission import quantity

NODE = "local-node"
_UNRESOLVABLE = "Preemption is not helpful for scheduling"
_NO_VICTIMS = "No preemption victims found for incoming pod"


@dataclass
class Node:
    """Labels, taints (``{"key", "value", "effect"}``) and allocatable resources."""

    name: str = NODE
    labels: dict[str, str] = field(default_factory=dict)
    taints: list[dict[str, str]] = field(default_factory=list)
    allocatable: dict[str, str] = field(
        default_factory=lambda: {
            "cpu": "8",
            "memory": "32Gi",
            "ephemeral-storage": "200Gi",
            "pods": "110",
        }
    )

    def __post_init__(self) -> None:
        base = {"kubernetes.io/hostname": self.name, "kubernetes.io/os": "linux"}
        self.labels = base | {"kubernetes.io/arch": "amd64"} | self.labels


def pod_requests(pod: dict[str, Any]) -> dict[str, Fraction]:
    """What a pod takes from a node: its containers' requests (a request defaults to the limit)."""
    total: dict[str, Fraction] = {"pods": Fraction(1)}
    for container in pod["spec"].get("containers") or []:
        resources = container.get("resources") or {}
        merged = (resources.get("limits") or {}) | (resources.get("requests") or {})
        for name, value in merged.items():
            total[name] = total.get(name, Fraction(0)) + quantity(value)
    return total


def unschedulable(pod: dict[str, Any], node: Node, running: Iterable[dict[str, Any]]) -> str | None:
    """The scheduler's message if ``pod`` cannot go on ``node`` beside the ``running`` pods."""
    spec = pod["spec"]
    taint = next((t for t in node.taints if not _tolerated(t, spec.get("tolerations") or [])), None)
    if taint is not None:
        reasons = [f"node(s) had untolerated taint {{{taint['key']}: {taint.get('value', '')}}}"]
        return _message(reasons, _UNRESOLVABLE)
    if not _affinity_matches(spec, node.labels):
        return _message(["node(s) didn't match Pod's node affinity/selector"], _UNRESOLVABLE)
    used: dict[str, Fraction] = {}
    for other in running:
        for name, value in pod_requests(other).items():
            used[name] = used.get(name, Fraction(0)) + value
    insufficient = sorted(
        name
        for name, value in pod_requests(pod).items()
        if value > 0 and value > quantity(node.allocatable.get(name, 0)) - used.get(name, 0)
    )
    if insufficient:
        reasons = ["Too many pods" if n == "pods" else f"Insufficient {n}" for n in insufficient]
        return _message(reasons, _NO_VICTIMS)
    return None


def _message(reasons: list[str], preemption: str) -> str:
    listed = ", ".join(f"1 {reason}" for reason in sorted(reasons))
    return (
        f"0/1 nodes are available: {listed}. preemption: 0/1 nodes are available: 1 {preemption}."
    )


def _tolerated(taint: dict[str, str], tolerations: list[dict[str, Any]]) -> bool:
    if taint.get("effect") == "PreferNoSchedule":
        return True
    for tol in tolerations:
        if tol.get("effect") and tol["effect"] != taint.get("effect"):
            continue
        if tol.get("operator") == "Exists":
            if not tol.get("key") or tol["key"] == taint["key"]:
                return True
        elif tol.get("key") == taint["key"] and (tol.get("value") or "") == taint.get("value", ""):
            return True
    return False


def _affinity_matches(spec: dict[str, Any], labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in (spec.get("nodeSelector") or {}).items()):
        return False
    required = (
        ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
            "requiredDuringSchedulingIgnoredDuringExecution"
        )
        or {}
    ).get("nodeSelectorTerms")
    if not required:
        return True
    return any(
        all(_expression(e, labels) for e in term.get("matchExpressions") or []) for term in required
    )


def _expression(expression: dict[str, Any], labels: dict[str, str]) -> bool:
    have, values = labels.get(expression["key"]), expression.get("values") or []
    operator = expression["operator"]
    if operator == "In":
        return have in values
    if operator == "NotIn":
        return have not in values
    if operator == "Exists":
        return have is not None
    if operator == "DoesNotExist":
        return have is None
    if have is None or not have.lstrip("-").isdigit():
        return False
    return int(have) > int(values[0]) if operator == "Gt" else int(have) < int(values[0])
