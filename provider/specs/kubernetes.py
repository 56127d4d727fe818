"""``KubernetesOptions``: where and how a flow task's pod is placed on a cluster."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import timedelta
from typing import Any

from provider.specs import pod_options
from provider.specs.errors import SpecError
from provider.specs.names import is_dns_label, is_dns_subdomain, is_label_value, is_qualified_name
from provider.specs.platforms import target_platform
from provider.specs.settings_meta import setting
from provider.specs.units import parse_duration

_PLATFORM_FIELD = "kubernetes.target_platform"
NAME_FORM = "a DNS-1123 name such as 'ml-jobs' (lowercase letters, digits, '-', at most 63)"
SECRET_NAME_FORM = (
    "a list of Secret names such as 'regcred' or 'registry.example.com' "
    "(lowercase letters, digits, '-' and '.', at most 253)"
)
MAPPING_FORM = "a dict of label-style keys ('team', 'example.com/team') to strings"
LABEL_VALUE_FORM = "at most 63 letters, digits, '-', '_' or '.', starting and ending alphanumeric"
TOLERATION_FORM = (
    "a list of dicts with keys key, operator ('Exists' or 'Equal'), value, effect "
    "('NoSchedule', 'PreferNoSchedule', 'NoExecute') and toleration_seconds"
)
# The resource each vendor's device plugin advertises. Intel's plugin names it after the kernel
# driver: gpu.intel.com/i915 for the GPUs it drives today (Data Center GPU Flex and Max, Arc,
# integrated); GPUs on the newer xe driver are gpu.intel.com/xe (ask with extended_resources).
GPU_RESOURCES = {"nvidia": "nvidia.com/gpu", "amd": "amd.com/gpu", "intel": "gpu.intel.com/i915"}
GPU_VENDORS = tuple(GPU_RESOURCES)
EXTENDED_RESOURCES_FORM = (
    "a dict of device-plugin resource names to whole counts, such as {'gpu.intel.com/xe': 1} "
    "or {'example.com/fpga': 2}"
)

_TOLERATION_KEYS = {"key", "operator", "value", "effect", "toleration_seconds"}
_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1  # toleration_seconds is an int64


def _name(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if not is_dns_label(value):
        raise SpecError(field, value, NAME_FORM)
    return value


def _pairs(value: Any, field: str, *, label_values: bool) -> tuple[tuple[str, str], ...]:
    if isinstance(value, tuple):  # the normalized form, as dataclasses.replace passes it
        value = dict(value)
    if not isinstance(value, Mapping):
        raise SpecError(field, value, MAPPING_FORM, "not a dict")
    for key, item in value.items():
        if not is_qualified_name(key):
            raise SpecError(f"{field}[{key!r}]", key, MAPPING_FORM, "invalid key")
        if not isinstance(item, str):
            raise SpecError(f"{field}[{key!r}]", item, "a string value", "not a string")
        if label_values and not is_label_value(item):
            raise SpecError(f"{field}[{key!r}]", item, LABEL_VALUE_FORM, "not a valid label value")
    return tuple(sorted(value.items()))


def _toleration(item: Any, field: str) -> tuple[tuple[str, Any], ...]:
    """One toleration, checked as the API server's ValidateTolerations does."""
    if isinstance(item, tuple):
        item = dict(item)
    if not isinstance(item, Mapping) or not set(item) <= _TOLERATION_KEYS:
        raise SpecError(field, item, TOLERATION_FORM)
    operator = item.get("operator", "Equal")
    if operator not in ("Exists", "Equal"):
        raise SpecError(f"{field}.operator", operator, "'Exists' or 'Equal'")
    value = item.get("value")
    if value is not None and not isinstance(value, str):
        raise SpecError(f"{field}.value", value, "a string, or no value", "not a string")
    if operator == "Exists" and value:
        raise SpecError(f"{field}.value", value, "no value with operator 'Exists'")
    if value and not is_label_value(value):
        raise SpecError(
            f"{field}.value", value, LABEL_VALUE_FORM, "a taint value must be a valid label value"
        )
    effect = item.get("effect")
    if effect is not None and effect not in _EFFECTS:
        raise SpecError(f"{field}.effect", effect, f"one of {_EFFECTS} or None for all effects")
    seconds = item.get("toleration_seconds")
    if seconds is not None and (not isinstance(seconds, int) or isinstance(seconds, bool)):
        raise SpecError(f"{field}.toleration_seconds", seconds, "an int of seconds")
    if seconds is not None and not _INT64_MIN <= seconds <= _INT64_MAX:
        raise SpecError(
            f"{field}.toleration_seconds", seconds, "an int of seconds", "outside int64's range"
        )
    if seconds is not None and effect != "NoExecute":
        raise SpecError(
            f"{field}.toleration_seconds",
            seconds,
            "toleration_seconds together with effect='NoExecute'",
            f"only a NoExecute taint evicts, and effect is {effect!r}",
        )
    key = item.get("key")
    if key not in (None, "") and not is_qualified_name(key):
        raise SpecError(f"{field}.key", key, "a taint key such as 'nvidia.com/gpu'")
    if not key and operator != "Exists":
        raise SpecError(
            f"{field}.key",
            key,
            "a taint key such as 'spot', or no key with operator 'Exists' to tolerate every taint",
            "a toleration without a key must have operator 'Exists'",
        )
    return tuple(sorted({**item, "operator": operator}.items()))


