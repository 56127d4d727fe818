"""Content-addressed artifact store: values in, small references out."""

from provider.store.errors import IntegrityError, MissingArtifact, StoreError
from provider.store.keys import (
    launch_manifest_key,
    manifest_key,
    payload_key,
    run_manifest_key,
    xcom_manifest_key,
)
from provider.store.reference import REFERENCE_MARKER, Reference, is_reference, item_reference
from provider.store.store import ArtifactStore, bytes_reference, open_store

__all__ = [
    "REFERENCE_MARKER",
    "ArtifactStore",
    "IntegrityError",
    "MissingArtifact",
    "Reference",
    "StoreError",
    "bytes_reference",
    "is_reference",
    "item_reference",
    "launch_manifest_key",
    "manifest_key",
    "open_store",
    "payload_key",
    "run_manifest_key",
    "xcom_manifest_key",
]
