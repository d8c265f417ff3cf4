"""The simulator's OpenAI chat-completions wire format: chunks, the whole completion, errors.

Pure encoding: ``server.py`` paces and sends what these functions make. Reasoning goes out
as ``delta.reasoning_content`` (the vLLM / DeepSeek convention; OpenAI itself never sends it).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson

from tokenrelay.sim.behaviour import Answer, Block, Frames, SimOptions

_ERROR_EVENT = (
    b'data: {"error":{"message":"simulated mid-stream failure","type":"server_error","code":null}}\n\n'
)


def usage(answer: Answer, options: SimOptions) -> dict[str, Any]:
    """OpenAI's usage object: one completion token per streamed piece."""
    counts: dict[str, Any] = {
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.output_tokens,
        "total_tokens": answer.prompt_tokens + answer.output_tokens,
    }
    # Only when asked for, so that plain answers stay byte for byte what they always were.
    if options.cache_read:
        counts["prompt_tokens_details"] = {"cached_tokens": options.cache_read}
    if len(answer.thinking):
        counts["completion_tokens_details"] = {"reasoning_tokens": len(answer.thinking)}
    return counts


def problem(request: dict[str, Any]) -> str | None:  # noqa: ARG001 (the wire's signature)
    """Never: any chat-completions body gets an answer, as it always has."""
    return None


def error_body(status: int, message: str | None = None) -> dict[str, Any]:
    kind = "rate_limit_error" if status == 429 else "server_error"
    return {"error": {"message": message or f"simulated {status}", "type": kind, "code": None}}


def frames(request: dict[str, Any], answer: Answer, options: SimOptions) -> Frames:
    """The chunks of a streamed completion (the usage chunk only when the request asks)."""
    head = orjson.dumps(
        {
            "id": "chatcmpl-sim" + uuid.uuid4().hex[:20],
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": request["model"],
        }
    )[:-1]
    choice = b"data: " + head + b',"choices":[{"index":0,"delta":{'
    end = b'},"finish_reason":null}]}\n\n'
    blocks = [
        Block(answer.thinking, choice + b'"reasoning_content":', end),
        Block(answer.text, choice + b'"content":', end),
    ]
    if answer.tool_name is not None:
        call = {"index": 0, "id": "call_" + uuid.uuid4().hex[:24], "type": "function"}
        call["function"] = {"name": answer.tool_name, "arguments": ""}
        start = choice + b'"tool_calls":' + orjson.dumps([call]) + end
        prefix = choice + b'"tool_calls":[{"index":0,"function":{"arguments":'
        blocks.append(Block(answer.tool_arguments, prefix, b"}}]" + end, start=start))
    closing = b"data: " + head + b',"choices":[{"index":0,"delta":{},"finish_reason":'
    closing += orjson.dumps(answer.finish) + b"}]}\n\n"
    include_usage = bool((request.get("stream_options") or {}).get("include_usage")) and options.usage
    if include_usage:
        counts = orjson.dumps(usage(answer, options))
        closing += b"data: " + head + b',"choices":[],"usage":' + counts + b"}\n\n"
    opening = choice + b'"role":"assistant","content":""' + end
    if options.malformed:
        # Valid JSON in the wrong shape: a server bug the gateway must survive.
        opening = b'data: {"id":"chatcmpl-sim","choices":"malformed"}\n\n'
    return Frames(
        opening=opening,
        blocks=blocks,
        closing=closing + b"data: [DONE]\n\n",
        error=_ERROR_EVENT,
    )


def completion(request: dict[str, Any], answer: Answer, options: SimOptions) -> dict[str, Any]:
    """The whole completion, as a request without ``stream`` gets it."""
    message: dict[str, Any] = {"role": "assistant", "content": "".join(answer.text)}
    if len(answer.thinking):
        message["reasoning_content"] = "".join(answer.thinking)
    if answer.tool_name is not None:
        message["content"] = None
        function = {"name": answer.tool_name, "arguments": "".join(answer.tool_arguments)}
        call_id = "call_" + uuid.uuid4().hex[:24]
        message["tool_calls"] = [{"id": call_id, "type": "function", "function": function}]
    return {
        "id": "chatcmpl-sim" + uuid.uuid4().hex[:20],
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request["model"],
        "choices": [{"index": 0, "message": message, "finish_reason": answer.finish}],
        "usage": usage(answer, options),
    }
