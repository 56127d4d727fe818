"""Test servers on loopback: moto's S3 server, and a proxy in front of it that injects S3-style
faults or models S3's latency.

The S3 model (``S3Model``, what the benchmarks mean by "on the S3 model"): every request waits
``first_byte_seconds`` (default 20 ms, what S3 costs in-region to the first byte of an answer)
before its answer starts, and each connection moves bytes, both ways, at ``mib_per_second``
(default 90 MiB/s, what one connection to S3 carries). Deterministic: no jitter, no faults;
connections run in parallel, each at its own pace, as S3's do.
"""

from __future__ import annotations

import http.client
import random
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_PACE_CHUNK = 256 * 1024
FAULTS = ("500", "503", "reset_before", "reset_after", "truncate")
_ERROR_BODY = (
    '<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
    "<Message>injected by the test proxy</Message></Error>"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MotoServer:
    """``moto_server`` in its own process on 127.0.0.1."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        server = Path(sys.executable).parent / "moto_server"
        self.proc = subprocess.Popen(
            [str(server), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("moto_server did not start within 30 s")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


class FaultProxy:
    """Forwards HTTP to ``upstream``; a share of requests get a fault instead.

    Faults: a 500 InternalError, a 503 SlowDown, a connection reset before forwarding, a reset
    after forwarding (the request took effect, the answer is lost), and a response body cut
    short.
    """

    def __init__(
        self,
        upstream_port: int,
        failure_rate: float,
        seed: int = 0,
        first_byte_seconds: float = 0.0,
        mib_per_second: float | None = None,
    ) -> None:
        self.upstream_port = upstream_port
        self.failure_rate = failure_rate
        self.random = random.Random(seed)
        self.first_byte_seconds = first_byte_seconds
        self.bytes_per_second = mib_per_second * 2**20 if mib_per_second else None
        self.lock = threading.Lock()
        self.injected: Counter[str] = Counter()
        self.by_method: Counter[str] = Counter()
        self.requests = 0
        # (method, path, arrived, answered) of every request, monotonic seconds: which overlapped
        self.spans: list[tuple[str, str, float, float]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def choose(self, method: str) -> str | None:
        with self.lock:
            self.requests += 1
            self.by_method[method] += 1
            if self.random.random() >= self.failure_rate:
                return None
            fault = self.random.choice(FAULTS)
            self.injected[fault] += 1
            return fault

    def reset_counts(self) -> None:
        """Forget the requests counted so far (one measurement after another)."""
        with self.lock:
            self.requests = 0
            self.by_method.clear()
            self.spans.clear()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                # Headers and body go out in separate writes: without this, Nagle's algorithm
                # holds the body until the client's delayed ACK (40 ms) of the headers.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def _reset(self) -> None:
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                self.close_connection = True
                self.connection.close()

            def _reply(
                self,
                status: int,
                headers: list[tuple[str, str]],
                body: bytes,
                declared: int | None = None,
            ) -> None:
                self.send_response(status)
                for name, value in headers:
                    if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(body) if declared is None else declared))
                if proxy.first_byte_seconds:
                    time.sleep(proxy.first_byte_seconds)
                self.end_headers()
                if self.command != "HEAD":
                    self._paced(self.wfile.write, body)

            def _paced(self, move: Callable[[bytes], object], data: bytes) -> None:
                """Move ``data`` at the connection's bandwidth (all at once without a model)."""
                if not proxy.bytes_per_second:
                    move(data)
                    return
                started = time.monotonic()
                for at in range(0, len(data), _PACE_CHUNK):
                    piece = data[at : at + _PACE_CHUNK]
                    move(piece)
                    due = started + (at + len(piece)) / proxy.bytes_per_second
                    time.sleep(max(0.0, due - time.monotonic()))

            def _receive(self, length: int) -> bytes:
                if not proxy.bytes_per_second or not length:
                    return self.rfile.read(length) if length else b""
                parts: list[bytes] = []
                self._paced(parts.append, self.rfile.read(length))
                return b"".join(parts)

            def handle_one(self) -> None:
                arrived = time.monotonic()
                try:
                    self._forward()
                finally:
                    with proxy.lock:
                        proxy.spans.append((self.command, self.path, arrived, time.monotonic()))

            def _forward(self) -> None:
                body = self._receive(int(self.headers.get("Content-Length") or 0))
                fault = proxy.choose(self.command)
                if fault == "reset_before":
                    return self._reset()
                if fault in ("500", "503"):
                    code = "InternalError" if fault == "500" else "SlowDown"
                    payload = _ERROR_BODY.format(code=code).encode()
                    return self._reply(int(fault), [("Content-Type", "application/xml")], payload)
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=120)
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in ("connection", "expect")
                }
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                upstream.close()
                if fault == "reset_after":
                    return self._reset()
                declared = None
                if self.command == "HEAD":
                    declared = int(response.getheader("Content-Length") or 0)
                if fault == "truncate" and len(data) > 1:
                    self._reply(
                        response.status,
                        response.getheaders(),
                        data[: len(data) // 2],
                        declared=len(data),
                    )
                    return self._reset()
                self._reply(response.status, response.getheaders(), data, declared=declared)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = handle_one

        return Handler


class S3Model(FaultProxy):
    """S3's latency in front of ``upstream_port`` (see the module's docstring); no faults."""

    def __init__(
        self, upstream_port: int, first_byte_ms: float = 20.0, mib_per_second: float = 90.0
    ) -> None:
        super().__init__(
            upstream_port,
            failure_rate=0.0,
            first_byte_seconds=first_byte_ms / 1000,
            mib_per_second=mib_per_second,
        )
