"""The ``file://`` blob backend: a folder, atomic writes by temp file + rename.

A write goes to ``.<name>.tmp-<uuid>`` next to its target and is renamed into place, so a killed
writer leaves only such a temp file behind (``interrupted_writes`` finds them). Deleting for gc
is airtight against writers that renew a blob: the blob is first renamed away (atomic), then
its modification time is checked again; a writer's ``touch`` of a renamed-away blob fails, and
the writer stores it again.
"""

from __future__ import annotations

import errno
import io
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from provider.store.backend import BlobStat, InterruptedWrite
from provider.store.errors import MissingArtifact, StoreError, size_mismatch
from provider.store.keys import check_key

_TMP_MARK = ".tmp-"
_FULL = (errno.ENOSPC, errno.EDQUOT)
READ_CHUNK = 8 * 1024 * 1024


class FileBackend:
    """Blobs and manifests as files under ``root``."""

    reads_in_order = True
    blind_write_max_bytes = 0  # a stat costs less than rewriting a blob
    pipeline_min_bytes = 16 * 1024 * 1024  # below, hashing after the read costs less
    reads_in_flight = 8  # a network file system answers in parallel; a disk does not mind

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    def uri(self, key: str) -> str:
        return self._path(key).as_uri()

    def check_root(self) -> None:
        """Raise ``StoreError`` unless the store's folder exists."""
        if not self.root.is_dir():
            raise StoreError(f"no artifact store at {self.root}")

    def stat(self, key: str) -> BlobStat | None:
        """Size and modification time of the file, or None when there is none."""
        try:
            info = self._path(key).stat()
        except FileNotFoundError:
            return None
        return BlobStat(info.st_size, info.st_mtime)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def touch(self, key: str, known: BlobStat | None = None) -> bool:
        """Set the modification time to now; False when the file is gone."""
        try:
            os.utime(self._path(key))
        except FileNotFoundError:
            return False
        return True

    def write_frames(
        self,
        key: str,
        frames: Iterable[memoryview | bytes],
        progress: Callable[[int], None] | None = None,
        durable: bool = True,
    ) -> None:
        """Write atomically: readers see the whole file or nothing, even if this is interrupted.

        ``durable`` also flushes it to the disk (fsync) before it takes its name, so it
        survives a crash of the machine; what can be rebuilt skips that cost.
        """
        path = self._path(key)
        tmp = path.with_name(f".{path.name}{_TMP_MARK}{os.urandom(16).hex()}")
        with self._naming_a_full_disk(key):
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(tmp, "wb") as out:
                    for frame in frames:
                        out.write(frame)
                        if progress is not None:
                            progress(len(memoryview(frame).cast("B")))
                    out.flush()
                    if durable:
                        os.fsync(out.fileno())
                os.replace(tmp, path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise

    @contextmanager
    def _naming_a_full_disk(self, key: str) -> Iterator[None]:
        """Turn ENOSPC / EDQUOT into a ``StoreError`` that names the store and the key."""
        try:
            yield
        except OSError as error:
            if error.errno not in _FULL:
                raise
            reason = os.strerror(error.errno).lower()
            raise StoreError(
                f"artifact store {self.root.as_uri()} is full ({reason}) writing {key}; "
                "free space or point [flow_task] artifact_store elsewhere"
            ) from error

    def write_bytes(self, key: str, data: bytes, durable: bool = True) -> None:
        self.write_frames(key, (data,), durable=durable)

    def read_into(
        self,
        key: str,
        size: int | None = None,
        on_chunk: Callable[[memoryview], None] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> bytearray:
        """The whole file in one buffer, read without intermediate copies.

        ``size`` (the reference's claim) is checked against the file before allocating.
        ``on_chunk`` sees each chunk as soon as it is read, in order (the store hashes them
        while the next chunk is read).
        """
        with self._open(key) as src:
            actual = os.fstat(src.fileno()).st_size
            if size is not None and actual != size:
                raise size_mismatch(self.uri(key), size, actual)
            data = bytearray(actual)
            view = memoryview(data)
            filled = 0
            while filled < actual:
                n = src.readinto(view[filled : filled + READ_CHUNK])
                if not n:
                    break
                if on_chunk is not None:
                    on_chunk(view[filled : filled + n])
                if progress is not None:
                    progress(n)
                filled += n
        return data if filled == actual else data[:filled]

    def read_chunks(
        self, key: str, on_chunk: Callable[[memoryview], None], known: BlobStat | None = None
    ) -> None:
        """Stream the file to ``on_chunk`` in order, through one reused 8 MiB buffer."""
        buffer = bytearray(READ_CHUNK)
        view = memoryview(buffer)
        with self._open(key) as src:
            while n := src.readinto(buffer):
                on_chunk(view[:n])

    def _open(self, key: str) -> io.FileIO:
        path = self._path(key)
        try:
            return open(path, "rb", buffering=0)  # the caller closes it
        except FileNotFoundError:
            raise MissingArtifact(f"no file {path}") from None

    def read_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise MissingArtifact(f"no file {path}") from None

    def read_range(self, key: str, start: int, size: int) -> bytes:
        """``size`` bytes from ``start`` (fewer where the file ends first)."""
        with self._open(key) as src:
            src.seek(start)
            data = bytearray(size)
            filled = 0
            while filled < size and (n := src.readinto(memoryview(data)[filled:])):
                filled += n
        return bytes(data[:filled])

    def entries(self, prefix: str) -> Iterator[tuple[str, int, float]]:
        """(key, size, modification time) of every object under ``prefix``."""
        for key in self.list(prefix):
            try:
                info = self._path(key).stat()
            except FileNotFoundError:  # deleted since it was listed
                continue
            yield key, info.st_size, info.st_mtime

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_if_older(self, key: str, cutoff: float) -> bool:
        """Delete the file unless it was written or renewed after ``cutoff``; True if deleted.

        The file is renamed to a temp name first, so no writer can renew it between the last
        check of its age and the unlink.
        """
        path = self._path(key)
        quarantine = path.with_name(f".{path.name}{_TMP_MARK}gc-{os.urandom(16).hex()}")
        try:
            os.rename(path, quarantine)
        except FileNotFoundError:
            return False
        if quarantine.stat().st_mtime <= cutoff:
            quarantine.unlink()
            return True
        # Renewed since the scan: a writer relies on it. Put it back unless a writer already
        # stored a new copy (equal content: replacing one with the other would be harmless).
        if path.exists():
            quarantine.unlink()
        else:
            os.replace(quarantine, path)
        return False

    def interrupted_writes(self, prefixes: Iterable[str]) -> Iterator[InterruptedWrite]:
        """Temp files of killed writers (and of a killed gc) under ``prefixes``.

        Their age is the later of modification and status change time: a rename (gc's
        quarantine) changes the latter.
        """
        for prefix in prefixes:
            base = self._path(prefix)
            for path in sorted(base.rglob(f".*{_TMP_MARK}*")) if base.is_dir() else ():
                try:
                    info = path.stat()
                except FileNotFoundError:  # completed or removed since it was listed
                    continue
                key = path.relative_to(self.root).as_posix()
                yield InterruptedWrite(key, info.st_size, max(info.st_mtime, info.st_ctime))

    def discard(self, write: InterruptedWrite) -> None:
        self._path(write.key).unlink(missing_ok=True)

    def list(self, prefix: str) -> Iterator[str]:
        """Keys under ``prefix`` (a folder key), in sorted order; temp files are skipped."""
        base = self._path(prefix)
        if not base.is_dir():
            return
        for path in sorted(base.rglob("*")):
            if path.is_file() and _TMP_MARK not in path.name:
                yield path.relative_to(self.root).as_posix()

    def children(self, prefix: str) -> Iterator[str]:
        """Names of the folders right under ``prefix``, in order."""
        base = self._path(prefix)
        if base.is_dir():
            yield from sorted(p.name for p in base.iterdir() if p.is_dir())

    # A compare-and-swap on one small file: a write replaces the file by rename, so its inode,
    # mtime and size name a version; writers compare and replace under an exclusive lock.

    def version(self, key: str) -> str | None:
        try:
            return _version(self._path(key).stat())
        except FileNotFoundError:
            return None

    def read_versioned(self, key: str) -> tuple[bytes, str]:
        with self._open(key) as src:
            return src.readall(), _version(os.fstat(src.fileno()))

    def write_if_version(self, key: str, data: bytes, version: str | None) -> bool:
        """Write unless the file changed since ``version`` (None: unless it exists now)."""
        import fcntl

        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(f".{path.name}.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            if self.version(key) != version:
                return False
            self.write_bytes(key, data)
            return True

    def delete_many(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.delete(key)


def _version(info: os.stat_result) -> str:
    return f"{info.st_ino}-{info.st_mtime_ns}-{info.st_size}"
