"""What the store needs from a place to keep bytes, and what a backend reports back."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class BlobStat:
    """An object's size and when it was last written or verified (unix time).

    ``etag`` is S3's: handed to a transfer, it saves the transfer its own HEAD request.
    """

    size: int
    modified: float
    etag: str | None = None


@dataclass(frozen=True)
class InterruptedWrite:
    """What a killed writer left: a temp file, or an incomplete S3 multipart upload."""

    key: str
    size: int
    modified: float
    upload_id: str | None = None

    def describe(self) -> str:
        return f"{self.key} (multipart upload {self.upload_id})" if self.upload_id else self.key


class Backend(Protocol):
    """A place to keep bytes: a folder or an S3 prefix.

    A backend whose ``reads_in_order`` is true accepts ``on_chunk`` in ``read_into`` and calls
    it with each chunk in order, so the store can hash while the rest is read; the store does
    so for blobs of ``pipeline_min_bytes`` or more (below, it hashes after the read).
    ``reads_in_flight`` is how many small reads the store sends at once when it needs many
    (chunk manifests, a join's results): a round trip costs little on a disk, 10-30 ms on S3.
    """

    reads_in_order: bool
    pipeline_min_bytes: int
    # A content-addressed blob up to this size is written without asking whether it is there:
    # one request instead of an existence check and a write (rewriting equal bytes also renews
    # its age). 0: always check first (a local folder, where a stat costs nothing).
    blind_write_max_bytes: int
    reads_in_flight: int

    def uri(self, key: str) -> str: ...
    def check_root(self) -> None: ...
    def stat(self, key: str) -> BlobStat | None: ...
    def touch(self, key: str, known: BlobStat | None = None) -> bool: ...
    def write_frames(
        self,
        key: str,
        frames: Any,
        progress: Callable[[int], None] | None = None,
        durable: bool = True,
    ) -> None: ...
    def write_bytes(self, key: str, data: bytes, durable: bool = True) -> None: ...
    def read_into(
        self,
        key: str,
        size: int | None = None,
        on_chunk: Callable[[memoryview], None] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> bytearray: ...
    def read_chunks(
        self, key: str, on_chunk: Callable[[memoryview], None], known: BlobStat | None = None
    ) -> None: ...
    def read_bytes(self, key: str) -> bytes: ...
    def read_range(self, key: str, start: int, size: int) -> bytes: ...
    def list(self, prefix: str) -> Iterator[str]: ...
    def children(self, prefix: str) -> Iterator[str]: ...
    def version(self, key: str) -> str | None: ...
    def read_versioned(self, key: str) -> tuple[bytes, str]: ...
    def write_if_version(self, key: str, data: bytes, version: str | None) -> bool: ...
    def delete_many(self, keys: Iterable[str]) -> None: ...
    def entries(self, prefix: str) -> Iterator[tuple[str, int, float]]: ...
    def delete(self, key: str) -> None: ...
    def delete_if_older(self, key: str, cutoff: float) -> bool: ...
    def interrupted_writes(self, prefixes: Iterable[str]) -> Iterator[InterruptedWrite]: ...
    def discard(self, write: InterruptedWrite) -> None: ...
