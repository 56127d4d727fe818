"""``Environment``: the image, packages, variables and secrets a task runs with."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from provider.specs.errors import SpecError
from provider.specs.names import is_dns_subdomain

IMAGE_FORM = "an image reference such as 'python:3.11-slim' or 'ghcr.io/org/img:1.2@sha256:...'"
PIP_FORM = "a list of PEP 508 requirements such as ['xgboost==2.1.4', 'pandas>=2']"
ENV_FORM = "a dict of NAME (letters, digits, '_', not starting with a digit) to str/int/float"
ENV_VALUE_FORM = "a str, int or float; text without NUL characters, encodable as UTF-8"
SECRETS_FORM = "a list of Kubernetes Secret names ('db-creds') or AWS Secrets Manager / SSM ARNs"

# The grammar of github.com/distribution/reference, as container runtimes parse image names.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOST_PART = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_IMAGE = re.compile(
    rf"(?P<name>(?:{_HOST_PART}(?:\.{_HOST_PART})*(?::[0-9]+)?/)?{_COMPONENT}(?:/{_COMPONENT})*)"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?"
)
_IMAGE_NAME_MAX = 255  # the name without tag and digest
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ARN = re.compile(r"arn:aws[a-z-]*:(?:secretsmanager|ssm):[a-z0-9-]+:[0-9]{12}:[!-~]+")


def _image(value: Any) -> str | None:
    if value is None:
        return None
    match = _IMAGE.fullmatch(value) if isinstance(value, str) else None
    if not match:
        raise SpecError("environment.image", value, IMAGE_FORM)
    if len(match["name"]) > _IMAGE_NAME_MAX:
        raise SpecError(
            "environment.image",
            value,
            IMAGE_FORM,
            f"the name before the tag is over {_IMAGE_NAME_MAX} characters",
        )
    return value


def _pip(value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise SpecError("environment.pip", value, PIP_FORM, "not a list")
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    seen: dict[str, str] = {}
    out = []
    for item in value:
        if not isinstance(item, str):
            raise SpecError("environment.pip", item, PIP_FORM, "not a string")
        try:
            requirement = Requirement(item)
        except InvalidRequirement as exc:
            raise SpecError("environment.pip", item, PIP_FORM, str(exc).split("\n")[0]) from None
        if any(not spec.version.strip() for spec in requirement.specifier):
            raise SpecError("environment.pip", item, PIP_FORM, "a version specifier has no version")
        name = canonicalize_name(requirement.name)  # PEP 503: Scikit_Learn is scikit-learn
        if name in seen:
            raise SpecError(
                "environment.pip",
                item,
                PIP_FORM,
                f"{name} is listed twice (also as {seen[name]!r})",
            )
        seen[name] = item
        out.append(item.strip())
    return tuple(out)


def _env(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, Mapping):
        raise SpecError("environment.env", value, ENV_FORM, "not a dict")
    pairs = []
    for name, item in value.items():
        if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
            raise SpecError(f"environment.env[{name!r}]", name, ENV_FORM, "invalid variable name")
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            raise SpecError(f"environment.env[{name!r}]", item, ENV_FORM, "invalid value type")
        text = str(item)
        if "\0" in text:
            raise SpecError(
                f"environment.env[{name!r}]",
                item,
                ENV_VALUE_FORM,
                "a NUL character, which no operating system takes in an environment variable",
            )
        if not _is_utf8(text):
            raise SpecError(
                f"environment.env[{name!r}]", item, ENV_VALUE_FORM, "not encodable as UTF-8"
            )
        pairs.append((name, text))
    return tuple(sorted(pairs))


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return True


def _secrets(value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise SpecError("environment.secrets", value, SECRETS_FORM, "not a list")
    for item in value:
        if not isinstance(item, str) or not (is_dns_subdomain(item) or _ARN.fullmatch(item)):
            raise SpecError("environment.secrets", item, SECRETS_FORM)
    return tuple(value)


@dataclass(frozen=True, repr=False)
class Environment:
    """Image, pip requirements, environment variables and secret references of a task."""

    image: str | None = None
    pip: tuple[str, ...] | list[str] = ()
    env: Any = ()  # a Mapping when given; stored as sorted (name, value) pairs
    secrets: tuple[str, ...] | list[str] = ()

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "image", _image(self.image))
        set_(self, "pip", _pip(self.pip))
        env = self.env
        if isinstance(env, tuple):  # the normalized form, as dataclasses.replace passes it
            try:
                env = dict(env)
            except (TypeError, ValueError):
                raise SpecError("environment.env", self.env, ENV_FORM, "not a dict") from None
        set_(self, "env", _env(env))
        set_(self, "secrets", _secrets(self.secrets))

    @property
    def env_dict(self) -> dict[str, str]:
        return dict(self.env)

    def _masked_env(self) -> dict[str, str]:
        """Variable names only: values may be credentials, and reprs end up in logs."""
        return {name: "***" for name, _ in self.env}

    def __repr__(self) -> str:
        return (
            f"Environment(image={self.image!r}, pip={self.pip!r}, env={self._masked_env()!r}, "
            f"secrets={self.secrets!r})"
        )
