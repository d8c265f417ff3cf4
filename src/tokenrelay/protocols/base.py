"""What the relay needs of a client protocol's encoder, and what SSE protocols share.

Encoders run once per upstream chunk: they append to a caller-owned buffer and build no
intermediate objects beyond their one ``orjson.dumps`` call.
"""

from __future__ import annotations

from typing import Protocol

from tokenrelay.errors import TokenRelayError
from tokenrelay.events import Chunk
from tokenrelay.record import StreamRecord

SSE_HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
JSON_HEADERS: list[tuple[bytes, bytes]] = [(b"content-type", b"application/json")]
# An SSE comment: every client ignores it, every proxy sees the connection is alive.
SSE_COMMENT_PING = b": ping\n\n"


class Encoder(Protocol):
    """How one stream is put on the wire."""

    streaming: bool
    headers: list[tuple[bytes, bytes]]
    # The bytes of one keep-alive (streaming protocols).
    keepalive: bytes

    def encode(self, chunk: Chunk, out: bytearray) -> None:
        """Append the bytes for one upstream chunk."""
        ...

    def encode_end(self, record: StreamRecord) -> bytes:
        """The closing bytes of a completed stream (usage, done)."""
        ...

    def encode_error(self, error: TokenRelayError) -> bytes:
        """The bytes reporting an error once the response has started."""
        ...

    def error_response(self, error: TokenRelayError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Status, headers and body of an error before the response has started."""
        ...


def openai_error_response(error: TokenRelayError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """An error as an OpenAI-shaped JSON response (``/chat`` and ``/v1`` both use it)."""
    headers = [*JSON_HEADERS, *((k.lower().encode(), v.encode()) for k, v in error.headers().items())]
    return error.http_status, headers, error.openai_body()
