"""The simulator's Anthropic Messages wire format: stream events, the whole Message, errors.

Pure encoding, in the shapes of Anthropic's API (as the official ``anthropic`` SDK parses
and accumulates them); ``server.py`` paces and sends what these functions make.

A stream: ``message_start`` (usage with ``output_tokens`` 1, as Anthropic sends), ``ping``,
then per content block ``content_block_start``, its deltas, ``content_block_stop``, and
``message_delta`` (stop reason, cumulative ``output_tokens``) and ``message_stop``.
Blocks in order: ``thinking`` (``think=N``: N ``thinking_delta``, one ``signature_delta``),
then ``text`` or ``tool_use`` (``tool=1``), numbered from 0 without gaps.

Requests are checked as Anthropic checks them where a gateway's translation could go wrong:
``model``, ``max_tokens`` and ``messages`` required; roles ``user``, ``assistant`` or
``system`` (the SDK's ``MessageParam``: no ``tool``, no ``developer``); no OpenAI-only
fields; no ``tool_choice`` without ``tools``; thinking blocks sent back signed with the
simulator's :data:`SIGNATURE`; with ``thinking`` on, a last assistant turn that uses a tool
starts with its thinking block (what a gateway that drops thinking blocks gets wrong).
Anything else is a 400 ``invalid_request_error``. Headers are not checked.

Usage is always part of ``message_start`` and ``message_delta`` on this API, so the
simulator's ``usage=0`` does nothing here.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from tokenrelay.sim.behaviour import Answer, Block, Frames, SimOptions

# OpenAI's finish reasons (the simulator's own words) in Anthropic's; others pass as they are.
_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
# Fields of OpenAI's request that Anthropic's rejects ("Extra inputs are not permitted").
_OPENAI_ONLY = frozenset(
    {
        *("frequency_penalty", "presence_penalty", "seed", "stop", "n", "logprobs", "top_logprobs"),
        *("logit_bias", "response_format", "stream_options", "max_completion_tokens", "user"),
        *("parallel_tool_calls", "functions", "function_call"),
    }
)
_ROLES = ("user", "assistant", "system")
SIGNATURE = "c2ltdWxhdGVkIHRoaW5raW5nIHNpZ25hdHVyZQ=="  # opaque to clients, as Anthropic's is


def _event(name: str, payload: Any) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def _delta_prefix(name: str, index: int, kind: str, field: str) -> bytes:
    """``content_block_delta`` up to the piece's JSON string (the suffix closes it)."""
    head = {"type": name, "index": index, "delta": {"type": kind, field: None}}
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(head)[: -len(b"null}}")]


def error_body(status: int, message: str | None = None) -> dict[str, Any]:
    kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message or f"simulated {status}"}}


def problem(request: dict[str, Any]) -> str | None:
    """Why Anthropic would refuse ``request`` with a 400, in its words; None if it would not."""
    for name in ("model", "max_tokens", "messages"):
        if name not in request:
            return f"{name}: Field required"
    extra = sorted(_OPENAI_ONLY.intersection(request))
    if extra:
        return f"{extra[0]}: Extra inputs are not permitted"
    if "tool_choice" in request and not request.get("tools"):
        return "tool_choice may only be specified while providing tools"
    last_assistant: tuple[int, list[Any]] | None = None
    for index, message in enumerate(request["messages"]):
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            return f"messages.{index}.role: Input should be 'user', 'assistant' or 'system'"
        content = message.get("content")
        if message["role"] == "assistant":
            last_assistant = (index, content if isinstance(content, list) else [])
            for position, block in enumerate(last_assistant[1]):
                if _kind(block) == "thinking" and block.get("signature") != SIGNATURE:
                    return f"messages.{index}.content.{position}: Invalid `signature` in `thinking` block"
    thinking = request.get("thinking")
    if last_assistant is not None and isinstance(thinking, dict) and thinking.get("type") != "disabled":
        index, blocks = last_assistant
        kinds = [_kind(block) for block in blocks]
        if "tool_use" in kinds and kinds[0] not in ("thinking", "redacted_thinking"):
            return (
                f"messages.{index}.content.0.type: Expected `thinking` or `redacted_thinking`, but found "
                f"`{kinds[0]}`. When `thinking` is enabled, a final `assistant` message must start with "
                "a thinking block (preceding the lastmost set of `tool_use` and `tool_result` blocks)."
            )
    return None


