"""The channel between a local worker and its runtime: the payload in, the outcome out.

A local runtime (a new interpreter or a fork of the warm runtime) gets one end of a socket
pair (``--channel FD``). The worker sends one message, ``{"payload": bytes, "inline_max": N}``
(the payload as the store would hold it), and the runtime answers with one,
``{"manifest": {...}, "blobs": [(bytes, type, encoding)]}``: the try's result manifest and the
small blobs it names (the UI's views) that the worker stores beside the manifest, all at
once. Neither goes through the store on the way: on S3 that is a round trip each saved on the
task's critical path. Each message is a pickle behind its length (8 bytes, big-endian); both
ends are the same user's processes on one machine, started for each other.

A result up to ``inline_max`` bytes of JSON travels inline too (``value``), which the task
returns, so ``FlowXCom`` keeps it in the XCom row and a downstream flow task gets it in its
payload; its blob goes with the report, and the manifest names it as for any result. Larger
results are stored by the runtime and travel by reference, as without a channel.
"""

from __future__ import annotations

import pickle
import socket
import struct
from collections.abc import Mapping
from typing import Any

from provider.store import ArtifactStore, Reference, bytes_reference, is_reference

HEADER = struct.Struct(">Q")
MAX_MESSAGE = 2**40


def send(sock: socket.socket, message: Any) -> None:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(HEADER.pack(len(body)) + body)


def receive(sock: socket.socket) -> Any:
    """One message; ``EOFError`` when the other end closed before it was whole."""
    (size,) = HEADER.unpack(_exactly(sock, HEADER.size))
    if size > MAX_MESSAGE:
        raise ValueError(f"a message of {size} bytes")
    return pickle.loads(_exactly(sock, size))


def _exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(min(size - len(data), 1 << 20))
        if not chunk:
            raise EOFError(f"the channel closed after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)


def small_json(value: Any, budget: int) -> bool:
    """Whether ``value`` is plain JSON data (str keys) of at most about ``budget`` bytes.

    Walks the value and gives up as soon as the budget is spent, so a DataFrame or a large list
    costs nothing here: they go to the store without being encoded twice.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if item is None or isinstance(item, bool):
            budget -= 5
        elif isinstance(item, (int, float)):
            budget -= 24
        elif isinstance(item, str):
            budget -= len(item) + 2
        elif isinstance(item, list) and type(item) is list:
            budget -= 2 + len(item)
            stack.extend(item)
        elif isinstance(item, dict) and type(item) is dict:
            if not all(isinstance(key, str) for key in item):
                return False
            budget -= 2 + sum(len(key) + 4 for key in item)
            stack.extend(item.values())
        else:
            return False
        if budget < 0:
            return False
    return True


def inline_value(value: Any, limit: int) -> bool:
    """Whether a result travels inline: small JSON (see ``small_json``, then measured) that
    cannot be mistaken for references to stored values."""
    import json

    if not limit or not small_json(value, limit) or _looks_stored(value):
        return False
    return len(json.dumps(value)) <= limit


def _looks_stored(value: Any) -> bool:
    if is_reference(value):
        return True
    items = (
        value
        if isinstance(value, list)
        else list(value.values())
        if isinstance(value, dict)
        else []
    )
    return any(is_reference(item) for item in items)


class DeferredBlobs:
    """The store, except that small blobs stored by bytes (views, images) are kept to be sent
    with the outcome; the references they will have are returned at once."""

    def __init__(self, store: ArtifactStore) -> None:
        self._store = store
        self.blobs: list[tuple[bytes, str, str]] = []

    def put(self, value: Any, *, by_value: bool = False) -> Reference:
        """A small value's reference; its bytes go with the outcome (``put_bytes`` stores
        them as the store would have: the same bytes, the same key)."""
        encoded = self._store.encode(value, by_value)
        data = b"".join(encoded.frames)
        self.blobs.append((data, "builtins.bytes", encoded.encoding))
        return encoded.reference

    def put_bytes(self, data: bytes, *, type_name: str, encoding: str) -> Reference:
        self.blobs.append((bytes(data), type_name, encoding))
        return bytes_reference(self._store.root_uri, data, type_name=type_name, encoding=encoding)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def outcome_message(
    manifest: Mapping[str, Any], blobs: list[tuple[bytes, str, str]], value: Any = None
) -> dict[str, Any]:
    """The report: the manifest, the blobs it names, and (``inline``) the result's value."""
    message: dict[str, Any] = {"manifest": dict(manifest), "blobs": blobs}
    if manifest.get("result_inline"):
        message["value"] = value
    return message
