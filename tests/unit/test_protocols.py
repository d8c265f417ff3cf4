"""Wire encoders: exact bytes of /chat events and OpenAI chunks."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from tokenrelay.errors import StreamShutdown, UpstreamRateLimited
from tokenrelay.ledger.record import StreamRecord, UsageSource
from tokenrelay.relay.protocols import ChatEvents, OpenAIChunks, OpenAICompletion


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
    protocol.encode_chunk({}, "Hel", out)
    protocol.encode_chunk({}, None, out)  # role-only chunk: nothing to send
    protocol.encode_chunk({}, "lo", out)
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


def test_openai_chunks_rename_model_and_hide_unrequested_usage() -> None:
    protocol = OpenAIChunks(public_model="public", include_usage=False)
    out = bytearray()
    protocol.encode_chunk(
        {"model": "upstream", "choices": [{"delta": {"content": "x"}}], "usage": None}, "x", out
    )
    protocol.encode_chunk({"model": "upstream", "choices": [], "usage": {"prompt_tokens": 1}}, None, out)
    assert events(bytes(out)) == [{"model": "public", "choices": [{"delta": {"content": "x"}}]}]
    assert protocol.encode_end(record()) == b"data: [DONE]\n\n"


def test_openai_chunks_pass_requested_usage_once() -> None:
    protocol = OpenAIChunks(public_model="p", include_usage=True)
    out = bytearray()
    usage = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    protocol.encode_chunk({"choices": [], "usage": usage}, None, out)
    assert events(bytes(out))[0]["usage"] == usage
    assert protocol.encode_end(record()) == b"data: [DONE]\n\n"


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


def test_non_streamed_completion_folds_chunks_and_tool_calls() -> None:
    protocol = OpenAICompletion(public_model="p")
    out = bytearray()
    call = {"index": 0, "id": "call_1", "function": {"name": "get_", "arguments": '{"a"'}}
    protocol.encode_chunk(
        {"id": "c1", "created": 5, "choices": [{"delta": {"role": "assistant"}}]}, None, out
    )
    protocol.encode_chunk({"choices": [{"delta": {"tool_calls": [call]}}]}, None, out)
    more = {"index": 0, "function": {"name": "weather", "arguments": ": 1}"}}
    protocol.encode_chunk({"choices": [{"delta": {"tool_calls": [more]}}]}, None, out)
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
