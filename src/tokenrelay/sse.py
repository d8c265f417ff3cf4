"""Incremental decoding of Server-Sent Events into `data` payloads (upstream streams and the client)."""

from __future__ import annotations

# No chat chunk comes close; a stream that never ends an event must not grow without bound.
MAX_EVENT_BYTES = 1024 * 1024


class SSEDecoder:
    """Feed raw bytes split anywhere; get back the ``data`` payload of each complete event.

    Handles ``\\n`` and ``\\r\\n`` line endings, comment lines, other fields and multi-line
    ``data``. The common single-line event takes a fast path with no line splitting.
    """

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes) -> list[bytes]:
        """Decode what ``data`` completes; keep the rest for the next call."""
        buffer = self._pending + data if self._pending else data
        if b"\r" in buffer:
            # A lone trailing "\r" stays pending, so a "\r\n" split across reads still folds.
            buffer = buffer.replace(b"\r\n", b"\n")
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
