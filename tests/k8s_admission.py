"""What the test cluster's API server refuses on pod create, as a real one does (422 Invalid).

Three layers: the OpenAPI schema (``kubernetes-validate --strict``, offline, against
:data:`SCHEMA_VERSION`), a port of the API server's semantic rules that matter to flowtask
(k8s.io/kubernetes pkg/apis/core/validation: names and labels, tolerations, resource requests
and limits, volume mounts, env names), and a refusal of what the local kubelet does not model
(more than one container, init or ephemeral containers), so a test never passes by ignoring it.
Messages follow the API server's wording: ``Pod "x" is invalid: spec.tolerations[0].operator:
Invalid value: "Equal": operator must be Exists when `key` is empty, ...``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

SCHEMA_VERSION = "1.33"
NATIVE_RESOURCES = ("cpu", "memory", "ephemeral-storage", "pods")
_SUFFIX = {"n": Fraction(1, 10**9), "u": Fraction(1, 10**6), "m": Fraction(1, 1000), "": 1}
_SUFFIX |= {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
_SUFFIX |= {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_QUANTITY = re.compile(
    r"([+-]?(?:\d+\.?\d*|\.\d+))(?:([eE][+-]?\d+)|(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]?))"
)
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = re.compile(rf"{_DNS_LABEL}(\.{_DNS_LABEL})*")
_NAME_PART = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")
_LABEL_MESSAGE = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or "
    "'.', and must start and end with an alphanumeric character"
)
_ENV_MESSAGE = (
    "a valid environment variable name must consist of alphabetic characters, digits, '_', "
    "'-', or '.', and must not start with a digit"
)


def invalid(field: str, value: Any, detail: str) -> str:
    """One field error, worded as the API server's ``field.Invalid``."""
    return f'{field}: Invalid value: "{value}": {detail}'


class Invalid(Exception):
    """The object is refused: ``status`` 422 (the API server's), or 501 (not modelled here).

    ``kind`` is as the API server names it: ``Pod``, ``Job.batch``.
    """

    def __init__(
        self, name: str, problems: list[str], status: int = 422, kind: str = "Pod"
    ) -> None:
        joined = problems[0] if len(problems) == 1 else "[" + ", ".join(problems) + "]"
        prefix = f'{kind} "{name}" is invalid: ' if status == 422 else f'{kind} "{name}": '
        super().__init__(prefix + joined)
        self.status, self.problems = status, problems
        self.reason = "Invalid" if status == 422 else "NotImplemented"


def quantity(text: Any) -> Fraction:
    """The value of a Kubernetes quantity: ``"500m"`` -> 1/2, ``"1Gi"`` -> 2**30, ``2`` -> 2."""
    match = _QUANTITY.fullmatch(str(text).strip())
    if not match:
        raise ValueError(f"quantities must match the regular expression: {text!r}")
    number, exponent, suffix = match.groups()
    value = Fraction(number)
    return value * Fraction(10) ** int(exponent[1:]) if exponent else value * _SUFFIX[suffix]


def is_qualified_name(key: str) -> bool:
    prefix, slash, name = key.rpartition("/")
    if slash and not (len(prefix) <= 253 and _DNS_SUBDOMAIN.fullmatch(prefix)):
        return False
    return len(name) <= 63 and bool(_NAME_PART.fullmatch(name))


def is_label_value(value: str) -> bool:
    return value == "" or (len(value) <= 63 and bool(_NAME_PART.fullmatch(value)))


def is_extended_resource(name: str) -> bool:
    """Not native (no domain, or a kubernetes.io one) and not a quota name: ``nvidia.com/gpu``."""
    domain = name.partition("/")[0] if "/" in name else ""
    native = not domain or domain == "kubernetes.io" or domain.endswith(".kubernetes.io")
    return not native and not name.startswith("requests.") and is_qualified_name(name)