def is_extended_resource(name: object) -> bool:
    """A resource a device plugin or operator advertises: ``vendor.example/thing``.

    Native resources (no domain, or a ``kubernetes.io`` one) and quota names are not.
    """
    if not isinstance(name, str) or "/" not in name or name.startswith("requests."):
        return False
    domain = name.partition("/")[0]
    native = domain == "kubernetes.io" or domain.endswith(".kubernetes.io")
    return not native and is_qualified_name(name)


def _extended_resources(value: Any) -> tuple[tuple[str, int], ...]:
    field = "kubernetes.extended_resources"
    if isinstance(value, tuple):
        value = dict(value)
    if not isinstance(value, Mapping):
        raise SpecError(field, value, EXTENDED_RESOURCES_FORM, "not a dict")
    for name, count in value.items():
        if not is_extended_resource(name):
            raise SpecError(
                f"{field}[{name!r}]",
                name,
                EXTENDED_RESOURCES_FORM,
                "cpu, memory and names in kubernetes.io are not extended resources"
                if isinstance(name, str)
                else None,
            )
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise SpecError(
                f"{field}[{name!r}]",
                count,
                "a whole count >= 1",
                "Kubernetes does not share extended resources fractionally",
            )
    return tuple(sorted(value.items()))


def _schedule_timeout(value: Any) -> timedelta:
    """A duration, or 0 to fail at once when no node can host the pod."""
    if value in (0, "0", "0s") and not isinstance(value, bool):
        return timedelta(0)
    return parse_duration(value, "kubernetes.schedule_timeout")


def _tolerations(value: Any) -> tuple[tuple[tuple[str, Any], ...], ...]:
    if isinstance(value, (str, Mapping)) or not isinstance(value, (list, tuple)):
        raise SpecError("kubernetes.tolerations", value, TOLERATION_FORM, "not a list")
    return tuple(_toleration(item, f"kubernetes.tolerations[{i}]") for i, item in enumerate(value))


def _secret_names(value: Any, field: str) -> tuple[str, ...]:
    """Secret names are DNS subdomains: 'regcred', 'registry.example.com'."""
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise SpecError(field, value, SECRET_NAME_FORM, "not a list")
    for item in value:
        if item is None:
            raise SpecError(field, value, SECRET_NAME_FORM, "None is not a name")
        if not is_dns_subdomain(item):
            raise SpecError(field, item, SECRET_NAME_FORM)
    return tuple(value)


_MERGED_DICTS = (
    "node_selector",
    "labels",
    "annotations",
    "extended_resources",
    "persistent_volume_claims",
)


