"""``/v1/messages``: the Anthropic encoders' events from neutral events (the request's
translation: test_anthropic_endpoint_request.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import anthropic
import httpx2
import orjson
import pytest

from tokenrelay.errors import (
    AuthenticationFailed,
    BodyTooLarge,
    InvalidRequest,
    ModelNotFound,
    PermissionDenied,
    RateLimitExceeded,
    ServiceUnavailable,
    StreamShutdown,
    TokenRelayError,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
)
from tokenrelay.events import Chunk, ToolCallDelta, Usage
from tokenrelay.protocols import AnthropicEvents, AnthropicMessage
from tokenrelay.record import StreamRecord


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
        "prompt_tokens": 7,
        "completion_tokens": 5,
        "finish_reason": "stop",
    }
    return StreamRecord(**{**base, **fields})


def sse(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of each event; the name must agree with the data's type."""
    parsed = []
    for block in data.split(b"\n\n"):
        if not block:
            continue
        name_line, data_line = block.split(b"\n")
        assert name_line.startswith(b"event: ") and data_line.startswith(b"data: "), block
        name, payload = name_line[7:].decode(), orjson.loads(data_line[6:])
        assert payload["type"] == name
        parsed.append((name, payload))
    return parsed


def stream(chunks: list[Chunk], end: StreamRecord) -> tuple[AnthropicEvents, bytes]:
    encoder = AnthropicEvents(public_model="public")
    out = bytearray()
    for chunk in chunks:
        encoder.encode(chunk, out)
    return encoder, bytes(out) + encoder.encode_end(end)


def folded(chunks: list[Chunk], end: StreamRecord) -> dict[str, Any]:
    encoder = AnthropicMessage(public_model="public")
    for chunk in chunks:
        encoder.encode(chunk, bytearray())
    message: dict[str, Any] = orjson.loads(encoder.encode_end(end))
    return message


def sdk_final_message(body: bytes) -> dict[str, Any]:
    """What Anthropic's SDK makes of a streamed answer (``messages.stream().get_final_message()``)."""
    # The SDK's own HTTP library (httpx2), answering with the encoder's bytes.
    transport = httpx2.MockTransport(
        lambda _request: httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body)
    )
    client = anthropic.Anthropic(
        base_url="http://gateway.test", api_key="x", http_client=httpx2.Client(transport=transport)
    )
    with client.messages.stream(
        model="public", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
    ) as sdk_stream:
        final = sdk_stream.get_final_message()
    dumped: dict[str, Any] = final.model_dump(exclude_none=True)
    return dumped


TOOL_ANSWER = [
    Chunk(usage=Usage(prompt_tokens=7, completion_tokens=0)),  # before any output: nothing yet
    Chunk("Let me look"),
    Chunk(" that up."),
    Chunk(tool_calls=[ToolCallDelta(index=0, id="call_1", name="weather", arguments="")]),
    Chunk(tool_calls=[ToolCallDelta(index=0, arguments='{"city": ')]),
    Chunk(tool_calls=[ToolCallDelta(index=0, arguments='"Paris"}')]),
    Chunk(tool_calls=[ToolCallDelta(index=1, id="call_2", name="time", arguments="{}")]),
    Chunk(finish_reason="tool_calls"),
]


def test_text_is_one_text_block_between_message_start_and_message_stop() -> None:
    _, body = stream([Chunk(), Chunk("Hel"), Chunk("lo")], record())
    events = sse(body)
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    message = events[0][1]["message"]
    assert message["id"].startswith("msg_") and len(message["id"]) == 36
    assert message["model"] == "public" and message["role"] == "assistant" and message["content"] == []
    assert message["usage"] == {"input_tokens": 0, "output_tokens": 0}
    assert events[1][1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    assert [e["delta"] for _, e in events[2:4]] == [
        {"type": "text_delta", "text": "Hel"},
        {"type": "text_delta", "text": "lo"},
    ]
    assert events[4][1] == {"type": "content_block_stop", "index": 0}
    assert events[5][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"input_tokens": 7, "output_tokens": 5},
    }


def test_text_delta_bytes_are_the_events_json_exactly() -> None:
    """The hot path writes the event around the text itself: it must be orjson's layout."""
    encoder = AnthropicEvents(public_model="public")
    out = bytearray()
    encoder.encode(Chunk(reasoning="r"), out)  # the text block is then block 1
    encoder.encode(Chunk('a"\n\u2028😀</script>'), out)
    event = {
        "type": "content_block_delta",
        "index": 1,
        "delta": {"type": "text_delta", "text": 'a"\n\u2028😀</script>'},
    }
    assert bytes(out).endswith(b"event: content_block_delta\ndata: " + orjson.dumps(event) + b"\n\n")


