"""``POST /v1/messages``: Anthropic's Messages stream events, or one folded Message.

The neutral events become content blocks, numbered in the order they open: reasoning a
``thinking`` block (closed by its ``signature``, when an Anthropic upstream gave one),
``redacted_thinking`` a block of its own, text a ``text`` block, each tool call (by its
``ToolCallDelta.index``) a ``tool_use`` block whose input arrives as ``input_json_delta``
pieces. A block closes when another opens, or at the end.

``message_start`` goes out with the first output, not before: until then nothing is worth
sending, and the Sender holds back what an encoder appends anyway (an answer that fails before
its first token is an HTTP error). An answer with no output at all still gets the whole
``message_start`` ... ``message_stop`` sequence, from ``encode_end``.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from tokenrelay.errors import TokenRelayError
from tokenrelay.events import Chunk, ToolCallDelta
from tokenrelay.protocols.base import JSON_HEADERS, SSE_HEADERS
from tokenrelay.record import StreamRecord

# Anthropic's keep-alive is an event of its own; its SDKs skip it.
ANTHROPIC_PING = b'event: ping\ndata: {"type": "ping"}\n\n'

# OpenAI's finish reasons (the neutral words) in Anthropic's; anything else ends a turn.
_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}

# Anthropic signs thinking blocks and gets the signature back with the block on the next turn;
# reasoning from other providers is unsigned, and a client must not take ours for a real
# signature. Anthropic's SDKs need the field (and a signature_delta) to be there.
_NO_SIGNATURE = ""

# Block kinds; a signed thinking block (_SIGNED) is complete: more reasoning opens another.
_TEXT, _THINKING, _TOOL, _SIGNED, _REDACTED = 1, 2, 3, 4, 5
# A text delta event is these, the block's index, these, the JSON text and ``}}\n\n``.
_TEXT_DELTA_HEAD = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":'
_TEXT_DELTA_MIDDLE = b',"delta":{"type":"text_delta","text":'


def stop_reason(finish_reason: str | None) -> str:
    """Anthropic's ``stop_reason`` for a neutral finish reason."""
    return _STOP_REASONS.get(finish_reason or "stop", "end_turn")


