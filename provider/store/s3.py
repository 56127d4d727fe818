"""The ``s3://bucket/prefix`` blob backend, on boto3's transfer manager.

Uploads are single PUTs or multipart uploads that S3 makes visible only on completion, so a
reader never sees a partial blob; a failed multipart upload is aborted by the transfer manager.
A blob below the part size is one GET read straight from the socket into a preallocated
buffer (http.client's ``readinto`` under botocore's body, see ``provider.compat.botocore``): its
Content-Length is checked against the reference's claimed size before anything is allocated,
the store hashes the bytes while they arrive, and an interrupted stream resumes with a ranged
GET from the first missing byte. A larger blob is fetched in parallel ranges into one buffer,
sized by one HEAD that is also checked against the claimed size (and handed to the transfer,
which would otherwise send the same HEAD itself); the buffer hands its bytes to the hash in
order as the prefix before them completes. botocore's ``standard`` retry mode retries
throttling (503 SlowDown), 500s, connection resets and timeouts with backoff; the transfer
manager also retries interrupted download streams.

A blob's LastModified means "last written or verified": ``touch`` copies the object onto itself
with replaced metadata (a server-side managed copy, multipart above the part size, so objects
over 5 GB work too). S3 has no atomic rename, so gc's ``delete_if_older`` checks the age with a
HEAD right before the DELETE; a writer's renewal landing between the two is the one window
left (one round trip).
"""

from __future__ import annotations

import http.client
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from provider.compat.botocore import finish, socket_readinto
from provider.store.backend import BlobStat, InterruptedWrite
from provider.store.errors import MissingArtifact, StoreError, size_mismatch
from provider.store.keys import check_key
from provider.store.streams import BufferSink, FramesReader, OrderedSink

MiB = 1024 * 1024
# 16 MiB parts, 8 in flight: 1.3-1.5x the throughput of boto3's defaults (8 MiB, 10 threads) in
# benchmarks/store_vs_raw.py against moto on loopback; not yet tuned against real S3. Both can
# be set where the transfer runs (worker, pod, container) through these variables.
PART_SIZE_ENV = "FLOWTASK_S3_PART_SIZE_MIB"
CONCURRENCY_ENV = "FLOWTASK_S3_MAX_CONCURRENCY"
DEFAULT_PART_SIZE_MIB = 16
DEFAULT_MAX_CONCURRENCY = 8
MAX_ATTEMPTS = 10
_CLIENT_LOCK = threading.Lock()
# Small reads sent at once when the store needs many (a fan-out's 1,000 chunk manifests, a
# join's 1,000 results): at 20 ms a request, 32 in flight read 1,000 in about 0.7 s.
READS_IN_FLIGHT = 32
# A single GET is read from the socket in pieces of this size (boto3's transfer reads 256 KiB):
# the hash starts on each as the next arrives, so the last piece's hash is what cannot overlap;
# 2 MiB measured best of 1, 2 and 4 in benchmarks/store_vs_raw.py (8, 15 and 64 MiB blobs).
SINGLE_GET_IO_CHUNK = 2 * MiB
STREAM_ATTEMPTS = 5  # an interrupted single GET resumes this many times, as s3transfer does


