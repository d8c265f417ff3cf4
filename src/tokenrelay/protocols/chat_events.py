"""``POST /chat``: numbered SSE events ``delta``, ``usage``, ``done`` and ``error``."""

from __future__ import annotations

from typing import Any

import orjson

from tokenrelay.errors import TokenRelayError
from tokenrelay.events import Chunk
from tokenrelay.protocols.base import SSE_COMMENT_PING, SSE_HEADERS, openai_error_response
from tokenrelay.record import StreamRecord


class ChatEvents:
    """``id: <n>`` + ``data: {"type": ...}`` events; only text reaches the client as deltas."""

    streaming = True
    headers = SSE_HEADERS
    keepalive = SSE_COMMENT_PING

    __slots__ = ("_numbered", "_seq")

    def __init__(self, *, numbered: bool = True) -> None:
        # Unnumbered: a resumable stream's ids are stamped on every protocol alike (resumable.py).
        self._numbered = numbered
        self._seq = 0

    def _event(self, payload: dict[str, Any]) -> bytes:
        if not self._numbered:
            return b"data: %b\n\n" % orjson.dumps(payload)
        self._seq += 1
        return b"id: %d\ndata: %b\n\n" % (self._seq, orjson.dumps(payload))

    def encode(self, chunk: Chunk, out: bytearray) -> None:
        text = chunk.text
        if text:
            out += self._event({"type": "delta", "text": text})

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
        cost = record.cost_usd
        if cost is not None:  # a priced model: what the ledger will record for this stream
            usage["cost_usd"] = cost
        return self._event(usage) + self._event({"type": "done", "finish_reason": record.finish_reason})

    def encode_error(self, error: TokenRelayError) -> bytes:
        return self._event({"type": "error", "code": error.code, "message": error.message})

    def error_response(self, error: TokenRelayError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        return openai_error_response(error)
