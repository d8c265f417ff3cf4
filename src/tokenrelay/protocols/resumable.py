"""Resumable streams on the wire: every SSE event gets an ``id:``, and a copy for the log.

``ResumableEvents`` wraps a streaming encoder of any protocol. Each event it produces is
prefixed with ``id: <n>`` (1, 2, 3, ... per stream) and also handed to an ``EventSink`` (the
stream's Redis log, ``cluster/streamlog.py``), so a client that reconnects with
``Last-Event-ID: n`` on any replica is sent exactly the events after ``n``. SDKs ignore SSE
ids, so OpenAI's and Anthropic's clients keep working unchanged.

Events are split on the blank line that ends them: none of our encoders puts a blank line
inside an event (JSON from orjson has no raw newlines).
"""

from __future__ import annotations

from typing import Protocol

from tokenrelay.errors import TokenRelayError
from tokenrelay.events import Chunk
from tokenrelay.protocols.anthropic import AnthropicEvents
from tokenrelay.protocols.base import Encoder
from tokenrelay.protocols.chat_events import ChatEvents
from tokenrelay.protocols.openai import OpenAIChunks
from tokenrelay.record import StreamRecord

_EVENT_END = b"\n\n"


class EventSink(Protocol):
    """Where a resumable stream's stamped events go besides the client."""

    def add(self, data: bytes, last_id: int) -> None:
        """Events up to id ``last_id`` (whole events, ids stamped)."""

    def end(self) -> None:
        """No event follows (the stream completed, failed or was stopped)."""


def protocol_of(encoder: Encoder) -> str | None:
    """The name a follower needs to speak a stream's protocol; None: not resumable."""
    if isinstance(encoder, ChatEvents):
        return "chat"
    if isinstance(encoder, OpenAIChunks):
        return "openai"
    if isinstance(encoder, AnthropicEvents):
        return "anthropic"
    return None  # a non-streamed answer has nothing to resume


def error_event(protocol: str, error: TokenRelayError) -> bytes:
    """``error`` as one event of ``protocol`` (no id: stamp it with :func:`stamp`)."""
    if protocol == "anthropic":
        return AnthropicEvents(public_model="").encode_error(error)
    if protocol == "openai":
        return OpenAIChunks(public_model="", include_usage=False).encode_error(error)
    return ChatEvents(numbered=False).encode_error(error)


def keepalive_of(protocol: str) -> bytes:
    """A keep-alive in ``protocol`` (Anthropic's clients expect its ``ping`` event)."""
    return AnthropicEvents.keepalive if protocol == "anthropic" else ChatEvents.keepalive


def stamp(data: bytes | bytearray, after: int, out: bytearray) -> int:
    """Append ``data``'s events to ``out``, numbered from ``after + 1``; returns the last id."""
    seq = after
    start = 0
    end = data.find(_EVENT_END)
    while end >= 0:
        seq += 1
        out += b"id: %d\n" % seq
        out += data[start : end + 2]
        start = end + 2
        end = data.find(_EVENT_END, start)
    return seq


class ResumableEvents:
    """A streaming encoder whose events carry ids and are copied to ``sink`` as they are made."""

    streaming = True

    __slots__ = ("_final_bytes", "_inner", "_scratch", "_sink", "headers", "keepalive", "last_id", "protocol")

    def __init__(self, inner: Encoder, sink: EventSink, *, stream_id: str) -> None:
        protocol = protocol_of(inner)
        if protocol is None:
            raise ValueError(f"{type(inner).__name__} cannot be resumed")
        if isinstance(inner, ChatEvents):
            inner = ChatEvents(numbered=False)  # ids are ours to stamp
        self._inner = inner
        self._sink = sink
        self._scratch = bytearray()
        self.protocol = protocol
        self.headers = [*inner.headers, (b"x-stream-id", stream_id.encode())]
        self.keepalive = inner.keepalive
        self.last_id = 0
        self._final_bytes: bytes | None = None

    def encode(self, chunk: Chunk, out: bytearray) -> None:
        scratch = self._scratch
        self._inner.encode(chunk, scratch)
        if scratch:
            start = len(out)
            self.last_id = stamp(scratch, self.last_id, out)
            scratch.clear()
            self._sink.add(bytes(memoryview(out)[start:]), self.last_id)  # one copy, not two

    def _final(self, data: bytes) -> bytes:
        if self._final_bytes is not None:
            return self._final_bytes  # a stream ends once (the relay may ask for both error forms)
        out = bytearray()
        self.last_id = stamp(data, self.last_id, out)
        final = self._final_bytes = bytes(out)
        self._sink.add(final, self.last_id)
        self._sink.end()
        return final

    def encode_end(self, record: StreamRecord) -> bytes:
        return self._final(self._inner.encode_end(record))

    def encode_error(self, error: TokenRelayError) -> bytes:
        return self._final(self._inner.encode_error(error))

    def error_response(self, error: TokenRelayError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        # The client gets an HTTP error; a follower on another replica reads it as an event.
        self.encode_error(error)
        return self._inner.error_response(error)