@dataclass(frozen=True)
class KubernetesOptions:
    """Namespace, service account, placement, pull secrets and metadata of a flow task's pod.

    Every field left unset falls back to the ``[flow_task] kubernetes_*`` settings; dicts are
    merged with the task's keys winning, lists are joined.
    ``cpu_limit_ratio`` sets the CPU limit to that multiple of the request (none by default:
    the pod may use idle CPUs); the memory limit always equals the request.
    ``gpu_vendor`` picks the device plugin's resource (:data:`GPU_RESOURCES`);
    ``extended_resources`` asks for any other (request = limit, as Kubernetes requires).
    ``schedule_timeout`` is how long an unschedulable pod waits for a node (a cluster
    autoscaler's) before the task fails; ``deferrable`` releases the worker slot while the pod
    runs (the triggerer watches it).

    The pod itself: ``qos`` ("Burstable", the default: memory limit = request, CPU limit only
    with ``cpu_limit_ratio``; "Guaranteed": CPU limit = request too), ``image_pull_policy``,
    ``persistent_volume_claims`` ({claim: mount path}), ``tmpfs`` (a size, or {size, path}: a
    memory-backed folder that ``TMPDIR`` points at), ``security_context`` (the container's, in
    Kubernetes' names), ``port``, ``termination_message_policy``, and a pod template under it
    all (``pod_template_file`` or ``full_pod_spec``, a manifest dict): what the translation
    sets wins. ``target_platform`` is the platform ``Environment(pip=...)`` is built for
    (``"aarch64"`` for Arm nodes); else ``[flow_task] target_platform``.
    """

    namespace: str | None = field(
        default=None,
        metadata=setting("Namespace of the pods; empty means the connection's.", "ml-jobs"),
    )
    service_account: str | None = field(
        default=None,
        metadata=setting("Service account the pods run as.", "flow-runner"),
    )
    node_selector: Any = field(
        default=(),
        metadata=setting("Node selector, a JSON object.", '{"pool": "batch"}', form="json"),
    )
    tolerations: Any = field(
        default=(),
        metadata=setting(
            "Tolerations, a JSON list of {key, operator, value, effect, toleration_seconds}.",
            '[{"key": "spot", "operator": "Exists", "effect": "NoSchedule"}]',
            form="json",
        ),
    )
    image_pull_secrets: Any = field(
        default=(),
        metadata=setting("Image pull secrets, comma-separated names.", "regcred", form="list"),
    )
    labels: Any = field(
        default=(),
        metadata=setting("Extra pod labels, a JSON object.", '{"team": "ml"}', form="json"),
    )
    annotations: Any = field(
        default=(),
        metadata=setting(
            "Extra pod annotations, a JSON object.", '{"owner": "ml-team"}', form="json"
        ),
    )
    cpu_limit_ratio: float | None = field(
        default=None,
        metadata=setting(
            "CPU limit as a multiple of the request; empty means no CPU limit.", "2", form="float"
        ),
    )
    gpu_vendor: str | None = field(
        default=None,
        metadata=setting(
            "GPU vendor, for the resource its device plugin advertises: nvidia "
            "(nvidia.com/gpu), amd (amd.com/gpu) or intel (gpu.intel.com/i915).",
            "amd",
        ),
    )
    gpu_type_label: str | None = field(
        default=None,
        metadata=setting(
            "Node label that Resources(gpu_type=...) selects on; empty means "
            "nvidia.com/gpu.product.",
            "cloud.google.com/gke-accelerator",
        ),
    )
    extended_resources: Any = ()
    schedule_timeout: Any = field(
        default=None,
        metadata=setting(
            "How long an unschedulable pod waits for a node (a cluster autoscaler's, or "
            "capacity that frees up) before its task fails with the scheduler's reason: a "
            "duration such as '10m', '90s' or seconds. A missing Secret or image fails at once.",
            "0",
            default="10m",
        ),
    )
    deferrable: bool | None = field(
        default=None,
        metadata=setting(
            "Whether flow task pods run deferred: the worker slot is released while the pod "
            "runs and the triggerer watches it (KubernetesOptions(deferrable=...) per task).",
            "True",
            form="bool",
            default="False",
        ),
    )
    qos: str | None = field(
        default=None,
        metadata=setting(
            "Burstable or Guaranteed; empty means Burstable. Both set the memory limit to the "
            "request; Guaranteed also sets the CPU limit to the request.",
            "Guaranteed",
        ),
    )
    image_pull_policy: str | None = field(
        default=None,
        metadata=setting(
            "Always, IfNotPresent or Never; empty means Kubernetes' default for the tag.",
            "IfNotPresent",
        ),
    )
    persistent_volume_claims: Any = field(
        default=(),
        metadata=setting(
            "PersistentVolumeClaims every pod mounts, a JSON object of claim name to path.",
            '{"shared-datasets": "/data"}',
            form="json",
        ),
    )
    tmpfs: Any = None
    security_context: Any = field(
        default=None,
        metadata=setting(
            "The container securityContext of every pod, a JSON object in Kubernetes' names.",
            '{"runAsNonRoot": true, "allowPrivilegeEscalation": false}',
            form="json",
        ),
    )
    port: int | None = None
    termination_message_policy: str | None = field(
        default=None,
        metadata=setting(
            "File or FallbackToLogsOnError; empty means File.", "FallbackToLogsOnError"
        ),
    )
    pod_template_file: str | None = field(
        default=None,
        metadata=setting(
            "A pod template YAML file every pod is laid over (flowtask's fields win).",
            "/etc/flowtask/pod-template.yaml",
        ),
    )
    full_pod_spec: Any = None
    target_platform: str | None = None  # what Environment(pip=...) is built for

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if self.target_platform is not None:
            set_(self, "target_platform", target_platform(self.target_platform, _PLATFORM_FIELD))
        set_(self, "namespace", _name(self.namespace, "kubernetes.namespace"))
        set_(self, "service_account", _service_account(self.service_account))
        set_(
            self,
            "node_selector",
            _pairs(self.node_selector, "kubernetes.node_selector", label_values=True),
        )
        set_(self, "tolerations", _tolerations(self.tolerations))
        set_(
            self,
            "image_pull_secrets",
            _secret_names(self.image_pull_secrets, "kubernetes.image_pull_secrets"),
        )
        set_(self, "labels", _pairs(self.labels, "kubernetes.labels", label_values=True))
        set_(
            self,
            "annotations",
            _pairs(self.annotations, "kubernetes.annotations", label_values=False),
        )
        ratio = self.cpu_limit_ratio
        if ratio is not None and (
            isinstance(ratio, bool)
            or not isinstance(ratio, (int, float))
            or not math.isfinite(ratio)
            or ratio < 1
        ):
            raise SpecError(
                "kubernetes.cpu_limit_ratio",
                ratio,
                "a number >= 1 (1 caps CPU at the request), or None for no CPU limit",
                "not finite" if isinstance(ratio, float) and not math.isfinite(ratio) else None,
            )
        if self.gpu_vendor is not None and self.gpu_vendor not in GPU_VENDORS:
            raise SpecError("kubernetes.gpu_vendor", self.gpu_vendor, f"one of {GPU_VENDORS}")
        set_(self, "extended_resources", _extended_resources(self.extended_resources))
        if self.schedule_timeout is not None:
            set_(self, "schedule_timeout", _schedule_timeout(self.schedule_timeout))
        if self.deferrable is not None and not isinstance(self.deferrable, bool):
            raise SpecError("kubernetes.deferrable", self.deferrable, "True, False or None")
        self._check_pod_options()

    def _check_pod_options(self) -> None:
        set_, po = object.__setattr__, pod_options
        set_(self, "qos", po.choice(self.qos, "kubernetes.qos", po.QOS_CLASSES))
        if self.qos == "Guaranteed" and self.cpu_limit_ratio not in (None, 1):
            raise SpecError(
                "kubernetes.cpu_limit_ratio",
                self.cpu_limit_ratio,
                "None or 1 with qos='Guaranteed'",
                "a Guaranteed pod's CPU limit is its request",
            )
        policy = po.choice(self.image_pull_policy, "kubernetes.image_pull_policy", po.PULL_POLICIES)
        set_(self, "image_pull_policy", policy)
        claims = po.persistent_volume_claims(self.persistent_volume_claims)
        set_(self, "persistent_volume_claims", claims)
        set_(self, "tmpfs", po.tmpfs(self.tmpfs))
        if self.tmpfs is not None and self.tmpfs[1] in dict(claims).values():
            raise SpecError(
                "kubernetes.tmpfs.path", self.tmpfs[1], "a path no volume claim is mounted at"
            )
        set_(self, "security_context", po.security_context(self.security_context))
        set_(self, "port", po.port(self.port))
        set_(
            self,
            "termination_message_policy",
            po.choice(
                self.termination_message_policy,
                "kubernetes.termination_message_policy",
                po.TERMINATION_MESSAGE_POLICIES,
            ),
        )
        set_(self, "pod_template_file", po.template_file(self.pod_template_file))
        set_(self, "full_pod_spec", po.full_pod_spec(self.full_pod_spec))
        label = self.gpu_type_label
        if label is not None and not is_qualified_name(label):
            raise SpecError(
                "kubernetes.gpu_type_label",
                label,
                "a node label key such as 'nvidia.com/gpu.product' or "
                "'cloud.google.com/gke-accelerator'",
            )

    def over(self, defaults: KubernetesOptions) -> KubernetesOptions:
        """These options on top of ``defaults``: set scalars win, dicts merge, lists join."""
        merged: dict[str, Any] = {}
        for f in fields(self):
            mine, base = getattr(self, f.name), getattr(defaults, f.name)
            if f.name in _MERGED_DICTS:
                merged[f.name] = {**dict(base), **dict(mine)}
            elif f.name == "security_context":
                parts = [json.loads(text) for text in (base, mine) if text]
                merged[f.name] = {k: v for part in parts for k, v in part.items()} or None
            elif f.name in ("tolerations", "image_pull_secrets"):
                merged[f.name] = tuple(dict.fromkeys(base + mine))
            else:
                merged[f.name] = base if mine is None else mine
        return KubernetesOptions(**merged)

    @property
    def toleration_dicts(self) -> list[dict[str, Any]]:
        return [dict(item) for item in self.tolerations]

    @property
    def security_context_dict(self) -> dict[str, Any] | None:
        return None if self.security_context is None else json.loads(self.security_context)

    @property
    def full_pod_spec_dict(self) -> dict[str, Any] | None:
        return None if self.full_pod_spec is None else json.loads(self.full_pod_spec)


def _service_account(value: Any) -> str | None:
    if value is None:
        return None
    if not is_dns_subdomain(value):
        raise SpecError(
            "kubernetes.service_account",
            value,
            "a service account name such as 'flow-runner'",
        )
    return value
