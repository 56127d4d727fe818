"""File-like adapters that let boto3's transfer manager read and write our buffers in place."""

from __future__ import annotations

import heapq
import io
from collections.abc import Callable, Sequence

from provider.store.errors import IntegrityError


class _Positioned(io.RawIOBase):
    """Seek and tell over a stream of known size."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self._size = size
        self._pos = 0

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos


class FramesReader(_Positioned):
    """A seekable read-only stream over a sequence of buffers, without joining them."""

    def __init__(self, frames: Sequence[memoryview | bytes]) -> None:
        self._frames = [memoryview(f).cast("B") for f in frames]
        self._starts = []
        total = 0
        for frame in self._frames:
            self._starts.append(total)
            total += frame.nbytes
        super().__init__(total)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        out = memoryview(buffer).cast("B")
        written = 0
        index = self._frame_at(self._pos)
        while written < len(out) and index < len(self._frames):
            frame = self._frames[index]
            start = self._pos - self._starts[index]
            n = min(frame.nbytes - start, len(out) - written)
            out[written : written + n] = frame[start : start + n]
            written += n
            self._pos += n
            index += 1
        return written

    def _frame_at(self, pos: int) -> int:
        for index in range(len(self._frames) - 1, -1, -1):
            if self._starts[index] <= pos:
                return index if pos < self._size else len(self._frames)
        return len(self._frames)


class BufferSink(_Positioned):
    """A seekable write-only stream into a preallocated bytearray.

    boto3's transfer manager downloads ranges in parallel and writes each at its offset, so
    the blob lands in one buffer without a temporary file or a final join. A short download
    leaves zeros behind, which the store's hash check catches.

    ``on_chunk`` sees the buffer in order, each byte once, as views into it: a chunk is handed
    over once every byte before it has landed (as ranges complete), in pieces of at least
    ``min_chunk`` bytes, the rest at :meth:`finish`. A retried stream writes its range again
    from the start: bytes already handed over are compared, not written, and differing ones
    raise ``IntegrityError``.
    """

    def __init__(
        self,
        size: int,
        on_chunk: Callable[[memoryview], None] | None = None,
        min_chunk: int = 1024 * 1024,
    ) -> None:
        super().__init__(size)
        self.buffer = bytearray(size)
        self._view = memoryview(self.buffer)
        self._on_chunk = on_chunk
        self._min_chunk = min_chunk
        self._landed = 0  # every byte before this has been written
        self._handed = 0  # every byte before this has been handed to on_chunk
        self._ahead: list[tuple[int, int]] = []  # written spans beyond ``_landed``, a heap

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(data).cast("B")
        start, end = self._pos, self._pos + view.nbytes
        if end > len(self.buffer):
            raise OSError(f"download overran the expected size {len(self.buffer)} (to {end})")
        kept = max(0, min(end, self._handed) - start)  # already handed over: compare only
        if kept and self._view[start : start + kept] != view[:kept]:
            raise IntegrityError(
                f"a retried download returned other bytes at {start}..{start + kept} than "
                "the first attempt: the object changed while it was read"
            )
        self._view[start + kept : end] = view[kept:]
        self._pos = end
        if self._on_chunk is not None:
            self._landed_span(start, end)
        return view.nbytes

    def _landed_span(self, start: int, end: int) -> None:
        """Advance the landed prefix; hand over what it gained once it is ``min_chunk``."""
        if start > self._landed:
            heapq.heappush(self._ahead, (start, end))
            return
        self._landed = max(self._landed, end)
        while self._ahead and self._ahead[0][0] <= self._landed:
            self._landed = max(self._landed, heapq.heappop(self._ahead)[1])
        if self._landed - self._handed >= self._min_chunk:
            self._hand_over(self._landed)

    def _hand_over(self, end: int) -> None:
        assert self._on_chunk is not None
        self._on_chunk(self._view[self._handed : end])
        self._handed = end

    def finish(self) -> None:
        """Hand over the rest once the download is complete (zeros where bytes are missing)."""
        if self._on_chunk is not None and self._handed < len(self.buffer):
            self._hand_over(len(self.buffer))


class OrderedSink(io.RawIOBase):
    """A write-only stream that is not seekable: boto3's transfer manager then downloads
    ranges in parallel but writes them in order, each handed to ``on_chunk`` (e.g. a hash).
    """

    def __init__(self, on_chunk: Callable[[memoryview], None]) -> None:
        super().__init__()
        self._on_chunk = on_chunk

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(data).cast("B")
        self._on_chunk(view)
        return view.nbytes
