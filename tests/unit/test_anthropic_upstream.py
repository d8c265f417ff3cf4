"""The Anthropic upstream: its stream parsed into neutral events, and its HTTP side.

Stream tests feed literal Messages API SSE bytes, in the shapes Anthropic documents, through
a byte source that hands them over read by read; the request, headers and statuses are checked
against a real aiohttp server on loopback. The request's translation: test_anthropic_request.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any, cast

import orjson
import pytest
from aiohttp import web

from tokenrelay.config import DeploymentConfig
from tokenrelay.errors import UpstreamProtocolError, UpstreamRateLimited, UpstreamUnavailable
from tokenrelay.events import ANTHROPIC_FIELDS, ToolCallDelta, Usage
from tokenrelay.upstreams import AnthropicStream, AnthropicUpstream, OpenAIUpstream, Upstreams
from tokenrelay.upstreams.http import HttpBody

# -- the stream ----------------------------------------------------------------------------


def sse(event: str, data: str) -> bytes:
    return f"event: {event}\ndata: {data}\n\n".encode()


MESSAGE_START = sse(
    "message_start",
    '{"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", '
    '"content": [], "model": "claude-x", "stop_reason": null, "stop_sequence": null, '
    '"usage": {"input_tokens": 25, "output_tokens": 1}}}',
)
TEXT_START = sse(
    "content_block_start",
    '{"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}',
)
PING = sse("ping", '{"type": "ping"}')


def text_delta(text: str, index: int = 0) -> bytes:
    data = {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}}
    return sse("content_block_delta", orjson.dumps(data).decode())


def block_stop(index: int) -> bytes:
    return sse("content_block_stop", f'{{"type": "content_block_stop", "index": {index}}}')


def message_delta(stop_reason: str, output_tokens: int = 15) -> bytes:
    return sse(
        "message_delta",
        f'{{"type": "message_delta", "delta": {{"stop_reason": "{stop_reason}", "stop_sequence": null}}, '
        f'"usage": {{"output_tokens": {output_tokens}}}}}',
    )


MESSAGE_STOP = sse("message_stop", '{"type": "message_stop"}')


class ByteSource:
    """The response body: hands over the given reads, then the end (or a dropped connection)."""

    def __init__(self, reads: Iterable[bytes], *, drop: bool = False) -> None:
        self._reads = list(reads)
        self._drop = drop
        self.closed = False

    async def read(self) -> bytes:
        if self._reads:
            return self._reads.pop(0)
        if self._drop:
            raise UpstreamProtocolError("upstream connection dropped mid-stream", failure="mid_stream_drop")
        return b""

    async def aclose(self) -> None:
        self.closed = True


@dataclass
class Seen:
    """What one event carried (text events reuse one Chunk: copied as they come)."""

    text: str | None = None
    reasoning: str | None = None
    tool_calls: list[ToolCallDelta] | None = None
    finish_reason: str | None = None
    usage: Usage | None = None
    signature: str | None = None
    redacted_thinking: str | None = None


async def read_all(
    reads: Iterable[bytes], *, drop: bool = False
) -> tuple[list[Seen], UpstreamProtocolError | None, AnthropicStream]:
    stream = AnthropicStream(cast(HttpBody, ByteSource(reads, drop=drop)))
    seen: list[Seen] = []
    try:
        while not stream.ended:
            for event in await stream.read():
                assert event.native is None
                seen.append(
                    Seen(
                        event.text,
                        event.reasoning,
                        event.tool_calls,
                        event.finish_reason,
                        event.usage,
                        event.signature,
                        event.redacted_thinking,
                    )
                )
    except UpstreamProtocolError as exc:
        return seen, exc, stream
    return seen, None, stream


async def test_text_stream_yields_text_then_the_finish_with_the_final_usage() -> None:
    body = (
        MESSAGE_START + TEXT_START + PING + text_delta("Hello") + text_delta("!") + block_stop(0)
        + message_delta("end_turn") + MESSAGE_STOP
    )  # fmt: skip
    # Split anywhere, as TCP does.
    seen, error, stream = await read_all([body[:100], body[100:333], body[333:]])
    assert error is None and stream.ended
    assert seen == [
        Seen(text="Hello"),
        Seen(text="!"),
        Seen(finish_reason="stop", usage=Usage(25, 15, None, None)),
    ]


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
        ("model_context_window_exceeded", "length"),
        ("something_new", "stop"),
    ],
)
async def test_stop_reasons_map_to_openai_finish_reasons(stop_reason: str, finish_reason: str) -> None:
    seen, error, _ = await read_all([MESSAGE_START + message_delta(stop_reason) + MESSAGE_STOP])
    assert error is None
    assert [s.finish_reason for s in seen] == [finish_reason]


async def test_tool_use_blocks_become_tool_call_deltas_numbered_among_tool_calls() -> None:
    def tool_start(index: int, tool_id: str, name: str) -> bytes:
        return sse(
            "content_block_start",
            f'{{"type":"content_block_start","index":{index},"content_block":'
            f'{{"type":"tool_use","id":"{tool_id}","name":"{name}","input":{{}}}}}}',
        )

    def json_delta(index: int, partial: str) -> bytes:
        data = {
            "type": "content_block_delta",
            "index": index,
            "delta": {"type": "input_json_delta", "partial_json": partial},
        }
        return sse("content_block_delta", orjson.dumps(data).decode())

    body = (
        MESSAGE_START + TEXT_START + text_delta("Checking.") + block_stop(0)
        + tool_start(1, "toolu_01", "weather") + json_delta(1, "") + json_delta(1, '{"city":')
        + json_delta(1, ' "Paris"}') + block_stop(1)
        + tool_start(2, "toolu_02", "time") + json_delta(2, "{}") + block_stop(2)
        + message_delta("tool_use", 89) + MESSAGE_STOP
    )  # fmt: skip
    seen, error, _ = await read_all([body])
    assert error is None
    assert seen == [
        Seen(text="Checking."),
        Seen(tool_calls=[ToolCallDelta(0, "toolu_01", "weather", "")]),
        Seen(tool_calls=[ToolCallDelta(0, None, None, '{"city":')]),
        Seen(tool_calls=[ToolCallDelta(0, None, None, ' "Paris"}')]),
        Seen(tool_calls=[ToolCallDelta(1, "toolu_02", "time", "")]),
        Seen(tool_calls=[ToolCallDelta(1, None, None, "{}")]),
        Seen(finish_reason="tool_calls", usage=Usage(25, 89, None, None)),
    ]


async def test_thinking_becomes_reasoning_and_its_signature_and_redacted_thinking_are_kept() -> None:
    """The client must send both back verbatim on its next turn: each comes in a Chunk of its own."""
    body = (
        MESSAGE_START
        + sse(
            "content_block_start",
            '{"type": "content_block_start", "index": 0, '
            '"content_block": {"type": "thinking", "thinking": ""}}',
        )
        + sse(
            "content_block_delta",
            '{"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", '
            '"thinking": "Let me solve this step by step:\\n\\n1. First break down 27 * 453"}}',
        )
        + sse(
            "content_block_delta",
            '{"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", '
            '"signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds..."}}',
        )
        + block_stop(0)
        + sse(
            "content_block_start",
            '{"type": "content_block_start", "index": 1, "content_block": '
            '{"type": "redacted_thinking", '
            '"data": "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpP"}}',
        )
        + block_stop(1)
        + TEXT_START.replace(b'"index": 0', b'"index": 2')
        + text_delta("12231", 2)
        + message_delta("end_turn", 40)
        + MESSAGE_STOP
    )
    seen, error, _ = await read_all([body])
    assert error is None
    assert seen == [
        Seen(reasoning="Let me solve this step by step:\n\n1. First break down 27 * 453"),
        Seen(signature="EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds..."),
        Seen(redacted_thinking="EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpP"),
        Seen(text="12231"),
        Seen(finish_reason="stop", usage=Usage(25, 40, None, None)),
    ]


async def test_usage_counts_cache_reads_and_writes_in_the_prompt() -> None:
    start = sse(
        "message_start",
        '{"type":"message_start","message":{"id":"msg_2","type":"message","role":"assistant","content":[],'
        '"model":"claude-x","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":12,'
        '"cache_creation_input_tokens":300,"cache_read_input_tokens":2000,"output_tokens":1}}}',
    )
    seen, error, _ = await read_all([start + TEXT_START + text_delta("ok") + message_delta("end_turn", 7)])
    assert error is None
    assert seen[-1].usage == Usage(
        prompt_tokens=2312, completion_tokens=7, cache_read_tokens=2000, cache_creation_tokens=300
    )


async def test_cumulative_counts_in_message_delta_win_over_message_start() -> None:
    final = sse(
        "message_delta",
        '{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},'
        '"usage":{"input_tokens":30,"cache_read_input_tokens":5,"output_tokens":9}}',
    )
    seen, _, _ = await read_all([MESSAGE_START + final + MESSAGE_STOP])
    assert seen[-1].usage == Usage(35, 9, 5, None)


async def test_an_error_event_after_content_ends_the_events_after_that_content() -> None:
    error_event = sse(
        "error", '{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}'
    )
    body = (
        MESSAGE_START + TEXT_START + text_delta("Hel") + text_delta("lo") + error_event + text_delta("never")
    )
    seen, error, _ = await read_all([body])
    assert [s.text for s in seen] == ["Hel", "lo"]
    assert isinstance(error, UpstreamProtocolError) and error.failure == "mid_stream_error"
    assert error.message == "upstream error mid-stream: Overloaded"


async def test_an_event_that_is_not_json_is_a_protocol_error_after_what_came_before() -> None:
    body = MESSAGE_START + TEXT_START + text_delta("a") + b"event: content_block_delta\ndata: {oops\n\n"
    seen, error, _ = await read_all([body])
    assert [s.text for s in seen] == ["a"]
    assert isinstance(error, UpstreamProtocolError) and error.failure == "protocol"


@pytest.mark.parametrize("drop", [False, True], ids=["fin", "dropped"])
async def test_a_body_ending_before_the_stop_reason_is_a_mid_stream_drop(drop: bool) -> None:
    seen, error, stream = await read_all([MESSAGE_START + TEXT_START + text_delta("partial")], drop=drop)
    assert [s.text for s in seen] == ["partial"]
    assert isinstance(error, UpstreamProtocolError) and error.failure == "mid_stream_drop"
    assert stream.ended or drop


@pytest.mark.parametrize("drop", [False, True], ids=["fin", "dropped"])
async def test_a_body_ending_after_the_stop_reason_is_complete(drop: bool) -> None:
    body = MESSAGE_START + TEXT_START + text_delta("done") + message_delta("end_turn")
    seen, error, stream = await read_all([body], drop=drop)
    assert error is None and stream.ended
    assert [s.text for s in seen] == ["done", None]


async def test_message_stop_ends_the_stream_and_nothing_after_it_is_read() -> None:
    seen, error, stream = await read_all(
        [MESSAGE_START + message_delta("end_turn") + MESSAGE_STOP + text_delta("late")]
    )
    assert error is None and stream.ended
    assert [s.text for s in seen] == [None]


# -- over HTTP -----------------------------------------------------------------------------


@dataclass
class Upstream:
    url: str
    seen: list[tuple[str, dict[str, str], dict[str, Any]]]


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    """A loopback server: model ``status=N`` gets that status (Anthropic's error body), others
    a short stream; ``/v1/chat/completions`` a short OpenAI stream."""
    seen: list[tuple[str, dict[str, str], dict[str, Any]]] = []

    async def messages(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        seen.append((request.path, dict(request.headers), body))
        model = str(body.get("model"))
        if model.startswith("status="):
            status = int(model.removeprefix("status="))
            error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
            return web.json_response(error, status=status, headers={"Retry-After": "7"})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(
            MESSAGE_START + TEXT_START + text_delta("hi") + message_delta("end_turn") + MESSAGE_STOP
        )
        await response.write_eof()
        return response

    async def chat(request: web.Request) -> web.StreamResponse:
        seen.append((request.path, dict(request.headers), await request.json()))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}\n\n')
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/anthropic/v1/messages", messages)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield Upstream(f"http://127.0.0.1:{port}", seen)
    finally:
        await runner.cleanup()


def deployment(base_url: str, **fields: Any) -> DeploymentConfig:
    return DeploymentConfig(provider="anthropic", base_url=base_url, **fields)


async def open_and_read(base_url: str, api_key: str | None = "sk-ant-test") -> list[Seen]:
    client = AnthropicUpstream(base_url=base_url, api_key=api_key, max_connections=4)
    try:
        stream = await client.open_stream(
            body={"messages": [{"role": "user", "content": "Hi"}]},
            upstream_model="claude-x",
            config=deployment(base_url, anthropic_version="2024-01-01", default_max_tokens=77),
            request_id="req-1",
        )
        seen = []
        while not stream.ended:
            seen += [Seen(e.text, finish_reason=e.finish_reason) for e in await stream.read()]
        await stream.aclose()
        return seen
    finally:
        await client.aclose()


async def test_the_request_goes_to_v1_messages_with_anthropic_headers(upstream: Upstream) -> None:
    seen = await open_and_read(upstream.url)
    assert [s.text for s in seen] == ["hi", None]
    path, headers, body = upstream.seen[0]
    assert path == "/v1/messages"
    assert headers["x-api-key"] == "sk-ant-test"
    assert "Authorization" not in headers
    assert headers["anthropic-version"] == "2024-01-01"
    assert headers["Content-Type"] == "application/json"
    assert headers["Accept"] == "text/event-stream"
    assert headers["Accept-Encoding"] == "identity"
    assert headers["X-Request-ID"] == "req-1"
    assert body["model"] == "claude-x" and body["stream"] is True and body["max_tokens"] == 77

    await open_and_read(f"{upstream.url}/anthropic/v1/", api_key=None)
    path, headers, _ = upstream.seen[1]
    assert path == "/anthropic/v1/messages", "a base URL ending in /v1 is not given a second one"
    assert "x-api-key" not in headers


@pytest.mark.parametrize(
    ("status", "error_class", "failure"),
    [(529, UpstreamUnavailable, "overloaded"), (429, UpstreamRateLimited, "rate_limited")],
)
async def test_error_statuses_are_classified_with_the_upstream_message(
    upstream: Upstream, status: int, error_class: type[UpstreamUnavailable], failure: str
) -> None:
    client = AnthropicUpstream(base_url=upstream.url, api_key=None, max_connections=4)
    try:
        with pytest.raises(error_class) as raised:
            await client.open_stream(
                body={"messages": []},
                upstream_model=f"status={status}",
                config=deployment(upstream.url),
                request_id="r",
            )
    finally:
        await client.aclose()
    assert raised.value.failure == failure
    assert "Overloaded" in raised.value.message
    if status == 429:
        assert raised.value.headers() == {"Retry-After": "7"}
    else:
        assert raised.value.http_status == 502


def test_the_registry_gives_anthropic_deployments_an_anthropic_client() -> None:
    upstreams = Upstreams(max_connections=4)
    claude = upstreams.client_for(deployment("https://api.anthropic.com"))
    gpt = upstreams.client_for(DeploymentConfig(base_url="https://api.anthropic.com"))
    assert isinstance(claude, AnthropicUpstream)
    assert not isinstance(gpt, AnthropicUpstream), "one client per provider, even on one URL"
    assert upstreams.client_for(deployment("https://api.anthropic.com")) is claude


async def test_an_openai_upstream_gets_no_anthropic_fields_nor_the_blocks_messages_carry(
    upstream: Upstream,
) -> None:
    """A /v1/messages conversation served by an OpenAI deployment: what only Anthropic takes (the
    body's key, and the blocks a message carries under it) must not reach the OpenAI server."""
    thinking = {"type": "thinking", "thinking": "t", "signature": "sig"}
    assistant = {"role": "assistant", "content": "ok", ANTHROPIC_FIELDS: {"content": [thinking]}}
    body = {
        "messages": [{"role": "user", "content": "hi"}, assistant],
        ANTHROPIC_FIELDS: {"thinking": {"type": "enabled", "budget_tokens": 1024}},
    }
    client = OpenAIUpstream(base_url=f"{upstream.url}/v1", api_key=None, max_connections=4)
    try:
        stream = await client.open_stream(
            body=body, upstream_model="gpt-x", config=DeploymentConfig(base_url=upstream.url), request_id="r"
        )
        await stream.aclose()
    finally:
        await client.aclose()
    path, _, sent = upstream.seen[0]
    assert path == "/v1/chat/completions"
    assert ANTHROPIC_FIELDS not in sent
    assert sent["messages"] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]
    assert ANTHROPIC_FIELDS in assistant, "the body is not changed: another deployment may get it next"