def _positive_int_env(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise StoreError(f"{name}={raw!r} is invalid. Accepted: a positive int, e.g. {default}")
    return int(raw)


def part_size() -> int:
    """Multipart part size and download range size, in bytes (S3 requires >= 5 MiB)."""
    return max(5, _positive_int_env(PART_SIZE_ENV, DEFAULT_PART_SIZE_MIB)) * MiB


def max_concurrency() -> int:
    return _positive_int_env(CONCURRENCY_ENV, DEFAULT_MAX_CONCURRENCY)


def botocore_config() -> Any:
    from botocore.config import Config

    return Config(
        retries={"mode": "standard", "max_attempts": MAX_ATTEMPTS},
        max_pool_connections=max(max_concurrency() * 2, READS_IN_FLIGHT),
        connect_timeout=10,
        read_timeout=60,
        s3={"addressing_style": os.environ.get("FLOWTASK_S3_ADDRESSING_STYLE", "auto")},
    )


def default_s3_client() -> Any:
    """A client from the ordinary AWS credential chain; the endpoint from AWS_ENDPOINT_URL(_S3)."""
    import boto3

    return boto3.session.Session().client("s3", config=botocore_config())


def transfer_config() -> Any:
    from boto3.s3.transfer import TransferConfig

    size = part_size()
    return TransferConfig(
        multipart_threshold=size,
        multipart_chunksize=size,
        max_concurrency=max_concurrency(),
        use_threads=True,
    )


def _error_code(error: Exception) -> str:
    return str(getattr(error, "response", {}).get("Error", {}).get("Code", ""))


def _is_missing(error: Exception) -> bool:
    return _error_code(error) in ("404", "NoSuchKey", "NotFound")


def _known(found: BlobStat) -> Any:
    """A transfer subscriber handing over size and ETag, so the transfer sends no HEAD."""
    from s3transfer.subscribers import BaseSubscriber

    class Known(BaseSubscriber):
        def on_queued(self, future: Any, **kwargs: Any) -> None:
            future.meta.provide_transfer_size(found.size)
            future.meta.provide_object_etag(found.etag)

    return Known()


class S3Backend:
    """Blobs and manifests as objects under ``s3://bucket/prefix/``."""

    reads_in_order = True  # read_into hands chunks over in order (see BufferSink)
    pipeline_min_bytes = 1024 * 1024  # a GET costs more than starting the hashing thread
    # Below this, one PUT (20 ms to the first byte, 90 MiB/s: about 22 ms for 256 KiB) costs
    # less than a HEAD and then, when the blob is missing, a PUT one after the other.
    blind_write_max_bytes = 256 * 1024
    reads_in_flight = READS_IN_FLIGHT

    def __init__(self, bucket: str, prefix: str, client: Any) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._client = client  # None: one from the AWS credential chain, made on first use
        self._transfer_config: Any = None

    @property
    def client(self) -> Any:
        """The S3 client: a runtime whose values all travel inline never makes one."""
        if self._client is None:
            with _CLIENT_LOCK:  # threads that store at once share the one client
                if self._client is None:
                    self._client = default_s3_client()
        return self._client

    @property
    def _transfer(self) -> Any:
        if self._transfer_config is None:
            self._transfer_config = transfer_config()
        return self._transfer_config

    def _key(self, key: str) -> str:
        return self._full(check_key(key))

    def _full(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def check_root(self) -> None:
        """Nothing to check: a prefix exists once written to; a missing bucket fails listing."""

    def stat(self, key: str) -> BlobStat | None:
        """Size, LastModified and ETag of the object, or None when there is none: one HEAD."""
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as error:
            if _is_missing(error):
                return None
            raise
        return BlobStat(
            int(head["ContentLength"]), head["LastModified"].timestamp(), head.get("ETag")
        )

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    def touch(self, key: str, known: BlobStat | None = None) -> bool:
        """Renew LastModified by copying the object onto itself; False when it is gone."""
        from boto3.s3.transfer import create_transfer_manager
        from botocore.exceptions import ClientError

        full = self._key(key)
        extra = {
            "MetadataDirective": "REPLACE",
            "Metadata": {"flowtask-verified": str(int(time.time()))},
        }
        subscribers = [_known(known)] if known is not None else None
        try:
            with create_transfer_manager(self.client, self._transfer) as manager:
                source = {"Bucket": self.bucket, "Key": full}
                manager.copy(source, self.bucket, full, extra, subscribers).result()
        except ClientError as error:
            if _is_missing(error):
                return False
            raise
        return True

    def write_frames(
        self,
        key: str,
        frames: Iterable[memoryview | bytes],
        progress: Callable[[int], None] | None = None,
        durable: bool = True,  # S3 acknowledges a write once it is stored durably
    ) -> None:
        self.client.upload_fileobj(
            FramesReader(tuple(frames)),
            self.bucket,
            self._key(key),
            Config=self._transfer,
            Callback=progress,
        )

    def write_bytes(self, key: str, data: bytes, durable: bool = True) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def read_into(
        self,
        key: str,
        size: int | None = None,
        on_chunk: Callable[[memoryview], None] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> bytearray:
        """The object in one buffer, allocated only once its real size matches ``size``.

        ``on_chunk`` sees the bytes in order, as views into the buffer, once every byte before
        them has arrived: while they arrive for a single GET, as ranges complete for parallel
        ones.
        """
        if size is not None and size < self._transfer.multipart_threshold:
            return self._read_single(key, size, on_chunk, progress)
        found = self.stat(key)
        if found is None:
            raise MissingArtifact(f"no object {self.uri(key)}")
        if size is not None and found.size != size:
            raise size_mismatch(self.uri(key), size, found.size)
        sink = BufferSink(found.size, on_chunk)
        self._download(key, sink, found, progress)
        sink.finish()
        return sink.buffer

    def _get(self, key: str, **extra: Any) -> Any:
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key), **extra)
        except ClientError as error:
            if _is_missing(error):
                raise MissingArtifact(f"no object {self.uri(key)}") from None
            raise

    def _read_single(
        self,
        key: str,
        size: int,
        on_chunk: Callable[[memoryview], None] | None,
        progress: Callable[[int], None] | None,
    ) -> bytearray:
        """One GET read into one buffer: no HEAD, no transfer threads; the Content-Length is
        checked before allocating, and an interrupted stream resumes where it stopped."""
        from botocore.exceptions import (
            ConnectionClosedError,
            IncompleteReadError,
            ReadTimeoutError,
            ResponseStreamingError,
        )

        interrupted = (
            ConnectionClosedError,
            IncompleteReadError,
            ReadTimeoutError,
            ResponseStreamingError,
            http.client.HTTPException,  # the socket's own errors, read past urllib3
            OSError,
        )
        response = self._get(key)
        body = response["Body"]
        if int(response["ContentLength"]) != size:
            body.close()
            raise size_mismatch(self.uri(key), size, int(response["ContentLength"]))
        buffer = bytearray(size)
        view = memoryview(buffer)
        done = handed = resumed = 0
        readinto = socket_readinto(body)
        while done < size:
            try:
                n = readinto(view[done : done + SINGLE_GET_IO_CHUNK])
                if n == 0:
                    raise IncompleteReadError(actual_bytes=done, expected_bytes=size)
            except interrupted:
                resumed += 1
                if resumed >= STREAM_ATTEMPTS:
                    raise
                body.close()
                body = self._get(key, Range=f"bytes={done}-")["Body"]
                readinto = socket_readinto(body)
                continue
            done += n
            if progress is not None:
                progress(n)
            if on_chunk is not None and done - handed >= SINGLE_GET_IO_CHUNK:
                on_chunk(view[handed:done])
                handed = done
        finish(body)
        if on_chunk is not None and handed < size:
            on_chunk(view[handed:size])
        return buffer

    def read_chunks(
        self, key: str, on_chunk: Callable[[memoryview], None], known: BlobStat | None = None
    ) -> None:
        """Stream the object to ``on_chunk`` in order; ranges still download in parallel."""
        found = known or self.stat(key)
        if found is None:
            raise MissingArtifact(f"no object {self.uri(key)}")
        self._download(key, OrderedSink(on_chunk), found, None)

    def _download(
        self, key: str, sink: Any, found: BlobStat, progress: Callable[[int], None] | None
    ) -> None:
        from boto3.s3.transfer import ProgressCallbackInvoker, create_transfer_manager
        from botocore.exceptions import ClientError

        subscribers = [_known(found)]
        if progress is not None:
            subscribers.append(ProgressCallbackInvoker(progress))
        try:
            with create_transfer_manager(self.client, self._transfer) as manager:
                manager.download(
                    self.bucket, self._key(key), sink, subscribers=subscribers
                ).result()
        except ClientError as error:
            if _is_missing(error):
                raise MissingArtifact(f"no object {self.uri(key)}") from None
            raise

    def read_bytes(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        except ClientError as error:
            if _is_missing(error):
                raise MissingArtifact(f"no object {self.uri(key)}") from None
            raise
        return bytes(body.read())

    def read_range(self, key: str, start: int, size: int) -> bytes:
        """``size`` bytes from ``start``: one ranged GET."""
        if size == 0:
            return b""
        body = self._get(key, Range=f"bytes={start}-{start + size - 1}")["Body"]
        return bytes(body.read())

    def entries(self, prefix: str) -> Iterator[tuple[str, int, float]]:
        """(key, size, modification time) of every object under ``prefix``."""
        base = self._key(prefix).rstrip("/") + "/"
        strip = len(self.prefix) + 1 if self.prefix else 0
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=base):
            for item in page.get("Contents", ()):
                yield item["Key"][strip:], int(item["Size"]), item["LastModified"].timestamp()

    def versions(self, prefix: str, leave_out: str | None = None) -> Iterator[tuple[str, str]]:
        """(key, ETag) of every object under ``prefix``, from the listing alone: a reader that
        cached an object by its key and ETag knows without a request whether it changed.

        ``leave_out``: keys holding it after ``prefix`` are not listed (S3's delimiter: one
        common prefix stands for them all), e.g. ``"/foreach/"`` for a run's tries without
        its ``.foreach`` chunks."""
        base = self._key(prefix).rstrip("/") + "/"
        strip = len(self.prefix) + 1 if self.prefix else 0
        paginator = self.client.get_paginator("list_objects_v2")
        extra = {"Delimiter": leave_out} if leave_out else {}
        for page in paginator.paginate(Bucket=self.bucket, Prefix=base, **extra):
            for item in page.get("Contents", ()):
                yield item["Key"][strip:], str(item["ETag"])

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def delete_if_older(self, key: str, cutoff: float) -> bool:
        """HEAD, then DELETE unless written or renewed after ``cutoff``; True if deleted.

        Not atomic: a renewal between the HEAD and the DELETE is lost with the object.
        """
        found = self.stat(key)
        if found is None or found.modified > cutoff:
            return False
        self.delete(key)
        return True

    def interrupted_writes(self, prefixes: Iterable[str]) -> Iterator[InterruptedWrite]:
        """Incomplete multipart uploads under ``prefixes``: their parts' bytes and latest age."""
        strip = len(self.prefix) + 1 if self.prefix else 0
        uploads = self.client.get_paginator("list_multipart_uploads")
        for prefix in prefixes:
            base = self._key(prefix).rstrip("/") + "/"
            for page in uploads.paginate(Bucket=self.bucket, Prefix=base):
                for upload in page.get("Uploads", ()):
                    size, modified = self._parts(upload)
                    key = upload["Key"][strip:]
                    yield InterruptedWrite(key, size, modified, upload["UploadId"])

    def _parts(self, upload: dict[str, Any]) -> tuple[int, float]:
        """Total size of an upload's parts, and when it last grew (or started)."""
        from botocore.exceptions import ClientError

        size, modified = 0, upload["Initiated"].timestamp()
        parts = self.client.get_paginator("list_parts")
        try:
            for page in parts.paginate(
                Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
            ):
                for part in page.get("Parts", ()):
                    size += int(part["Size"])
                    modified = max(modified, part["LastModified"].timestamp())
        except ClientError as error:
            if _error_code(error) != "NoSuchUpload":  # completed or aborted meanwhile
                raise
        return size, modified

    def discard(self, write: InterruptedWrite) -> None:
        """Abort the multipart upload; its parts' storage is freed."""
        from botocore.exceptions import ClientError

        try:
            self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=self._full(write.key), UploadId=write.upload_id
            )
        except ClientError as error:
            if _error_code(error) != "NoSuchUpload":
                raise

    def list(self, prefix: str) -> Iterator[str]:
        return (key for key, _, _ in self.entries(prefix))

    def children(self, prefix: str) -> Iterator[str]:
        """Names of the folders right under ``prefix``, in order (a ``/``-delimited listing)."""
        base = self._key(prefix).rstrip("/") + "/"
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=base, Delimiter="/"):
            for item in page.get("CommonPrefixes", ()):
                yield item["Prefix"][len(base) :].rstrip("/")

    # A compare-and-swap on one small object, by its ETag: S3's conditional writes.

    def version(self, key: str) -> str | None:
        found = self.stat(key)
        return None if found is None else found.etag

    def read_versioned(self, key: str) -> tuple[bytes, str]:
        from botocore.exceptions import ClientError

        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as error:
            if _is_missing(error):
                raise MissingArtifact(f"no object {self.uri(key)}") from None
            raise
        return bytes(response["Body"].read()), str(response["ETag"])

    def write_if_version(self, key: str, data: bytes, version: str | None) -> bool:
        """Write unless the object changed since ``version`` (None: unless it exists now)."""
        from botocore.exceptions import ClientError

        condition = {"IfNoneMatch": "*"} if version is None else {"IfMatch": version}
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **condition)
        except ClientError as error:
            if _error_code(error) in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                return False
            if version is not None and _is_missing(error):
                return False
            raise
        return True

    def delete_many(self, keys: Iterable[str]) -> None:
        """Delete objects, 1000 a request."""
        batch = [self._key(key) for key in keys]
        for start in range(0, len(batch), 1000):
            objects = [{"Key": key} for key in batch[start : start + 1000]]
            response = self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True}
            )
            errors = response.get("Errors") or []
            if errors:
                raise StoreError(f"could not delete {len(errors)} object(s): {errors[:3]}")
