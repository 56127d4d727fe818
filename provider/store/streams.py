"""File-like adapters that let boto3's transfer manager read and write our buffers in place."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence


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
    """

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.buffer = bytearray(size)
        self._view = memoryview(self.buffer)

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        n = len(data)
        end = self._pos + n
        if end > len(self.buffer):
            raise OSError(f"download overran the expected size {len(self.buffer)} (to {end})")
        self._view[self._pos : end] = data
        self._pos = end
        return n


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
