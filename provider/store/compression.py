"""zstd compression of stored values, where it pays: on S3, for values whose sample compresses.

A sample of the encoded value (a few slices spread over it) is compressed at level 1; when it
comes out under ``THRESHOLD`` of its size, the whole value is compressed at ``LEVEL`` (on every
core for large values) and stored with the encoding ``pickle5+zstd``. The stored bytes are the
zstd frame, and the blob's address is the SHA-256 of those bytes: a reader checks exactly what
it fetched before the decompressor or the unpickler sees any of it. ``zstandard`` is imported
only here, when a value is compressed or read back.
"""

from __future__ import annotations

from collections.abc import Sequence

ENCODING = "pickle5+zstd"
THRESHOLD = 0.8  # compressed sample / sample: below this, compressing pays
LEVEL = 3
MIN_BYTES = 4096  # smaller values are stored as they are: the request costs more than the bytes
SAMPLE_SLICE = 64 * 1024
SAMPLE_SLICES = 4
THREADED_BYTES = 32 * 1024 * 1024  # compress values this large on every core


def _slice(frames: Sequence[memoryview], start: int, length: int) -> bytes:
    """``length`` bytes from offset ``start`` of the frames taken as one stream."""
    out = bytearray()
    offset = 0
    for frame in frames:
        view = frame.cast("B") if frame.format != "B" or frame.ndim != 1 else frame
        end = offset + view.nbytes
        if end > start and len(out) < length:
            lo = max(0, start - offset)
            out += view[lo : lo + length - len(out)]
        offset = end
        if len(out) >= length:
            break
    return bytes(out)


def sample(frames: Sequence[memoryview], size: int) -> bytes:
    """Up to ``SAMPLE_SLICES`` slices of ``SAMPLE_SLICE`` bytes, spread evenly over the value."""
    if size <= SAMPLE_SLICE * SAMPLE_SLICES:
        return _slice(frames, 0, size)
    step = (size - SAMPLE_SLICE) // (SAMPLE_SLICES - 1)
    return b"".join(_slice(frames, i * step, SAMPLE_SLICE) for i in range(SAMPLE_SLICES))


def sample_ratio(frames: Sequence[memoryview], size: int) -> float:
    """Compressed size over size, of the value's sample at level 1."""
    import zstandard

    data = sample(frames, size)
    return len(zstandard.ZstdCompressor(level=1).compress(data)) / max(1, len(data))


def worth_compressing(frames: Sequence[memoryview], size: int) -> bool:
    return size >= MIN_BYTES and sample_ratio(frames, size) < THRESHOLD


def compress(frames: Sequence[memoryview], size: int) -> bytes:
    """One zstd frame of the value, its size recorded in the frame header."""
    import zstandard

    threads = -1 if size >= THREADED_BYTES else 0
    compressor = zstandard.ZstdCompressor(level=LEVEL, threads=threads, write_content_size=True)
    stream = compressor.compressobj(size=size)
    parts = [stream.compress(frame) for frame in frames]
    parts.append(stream.flush())
    return b"".join(parts)


def decompress(blob: bytearray | bytes) -> bytearray:
    """The value's bytes, in one new buffer of the size the frame header gives."""
    import zstandard

    from provider.store.errors import StoreError

    size = zstandard.frame_content_size(blob)
    if size < 0:
        raise StoreError("a zstd blob without its content size in the frame header")
    out = bytearray(size)
    view = memoryview(out)
    with zstandard.ZstdDecompressor().stream_reader(memoryview(blob)) as reader:
        filled = 0
        while filled < size:
            got = reader.readinto(view[filled:])
            if not got:
                break
            filled += got
    if filled != size:
        raise StoreError(f"a zstd blob decompressed to {filled} bytes, not {size}")
    return out
