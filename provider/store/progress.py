"""Progress of large transfers: periodic lines while they run, bytes and rate at the end."""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger("provider.store")

PROGRESS_MIN_BYTES = 64 * 1024 * 1024
MiB = 1024 * 1024


class Progress:
    """Counts transferred bytes (from any thread) and logs every ``interval`` seconds."""

    def __init__(self, verb: str, uri: str, total: int, interval: float = 5.0) -> None:
        self.verb = verb
        self.uri = uri
        self.total = total
        self.interval = interval
        self.done = 0
        self._started = self._last = time.monotonic()
        self._lock = threading.Lock()

    def __call__(self, nbytes: int) -> None:
        with self._lock:
            self.done += nbytes
            now = time.monotonic()
            if now - self._last < self.interval:
                return
            self._last = now
        rate = self.done / MiB / max(now - self._started, 1e-9)
        log.info(
            "%s %s: %.1f of %.1f MiB (%.0f%%) at %.1f MiB/s",
            self.verb,
            self.uri,
            self.done / MiB,
            self.total / MiB,
            100 * self.done / self.total,
            rate,
        )

    def finish(self) -> None:
        seconds = max(time.monotonic() - self._started, 1e-9)
        log.info(
            "%s %s: %.1f MiB in %.2f s (%.1f MiB/s)",
            self.verb,
            self.uri,
            self.total / MiB,
            seconds,
            self.total / MiB / seconds,
        )
