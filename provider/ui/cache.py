"""What the API server keeps between page views: bytes it may serve again without reading.

Two kinds, both safe to keep because what they name cannot change:

- a content-addressed blob (a view document, a picture, a chunk's item previews), by its
  SHA-256, once read and verified; only small ones (``MAX_ENTRY_BYTES``);
- a manifest, by its key and its version (S3's ETag), used only when a listing made for the same
  page named that very version: a manifest rewritten since is read again.

The cache is bounded (``log = logging.getLogger("provider.ui")

MAX_CACHE_BYTES``, least recently used first out) and holds bytes, never
decoded values: each page parses what it uses, so no page sees another's changes. Nothing is
unpickled: blobs are JSON or pictures, checked by the store as on any read.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any

from provider.store import ArtifactStore, Reference, rollup

log = logging.getLogger("provider.ui")

MAX_CACHE_BYTES = 64 * 1024 * 1024
MAX_ENTRY_BYTES = 1024 * 1024


class ByteCache:
    """Bytes by key, least recently used dropped first past ``max_bytes``; thread-safe."""

    def __init__(self, max_bytes: int = MAX_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._entries: OrderedDict[tuple[str, ...], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, ...]) -> bytes | None:
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
            return found

    def put(self, key: tuple[str, ...], body: bytes) -> None:
        if len(body) > min(MAX_ENTRY_BYTES, self.max_bytes):
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.size -= len(old)
            self._entries[key] = body
            self.size += len(body)
            while self.size > self.max_bytes:
                _, dropped = self._entries.popitem(last=False)
                self.size -= len(dropped)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.size = 0

    def __len__(self) -> int:
        return len(self._entries)


CACHE = ByteCache()


# A listing of a run or a task leaves out its .foreach chunk manifests (a third of a big run's
# keys): the pages read a .foreach's chunks from the try's manifest, or list its own folder
# (which this leaves whole: nothing in it holds "/foreach/" after the folder).
LEFT_OUT = "/foreach/"


class _ListingBackend:
    """The store's backend, remembering the version of every key its listings named (where the
    backend's listing tells versions: S3's ETags); everything else passes through."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.listed: dict[str, str] = {}
        self.listings: dict[str, list[str]] = {}  # made ahead for this page, by prefix

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def list_ahead(self, prefix: str) -> None:
        """List ``prefix`` now; this page's next listing of it is this one."""
        self.listings[prefix] = list(self.list(prefix))

    def list(self, prefix: str) -> Iterator[str]:
        if prefix in self.listings:
            yield from self.listings.pop(prefix)
            return
        versions = getattr(self.inner, "versions", None)
        if versions is None:
            yield from self.inner.list(prefix)
            return
        for key, version in versions(prefix, leave_out=LEFT_OUT):
            self.listed[key] = version
            yield key


class CachedStore(ArtifactStore):
    """The store as one page reads it: through ``cache`` where that is safe (see the module)."""

    def __init__(self, store: ArtifactStore, cache: ByteCache = CACHE) -> None:
        self._listing = _ListingBackend(store.backend)
        super().__init__(self._listing, store.root_uri, clock=store.clock, compress=store.compress)
        self.cache = cache
        self.seen: rollup.Entries = {}  # manifests this page used, by key: (version, body)
        self.misses = 0  # manifests it had to read

    @property
    def lists_versions(self) -> bool:
        return getattr(self._listing.inner, "versions", None) is not None

    def list_ahead(self, prefix: str) -> None:
        """List ``prefix`` now (while something else is read); the page's next listing of it
        is this one."""
        self._listing.list_ahead(prefix)

    def preload(self, prefix: str) -> None:
        """Take the run's rollup (``provider.store.rollup``) into the cache: its entries are
        used for the manifests a listing of this page names at the same version."""
        if self.lists_versions:
            for key, (version, body) in rollup.read(self, prefix).items():
                self.cache.put(("manifest", key, version), body)

    def keep(self, prefix: str, *, after_misses: int = 20) -> None:
        """Replace the run's rollup by what this page read, when it had to read many manifests
        the rollup lacked (best effort: a store this server cannot write to is only read)."""
        if self.misses < after_misses or len(self.seen) < rollup.MIN_MANIFESTS:
            return
        try:
            rollup.write(self, prefix, self.seen)
        except Exception as error:
            log.debug("could not keep the rollup of %s: %s", prefix, error)

    def get_bytes(self, ref: Reference | Mapping[str, Any]) -> bytearray:
        ref = Reference.from_json(ref)
        if ref.size > MAX_ENTRY_BYTES or ref.uri != self.blob_uri(ref.sha256):
            return super().get_bytes(ref)  # large, or not content-addressed: not kept
        found = self.cache.get(("blob", ref.sha256, str(ref.size)))
        if found is not None:
            return bytearray(found)
        body = super().get_bytes(ref)  # size and SHA-256 checked
        self.cache.put(("blob", ref.sha256, str(ref.size)), bytes(body))
        return body

    def read_manifest(self, key: str) -> dict[str, Any]:
        listed = self._listing.listed.get(key)
        if listed is None:  # no listing of this page named its version: read it
            return super().read_manifest(key)
        version, body = listed, self.cache.get(("manifest", key, listed))
        if body is None:
            raw, version = self._listing.inner.read_versioned(key)
            body = bytes(raw)
            self.cache.put(("manifest", key, version), body)  # the version read, not listed
            self.misses += 1
        self.seen[key] = (version, body)
        return self.parse_manifest(key, body)


def cached(store: ArtifactStore) -> CachedStore:
    """``store`` read through the API server's cache (a store already so read: itself)."""
    return store if isinstance(store, CachedStore) else CachedStore(store)
