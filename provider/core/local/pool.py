"""A pool of long-lived local runtime processes that run ``.foreach`` chunks.

Each worker is ``python -m provider.runtime foreach --serve-fd N``: it loads the payload and
the items once, then runs the chunk numbers it reads on stdin, answering
``<chunk> <status> <failed>`` on its own pipe (stdout and stderr stay the user's, streamed to
the log). The pool hands a worker its next chunk as soon as it answers, so fast and slow
chunks balance out; a worker that dies is replaced while chunks are left. Each worker has its
own process group, ended with the pool.
"""

from __future__ import annotations

import os
import selectors
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from provider.core.local.runner import _Lines, terminate_group

LogLine = Callable[[str], None]


def exit_reason(code: int) -> str:
    """``exited with code 3``, or ``was killed by SIGSEGV`` for a negative return code."""
    import signal

    if code >= 0:
        return f"exited with code {code}"
    try:
        return f"was killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"was killed by signal {-code}"


@dataclass
class PoolReport:
    """What became of each chunk: its status as the worker answered, or lost with the worker."""

    answered: dict[int, str] = field(default_factory=dict)  # chunk -> succeeded/failed/error
    failed_items: int = 0
    lost: dict[int, str] = field(default_factory=dict)  # chunk -> why (the worker died)


@dataclass
class _Worker:
    number: int
    process: subprocess.Popen[bytes]
    replies: int  # our end of the reply pipe
    chunk: int | None = None
    pending: bytes = b""


class ChunkPool:
    """Run ``chunks`` over at most ``size`` workers started with ``argv(reply_fd)``."""

    def __init__(
        self,
        argv: Callable[[int], Sequence[str]],
        *,
        env: Mapping[str, str],
        size: int,
        log_line: LogLine,
        log_error: LogLine,
        progress: Callable[[PoolReport, int], None] | None = None,
        progress_every: float = 3.0,
    ) -> None:
        self._argv = argv
        self._env = dict(env)
        self._size = size
        self._log_line = log_line
        self._log_error = log_error
        self._progress = progress
        self._progress_every = progress_every
        self._workers: list[_Worker] = []
        self._killed = False

    def run(self, chunks: Sequence[int]) -> PoolReport:
        report = PoolReport()
        todo = list(reversed(chunks))
        selector = selectors.DefaultSelector()
        try:
            for number in range(min(self._size, len(chunks))):
                self._start(number, selector)
            for worker in self._workers:
                self._next(worker, todo)
            last = time.monotonic()
            while selector.get_map() and not self._killed:
                for key, _ in selector.select(timeout=0.5):
                    key.data(key.fileobj, selector, report, todo)
                if self._progress is not None and time.monotonic() - last >= self._progress_every:
                    last = time.monotonic()
                    self._progress(report, len(chunks))
            for worker in self._workers:
                self._lost(worker, report)
        finally:
            selector.close()
            self.kill()
        return report

    def kill(self, grace_seconds: float = 3.0) -> None:
        """End every worker and what it started; ``run`` then returns (also when this is called
        from a signal handler while it waits: the pipes it watches are closed here)."""
        self._killed = True
        for worker in self._workers:
            if worker.process.poll() is None:
                terminate_group(worker.process, grace_seconds)
            for pipe in (worker.process.stdin, worker.process.stdout, worker.process.stderr):
                if pipe is not None and not pipe.closed:
                    pipe.close()

    @staticmethod
    def _lost(worker: _Worker, report: PoolReport) -> None:
        code = worker.process.wait()
        if worker.chunk is not None:
            report.lost[worker.chunk] = f"worker {worker.number} {exit_reason(code)}"
            worker.chunk = None

    def _start(self, number: int, selector: selectors.BaseSelector) -> None:
        read_end, write_end = os.pipe()
        try:
            process = subprocess.Popen(
                list(self._argv(write_end)),
                env=self._env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(write_end,),
                start_new_session=True,
            )
        finally:
            os.close(write_end)
        worker = _Worker(number, process, read_end)
        self._workers.append(worker)
        prefix = f"[worker {number}] "
        for pipe, emit in ((process.stdout, self._log_line), (process.stderr, self._log_error)):
            assert pipe is not None
            lines = _Lines(_prefixed(prefix, emit))
            os.set_blocking(pipe.fileno(), False)
            selector.register(pipe, selectors.EVENT_READ, _output(lines))
        os.set_blocking(read_end, False)
        selector.register(read_end, selectors.EVENT_READ, self._reply_handler(worker))

    def _next(self, worker: _Worker, todo: list[int]) -> None:
        stdin = worker.process.stdin
        assert stdin is not None
        worker.chunk = None
        if not todo:
            stdin.close()  # no more work: the worker exits
            return
        chunk = todo.pop()
        try:
            stdin.write(f"{chunk}\n".encode())
            stdin.flush()
        except BrokenPipeError:  # the worker died: another one takes the chunk
            todo.append(chunk)
            return
        worker.chunk = chunk

    def _reply_handler(self, worker: _Worker) -> Callable[..., None]:
        def handle(
            fd: int, selector: selectors.BaseSelector, report: PoolReport, todo: list[int]
        ) -> None:
            try:
                data = os.read(fd, 4096)
            except BlockingIOError:
                return
            if not data:  # the worker exited: its chunk is lost; another takes what is left
                selector.unregister(fd)
                os.close(fd)
                self._lost(worker, report)
                if todo and not self._killed:
                    self._start(len(self._workers), selector)
                    self._next(self._workers[-1], todo)
                return
            worker.pending += data
            *lines, worker.pending = worker.pending.split(b"\n")
            for line in lines:
                chunk, status, failed = line.decode().split()
                report.answered[int(chunk)] = status
                report.failed_items += int(failed)
                self._next(worker, todo)

        return handle


def _prefixed(prefix: str, emit: LogLine) -> LogLine:
    return lambda line: emit(prefix + line)


def _output(lines: _Lines) -> Callable[..., None]:
    def handle(pipe: Any, selector: selectors.BaseSelector, *_: object) -> None:
        fd = pipe.fileno()
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return
        if chunk:
            lines.feed(chunk)
        else:
            selector.unregister(pipe)
            lines.close()

    return handle
