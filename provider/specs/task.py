"""``TaskSpec``: everything ``@flow_task`` was told about a task, validated at parse time."""

from __future__ import annotations

import keyword
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import timedelta
from typing import Any

from provider.specs.batch import (
    RESERVED_ENV_PREFIX,
    BatchOptions,
    check_fargate,
    secret_variables,
)
from provider.specs.environment import Environment
from provider.specs.errors import SpecError
from provider.specs.foreach import ForeachOptions
from provider.specs.kubernetes import KubernetesOptions
from provider.specs.resources import Resources
from provider.specs.retry import Retry
from provider.specs.units import parse_duration

COMPUTE_TARGETS = ("local", "kubernetes", "batch")
FOREACH_FORM = "ForeachOptions(max_parallel=8, chunk_size=100) or a dict of it"
MAX_TIMEOUT_SECONDS = 2**31 - 1  # the largest activeDeadlineSeconds Kubernetes accepts
CATCH_FORM = "True, or a Python identifier such as 'error' naming where the Failure is published"


def _spec(cls: type, value: Any, name: str, form: str) -> Any:
    """Accept an instance of ``cls`` or a dict of its keyword arguments."""
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        known = {f.name for f in fields(cls)}
        for key in value:
            if key not in known:
                raise SpecError(
                    f"{name}.{key}", value[key], f"one of the keys {sorted(known)}", "unknown key"
                )
        return cls(**value)
    raise SpecError(name, value, form, f"wrong type {type(value).__name__}")


def _resources(value: Any) -> Resources:
    return _spec(Resources, value, "resources", "Resources(cpu=2, memory='8Gi') or a dict of it")


def _retry(value: Any) -> Retry:
    if isinstance(value, int) and not isinstance(value, bool):
        return Retry(times=value)
    return _spec(Retry, value, "retry", "Retry(times=3, delay='2m'), an int of retries, or a dict")


def _environment(value: Any) -> Environment:
    return _spec(Environment, value, "environment", "Environment(image=..., pip=[...]) or a dict")


def _kubernetes(value: Any) -> KubernetesOptions:
    return _spec(
        KubernetesOptions,
        value,
        "kubernetes",
        "KubernetesOptions(namespace='ml', tolerations=[...]) or a dict of it",
    )


def _batch(value: Any) -> BatchOptions:
    return _spec(
        BatchOptions,
        value,
        "batch",
        "BatchOptions(queue='flow-spot', platform='EC2') or a dict of it",
    )


def _timeout(value: Any) -> timedelta:
    timeout = parse_duration(value, "timeout")
    if timeout > timedelta(seconds=MAX_TIMEOUT_SECONDS):
        raise SpecError(
            "timeout",
            value,
            f"a duration of at most {MAX_TIMEOUT_SECONDS} seconds (about 68 years)",
            "Kubernetes refuses a longer activeDeadlineSeconds, and flow_compute can send any "
            "task to Kubernetes",
        )
    return timeout


def _catch(value: Any) -> str | bool | None:
    if value is None or value is False:
        return None
    if value is True:
        return True
    if isinstance(value, str) and value.isidentifier() and not keyword.iskeyword(value):
        return value
    raise SpecError("catch", value, CATCH_FORM)


def _compute(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and value in COMPUTE_TARGETS):
        return value
    raise SpecError("compute", value, f"one of {COMPUTE_TARGETS} (or None for the default)")


@dataclass(frozen=True)
class TaskSpec:
    """The validated specs of one flow task."""

    resources: Resources = field(default_factory=Resources)
    retry: Retry = field(default_factory=Retry)
    timeout: timedelta | None = None
    catch: str | bool | None = None
    environment: Environment = field(default_factory=Environment)
    compute: str | None = None
    kubernetes: KubernetesOptions = field(default_factory=KubernetesOptions)
    foreach: ForeachOptions = field(default_factory=ForeachOptions)
    batch: BatchOptions = field(default_factory=BatchOptions)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "resources", _resources(self.resources))
        set_(self, "retry", _retry(self.retry))
        if self.timeout is not None:
            set_(self, "timeout", _timeout(self.timeout))
        set_(self, "catch", _catch(self.catch))
        set_(self, "environment", _environment(self.environment))
        set_(self, "compute", _compute(self.compute))
        set_(self, "kubernetes", _kubernetes(self.kubernetes))
        set_(self, "foreach", _spec(ForeachOptions, self.foreach, "foreach", FOREACH_FORM))
        set_(self, "batch", _batch(self.batch))
        if self.compute in ("kubernetes", "batch"):
            check_secrets_for(self.compute, self.environment.secrets)
        if self.compute == "batch":
            check_batch_env(self.environment)
        if self.batch.fargate:
            check_fargate(self.resources)

    @classmethod
    def build(cls, **loose: Any) -> TaskSpec:
        """A spec from ``@flow_task``'s keyword arguments; None means "the default"."""
        return cls().with_overrides(**loose)

    def with_overrides(self, **loose: Any) -> TaskSpec:
        """This spec with the given fields replaced; None keeps a field as it is."""
        known = {f.name for f in fields(self)}
        for name in loose:
            if name not in known:
                raise SpecError(name, loose[name], f"one of {sorted(known)}", "unknown spec")
        given = {name: value for name, value in loose.items() if value is not None}
        return replace(self, **given) if given else self


def check_secrets_for(compute: str, secrets: Sequence[str]) -> None:
    """Secret references must be of the kind the compute target resolves."""
    if compute == "batch":
        secret_variables(secrets)  # full ARNs, each its own variable
        return
    for secret in secrets:
        is_arn = secret.startswith("arn:")
        if compute == "kubernetes" and is_arn:
            raise SpecError(
                "environment.secrets",
                secret,
                "Kubernetes Secret names such as 'db-creds' with compute='kubernetes'",
                "AWS ARNs are resolved by compute='batch' only",
            )


def check_batch_env(environment: Environment) -> None:
    """Batch refuses variables named ``AWS_BATCH*``: they are its own."""
    for name, _ in environment.env:
        if name.startswith(RESERVED_ENV_PREFIX):
            raise SpecError(
                f"environment.env[{name!r}]",
                name,
                f"a variable name not starting with {RESERVED_ENV_PREFIX} with compute='batch'",
                "Batch sets AWS_BATCH_* itself and refuses them in a job",
            )


# The Airflow ``BaseOperator`` arguments each spec field sets: ``retry=`` and ``timeout=`` are
# those arguments, so a task gives one or the other, never both.
AIRFLOW_KWARGS: dict[str, tuple[str, ...]] = {
    "retry": ("retries", "retry_delay", "retry_exponential_backoff", "max_retry_delay"),
    "timeout": ("execution_timeout",),
}


def airflow_retry_kwargs(spec: TaskSpec, given: Iterable[str] = AIRFLOW_KWARGS) -> dict[str, Any]:
    """The spec's retry and timeout as Airflow ``BaseOperator`` keyword arguments, for the spec
    fields ``given`` (those the task set; unset ones leave Airflow's defaults alone)."""
    retry = spec.retry
    kwargs: dict[str, Any] = {
        "retries": retry.times,
        "retry_delay": retry.delay,
        "retry_exponential_backoff": 2.0 if retry.backoff == "exponential" else 0.0,
    }
    if retry.max_delay is not None:
        kwargs["max_retry_delay"] = retry.max_delay
    if spec.timeout is not None:
        kwargs["execution_timeout"] = spec.timeout
    keep = {name for field in given for name in AIRFLOW_KWARGS[field]}
    return {name: value for name, value in kwargs.items() if name in keep}
