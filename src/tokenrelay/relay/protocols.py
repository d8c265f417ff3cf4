"""The two wire protocols a stream can be sent in, plus OpenAI's non-streamed answer.

Each encoder turns upstream chunks (already parsed dicts) into the bytes of its protocol. They
run once per chunk, so they append to a caller-owned buffer and build no intermediate objects
beyond the one ``orjson.dumps`` call.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import orjson

from tokenrelay.errors import TokenRelayError
from tokenrelay.ledger.record import StreamRecord

SSE_HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
JSON_HEADERS: list[tuple[bytes, bytes]] = [(b"content-type", b"application/json")]
PING = b": ping\n\n"


class WireProtocol(Protocol):
    """How one stream is put on the wire."""

    streaming: bool
    headers: list[tuple[bytes, bytes]]

    def encode_chunk(self, chunk: dict[str, Any], content: str | None, out: bytearray) -> None:
        """Append the bytes for one upstream chunk (``content``: its text delta, if any)."""

    def encode_end(self, record: StreamRecord) -> bytes:
        """The closing bytes of a completed stream (usage, done)."""

    def encode_error(self, error: TokenRelayError) -> bytes:
        """The bytes reporting an error once the response has started."""


class ChatEvents:
    """``POST /chat``: ``id: <n>`` + ``data: {"type": ...}`` events."""

    streaming = True
    headers = SSE_HEADERS

    __slots__ = ("_seq",)

    def __init__(self) -> None:
        self._seq = 0

    def _event(self, payload: dict[str, Any]) -> bytes:
        self._seq += 1
        return b"id: %d\ndata: %b\n\n" % (self._seq, orjson.dumps(payload))

    def encode_chunk(self, chunk: dict[str, Any], content: str | None, out: bytearray) -> None:  # noqa: ARG002
        if content:
            out += self._event({"type": "delta", "text": content})

    def encode_end(self, record: StreamRecord) -> bytes:
        prompt = record.prompt_tokens or 0
        completion = record.completion_tokens or 0
        usage = {
            "type": "usage",
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "source": str(record.usage_source),
        }
        return self._event(usage) + self._event({"type": "done", "finish_reason": record.finish_reason})

    def encode_error(self, error: TokenRelayError) -> bytes:
        return self._event({"type": "error", "code": error.code, "message": error.message})


class OpenAIChunks:
    """``POST /v1/chat/completions`` with ``stream: true``: OpenAI's chunks and ``[DONE]``."""

    streaming = True
    headers = SSE_HEADERS

    __slots__ = ("_include_usage", "_model", "_usage_sent")

    def __init__(self, *, public_model: str, include_usage: bool) -> None:
        self._model = public_model
        self._include_usage = include_usage
        self._usage_sent = False

    def encode_chunk(self, chunk: dict[str, Any], content: str | None, out: bytearray) -> None:  # noqa: ARG002
        if "usage" in chunk:
            if not self._include_usage:
                # We always ask the upstream for usage; a client that did not ask must not see it.
                del chunk["usage"]
                if not chunk.get("choices"):
                    return
            elif chunk["usage"] is not None:
                self._usage_sent = True
        chunk["model"] = self._model
        out += b"data: " + orjson.dumps(chunk) + b"\n\n"

    def encode_end(self, record: StreamRecord) -> bytes:
        tail = b""
        if self._include_usage and not self._usage_sent:
            # The upstream gave no usage (or it was estimated): still honour include_usage.
            prompt = record.prompt_tokens or 0
            completion = record.completion_tokens or 0
            usage_chunk = {
                "id": f"chatcmpl-{record.request_id}",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": self._model,
                "choices": [],
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                },
            }
            tail = b"data: " + orjson.dumps(usage_chunk) + b"\n\n"
        return tail + b"data: [DONE]\n\n"

    def encode_error(self, error: TokenRelayError) -> bytes:
        return b"data: " + error.openai_body() + b"\n\n"


class OpenAICompletion:
    """``POST /v1/chat/completions`` with ``stream: false``: the chunks folded into one answer."""

    streaming = False
    headers = JSON_HEADERS

    def __init__(self, *, public_model: str) -> None:
        self._model = public_model
        self._id: str | None = None
        self._created: int | None = None
        self._role = "assistant"
        self._tool_calls: dict[int, dict[str, Any]] = {}

    def encode_chunk(self, chunk: dict[str, Any], content: str | None, out: bytearray) -> None:  # noqa: ARG002
        self._id = self._id or chunk.get("id")
        self._created = self._created or chunk.get("created")
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            self._role = delta.get("role") or self._role
            for call in delta.get("tool_calls") or ():
                merged = self._tool_calls.setdefault(
                    call.get("index", 0),
                    {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
                )
                merged["id"] = call.get("id") or merged["id"]
                function = call.get("function") or {}
                merged["function"]["name"] += function.get("name") or ""
                merged["function"]["arguments"] += function.get("arguments") or ""

    def encode_end(self, record: StreamRecord) -> bytes:
        prompt = record.prompt_tokens or 0
        completion = record.completion_tokens or 0
        message: dict[str, Any] = {"role": self._role, "content": record.completion_text()}
        if self._tool_calls:
            message["tool_calls"] = [self._tool_calls[i] for i in sorted(self._tool_calls)]
        return orjson.dumps(
            {
                "id": self._id or f"chatcmpl-{record.request_id}",
                "object": "chat.completion",
                "created": self._created or int(time.time()),
                "model": self._model,
                "choices": [{"index": 0, "message": message, "finish_reason": record.finish_reason}],
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                },
            }
        )

    def encode_error(self, error: TokenRelayError) -> bytes:
        return error.openai_body()
