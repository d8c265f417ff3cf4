"""Incremental decoding of Server-Sent Events into `data` payloads (upstream streams and the client)."""

from __future__ import annotations

# No chat chunk comes close; a stream that never ends an event must not grow without bound.
MAX_EVENT_BYTES = 1024 * 1024


class SSEDecoder:
    """Feed raw bytes split anywhere; get back the ``data`` payload of each complete event.

    Handles ``\\n``, ``\\r\\n`` and bare ``\\r`` line endings (as the SSE spec allows), comment
    lines, other fields and multi-line ``data``. The common single-line event takes a fast
    path with no line splitting.
    """

    __slots__ = ("_after_cr", "_pending")

    def __init__(self) -> None:
        self._pending = b""
        # The last byte fed was a CR: a LF that starts the next feed belongs to it (CRLF).
        self._after_cr = False

    def feed(self, data: bytes) -> list[bytes]:
        """Decode what ``data`` completes; keep the rest for the next call."""
        if self._after_cr:
            self._after_cr = False
            if data.startswith(b"\n"):
                data = data[1:]
        if b"\r" in data:
            # A CR ends a line at once (waiting for a LF that may never come would hold the
            # stream's last event back); a LF right after it is the same line ending.
            self._after_cr = data.endswith(b"\r")
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buffer = self._pending + data if self._pending else data
        events = buffer.split(b"\n\n")
        self._pending = events.pop()
        if len(self._pending) > MAX_EVENT_BYTES:
            raise ValueError(f"an upstream event exceeded {MAX_EVENT_BYTES} bytes")
        payloads: list[bytes] = []
        for event in events:
            if event.startswith(b"data: ") and b"\n" not in event:
                payloads.append(event[6:])
                continue
            data_lines = [
                line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:")
            ]
            if data_lines:
                payloads.append(b"\n".join(data_lines))
        return payloads
