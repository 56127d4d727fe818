"""Checks of the ``KubernetesOptions`` fields that shape the pod itself (pure, parse time).

Values are normalized to hashable forms: mappings to sorted tuples, JSON objects (a security
context, a pod manifest) to canonical JSON text, sizes to MiB.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping
from typing import Any

from provider.specs.errors import SpecError
from provider.specs.names import is_dns_subdomain
from provider.specs.units import parse_mebibytes

QOS_CLASSES = ("Burstable", "Guaranteed")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
TERMINATION_MESSAGE_POLICIES = ("File", "FallbackToLogsOnError")
DEFAULT_TMPFS_PATH = "/flowtask-tmp"
# A container's securityContext (V1SecurityContext), in Kubernetes' JSON names.
SECURITY_CONTEXT_FIELDS: dict[str, type | tuple[type, ...]] = {
    "allowPrivilegeEscalation": bool,
    "appArmorProfile": Mapping,
    "capabilities": Mapping,
    "privileged": bool,
    "procMount": str,
    "readOnlyRootFilesystem": bool,
    "runAsGroup": int,
    "runAsNonRoot": bool,
    "runAsUser": int,
    "seLinuxOptions": Mapping,
    "seccompProfile": Mapping,
    "windowsOptions": Mapping,
}
_RESERVED_PATHS = ("/dev/shm",)


def choice(value: Any, field: str, allowed: tuple[str, ...]) -> str | None:
    if value is not None and value not in allowed:
        raise SpecError(field, value, f"one of {allowed}, or None for the default")
    return value


def port(value: Any) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise SpecError("kubernetes.port", value, "a container port number from 1 to 65535")
    return value


def mount_path(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value.startswith("/") or value == "/":
        raise SpecError(field, value, "an absolute path such as '/data', not '/'")
    if posixpath.normpath(value) != value.rstrip("/") or ":" in value:
        raise SpecError(field, value, "a normalized absolute path without ':', such as '/data'")
    if value in _RESERVED_PATHS:
        raise SpecError(field, value, "a path other than /dev/shm (Resources(shared_memory=...))")
    return value


def persistent_volume_claims(value: Any) -> tuple[tuple[str, str], ...]:
    """``{"claim-name": "/mount/path"}``: existing PVCs mounted read-write at their paths."""
    field = "kubernetes.persistent_volume_claims"
    form = "a dict of PersistentVolumeClaim names to mount paths, such as {'datasets': '/data'}"
    if isinstance(value, tuple):
        value = dict(value)
    if not isinstance(value, Mapping):
        raise SpecError(field, value, form, "not a dict")
    for claim, path in value.items():
        if not is_dns_subdomain(claim):
            raise SpecError(f"{field}[{claim!r}]", claim, form, "not a claim name")
        mount_path(path, f"{field}[{claim!r}]")
    paths = list(value.values())
    for path in paths:
        if paths.count(path) > 1:
            raise SpecError(field, value, form, f"two claims mounted at {path}")
    return tuple(sorted(value.items()))


def tmpfs(value: Any) -> tuple[int, str] | None:
    """A memory-backed scratch folder: a size, or ``{"size": ..., "path": ...}``; (MiB, path)."""
    field = "kubernetes.tmpfs"
    if value is None:
        return None
    if isinstance(value, tuple) and len(value) == 2:
        value = {"size": value[0], "path": value[1]}
    if not isinstance(value, Mapping):
        value = {"size": value}
    unknown = set(value) - {"size", "path"}
    if unknown or "size" not in value:
        raise SpecError(
            field,
            value,
            "a size such as '2Gi', or {'size': '2Gi', 'path': '/scratch'}",
            f"unknown keys {sorted(unknown)}" if unknown else "no size",
        )
    size = parse_mebibytes(value["size"], f"{field}.size")
    return size, mount_path(value.get("path", DEFAULT_TMPFS_PATH), f"{field}.path")


def json_object(value: Any, field: str, form: str) -> str | None:
    """A JSON object (given as a dict, or as JSON text) in canonical text."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise SpecError(field, value, form, "not JSON") from None
    if not isinstance(value, Mapping):
        raise SpecError(field, value, form, "not a dict")
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError):
        raise SpecError(field, value, form, "not made of JSON values") from None


def security_context(value: Any) -> str | None:
    field = "kubernetes.security_context"
    form = (
        "a container securityContext in Kubernetes' names, such as "
        "{'runAsNonRoot': True, 'runAsUser': 1000, 'capabilities': {'drop': ['ALL']}}"
    )
    text = json_object(value, field, form)
    if text is None:
        return None
    for key, item in json.loads(text).items():
        kind = SECURITY_CONTEXT_FIELDS.get(key)
        if kind is None:
            raise SpecError(f"{field}[{key!r}]", key, form, "not a securityContext field")
        valid = isinstance(item, kind) and not (kind is int and isinstance(item, bool))
        if not valid or (kind is int and item < 0):
            raise SpecError(f"{field}[{key!r}]", item, form, f"{key} is a {_kind_name(kind)}")
    return text


def full_pod_spec(value: Any) -> str | None:
    """A Pod manifest (``apiVersion``, ``kind``, ``metadata``, ``spec``) the pod is laid over."""
    field = "kubernetes.full_pod_spec"
    form = "a Pod manifest as a dict: {'metadata': {...}, 'spec': {...}}"
    text = json_object(value, field, form)
    if text is None:
        return None
    pod = json.loads(text)
    unknown = set(pod) - {"apiVersion", "kind", "metadata", "spec"}
    if unknown:
        raise SpecError(field, value, form, f"unknown keys {sorted(unknown)}")
    if pod.get("kind", "Pod") != "Pod" or pod.get("apiVersion", "v1") != "v1":
        raise SpecError(field, value, form, "not a v1 Pod")
    for key in ("metadata", "spec"):
        if not isinstance(pod.get(key, {}), Mapping):
            raise SpecError(f"{field}.{key}", pod[key], form, "not a dict")
    return text


def template_file(value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise SpecError(
            "kubernetes.pod_template_file", value, "the path of a pod template YAML file"
        )
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names: dict[Any, str] = {bool: "bool", int: "non-negative int", str: "string"}
    return names.get(kind, "dict")
