"""Client-protocol encoders: the exact bytes of /chat events and OpenAI chunks, from neutral events."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from tokenrelay.errors import StreamShutdown, UpstreamRateLimited
from tokenrelay.events import Chunk, ToolCallDelta, Usage
from tokenrelay.protocols import ChatEvents, OpenAIChunks, OpenAICompletion
from tokenrelay.record import StreamRecord, UsageSource


def record(**fields: Any) -> StreamRecord:
    base: dict[str, Any] = {
        "stream_id": "s1",
        "request_id": "r1",
        "model": "m",
        "upstream_model": "u",
        "messages": [],
        "tokenizer_encoding": "cl100k_base",
        "started_at": datetime.now(UTC),
        "started_mono": 0.0,
    }
    return StreamRecord(**{**base, **fields})


def events(data: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line[6:]) for line in data.split(b"\n") if line.startswith(b"data: ")]


def test_chat_events_are_numbered_and_typed() -> None:
    protocol = ChatEvents()
    out = bytearray()
    protocol.encode(Chunk("Hel"), out)
    protocol.encode(Chunk(), out)  # role-only chunk: nothing to send
    protocol.encode(Chunk("lo"), out)
    end = protocol.encode_end(
        record(prompt_tokens=3, completion_tokens=2, usage_source=UsageSource.UPSTREAM, finish_reason="stop")
    )
    assert bytes(out).startswith(b'id: 1\ndata: {"type":"delta","text":"Hel"}\n\nid: 2\n')
    assert end.startswith(b"id: 3\n")
    assert events(end) == [
        {
            "type": "usage",
            "prompt_tokens": 3,
            "completion_tokens": 2,
            "total_tokens": 5,
            "source": "upstream",
        },
        {"type": "done", "finish_reason": "stop"},
    ]
    assert events(protocol.encode_error(StreamShutdown("bye"))) == [
        {"type": "error", "code": "shutdown", "message": "bye"}
    ]


def test_chat_event_bytes_are_plain_json() -> None:
    """The event payloads are JSON objects with a type (guards the encoder's byte layout)."""
    out = bytearray()
    ChatEvents().encode(Chunk('a"\n'), out)
    assert bytes(out) == b'id: 1\ndata: {"type":"delta","text":"a\\"\\n"}\n\n'
    assert orjson.loads(bytes(out).split(b"data: ")[1]) == {"type": "delta", "text": 'a"\n'}


def native(chunk: dict[str, Any]) -> Chunk:
    return Chunk(native=chunk)


def test_openai_chunks_pass_native_chunks_renamed_and_hide_unrequested_usage() -> None:
    protocol = OpenAIChunks(public_model="public", include_usage=False)
    out = bytearray()
    protocol.encode(
        native({"model": "upstream", "choices": [{"delta": {"content": "x"}}], "usage": None}), out
    )
    protocol.encode(native({"model": "upstream", "choices": [], "usage": {"prompt_tokens": 1}}), out)
    assert events(bytes(out)) == [{"model": "public", "choices": [{"delta": {"content": "x"}}]}]
    assert protocol.encode_end(record()) == b"data: [DONE]\n\n"


def test_openai_chunks_pass_requested_usage_once() -> None:
    protocol = OpenAIChunks(public_model="p", include_usage=True)
    out = bytearray()
    usage = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    protocol.encode(native({"choices": [], "usage": usage}), out)
    assert events(bytes(out))[0]["usage"] == usage
    assert protocol.encode_end(record()) == b"data: [DONE]\n\n"


def test_openai_chunks_are_built_from_another_providers_events() -> None:
    """No native chunk (an Anthropic upstream, say): text, reasoning, tool calls, finish, usage."""
    protocol = OpenAIChunks(public_model="p", include_usage=True)
    out = bytearray()
    protocol.encode(Chunk("Hi"), out)
    protocol.encode(Chunk(reasoning="thinking"), out)
    protocol.encode(Chunk(tool_calls=[ToolCallDelta(0, "call_1", "get_weather", "")]), out)
    protocol.encode(Chunk(tool_calls=[ToolCallDelta(0, arguments='{"city": "Oslo"}')]), out)
    protocol.encode(Chunk(finish_reason="tool_calls", usage=Usage(5, 7)), out)
    sent = events(bytes(out))
    assert {c["id"] for c in sent} == {sent[0]["id"]} and sent[0]["id"].startswith("chatcmpl-")
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "p" for c in sent)
    assert [c["choices"][0]["delta"] for c in sent[:4]] == [
        {"content": "Hi"},
        {"reasoning_content": "thinking"},
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                }
            ]
        },
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Oslo"}'}}]},
    ]
    assert sent[4]["choices"][0]["finish_reason"] == "tool_calls"
    assert sent[4]["usage"] == {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
    assert protocol.encode_end(record()) == b"data: [DONE]\n\n", "usage was sent: not again"


def test_openai_error_chunk_is_openai_shaped() -> None:
    protocol = OpenAIChunks(public_model="p", include_usage=False)
    assert events(protocol.encode_error(UpstreamRateLimited("slow down", retry_after="3"))) == [
        {
            "error": {
                "message": "slow down",
                "type": "rate_limit_error",
                "param": None,
                "code": "upstream_rate_limited",
            }
        }
    ]
    status, headers, body = protocol.error_response(UpstreamRateLimited("slow down", retry_after="3"))
    assert status == 429 and (b"retry-after", b"3") in headers
    assert orjson.loads(body)["error"]["code"] == "upstream_rate_limited"


def test_non_streamed_completion_folds_chunks_and_tool_calls() -> None:
    protocol = OpenAICompletion(public_model="p")
    out = bytearray()
    protocol.encode(native({"id": "c1", "created": 5, "choices": [{"delta": {"role": "assistant"}}]}), out)
    protocol.encode(Chunk(tool_calls=[ToolCallDelta(0, "call_1", "get_", '{"a"')]), out)
    protocol.encode(Chunk(tool_calls=[ToolCallDelta(0, None, "weather", ": 1}")]), out)
    assert out == b""
    body = orjson.loads(
        protocol.encode_end(
            record(completion_parts=["Hi"], prompt_tokens=4, completion_tokens=1, finish_reason="tool_calls")
        )
    )
    assert body["id"] == "c1" and body["created"] == 5 and body["model"] == "p"
    message = body["choices"][0]["message"]
    assert message["content"] == "Hi"
    assert message["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"a": 1}'}}
    ]
    assert body["usage"] == {"prompt_tokens": 4, "completion_tokens": 1, "total_tokens": 5}
