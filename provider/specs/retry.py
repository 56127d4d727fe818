"""``Retry``: how often and how patiently a failed task is tried again."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from provider.specs.errors import SpecError
from provider.specs.units import parse_duration

MAX_RETRIES = 100
BACKOFFS = ("constant", "exponential")


@dataclass(frozen=True)
class Retry:
    """``times`` retries after the first try, waiting ``delay`` (doubling when exponential)."""

    times: int = 0
    delay: timedelta | int | float | str = "1m"
    backoff: str = "constant"
    max_delay: timedelta | int | float | str | None = None

    def __post_init__(self) -> None:
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
