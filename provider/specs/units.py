"""Parsing of CPU quantities, memory sizes (MiB) and durations."""

from __future__ import annotations

import math
import re
from datetime import timedelta
from decimal import ROUND_CEILING, Decimal, InvalidOperation

from provider.specs.errors import SpecError

CPU_FORM = "a number of cores (2, 0.5) or a Kubernetes quantity string ('500m', '2')"
MEMORY_FORM = "an int of MiB (4096) or a string with a unit such as '16Gi', '500Mi', '16G'"
UNITLESS_MEMORY_FORM = "an int of MiB (4096) or a string with a unit ('4096Mi', '4Gi')"
DURATION_FORM = "a timedelta, seconds as an int (90), or a string such as '90s', '2m', '1h30m'"

_QUANTITY = re.compile(r"(?P<number>[0-9]+(?:\.[0-9]+)?|\.[0-9]+)(?P<unit>[A-Za-z]*)")
_BYTES_PER_UNIT = {
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
}
_MIB = Decimal(2**20)
_DURATION = re.compile(
    r"(?:(?P<d>[0-9]+)d)?\s*(?:(?P<h>[0-9]+)h)?\s*(?:(?P<m>[0-9]+)m(?!s))?\s*"
    r"(?:(?P<s>[0-9]+(?:\.[0-9]+)?)s)?\s*(?:(?P<ms>[0-9]+)ms)?"
)
_SECONDS = re.compile(r"[0-9]+")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_cpu(value: object, field: str = "resources.cpu") -> float:
    """Cores as a float that is a whole number of millicores (Kubernetes' precision)."""
    if _is_number(value):
        cores = Decimal(str(value))
    elif isinstance(value, str):
        match = _QUANTITY.fullmatch(value.strip())
        if not match or match["unit"] not in ("", "m"):
            raise SpecError(field, value, CPU_FORM, "not a CPU quantity")
        cores = Decimal(match["number"]) / (1000 if match["unit"] == "m" else 1)
    else:
        raise SpecError(field, value, CPU_FORM, f"wrong type {type(value).__name__}")
    if not cores.is_finite() or cores <= 0:
        raise SpecError(field, value, CPU_FORM, "must be greater than zero")
    millicores = cores * 1000
    if millicores != millicores.to_integral_value():
        raise SpecError(field, value, CPU_FORM, "finer than one millicore (0.001)")
    return float(cores)


def parse_mebibytes(value: object, field: str) -> int:
    """A size in whole MiB, rounded up; ints are MiB already (Metaflow's convention).

    A string needs a unit: ``"4096"`` would be MiB to a Metaflow user and bytes to Kubernetes.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        mib = value
    elif isinstance(value, float):
        raise SpecError(field, value, MEMORY_FORM, "a float; use an int of MiB or a string")
    elif isinstance(value, str):
        match = _QUANTITY.fullmatch(value.strip())
        if not match:
            raise SpecError(field, value, MEMORY_FORM, "not a size")
        if not match["unit"]:
            raise SpecError(
                field,
                value,
                UNITLESS_MEMORY_FORM,
                "a size without a unit is ambiguous: MiB in Metaflow's int form, "
                "bytes in a Kubernetes quantity",
            )
        if match["unit"] not in _BYTES_PER_UNIT:
            raise SpecError(field, value, MEMORY_FORM, f"unknown unit {match['unit']!r}")
        try:
            size = Decimal(match["number"]) * _BYTES_PER_UNIT[match["unit"]]
        except InvalidOperation as exc:  # pragma: no cover - the regex admits only decimals
            raise SpecError(field, value, MEMORY_FORM, "not a number") from exc
        mib = int((size / _MIB).to_integral_value(rounding=ROUND_CEILING))
    else:
        raise SpecError(field, value, MEMORY_FORM, f"wrong type {type(value).__name__}")
    if mib <= 0:
        raise SpecError(field, value, MEMORY_FORM, "must be greater than zero")
    return mib


def parse_duration(value: object, field: str) -> timedelta:
    """A positive duration that fits a ``timedelta`` (at most 999999999 days)."""
    try:
        result = _duration(value, field)
    except OverflowError:
        raise SpecError(
            field,
            value,
            DURATION_FORM,
            f"too long: a duration is at most {timedelta.max.days} days",
        ) from None
    if result <= timedelta(0):
        raise SpecError(field, value, DURATION_FORM, "must be longer than zero")
    return result


def _duration(value: object, field: str) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if _is_number(value):
        if not math.isfinite(float(value)):  # type: ignore[arg-type]
            raise SpecError(field, value, DURATION_FORM, "not finite")
        return timedelta(seconds=float(value))  # type: ignore[arg-type]
    if isinstance(value, str):
        text = value.strip()
        if _SECONDS.fullmatch(text):
            return timedelta(seconds=int(text))
        match = _DURATION.fullmatch(text)
        if not text or not match or not any(match.groupdict().values()):
            raise SpecError(field, value, DURATION_FORM, "not a duration")
        parts = {k: float(v) for k, v in match.groupdict().items() if v}
        return timedelta(
            days=parts.get("d", 0),
            hours=parts.get("h", 0),
            minutes=parts.get("m", 0),
            seconds=parts.get("s", 0),
            milliseconds=parts.get("ms", 0),
        )
    raise SpecError(field, value, DURATION_FORM, f"wrong type {type(value).__name__}")
