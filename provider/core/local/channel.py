"""The worker's end of a local runtime's channel (``provider.runtime.channel``): the payload
goes out, the runtime's report comes back, on a thread while the runner streams the output."""

from __future__ import annotations

import socket
import threading
from typing import Any

from provider.runtime.channel import receive, send

REPLY_SECONDS = 5.0  # after the runtime exited, how long a reply still in flight is awaited


class ChannelPeer:
    def __init__(self, payload: bytes, inline_max: int) -> None:
        self._ours, self._theirs = socket.socketpair()
        self._message = {"payload": payload, "inline_max": inline_max}
        self.reply: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._talk, name="flowtask-channel", daemon=True)
        self._thread.start()

    @property
    def child_fd(self) -> int:
        """The descriptor the runtime inherits (``--channel``)."""
        return self._theirs.fileno()

    def started(self) -> None:
        """The runtime holds its end: ours closes, so its death reads as the channel's end."""
        self._theirs.close()

    def _talk(self) -> None:
        try:
            send(self._ours, self._message)
            self._message = {}
            reply = receive(self._ours)
            if not isinstance(reply, dict) or not isinstance(reply.get("manifest"), dict):
                raise ValueError("the runtime's report is not a manifest")
            self.reply = reply
        except BaseException as exc:  # the runtime died or never read: no report
            self.error = exc

    def finish(self) -> dict[str, Any] | None:
        """The runtime's report once it has exited, or None when it sent none."""
        self._theirs.close()
        self._thread.join(REPLY_SECONDS)
        self._ours.close()  # a reader still waiting (a leftover process holds the end) gives up
        self._thread.join()
        return self.reply