def admit_pod(pod: dict[str, Any]) -> None:
    """Raise :class:`Invalid` for a pod the API server (or the local kubelet) refuses."""
    name = (pod.get("metadata") or {}).get("name") or ""
    unmodelled = list(_unmodelled(pod.get("spec") or {}))
    if unmodelled:
        raise Invalid(name, unmodelled, status=501)
    problems = list(_schema(pod)) or [*_metadata(pod.get("metadata") or {}), *_spec(pod["spec"])]
    if problems:
        raise Invalid(name, problems)


def _schema(obj: dict[str, Any], api_version: str = "v1", kind: str = "Pod") -> Iterator[str]:
    import kubernetes_validate

    try:
        # The URL says what it is; a client may leave apiVersion and kind out of the body.
        typed = {"apiVersion": api_version, "kind": kind} | obj
        kubernetes_validate.validate(typed, SCHEMA_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        path = ".".join(str(part) for part in error.path)
        yield f"{path or '<root>'}: {error.message}"


def _unmodelled(spec: dict[str, Any]) -> Iterator[str]:
    what = "the test kubelet runs exactly one container per pod"
    if len(spec.get("containers") or []) != 1:
        yield f"spec.containers: {what}, not {len(spec.get('containers') or [])}"
    for field in ("initContainers", "ephemeralContainers"):
        if spec.get(field):
            yield f"spec.{field}: {what} and no {field}"


def _metadata(meta: dict[str, Any]) -> Iterator[str]:
    name = meta.get("name") or ""
    if not (len(name) <= 253 and _DNS_SUBDOMAIN.fullmatch(name)):
        yield (
            f'metadata.name: Invalid value: "{name}": a lowercase RFC 1123 subdomain must '
            "consist of lower case alphanumeric characters, '-' or '.', and must start and end "
            "with an alphanumeric character"
        )
    for key, value in (meta.get("labels") or {}).items():
        if not is_qualified_name(key):
            yield f'metadata.labels: Invalid value: "{key}": name part must be a qualified name'
        elif not is_label_value(str(value)):
            yield f'metadata.labels: Invalid value: "{value}": {_LABEL_MESSAGE}'


def _spec(spec: dict[str, Any]) -> Iterator[str]:
    yield from _tolerations(spec.get("tolerations") or [])
    volumes = spec.get("volumes") or []
    seen: set[str] = set()
    for i, volume in enumerate(volumes):
        if not re.fullmatch(_DNS_LABEL, volume["name"]) or len(volume["name"]) > 63:
            yield invalid(f"spec.volumes[{i}].name", volume["name"], "a lowercase RFC 1123 label")
        if volume["name"] in seen:
            yield f'spec.volumes[{i}].name: Duplicate value: "{volume["name"]}"'
        seen.add(volume["name"])
        if len(set(volume) - {"name"}) != 1:
            yield f"spec.volumes[{i}]: Invalid value: may not specify more than 1 volume type"
    for c, container in enumerate(spec.get("containers") or []):
        field = f"spec.containers[{c}]"
        yield from _resources(container.get("resources") or {}, f"{field}.resources")
        yield from _mounts(container.get("volumeMounts") or [], seen, f"{field}.volumeMounts")
        for i, var in enumerate(container.get("env") or []):
            if not _ENV_NAME.fullmatch(var["name"]):
                yield f'{field}.env[{i}].name: Invalid value: "{var["name"]}": {_ENV_MESSAGE}'
        for i, source in enumerate(container.get("envFrom") or []):
            prefix = source.get("prefix")
            if prefix and not _ENV_NAME.fullmatch(prefix):
                yield f'{field}.envFrom[{i}].prefix: Invalid value: "{prefix}": {_ENV_MESSAGE}'


def _tolerations(tolerations: list[dict[str, Any]]) -> Iterator[str]:
    """ValidateTolerations."""
    for i, tol in enumerate(tolerations):
        field = f"spec.tolerations[{i}]"
        key, operator = tol.get("key") or "", tol.get("operator") or "Equal"
        value, effect = tol.get("value") or "", tol.get("effect") or ""
        if key and not is_qualified_name(key):
            yield f'{field}.key: Invalid value: "{key}": name part must be a qualified name'
        if not key and operator != "Exists":
            yield (
                f'{field}.operator: Invalid value: "{operator}": operator must be Exists when '
                '`key` is empty, which means "match all values and all keys"'
            )
        if tol.get("tolerationSeconds") is not None and effect != "NoExecute":
            yield (
                f"{field}.effect: Invalid value: \"{effect}\": effect must be 'NoExecute' when "
                "`tolerationSeconds` is set"
            )
        if operator == "Equal" and not is_label_value(value):
            yield f'{field}.value: Invalid value: "{value}": {_LABEL_MESSAGE}'
        elif operator == "Exists" and value:
            yield (
                f'{field}.operator: Invalid value: "{value}": value must be empty when '
                "`operator` is 'Exists'"
            )
        elif operator not in ("Equal", "Exists"):
            supported = 'supported values: "Equal", "Exists"'
            yield f'{field}.operator: Unsupported value: "{operator}": {supported}'
        if effect not in ("", "NoSchedule", "PreferNoSchedule", "NoExecute"):
            yield (
                f'{field}.effect: Unsupported value: "{effect}": supported values: "NoSchedule", '
                '"PreferNoSchedule", "NoExecute"'
            )


def _resources(resources: dict[str, Any], field: str) -> Iterator[str]:
    """ValidateResourceRequirements: names, values, requests <= limits, extended ones equal."""
    limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
    for kind, values in (("limits", limits), ("requests", requests)):
        for name, raw in values.items():
            standard = name in NATIVE_RESOURCES or name.startswith("hugepages-")
            if not standard and not is_extended_resource(name):
                detail = "must be a standard resource type or fully qualified"
                yield invalid(f"{field}.{kind}[{name}]", name, detail)
                continue
            try:
                value = quantity(raw)
            except ValueError:
                yield f'{field}.{kind}[{name}]: Invalid value: "{raw}": must be a quantity'
                continue
            if value < 0:
                yield invalid(f"{field}.{kind}[{name}]", raw, "must be greater than or equal to 0")
            if is_extended_resource(name) and value.denominator != 1:
                yield f'{field}.{kind}[{name}]: Invalid value: "{raw}": must be an integer'
    for name, raw in requests.items():
        overcommit = not (is_extended_resource(name) or name.startswith("hugepages-"))
        if name not in limits:
            if not overcommit:
                detail = "Limit must be set for non overcommitable resources"
                yield f"{field}.limits: Required value: {detail}"
            continue
        with_limit = _both(raw, limits[name])
        if with_limit is None:
            continue
        request, limit = with_limit
        if overcommit and request > limit:
            yield (
                f'{field}.requests: Invalid value: "{raw}": must be less than or equal to '
                f"{name} limit of {limits[name]}"
            )
        elif not overcommit and request != limit:
            yield (
                f'{field}.requests[{name}]: Invalid value: "{raw}": must be equal to {name} '
                f"limit of {limits[name]}"
            )


def _both(request: Any, limit: Any) -> tuple[Fraction, Fraction] | None:
    try:
        return quantity(request), quantity(limit)
    except ValueError:
        return None


def _mounts(mounts: list[dict[str, Any]], volumes: set[str], field: str) -> Iterator[str]:
    paths: set[str] = set()
    for i, mount in enumerate(mounts):
        if mount["name"] not in volumes:
            yield f'{field}[{i}].name: Not found: "{mount["name"]}"'
        path = mount.get("mountPath") or ""
        if not path:
            yield f"{field}[{i}].mountPath: Required value"
        elif path in paths:
            yield f'{field}[{i}].mountPath: Invalid value: "{path}": must be unique'
        paths.add(path)