def test_nothing_is_encoded_before_the_first_output_and_known_input_tokens_start_the_message() -> None:
    encoder = AnthropicEvents(public_model="public")
    out = bytearray()
    encoder.encode(Chunk(usage=Usage(prompt_tokens=12, completion_tokens=0)), out)
    assert out == b""
    encoder.encode(Chunk("x"), out)
    assert sse(bytes(out))[0][1]["message"]["usage"] == {"input_tokens": 12, "output_tokens": 0}


def test_text_then_tool_calls_become_numbered_blocks() -> None:
    _, body = stream(TOOL_ANSWER, record(finish_reason="tool_calls"))
    events = [payload for _, payload in sse(body)]
    starts = [e for e in events if e["type"] == "content_block_start"]
    assert [(e["index"], e["content_block"]) for e in starts] == [
        (0, {"type": "text", "text": ""}),
        (1, {"type": "tool_use", "id": "call_1", "name": "weather", "input": {}}),
        (2, {"type": "tool_use", "id": "call_2", "name": "time", "input": {}}),
    ]
    pieces = [(e["index"], e["delta"]) for e in events if e["type"] == "content_block_delta"]
    assert pieces[2:] == [
        (1, {"type": "input_json_delta", "partial_json": '{"city": '}),
        (1, {"type": "input_json_delta", "partial_json": '"Paris"}'}),
        (2, {"type": "input_json_delta", "partial_json": "{}"}),
    ]
    stops = [e["index"] for e in events if e["type"] == "content_block_stop"]
    assert stops == [0, 1, 2]
    assert events[0]["message"]["usage"]["input_tokens"] == 7
    assert events[-2]["delta"]["stop_reason"] == "tool_use"


def test_reasoning_is_a_thinking_block_with_a_signature_before_it_stops() -> None:
    _, body = stream([Chunk(reasoning="Hmm, "), Chunk(reasoning="two."), Chunk("Two.")], record())
    events = [payload for _, payload in sse(body)]
    assert events[1]["content_block"] == {"type": "thinking", "thinking": "", "signature": ""}
    assert [e["delta"]["type"] for e in events[2:5]] == [
        "thinking_delta",
        "thinking_delta",
        "signature_delta",
    ]
    assert events[5] == {"type": "content_block_stop", "index": 0}
    assert events[6]["content_block"] == {"type": "text", "text": ""} and events[6]["index"] == 1


def test_an_upstream_signature_closes_its_block_and_redacted_thinking_is_a_block() -> None:
    """Anthropic's signatures and redacted thinking reach the client verbatim, streamed or not
    (the client sends them back next turn); a signature with no reasoning shown still is a block."""
    chunks = [
        Chunk(reasoning="Hmm, "),
        Chunk(reasoning="two."),
        Chunk(signature="sig-1"),
        Chunk(redacted_thinking="opaque"),
        Chunk(signature="sig-2"),
        Chunk(reasoning="More."),
        Chunk(signature="sig-3"),
        *TOOL_ANSWER[1:],
    ]
    end = record(finish_reason="tool_calls")
    _, body = stream(chunks, end)
    events = [payload for _, payload in sse(body)]
    assert events[4] == {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "signature_delta", "signature": "sig-1"},
    }
    assert events[5] == {"type": "content_block_stop", "index": 0}, "the signature ends the block"
    deltas = [e["delta"] for e in events if e["type"] == "content_block_delta"]
    signatures = [delta["signature"] for delta in deltas if delta["type"] == "signature_delta"]
    assert signatures == ["sig-1", "sig-2", "sig-3"], "no placeholder besides the real ones"
    thinking = [
        {"type": "thinking", "thinking": "Hmm, two.", "signature": "sig-1"},
        {"type": "redacted_thinking", "data": "opaque"},
        {"type": "thinking", "thinking": "", "signature": "sig-2"},
        {"type": "thinking", "thinking": "More.", "signature": "sig-3"},
    ]
    whole = folded(chunks, end)
    assert whole["content"][:4] == thinking
    assert [block["type"] for block in whole["content"][4:]] == ["text", "tool_use", "tool_use"]
    from_stream = sdk_final_message(body)
    assert from_stream["content"][:4] == thinking
    normalised = anthropic.types.Message.model_validate(whole).model_dump(exclude_none=True)
    assert {**from_stream, "id": None} == {**normalised, "id": None}


def test_an_empty_answer_is_still_a_whole_message() -> None:
    _, body = stream([Chunk(finish_reason="length")], record(completion_tokens=0, finish_reason="length"))
    events = sse(body)
    assert [name for name, _ in events] == ["message_start", "message_delta", "message_stop"]
    assert events[0][1]["message"]["usage"]["input_tokens"] == 7
    assert events[1][1]["delta"]["stop_reason"] == "max_tokens"


