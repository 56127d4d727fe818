"""The one exception type for bad task specs."""

from __future__ import annotations


class SpecError(ValueError):
    """A bad spec value; the message names the field, repeats the value, shows a good form."""

    def __init__(self, field: str, value: object, accepted: str, reason: str | None = None):
        self.field = field
        self.value = value
        self.accepted = accepted
        self.reason = reason
        because = f": {reason}" if reason else ""
        super().__init__(f"{field}={value!r} is invalid{because}. Accepted: {accepted}")
