"""Test servers on loopback: moto's S3 server, and a proxy that injects S3-style faults."""

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
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

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

    def __init__(self, upstream_port: int, failure_rate: float, seed: int = 0) -> None:
        self.upstream_port = upstream_port
        self.failure_rate = failure_rate
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.injected: Counter[str] = Counter()
        self.requests = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def choose(self) -> str | None:
        with self.lock:
            self.requests += 1
            if self.random.random() >= self.failure_rate:
                return None
            fault = self.random.choice(FAULTS)
            self.injected[fault] += 1
            return fault

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

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
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def handle_one(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                fault = proxy.choose()
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
