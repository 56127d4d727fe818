"""Errors of the artifact store."""

from __future__ import annotations


class StoreError(Exception):
    """The store cannot do what was asked: bad reference, bad key, unsupported location."""


class IntegrityError(StoreError):
    """Stored bytes do not match their reference: size or SHA-256 differ."""


class MissingArtifact(StoreError):
    """The referenced blob or manifest is not in the store (never written, or collected)."""


class BadManifest(StoreError):
    """A manifest is not a JSON object: damaged, or not written by flowtask."""


def size_mismatch(uri: str, claimed: int, actual: int) -> IntegrityError:
    """The error for a reference whose size is not the stored object's."""
    return IntegrityError(
        f"{uri}: size mismatch: the reference claims {claimed} bytes, the object has {actual}"
    )
