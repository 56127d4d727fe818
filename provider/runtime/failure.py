"""The value a caught task failure turns into."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Failure:
    """A task's final failure, handed downstream instead of failing the run (``catch=``)."""

    type: str
    message: str
    traceback: str

    @classmethod
    def from_exception(cls, exc: BaseException) -> Failure:
        import traceback as tb  # only when something failed: it costs an import at start

        kind = type(exc)
        return cls(
            type=f"{kind.__module__}.{kind.__qualname__}",
            message=str(exc),
            traceback="".join(tb.format_exception(exc)),
        )

    @property
    def short_type(self) -> str:
        """The exception's class name without the module of a built-in: ``KeyError``,
        ``mylib.errors.BadShard``."""
        return self.type.removeprefix("builtins.")

    @property
    def first_line(self) -> str:
        """The message's first line (a message can be a whole report)."""
        return self.message.strip().split("\n", 1)[0]

    def __bool__(self) -> bool:
        """A Failure is falsy, so ``if result:`` reads naturally downstream."""
        return False
