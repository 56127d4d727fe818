"""``Retry(on=...)`` as an Airflow 3.3 retry policy: only the listed exception types retry."""

from __future__ import annotations

from typing import Any

from airflow.sdk.definitions.retry_policy import RetryDecision, RetryPolicy


class FlowRetryPolicy(RetryPolicy):
    """Retry a flow task whose function raised one of ``on`` (or a subclass); fail any other
    failure of the function at once. A failure that is not the function's own (the runtime
    was killed, a pod was OOMKilled) follows the task's ordinary retries."""

    def __init__(self, on: tuple[str, ...]) -> None:
        self.on = tuple(on)

    def evaluate(
        self, exception: BaseException, try_number: int, max_tries: int, context: Any = None
    ) -> RetryDecision:
        types = getattr(exception, "error_types", None)
        if not types:
            return RetryDecision.default()
        if any(name in self.on for name in types):
            return RetryDecision.default()  # retried, within retry.times
        return RetryDecision.fail(
            f"{types[0]} is not one of retry.on={list(self.on)}: failing without a retry"
        )

    def serialize(self) -> dict[str, Any]:
        return {"on": list(self.on)}

    @classmethod
    def deserialize(cls, data: dict[str, Any]) -> FlowRetryPolicy:
        return cls(tuple(data["on"]))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FlowRetryPolicy) and other.on == self.on

    def __hash__(self) -> int:
        return hash(self.on)