@pytest.mark.parametrize(
    ("finish", "stop"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("content_filter", "refusal"),
        (None, "end_turn"),
        ("something_new", "end_turn"),
    ],
)
def test_finish_reasons_map_to_stop_reasons(finish: str | None, stop: str) -> None:
    assert folded([Chunk("x")], record(finish_reason=finish))["stop_reason"] == stop


def test_cached_prompt_tokens_are_counted_apart_as_anthropic_does() -> None:
    end = record(prompt_tokens=100, cache_read_tokens=60, cache_creation_tokens=30)
    assert folded([Chunk("x")], end)["usage"] == {
        "input_tokens": 10,
        "cache_creation_input_tokens": 30,
        "cache_read_input_tokens": 60,
        "output_tokens": 5,
    }


def test_the_folded_message_has_the_streamed_blocks_with_parsed_input() -> None:
    message = folded([Chunk(reasoning="think"), *TOOL_ANSWER], record(finish_reason="tool_calls"))
    assert message["id"].startswith("msg_") and message["type"] == "message"
    assert message["content"] == [
        {"type": "thinking", "thinking": "think", "signature": ""},
        {"type": "text", "text": "Let me look that up."},
        {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "call_2", "name": "time", "input": {}},
    ]
    assert message["stop_reason"] == "tool_use" and message["stop_sequence"] is None
    assert message["usage"] == {"input_tokens": 7, "output_tokens": 5}


def test_malformed_tool_arguments_become_an_empty_input() -> None:
    cut = [Chunk(tool_calls=[ToolCallDelta(index=0, id="c", name="f", arguments='{"city": "Pa')])]
    assert folded(cut, record(finish_reason="length"))["content"][0]["input"] == {}


@pytest.mark.parametrize(
    "chunks",
    [
        [Chunk("Hello"), Chunk(" world")],
        [Chunk(reasoning="think"), *TOOL_ANSWER],
        [
            Chunk(tool_calls=[ToolCallDelta(index=0, id="c", name="f", arguments='{"a": [1, 2]}')]),
            Chunk("after"),
        ],
        [],
    ],
)
def test_the_sdk_folds_the_stream_into_the_non_streamed_message(chunks: list[Chunk]) -> None:
    end = record(finish_reason="tool_calls" if any(c.tool_calls for c in chunks) else "stop")
    _, body = stream(chunks, end)
    from_stream = sdk_final_message(body)
    whole = anthropic.types.Message.model_validate(folded(chunks, end)).model_dump(exclude_none=True)
    assert {**from_stream, "id": None} == {**whole, "id": None}


def test_errors_before_the_response_are_anthropic_shaped_with_their_headers() -> None:
    status, headers, body = AnthropicEvents(public_model="m").error_response(
        UpstreamRateLimited("slow down", retry_after="3")
    )
    assert status == 429
    assert (b"retry-after", b"3") in headers and (b"content-type", b"application/json") in headers
    assert orjson.loads(body) == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "slow down"},
    }
    assert AnthropicMessage(public_model="m").error_response(ModelNotFound("no"))[0] == 404


def test_errors_after_the_start_are_an_error_event() -> None:
    data = AnthropicEvents(public_model="m").encode_error(UpstreamProtocolError("dropped"))
    assert sse(data) == [("error", {"type": "error", "error": {"type": "api_error", "message": "dropped"}})]
    assert orjson.loads(AnthropicMessage(public_model="m").encode_error(UpstreamTimeout("late"))) == {
        "type": "error",
        "error": {"type": "timeout_error", "message": "late"},
    }


def test_keepalive_is_anthropics_ping_event() -> None:
    assert sse(AnthropicEvents(public_model="m").keepalive) == [("ping", {"type": "ping"})]


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (InvalidRequest("x"), "invalid_request_error"),
        (BodyTooLarge("x"), "request_too_large"),
        (ModelNotFound("x"), "not_found_error"),
        (AuthenticationFailed("x"), "authentication_error"),
        (PermissionDenied("x"), "permission_error"),
        (RateLimitExceeded("x"), "rate_limit_error"),
        (ServiceUnavailable("x"), "overloaded_error"),
        (StreamShutdown("x"), "overloaded_error"),
        (TokenRelayError("x"), "api_error"),
        (UpstreamProtocolError("x"), "api_error"),
        (UpstreamTimeout("x"), "timeout_error"),
        (UpstreamRejected("x", upstream_status=404), "not_found_error"),
        (UpstreamRejected("x", upstream_status=422), "invalid_request_error"),
    ],
)
def test_every_error_class_has_anthropics_type_for_its_status(error: TokenRelayError, kind: str) -> None:
    assert orjson.loads(error.anthropic_body()) == {"type": "error", "error": {"type": kind, "message": "x"}}
