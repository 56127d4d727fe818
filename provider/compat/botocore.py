"""What the S3 store uses of botocore's and urllib3's internals: the HTTP response under a
``StreamingBody`` (``_raw_stream._fp``), to receive a GET from the socket straight into a
buffer, and ``release_conn`` to hand the connection back once it is read to its end.

Unlike the other compat modules this one refuses nothing: where the pair differs, the store
reads through botocore's own ``readinto`` (one copy more) and closes the connection, which is
correct, only slower; :func:`fast_path` says which one the installed pair allows, and the
compat tests (``./dev test --newest`` too) check it is the fast one.
"""

from __future__ import annotations

import http.client
from collections.abc import Callable
from typing import Any


def http_response(body: Any) -> http.client.HTTPResponse | None:
    """The HTTP response under botocore's body and urllib3's, when they are the pair this
    module relies on (other releases: None)."""
    stream = getattr(body, "_raw_stream", None)
    raw = getattr(stream, "_fp", None)
    if isinstance(raw, http.client.HTTPResponse) and callable(getattr(stream, "release_conn", 0)):
        return raw
    return None


def socket_readinto(body: Any) -> Callable[[memoryview], int]:
    """urllib3's readinto reads into a new bytes object (which http.client copies once more)
    and copies that into the buffer; http.client's receives from the socket straight into it.
    botocore's own when the response is not reachable."""
    raw = http_response(body)
    return body.readinto if raw is None else raw.readinto


def finish(body: Any) -> None:
    """Hand the connection back to the pool once the response is read to its end (urllib3
    does this itself only for what it read); otherwise close it."""
    raw = http_response(body)
    if raw is not None and raw.isclosed():
        body._raw_stream.release_conn()
    body.close()
