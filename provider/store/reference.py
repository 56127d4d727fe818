"""References: the small JSON that XCom rows and payloads carry instead of values."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from provider.store.errors import StoreError

REFERENCE_MARKER = "__flowtask_ref__"
# An item reference names one item of a stored list or tuple: loading it loads the list.
ITEM_KEY = "item"
_FIELDS = (REFERENCE_MARKER, "uri", "sha256", "size", "type", "encoding")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Reference:
    """Where an artifact lives and what it is: uri, sha256, size, type, encoding."""

    uri: str
    sha256: str
    size: int
    type: str
    encoding: str

    def to_json(self) -> dict[str, Any]:
        return {
            REFERENCE_MARKER: 1,
            "uri": self.uri,
            "sha256": self.sha256,
            "size": self.size,
            "type": self.type,
            "encoding": self.encoding,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any] | Reference) -> Reference:
        if isinstance(obj, Reference):
            return obj
        if not isinstance(obj, Mapping) or obj.get(REFERENCE_MARKER) != 1:
            raise StoreError(f"not an artifact reference: {obj!r}")
        uri, sha, size = obj.get("uri"), obj.get("sha256"), obj.get("size")
        kind, encoding = obj.get("type"), obj.get("encoding")
        if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
            raise StoreError(f"reference sha256={sha!r} is not 64 lowercase hex digits")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise StoreError(f"reference size={size!r} is not a non-negative int")
        for name, value in (("uri", uri), ("type", kind), ("encoding", encoding)):
            if not isinstance(value, str) or not value:
                raise StoreError(f"reference {name}={value!r} is not a non-empty string")
        return cls(uri=uri, sha256=sha, size=size, type=kind, encoding=encoding)  # type: ignore[arg-type]


def is_reference(obj: object) -> bool:
    """A :class:`Reference` or its JSON form."""
    return isinstance(obj, Reference) or (
        isinstance(obj, Mapping) and obj.get(REFERENCE_MARKER) == 1
    )


def item_reference(ref: Mapping[str, Any], index: int) -> dict[str, Any]:
    """The reference of item ``index`` of the stored list or tuple ``ref`` names."""
    return {**{key: ref[key] for key in _FIELDS}, ITEM_KEY: index}


def selected_item(ref: Reference | Mapping[str, Any]) -> int | None:
    """The index an item reference selects; None for a reference to a whole value."""
    item = ref.get(ITEM_KEY) if isinstance(ref, Mapping) else None
    if item is None:
        return None
    if not isinstance(item, int) or isinstance(item, bool) or item < 0:
        raise StoreError(f"reference item={item!r} is not a non-negative int")
    return item
