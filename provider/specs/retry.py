"""``Retry``: how often and how patiently a failed task is tried again."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from provider.specs.errors import SpecError
from provider.specs.units import parse_duration, parse_mebibytes

_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")

MAX_RETRIES = 100
MAX_INFRA = 9  # Batch runs a job at most 10 times
BACKOFFS = ("constant", "exponential")
ON_OOM = ("fail", "grow")
ON_FORM = (
    "a tuple of exception classes or dotted names, such as (ConnectionError, 'requests.Timeout')"
)


def _exception_names(value: Any) -> tuple[str, ...]:
    """Exception classes as ``module.QualName``; the runtime records the same for a failure."""
    if isinstance(value, (str, type)):
        value = (value,)
    if not isinstance(value, (tuple, list)):
        raise SpecError("retry.on", value, ON_FORM, "not a tuple")
    names = []
    for item in value:
        if isinstance(item, type) and issubclass(item, BaseException):
            names.append(f"{item.__module__}.{item.__qualname__}")
        elif isinstance(item, str) and _DOTTED.fullmatch(item):
            names.append(item if "." in item else f"builtins.{item}")
        else:
            raise SpecError("retry.on", item, ON_FORM)
    return tuple(dict.fromkeys(names))


@dataclass(frozen=True)
class Retry:
    """``times`` retries after the first try, waiting ``delay`` (doubling when exponential).

    ``infra``: how often a try lost to the infrastructure (an evicted or preempted pod, a lost
    node, a reclaimed Batch host) is submitted again within the same Airflow try, without
    spending ``times``. ``on``: retry only failures of the function with these exception types
    (or subclasses); any other fails at once. ``on_oom="grow"``: a try killed for memory is
    retried asking ``oom_factor`` times the memory, at most ``max_memory``.
    """

    times: int = 0
    delay: timedelta | int | float | str = "1m"
    backoff: str = "constant"
    max_delay: timedelta | int | float | str | None = None
    infra: int = 3
    on: Any = ()
    on_oom: str = "fail"
    oom_factor: float = 2.0
    max_memory: int | str | None = None

    def __post_init__(self) -> None:
        self._check_failure_rules()
        times = self.times
        if not isinstance(times, int) or isinstance(times, bool) or not 0 <= times <= MAX_RETRIES:
            raise SpecError("retry.times", times, f"an int from 0 to {MAX_RETRIES}, such as 3")
        delay = parse_duration(self.delay, "retry.delay")
        if self.backoff not in BACKOFFS:
            raise SpecError("retry.backoff", self.backoff, "'constant' or 'exponential'")
        if self.backoff == "constant":
            _check_schedulable(delay, self.delay)
        object.__setattr__(self, "delay", delay)
        if self.max_delay is not None:
            if self.backoff != "exponential":
                raise SpecError(
                    "retry.max_delay",
                    self.max_delay,
                    "max_delay together with backoff='exponential'",
                    "a constant delay never grows",
                )
            max_delay = parse_duration(self.max_delay, "retry.max_delay")
            if max_delay < delay:
                raise SpecError(
                    "retry.max_delay",
                    self.max_delay,
                    f"a duration of at least delay ({delay})",
                    "shorter than delay",
                )
            object.__setattr__(self, "max_delay", max_delay)

    def _check_failure_rules(self) -> None:
        infra = self.infra
        if not isinstance(infra, int) or isinstance(infra, bool) or not 0 <= infra <= MAX_INFRA:
            raise SpecError("retry.infra", infra, f"an int from 0 to {MAX_INFRA}, such as 3")
        object.__setattr__(self, "on", _exception_names(self.on))
        if self.on_oom not in ON_OOM:
            raise SpecError("retry.on_oom", self.on_oom, "'fail' or 'grow'")
        factor = self.oom_factor
        if (
            isinstance(factor, bool)
            or not isinstance(factor, (int, float))
            or not math.isfinite(factor)
            or not 1 < factor <= 16
        ):
            raise SpecError("retry.oom_factor", factor, "a number above 1 and at most 16, e.g. 2")
        if self.max_memory is not None:
            object.__setattr__(
                self, "max_memory", parse_mebibytes(self.max_memory, "retry.max_memory")
            )

    def grown_memory(self, memory_mib: int) -> int:
        """The memory the next try asks for after one killed for memory at ``memory_mib``."""
        grown = math.ceil(memory_mib * self.oom_factor)
        cap = self.max_memory
        return min(grown, int(cap)) if cap is not None else grown


def _check_schedulable(delay: timedelta, given: object) -> None:
    """Airflow retries at the failure time plus a constant delay: a ``datetime``, year <= 9999.

    (An exponential backoff is capped by ``[core] max_task_retry_delay`` before it is added.)
    """
    try:
        datetime.now(timezone.utc) + delay
    except OverflowError:
        raise SpecError(
            "retry.delay",
            given,
            "a delay that ends before the year 10000, such as '2m' or '1d'",
            "Airflow adds a constant delay to the failure time and cannot go past 9999-12-31",
        ) from None
