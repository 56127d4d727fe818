"""Encoding of values into blobs: pickle protocol 5 with out-of-band buffers.

Blob layout (``encoding = "pickle5"``), little-endian::

    b"FTPK" | version: u8 = 1 | 3 zero bytes | n_buffers: u32
    | pickle_length: u64 | buffer_length: u64 * n_buffers
    | pickle stream | buffer 0 | buffer 1 | ...

Large buffers (NumPy arrays, pandas blocks, Arrow buffers) are written from the value's own
memory and read back as views into the one ``bytearray`` that holds the blob: no copy is made
on either side beyond the read itself. Plain ``pickle`` is tried first; ``cloudpickle`` takes
over for what it cannot handle (lambdas, classes and functions of DAG modules) and whenever the
caller asks for pickling by value. Both load with plain ``pickle.loads``.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import struct
from collections import ChainMap
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from provider.store.errors import StoreError

ENCODING = "pickle5"
MAGIC = b"FTPK"
VERSION = 1
_FIXED = struct.Struct("<4sB3xIQ")


@dataclass(frozen=True)
class Encoded:
    """A value ready to store: its frames (written in order), total size and SHA-256."""

    frames: tuple[memoryview, ...]
    size: int
    sha256: str
    type_name: str


def type_name(value: Any) -> str:
    kind = type(value)
    return f"{kind.__module__}.{kind.__qualname__}"


def _pickle(value: Any, by_value: bool) -> tuple[bytes, list[pickle.PickleBuffer]]:
    buffers: list[pickle.PickleBuffer] = []
    if not by_value:
        try:
            return pickle.dumps(value, protocol=5, buffer_callback=buffers.append), buffers
        except (pickle.PicklingError, AttributeError, TypeError):
            buffers.clear()
    out = io.BytesIO()
    _cloud_pickler()(out, protocol=5, buffer_callback=buffers.append).dump(value)
    return out.getvalue(), buffers


def _refuse_file(file: Any) -> Any:
    raise pickle.PicklingError(
        f"an open file ({getattr(file, 'name', '?')!r}) cannot be stored: cloudpickle would "
        "silently turn it into a StringIO of its contents; return its path or its contents"
    )


@lru_cache(maxsize=1)
def _cloud_pickler() -> Any:
    """cloudpickle's pickler, minus its lossy conversion of open files into StringIOs."""
    import cloudpickle

    class Pickler(cloudpickle.CloudPickler):
        dispatch_table = ChainMap(
            {io.TextIOWrapper: _refuse_file}, cloudpickle.CloudPickler.dispatch_table
        )

    return Pickler


def _raw(buffer: pickle.PickleBuffer) -> memoryview:
    try:
        return buffer.raw()
    except BufferError:  # not contiguous: copy this one buffer
        return memoryview(memoryview(buffer).tobytes())


def encode(value: Any, *, by_value: bool = False) -> Encoded:
    """Pickle ``value`` into frames and hash them, without joining the frames."""
    stream, buffers = _pickle(value, by_value)
    raws = [_raw(b) for b in buffers]
    header = _FIXED.pack(MAGIC, VERSION, len(raws), len(stream)) + struct.pack(
        f"<{len(raws)}Q", *(r.nbytes for r in raws)
    )
    frames = (memoryview(header), memoryview(stream), *raws)
    digest = hashlib.sha256()
    for frame in frames:
        digest.update(frame)
    return Encoded(frames, sum(f.nbytes for f in frames), digest.hexdigest(), type_name(value))


def decode(blob: bytearray) -> Any:
    """Load a blob produced by :func:`encode`; buffers become views into ``blob``."""
    view = memoryview(blob)
    if len(view) < _FIXED.size:
        raise StoreError("blob too short for a pickle5 header")
    magic, version, n_buffers, stream_length = _FIXED.unpack_from(view)
    if magic != MAGIC or version != VERSION:
        raise StoreError(f"unknown blob format {bytes(magic)!r} v{version}")
    lengths = struct.unpack_from(f"<{n_buffers}Q", view, _FIXED.size)
    offset = _FIXED.size + 8 * n_buffers
    stream = view[offset : offset + stream_length]
    offset += stream_length
    parts = []
    for length in lengths:
        parts.append(view[offset : offset + length])
        offset += length
    if offset != len(view):
        raise StoreError(f"blob length {len(view)} does not match its header ({offset})")
    return pickle.loads(stream, buffers=parts)