def _kind(block: Any) -> Any:
    return block.get("type") if isinstance(block, dict) else None


def stop_reason(answer: Answer) -> str:
    return _STOP_REASONS.get(answer.finish, answer.finish)


def usage(answer: Answer, options: SimOptions, output_tokens: int) -> dict[str, int]:
    return {
        "input_tokens": answer.prompt_tokens,
        "cache_creation_input_tokens": options.cache_creation,
        "cache_read_input_tokens": options.cache_read,
        "output_tokens": output_tokens,
    }


def _message(request: dict[str, Any], content: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": "msg_01" + uuid.uuid4().hex[:22],
        "type": "message",
        "role": "assistant",
        "model": request.get("model", "sim"),
        "content": content,
        "stop_reason": None,
        "stop_sequence": None,
    }


def _contents(answer: Answer) -> list[tuple[dict[str, Any], Any]]:
    """Each non-empty block: how ``content_block_start`` shows it, and its pieces."""
    blocks: list[tuple[dict[str, Any], Any]] = []
    if len(answer.thinking):
        blocks.append(({"type": "thinking", "thinking": "", "signature": ""}, answer.thinking))
    if len(answer.text):
        blocks.append(({"type": "text", "text": ""}, answer.text))
    if answer.tool_name is not None:
        tool = {"type": "tool_use", "id": "toolu_01" + uuid.uuid4().hex[:22], "name": answer.tool_name}
        blocks.append(({**tool, "input": {}}, answer.tool_arguments))
    return blocks


_DELTAS = {"thinking": ("thinking_delta", "thinking"), "text": ("text_delta", "text")}


def frames(request: dict[str, Any], answer: Answer, options: SimOptions) -> Frames:
    """The events of a streamed Message."""
    blocks = []
    for index, (start, pieces) in enumerate(_contents(answer)):
        kind, field = _DELTAS.get(start["type"], ("input_json_delta", "partial_json"))
        stop = _event("content_block_stop", {"type": "content_block_stop", "index": index})
        if start["type"] == "thinking":
            signature = {"type": "signature_delta", "signature": SIGNATURE}
            delta = {"type": "content_block_delta", "index": index, "delta": signature}
            stop = _event("content_block_delta", delta) + stop
        opening = {"type": "content_block_start", "index": index, "content_block": start}
        prefix = _delta_prefix("content_block_delta", index, kind, field)
        blocks.append(Block(pieces, prefix, b"}}\n\n", _event("content_block_start", opening), stop))
    start_message = {**_message(request, []), "usage": usage(answer, options, 1)}
    final = {
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason(answer), "stop_sequence": None},
        "usage": {"output_tokens": answer.output_tokens},
    }
    overloaded = error_body(529, "Overloaded")
    return Frames(
        opening=_event("message_start", {"type": "message_start", "message": start_message})
        + _event("ping", {"type": "ping"}),
        blocks=blocks,
        closing=_event("message_delta", final) + _event("message_stop", {"type": "message_stop"}),
        error=_event("error", overloaded),
    )


def message(request: dict[str, Any], answer: Answer, options: SimOptions) -> dict[str, Any]:
    """The whole Message, as a request without ``stream`` gets it: what the stream adds up to."""
    content = []
    for start, pieces in _contents(answer):
        block = dict(start)
        if block["type"] == "thinking":
            block.update(thinking="".join(pieces), signature=SIGNATURE)
        elif block["type"] == "text":
            block["text"] = "".join(pieces)
        else:
            block["input"] = orjson.loads("".join(pieces))
        content.append(block)
    body = _message(request, content)
    body["stop_reason"] = stop_reason(answer)
    body["usage"] = usage(answer, options, answer.output_tokens)
    return body
