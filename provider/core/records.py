"""Durable records written off a local try's critical path, and awaited before it reports.

A local try's launch records (the run's manifest and its start in the run index, the code
package, the launch manifest) do not have to be stored before its runtime starts: the runtime
gets its payload over its channel and never reads them. :class:`Background` writes them while
the runtime runs; the try awaits them before it reports, and fails when one could not be
written, so no try reports a success that its records do not show.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

THREADS = 4  # the launch records, each a request or two: written at once


class Background:
    """Writes submitted now, all awaited by :meth:`wait` (which raises the first failure)."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(THREADS, thread_name_prefix="flowtask-records")
        self._futures: list[Future[Any]] = []

    def submit(self, write: Callable[..., Any], *args: Any, **kwargs: Any) -> Future[Any]:
        future = self._pool.submit(write, *args, **kwargs)
        self._futures.append(future)
        return future

    def wait(self) -> None:
        """Every write submitted so far has ended; the first that failed raises."""
        error: BaseException | None = None
        for future in self._futures:
            found = future.exception()
            if found is not None and error is None:
                error = found
        self._futures.clear()
        if error is not None:
            raise error

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def at_once(*writes: Callable[[], Any]) -> list[BaseException | None]:
    """Run ``writes`` concurrently (the first here, the others on threads); what each raised."""
    if not writes:
        return []
    with ThreadPoolExecutor(max(1, len(writes) - 1), thread_name_prefix="flowtask-records") as pool:
        futures = [pool.submit(write) for write in writes[1:]]
        first: BaseException | None = None
        try:
            writes[0]()
        except Exception as exc:
            first = exc
        return [first, *(future.exception() for future in futures)]