def anthropic_error_response(error: TokenRelayError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """An error as an Anthropic-shaped JSON response (Retry-After and the like kept)."""
    headers = [*JSON_HEADERS, *((k.lower().encode(), v.encode()) for k, v in error.headers().items())]
    return error.http_status, headers, error.anthropic_body()


def input_usage(prompt_tokens: int, cache_read: int | None, cache_creation: int | None) -> dict[str, int]:
    """Anthropic's input counts: cached prompt tokens apart from ``input_tokens`` (ours include them)."""
    if cache_read is None and cache_creation is None:
        return {"input_tokens": prompt_tokens}
    read, created = cache_read or 0, cache_creation or 0
    return {
        "input_tokens": max(prompt_tokens - read - created, 0),
        "cache_creation_input_tokens": created,
        "cache_read_input_tokens": read,
    }


def _usage(record: StreamRecord) -> dict[str, int]:
    usage = input_usage(record.prompt_tokens or 0, record.cache_read_tokens, record.cache_creation_tokens)
    usage["output_tokens"] = record.completion_tokens or 0
    return usage


def _message_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def _tool_id() -> str:
    return f"toolu_{uuid.uuid4().hex}"


class AnthropicEvents:
    """``stream: true``: ``event: <type>`` + ``data: <json>`` server-sent events."""

    streaming = True
    headers = SSE_HEADERS
    keepalive = ANTHROPIC_PING

    __slots__ = ("_index", "_input", "_kind", "_model", "_started", "_text_prefix", "_tool_blocks")

    def __init__(self, *, public_model: str) -> None:
        self._model = public_model
        self._started = False
        # The index of the open block (-1: none yet) and its kind (0: none open).
        self._index = -1
        self._kind = 0
        # The block of each tool call (by its neutral index).
        self._tool_blocks: dict[int, int] = {}
        self._input: dict[str, int] = {"input_tokens": 0}
        self._text_prefix = b""

    def encode(self, chunk: Chunk, out: bytearray) -> None:
        usage = chunk.usage
        if usage is not None:
            # Known before the first token from some providers (Anthropic's own message_start).
            self._input = input_usage(
                usage.prompt_tokens, usage.cache_read_tokens, usage.cache_creation_tokens
            )
        reasoning, text, calls = chunk.reasoning, chunk.text, chunk.tool_calls
        if not (reasoning or text or calls):
            # Signatures and redacted thinking come in chunks of their own (see events.Chunk):
            # looked for here, off the text path.
            if chunk.signature is not None or chunk.redacted_thinking is not None:
                self._thinking_end(chunk, out)
            return
        if not self._started:
            self._start(out)
        if reasoning:
            if self._kind != _THINKING:
                self._open(out, _THINKING, {"type": "thinking", "thinking": "", "signature": ""})
            self._delta(out, {"type": "thinking_delta", "thinking": reasoning})
        if text:
            if self._kind != _TEXT:
                self._open(out, _TEXT, {"type": "text", "text": ""})
                self._text_prefix = b"%b%d%b" % (_TEXT_DELTA_HEAD, self._index, _TEXT_DELTA_MIDDLE)
            # The hot path: the event around the text is fixed per block, so only the text is
            # encoded (half the CPU of dumping the whole event); orjson's own layout, byte for byte.
            out += self._text_prefix
            out += orjson.dumps(text)
            out += b"}}\n\n"
        if calls:
            for call in calls:
                self._tool_call(call, out)

    def _thinking_end(self, chunk: Chunk, out: bytearray) -> None:
        if not self._started:
            self._start(out)
        signature = chunk.signature
        if signature is not None:
            if self._kind != _THINKING:  # a thinking block with no text shown: still a block
                self._open(out, _THINKING, {"type": "thinking", "thinking": "", "signature": ""})
            self._close(out, signature)  # Anthropic's signature is the last thing in its block
        data = chunk.redacted_thinking
        if data is not None:
            self._open(out, _REDACTED, {"type": "redacted_thinking", "data": data})
            self._close(out)

    def _tool_call(self, call: ToolCallDelta, out: bytearray) -> None:
        block = self._tool_blocks.get(call.index)
        if block is None:
            tool_use = {"type": "tool_use", "id": call.id or _tool_id(), "name": call.name or "", "input": {}}
            self._open(out, _TOOL, tool_use)
            block = self._tool_blocks[call.index] = self._index
        # A later fragment of a call whose block has closed (a provider that interleaves parallel
        # calls) still goes to that block: blocks cannot reopen, and the SDKs accumulate by index.
        if call.arguments:
            delta = {"type": "input_json_delta", "partial_json": call.arguments}
            self._event(
                out, b"content_block_delta", {"type": "content_block_delta", "index": block, "delta": delta}
            )

    def _start(self, out: bytearray) -> None:
        self._started = True
        message: dict[str, Any] = {
            "id": _message_id(),
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {**self._input, "output_tokens": 0},
        }
        self._event(out, b"message_start", {"type": "message_start", "message": message})

    def _open(self, out: bytearray, kind: int, block: dict[str, Any]) -> None:
        self._close(out)
        self._index += 1
        self._kind = kind
        self._event(
            out,
            b"content_block_start",
            {"type": "content_block_start", "index": self._index, "content_block": block},
        )

    def _close(self, out: bytearray, signature: str = _NO_SIGNATURE) -> None:
        kind = self._kind
        if not kind:
            return
        if kind == _THINKING:
            self._delta(out, {"type": "signature_delta", "signature": signature})
        self._kind = 0
        self._event(out, b"content_block_stop", {"type": "content_block_stop", "index": self._index})

    def _delta(self, out: bytearray, delta: dict[str, Any]) -> None:
        self._event(
            out, b"content_block_delta", {"type": "content_block_delta", "index": self._index, "delta": delta}
        )

    @staticmethod
    def _event(out: bytearray, name: bytes, payload: dict[str, Any]) -> None:
        out += b"event: "
        out += name
        out += b"\ndata: "
        out += orjson.dumps(payload)
        out += b"\n\n"

    def encode_end(self, record: StreamRecord) -> bytes:
        out = bytearray()
        if not self._started:
            if record.prompt_tokens is not None:
                self._input = input_usage(
                    record.prompt_tokens, record.cache_read_tokens, record.cache_creation_tokens
                )
            self._start(out)  # an empty answer is still a whole message
        self._close(out)
        delta = {"stop_reason": stop_reason(record.finish_reason), "stop_sequence": None}
        self._event(out, b"message_delta", {"type": "message_delta", "delta": delta, "usage": _usage(record)})
        self._event(out, b"message_stop", {"type": "message_stop"})
        return bytes(out)

    def encode_error(self, error: TokenRelayError) -> bytes:
        return b"event: error\ndata: " + error.anthropic_body() + b"\n\n"

    def error_response(self, error: TokenRelayError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        return anthropic_error_response(error)


class AnthropicMessage:
    """``stream: false``: the events folded into one ``message`` object, blocks as the stream's."""

    streaming = False
    headers = JSON_HEADERS
    keepalive = b""

    def __init__(self, *, public_model: str) -> None:
        self._model = public_model
        # Each block: its kind, then its text pieces (a signed thinking block's signature last),
        # a tool call's [id, name, argument pieces], or a redacted thinking block's [data].
        self._blocks: list[tuple[int, list[str]]] = []
        self._tool_blocks: dict[int, list[str]] = {}

    def encode(self, chunk: Chunk, out: bytearray) -> None:  # noqa: ARG002 - sent whole at the end
        if chunk.reasoning:
            self._pieces(_THINKING).append(chunk.reasoning)
        if chunk.text:
            self._pieces(_TEXT).append(chunk.text)
        for call in chunk.tool_calls or ():
            pieces = self._tool_blocks.get(call.index)
            if pieces is None:
                pieces = self._tool_blocks[call.index] = [call.id or _tool_id(), call.name or ""]
                self._blocks.append((_TOOL, pieces))
            if call.arguments:
                pieces.append(call.arguments)
        if chunk.signature is not None:
            pieces = self._pieces(_THINKING)
            pieces.append(chunk.signature)
            self._blocks[-1] = (_SIGNED, pieces)
        if chunk.redacted_thinking is not None:
            self._blocks.append((_REDACTED, [chunk.redacted_thinking]))

    def _pieces(self, kind: int) -> list[str]:
        """The pieces of the last block if it is of ``kind``, else of a new one (as streamed)."""
        if self._blocks and self._blocks[-1][0] == kind:
            return self._blocks[-1][1]
        pieces: list[str] = []
        self._blocks.append((kind, pieces))
        return pieces

    def encode_end(self, record: StreamRecord) -> bytes:
        content: list[dict[str, Any]] = []
        for kind, pieces in self._blocks:
            if kind == _TEXT:
                content.append({"type": "text", "text": "".join(pieces)})
            elif kind == _THINKING:
                content.append({"type": "thinking", "thinking": "".join(pieces), "signature": _NO_SIGNATURE})
            elif kind == _SIGNED:
                *thinking, signature = pieces
                content.append({"type": "thinking", "thinking": "".join(thinking), "signature": signature})
            elif kind == _REDACTED:
                content.append({"type": "redacted_thinking", "data": pieces[0]})
            else:
                call_id, name, *arguments = pieces
                content.append(
                    {"type": "tool_use", "id": call_id, "name": name, "input": _tool_input(arguments)}
                )
        return orjson.dumps(
            {
                "id": _message_id(),
                "type": "message",
                "role": "assistant",
                "model": self._model,
                "content": content,
                "stop_reason": stop_reason(record.finish_reason),
                "stop_sequence": None,
                "usage": _usage(record),
            }
        )

    def encode_error(self, error: TokenRelayError) -> bytes:
        return error.anthropic_body()

    def error_response(self, error: TokenRelayError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        return anthropic_error_response(error)


def _tool_input(arguments: list[str]) -> dict[str, Any]:
    """A tool call's arguments as the object Anthropic's ``input`` must be.

    Arguments that are not a JSON object (a model's malformed output, or one cut short by
    ``max_tokens``) become ``{}``: the stop reason says what happened.
    """
    try:
        parsed = orjson.loads("".join(arguments) or "{}")
    except orjson.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}
