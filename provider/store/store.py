"""The content-addressed artifact store.

Storing content that is already there costs one existence check (a ``stat`` or a HEAD) while
the stored blob is younger than ``RENEW_AFTER``; a blob up to the backend's
``blind_write_max_bytes`` (256 KiB on S3, where a request is a round trip) is written at once
instead, one PUT: the same bytes under the same key, which renews its age as well. A stored
blob older than that is read back and its SHA-256 checked; an intact blob then gets its age
renewed (``touch``), a damaged one is stored again. A blob's modification time thus means
"last written or verified", and gc keeps everything younger than its grace period. Hence: a
dedup hit renews the blob's age when it is older than 1 h; gc with a grace of at least 1 h is
safe against concurrent writers (a reference returned by ``put`` stays safe for the grace
period minus 1 h even before a manifest names it). gc checks each blob's age again right
before deleting it; see ``provider.store.gc``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from provider.store import codec, compression
from provider.store.backend import Backend, BlobStat
from provider.store.errors import (
    BadManifest,
    IntegrityError,
    MissingArtifact,
    StoreError,
    size_mismatch,
)
from provider.store.file import FileBackend
from provider.store.keys import blob_key, check_key
from provider.store.progress import PROGRESS_MIN_BYTES, Progress
from provider.store.reference import Reference, selected_item

log = logging.getLogger("provider.store")

CHUNKS_ENCODING = "flowtask.chunks"  # a JSON list of chunk results, read as one list
# Values stored one after another in one blob, each read alone with a ranged read through its
# slice (``[offset, size, sha256, encoding]``, kept by whoever stored them: a .foreach plan).
SLICES_ENCODING = "flowtask.slices"
# A dedup hit on a blob older than this verifies it and renews its age. gc is safe against
# concurrent writers only with a grace period at least this long.
RENEW_AFTER = timedelta(hours=1)


class ArtifactStore:
    """Immutable, deduplicated blobs under ``data/`` and JSON manifests under ``runs/``."""

    def __init__(
        self,
        backend: Backend,
        root_uri: str,
        *,
        clock: Callable[[], float] = time.time,
        compress: bool = False,
    ) -> None:
        self.backend = backend
        self._root_uri = root_uri.rstrip("/")
        self.clock = clock  # unix time, compared with blobs' modification times
        # zstd where a value's sample compresses (S3: bytes cost transfer time; on a local
        # disk compressing is slower than writing).
        self.compress = compress

    @property
    def root_uri(self) -> str:
        return self._root_uri

    def blob_uri(self, sha256: str) -> str:
        return f"{self._root_uri}/{blob_key(sha256)}"

    def put(self, value: Any, *, by_value: bool = False) -> Reference:
        """Store ``value``; storing equal content again costs one hash and one existence check
        (plus a verifying read and a renewal when the stored copy is older than ``RENEW_AFTER``).
        """
        frames, size, sha256, encoding = self._encode(value, by_value)
        self._write_blob(sha256, frames, size)
        return Reference(
            uri=self.blob_uri(sha256),
            sha256=sha256,
            size=size,
            type=codec.type_name(value),
            encoding=encoding,
        )

    def _encode(self, value: Any, by_value: bool) -> tuple[tuple[memoryview, ...], int, str, str]:
        """Frames, size, SHA-256 and encoding of what is stored for ``value``: its pickle, or
        (``compress``, and a sample that shrinks) that pickle's zstd frame. The hash is always
        of the stored bytes, so a read checks what it fetched before decompressing."""
        encoded = codec.encode(value, by_value=by_value)
        if self.compress and compression.worth_compressing(encoded.frames, encoded.size):
            packed = compression.compress(encoded.frames, encoded.size)
            sha256 = hashlib.sha256(packed).hexdigest()
            return (memoryview(packed),), len(packed), sha256, compression.ENCODING
        return encoded.frames, encoded.size, encoded.sha256, codec.ENCODING

    def encode(self, value: Any, by_value: bool = False) -> EncodedValue:
        """What ``put`` would store for ``value``, and the reference it would return."""
        frames, size, sha256, encoding = self._encode(value, by_value)
        ref = Reference(self.blob_uri(sha256), sha256, size, codec.type_name(value), encoding)
        return EncodedValue(frames, encoding, ref)

    def put_at(self, key: str, value: Any, *, by_value: bool = False) -> Reference:
        """Store ``value`` at its own key under ``runs/`` instead of by content.

        For objects that live only as long as their owner decides (a task try's payload, which
        holds rendered arguments and so possibly secrets): :meth:`discard` removes it.
        """
        frames, size, sha256, encoding = self._encode(value, by_value)
        # Not flushed to the disk: whoever owns it rebuilds it (a retry stores a new payload).
        self.backend.write_frames(_owned_key(key), frames, durable=False)
        return Reference(
            uri=f"{self._root_uri}/{key}",
            sha256=sha256,
            size=size,
            type=codec.type_name(value),
            encoding=encoding,
        )

    def discard(self, ref: Reference | Mapping[str, Any]) -> None:
        """Delete an object stored with :meth:`put_at` (blobs are shared: gc removes those)."""
        self.backend.delete(_owned_key(self._key_of(Reference.from_json(ref))))

    def _key_of(self, ref: Reference) -> str:
        """The store key a reference points at; refuses anything outside this store."""
        if ref.uri == self.blob_uri(ref.sha256):
            return blob_key(ref.sha256)
        prefix = f"{self._root_uri}/{OWNED_PREFIX}"
        if ref.uri.startswith(prefix):
            return _owned_key(ref.uri[len(self._root_uri) + 1 :])
        raise StoreError(
            f"refusing reference {ref.uri!r}: this store only reads {self.blob_uri(ref.sha256)} "
            f"for the reference's own sha256, or objects under {prefix}"
        )

    def put_bytes(self, data: bytes, *, type_name: str, encoding: str) -> Reference:
        """Store bytes that are not a pickled value (a code package), content-addressed too."""
        ref = bytes_reference(self._root_uri, data, type_name=type_name, encoding=encoding)
        self._write_blob(ref.sha256, (memoryview(data),), len(data))
        return ref

    def put_file(self, path: str | Path, *, type_name: str, encoding: str) -> Reference:
        """Store a file's bytes (an environment archive) content-addressed, hashed and written
        from a memory map rather than read into memory."""
        import mmap

        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            if size == 0:
                return self.put_bytes(b"", type_name=type_name, encoding=encoding)
            mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
            try:
                view = memoryview(mapped)
                sha256 = hashlib.sha256(view).hexdigest()
                self._write_blob(sha256, (view,), size)
                view.release()
            finally:
                with contextlib.suppress(BufferError):  # a transfer's view: closed when collected
                    mapped.close()
        return Reference(self.blob_uri(sha256), sha256, size, type_name, encoding)

    def has(self, ref: Reference | Mapping[str, Any]) -> bool:
        """Whether the blob ``ref`` names is stored here, at its size (one stat or HEAD)."""
        ref = Reference.from_json(ref)
        found = self.backend.stat(self._key_of(ref))
        return found is not None and found.size == ref.size

    def reuse(self, ref: Reference | Mapping[str, Any]) -> bool:
        """Whether the blob ``ref`` names is stored here intact, checked as a dedup hit checks it:
        one stat (or HEAD) while it is younger than ``RENEW_AFTER``; an older one is read back,
        its SHA-256 checked and its age renewed. So gc (grace at least ``RENEW_AFTER``) keeps it
        while the caller names it in a manifest, as it keeps what ``put`` returns. False: it is
        not stored, or damaged (store it again)."""
        ref = Reference.from_json(ref)
        return self._intact(self._key_of(ref), ref.uri, ref.sha256, ref.size)

    def get_bytes(self, ref: Reference | Mapping[str, Any]) -> bytearray:
        """A blob's stored bytes (a code package, an environment), size and hash checked."""
        return self._read_verified(Reference.from_json(ref))

    def _write_blob(self, sha256: str, frames: tuple[memoryview, ...], size: int) -> None:
        """Store a blob unless an intact copy is there; renew the age of an old intact copy.
        A small one on a backend where a request costs a round trip is written at once: the
        same bytes under the same key, which renews the age of a copy already there."""
        key, uri = blob_key(sha256), self.blob_uri(sha256)
        if size <= getattr(self.backend, "blind_write_max_bytes", 0) or not self._intact(
            key, uri, sha256, size
        ):
            self._write(key, uri, frames, size)

    def _intact(self, key: str, uri: str, sha256: str, size: int) -> bool:
        """Whether an intact copy is stored: one stat while it is younger than ``RENEW_AFTER``
        (the cheap path); an older one is verified and its age renewed."""
        found = self.backend.stat(key)
        if found is not None and found.size != size:
            log.warning("%s is damaged (%d bytes, not %d); storing it again", uri, found.size, size)
        if found is None or found.size != size:
            return False
        if self.clock() - found.modified < RENEW_AFTER.total_seconds():
            return True
        return self._verify_and_renew(key, uri, sha256, found)

    def _verify_and_renew(self, key: str, uri: str, sha256: str, found: BlobStat) -> bool:
        """Check the stored blob's SHA-256 and renew its age; False when it must be stored."""
        try:
            actual = self._stored_sha256(key, uri, found)
            if actual != sha256:
                log.warning("%s is damaged (its bytes hash to %s); storing it again", uri, actual)
                return False
            return self.backend.touch(key, found)  # False: collected since the check
        except MissingArtifact:  # collected since the stat
            return False
        except Exception as error:  # storing it again is always safe
            log.warning("%s could not be verified or renewed (%s); storing it again", uri, error)
            return False

    def _stored_sha256(self, key: str, uri: str, found: BlobStat) -> str:
        """SHA-256 of the stored bytes, streamed: memory stays at a few chunks."""
        digest = hashlib.sha256()
        progress = _progress("verified", uri, found.size)

        def update(chunk: memoryview) -> None:
            digest.update(chunk)
            if progress is not None:
                progress(chunk.nbytes)

        self.backend.read_chunks(key, update, found)
        if progress is not None:
            progress.finish()
        return digest.hexdigest()

    def _write(self, key: str, uri: str, frames: tuple[memoryview, ...], size: int) -> None:
        progress = _progress("stored", uri, size)
        try:
            self.backend.write_frames(key, frames, progress=progress)
        except Exception:
            # The write may have landed with only its acknowledgment lost; the content
            # address and the hash check on read make accepting it safe.
            found = self.backend.stat(key)
            if found is None or found.size != size:
                raise
        if progress is not None:
            progress.finish()

    def get(self, ref: Reference | Mapping[str, Any]) -> Any:
        """Load a value; refuses references outside this store and verifies size and hash.

        An item reference (:func:`provider.store.reference.item_reference`) loads its list
        and gives the item."""
        item = selected_item(ref)
        value = self._get(Reference.from_json(ref))
        return value if item is None else value[item]

    def get_many(self, refs: Sequence[Reference | Mapping[str, Any]]) -> list[Any]:
        """:meth:`get` of each, in order, ``reads_in_flight`` at a time (a join's results)."""
        return self.in_parallel(self.get, refs)

    def in_parallel(self, read: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        """``read`` of each item in order, the backend's ``reads_in_flight`` at a time."""
        workers = min(self.backend.reads_in_flight, len(items))
        if workers <= 1:
            return [read(item) for item in items]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers, thread_name_prefix="flowtask-read") as pool:
            return list(pool.map(read, items))

    def put_slices(self, values: Sequence[Any]) -> tuple[Reference, list[list[Any]]]:
        """Store ``values`` as one blob, each encoded on its own; return the blob's reference
        and each value's slice (``[offset, size, sha256, encoding]``) for :meth:`get_slice`."""
        slices: list[list[Any]] = []
        frames: list[memoryview] = []
        offset = 0
        whole = hashlib.sha256()
        for value in values:
            parts, size, sha256, encoding = self._encode(value, False)
            slices.append([offset, size, sha256, encoding])
            for part in parts:
                whole.update(part)
            frames.extend(parts)
            offset += size
        sha256 = whole.hexdigest()
        self._write_blob(sha256, tuple(frames), offset)
        ref = Reference(self.blob_uri(sha256), sha256, offset, "builtins.list", SLICES_ENCODING)
        return ref, slices

    def get_slice(self, ref: Reference | Mapping[str, Any], piece: Sequence[Any]) -> Any:
        """One value of a :meth:`put_slices` blob: one ranged read, its own SHA-256 checked."""
        ref = Reference.from_json(ref)
        offset, size, sha256, encoding = piece
        data = bytearray(self.backend.read_range(self._key_of(ref), offset, size))
        if len(data) != size:
            raise size_mismatch(f"{ref.uri} [{offset}:{offset + size}]", size, len(data))
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise IntegrityError(f"{ref.uri} [{offset}:]: expected sha256 {sha256}, found {actual}")
        return _decode(data, encoding, ref.uri)

    def get_slices(self, ref: Reference | Mapping[str, Any], pieces: Sequence[Any]) -> list[Any]:
        """Every value of a :meth:`put_slices` blob: one read, the blob's SHA-256 checked."""
        ref = Reference.from_json(ref)
        blob = self._read_verified(ref)
        return [_decode(blob[o : o + n], encoding, ref.uri) for o, n, _, encoding in pieces]

    def _get(self, ref: Reference) -> Any:
        if ref.encoding == CHUNKS_ENCODING:
            return self._get_chunked(ref)
        if ref.encoding == SLICES_ENCODING:
            raise StoreError(f"{ref.uri} holds slices: read it with their offsets (get_slices)")
        return _decode(self._read_verified(ref), ref.encoding, ref.uri)

    def put_chunked(self, chunks: list[dict[str, Any]], *, length: int) -> Reference:
        """One reference to a list stored in chunks: ``chunks`` is ``[{"result", "count"}]`` in
        order, each result the reference of a list or a list of references (``.foreach``)."""
        body = json.dumps({"length": length, "chunks": chunks}, sort_keys=True).encode()
        return self.put_bytes(body, type_name="builtins.list", encoding=CHUNKS_ENCODING)

    def _get_chunked(self, ref: Reference) -> list[Any]:
        document = json.loads(self._read_verified(ref))
        # Every chunk's results (or every item's, one per item) read reads_in_flight at a time.
        flat = [r for c in document["chunks"] for r in _as_list(c["result"])]
        loaded = iter(self.get_many(flat))
        values: list[Any] = []
        for chunk in document["chunks"]:
            stored = chunk["result"]
            part = [next(loaded) for _ in stored] if isinstance(stored, list) else next(loaded)
            if len(part) != chunk["count"]:
                raise IntegrityError(f"{ref.uri}: a chunk holds {len(part)}, not {chunk['count']}")
            values.extend(part)
        return values

    def _read_verified(self, ref: Reference) -> bytearray:
        """The blob in one buffer, its size checked before allocating and its SHA-256 before it
        is returned: hashed while it is read where the backend hands chunks over in order."""
        key = self._key_of(ref)
        progress = _progress("loaded", ref.uri, ref.size)
        if self.backend.reads_in_order and ref.size >= self.backend.pipeline_min_bytes:
            hasher = _BackgroundSha256()
            try:
                blob = self.backend.read_into(
                    key, ref.size, on_chunk=hasher.update, progress=progress
                )
            finally:
                actual = hasher.hexdigest()
        else:
            blob = self.backend.read_into(key, ref.size, progress=progress)
            actual = hashlib.sha256(blob).hexdigest()
        self._verify(ref, len(blob), actual)
        if progress is not None:
            progress.finish()
        return blob

    @staticmethod
    def _verify(ref: Reference, size: int, actual: str) -> None:
        if size != ref.size:
            raise size_mismatch(ref.uri, ref.size, size)
        if actual != ref.sha256:
            raise IntegrityError(f"{ref.uri}: expected sha256 {ref.sha256}, found {actual}")

    def write_manifest(self, key: str, data: Mapping[str, Any], *, durable: bool = True) -> str:
        """Write a small JSON document atomically; returns its URI.

        ``durable=False`` for what can be rebuilt (a launch manifest): no flush to the disk.
        """
        body = json.dumps(data, sort_keys=True, indent=1, default=str).encode()
        self.backend.write_bytes(key, body, durable=durable)
        return f"{self._root_uri}/{key}"

    def read_manifest(self, key: str) -> dict[str, Any]:
        """A manifest; ``BadManifest`` names it when it is not a JSON object."""
        return self.parse_manifest(key, self.backend.read_bytes(key))

    def parse_manifest(self, key: str, body: bytes) -> dict[str, Any]:
        """The manifest at ``key`` from its stored bytes (see ``read_manifest``)."""
        try:
            document = json.loads(body)
        except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
            raise BadManifest(
                f"manifest {self._root_uri}/{key} is not valid JSON: {error}"
            ) from None
        if not isinstance(document, dict):
            kind = type(document).__name__
            raise BadManifest(f"manifest {self._root_uri}/{key} is a JSON {kind}, not an object")
        return document

    def list_manifests(self, prefix: str) -> Iterator[str]:
        return (key for key in self.backend.list(prefix) if key.endswith(".json"))

    def read_manifests(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The manifests of ``keys`` there are, ``reads_in_flight`` at a time."""

        def read(key: str) -> dict[str, Any] | None:
            try:
                return self.read_manifest(key)
            except MissingArtifact:
                return None

        found = zip(keys, self.in_parallel(read, keys), strict=True)
        return {key: manifest for key, manifest in found if manifest is not None}


OWNED_PREFIX = "runs/"


def _as_list(stored: Any) -> list[Any]:
    return stored if isinstance(stored, list) else [stored]


def _decode(data: bytearray, encoding: str, uri: str) -> Any:
    """A value from its stored bytes (hash already checked)."""
    if encoding == compression.ENCODING:
        return codec.decode(compression.decompress(data))
    if encoding != codec.ENCODING:
        raise StoreError(f"unknown encoding {encoding!r} of {uri}")
    return codec.decode(data)


def _owned_key(key: str) -> str:
    if not check_key(key).startswith(OWNED_PREFIX) or key.endswith(".json"):
        raise StoreError(f"invalid key {key!r} for an owned object: expected runs/.../<name>")
    return key


def _progress(verb: str, uri: str, size: int) -> Progress | None:
    return Progress(verb, uri, size) if size >= PROGRESS_MIN_BYTES else None


@dataclass(frozen=True)
class EncodedValue:
    frames: tuple[memoryview, ...]
    encoding: str
    reference: Reference


class _BackgroundSha256:
    """SHA-256 of chunks handed over in order, computed on one worker thread.

    hashlib releases the GIL on large updates, so hashing overlaps with reading the next chunk.
    """

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._digest = hashlib.sha256()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flowtask-sha256")

    def update(self, chunk: memoryview) -> None:
        self._worker.submit(self._digest.update, chunk)

    def hexdigest(self) -> str:
        self._worker.shutdown(wait=True)
        return self._digest.hexdigest()


def bytes_reference(root_uri: str, data: bytes, *, type_name: str, encoding: str) -> Reference:
    """The reference ``data`` has (or would have) in the store at ``root_uri``."""
    sha256 = hashlib.sha256(data).hexdigest()
    return Reference(
        uri=f"{root_uri.rstrip('/')}/{blob_key(sha256)}",
        sha256=sha256,
        size=len(data),
        type=type_name,
        encoding=encoding,
    )


def open_store(uri: str, *, s3_client: Any = None, must_exist: bool = False) -> ArtifactStore:
    """A store for ``file:///abs/path`` (or a plain absolute path) or ``s3://bucket/prefix``.

    S3 uses ``s3_client`` when given (the worker builds one from its Airflow connection), else
    a client from the ordinary AWS credential chain. ``must_exist`` refuses a ``file://``
    store whose folder does not exist (gc: a typo must not look like an empty store); writers
    create it.
    """
    parsed = urlparse(uri)
    if parsed.scheme == "s3" and parsed.netloc:
        from provider.store.s3 import S3Backend

        prefix = parsed.path.strip("/")
        root = f"s3://{parsed.netloc}/{prefix}" if prefix else f"s3://{parsed.netloc}"
        return ArtifactStore(S3Backend(parsed.netloc, prefix, s3_client), root, compress=True)
    if parsed.scheme == "file" and parsed.netloc in ("", "localhost"):
        path = Path(unquote(parsed.path))
    elif parsed.scheme == "" and Path(uri).is_absolute():
        path = Path(uri)
    else:
        raise StoreError(
            f"artifact store {uri!r}: unsupported location. "
            "Accepted: file:///absolute/path, an absolute path, or s3://bucket/prefix"
        )
    path = path.resolve()
    backend = FileBackend(path)
    if must_exist:
        backend.check_root()
    return ArtifactStore(backend, path.as_uri())
