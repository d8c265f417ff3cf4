"""The simulator speaks Anthropic's Messages API as the official SDK reads it, and tool calls,
thinking, cache counts and finish reasons on both protocols.

Real TCP against the simulator's subprocess; the clients are the official ``anthropic`` and
``openai`` SDKs, so a shape the SDKs would not accept fails here.
"""

from __future__ import annotations

import asyncio
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import orjson
import pytest
from anthropic.types import MessageParam
from openai.types.chat import (
    ChatCompletionMessageFunctionToolCall,
    ChatCompletionMessageParam,
    ChatCompletionToolParam,
)

from tests.helpers import Sim, new_request_id, open_raw_stream

WEATHER_TOOL = {
    "name": "lookup_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
SYSTEM = "Be brief."
MESSAGES: list[MessageParam] = [{"role": "user", "content": "hello there"}]
OPENAI_MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Weather in Paris?"}]
# The simulator's prompt guess: words + 3 per message (the system prompt counts as one), + 3.
INPUT_TOKENS = (2 + 3) + (2 + 3) + 3
TOOL_INPUT = {"city": "Paris", "unit": "celsius"}


def claude(sim: Sim, rid: str | None = None) -> anthropic.Anthropic:
    headers = {"X-Request-ID": rid} if rid else None
    return anthropic.Anthropic(base_url=sim.url, api_key="x", max_retries=0, default_headers=headers)


def comparable(message: anthropic.types.Message) -> dict[str, Any]:
    """The message without what differs per request (ids) or per client helper (parsing)."""
    dump = message.model_dump()
    dump.pop("id")
    for block in dump["content"]:
        block.pop("id", None)
        block.pop("parsed_output", None)
    return dump


@pytest.mark.parametrize(
    ("options", "tools", "kinds", "stop_reason", "output_tokens"),
    [
        ("tokens=5&cache_read=100&cache_creation=30", None, ["text"], "end_turn", 5),
        ("tool=1", [WEATHER_TOOL], ["tool_use"], "tool_use", 3),
        ("think=3&tokens=4", None, ["thinking", "text"], "end_turn", 7),
        ("tokens=6&finish=length", None, ["text"], "max_tokens", 6),
    ],
)
def test_a_streamed_message_adds_up_to_the_non_streamed_one(
    sim: Sim,
    options: str,
    tools: list[dict[str, Any]] | None,
    kinds: list[str],
    stop_reason: str,
    output_tokens: int,
) -> None:
    rid = new_request_id()
    client = claude(sim, rid)
    extra: dict[str, Any] = {"tools": tools} if tools else {}
    request: dict[str, Any] = {"model": f"sim?{options}", "max_tokens": 100, "system": SYSTEM}
    request.update(messages=MESSAGES, **extra)
    with client.messages.stream(**request) as stream:
        streamed = stream.get_final_message()
    created = client.messages.create(**request)
    client.close()

    assert comparable(streamed) == comparable(created)
    assert streamed.id.startswith("msg_") and created.id != streamed.id
    assert [block.type for block in created.content] == kinds
    assert (created.stop_reason, created.stop_sequence) == (stop_reason, None)
    usage = created.usage
    assert (usage.input_tokens, usage.output_tokens) == (INPUT_TOKENS, output_tokens)
    cached = (100, 30) if "cache_read" in options else (0, 0)
    assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == cached
    for block in created.content:
        if block.type == "text":
            assert len(block.text.split()) == output_tokens - (3 if "think" in options else 0)
        elif block.type == "tool_use":
            assert block.name == "lookup_weather" and block.input == TOOL_INPUT
            assert block.id.startswith("toolu_")
        elif block.type == "thinking":
            assert len(block.thinking.split()) == 3 and block.signature
    upstream = sim.request(rid)
    assert upstream is not None and upstream["end"] == "completed" and upstream["stream"] is True
    assert upstream["chunks_sent"] == output_tokens


def test_the_stream_has_anthropics_events_in_anthropics_order(sim: Sim) -> None:
    """Thinking is block 0 (deltas, then one signature), the text block 1; a ping follows
    ``message_start``; ``message_delta`` carries the cumulative output tokens."""
    body = {"model": "sim?think=2&tokens=3", "max_tokens": 50, "stream": True, "messages": MESSAGES}
    response = httpx.post(
        f"{sim.url}/v1/messages", json=body, headers={"x-api-key": "x", "anthropic-version": "2023-06-01"}
    )
    assert response.status_code == 200
    events = []
    for block in response.text.strip().split("\n\n"):
        name_line, data_line = block.split("\n")
        assert name_line.startswith("event: ") and data_line.startswith("data: ")
        data = orjson.loads(data_line[6:])
        assert data["type"] == name_line[7:]
        events.append(data)
    deltas = [(e["index"], e["delta"]["type"]) for e in events if e["type"] == "content_block_delta"]
    assert [e["type"] for e in events[:2]] == ["message_start", "ping"]
    assert events[0]["message"]["content"] == [] and events[0]["message"]["usage"]["output_tokens"] == 1
    assert deltas == [(0, "thinking_delta")] * 2 + [(0, "signature_delta")] + [(1, "text_delta")] * 3
    starts = [(e["index"], e["content_block"]["type"]) for e in events if e["type"] == "content_block_start"]
    stops = [e["index"] for e in events if e["type"] == "content_block_stop"]
    assert (starts, stops) == ([(0, "thinking"), (1, "text")], [0, 1])
    assert events[-2] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 5},
    }
    assert events[-1] == {"type": "message_stop"}


@pytest.mark.parametrize("streamed", [False, True])
def test_an_overloaded_status_is_the_sdks_overloaded_error(sim: Sim, streamed: bool) -> None:
    client = claude(sim)
    with pytest.raises(anthropic.APIStatusError) as raised:
        client.messages.create(model="sim?status=529", max_tokens=10, messages=MESSAGES, stream=streamed)
    client.close()
    assert raised.value.status_code == 529
    assert isinstance(raised.value, anthropic.OverloadedError)  # an InternalServerError
    assert raised.value.body == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "simulated 529"},
    }


def test_a_rate_limit_is_a_rate_limit_error_with_retry_after(sim: Sim) -> None:
    client = claude(sim)
    with pytest.raises(anthropic.RateLimitError) as raised:
        client.messages.create(model="sim?status=429&retry_after=7", max_tokens=10, messages=MESSAGES)
    client.close()
    assert raised.value.response.headers["retry-after"] == "7"
    assert raised.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]


def test_a_request_anthropic_would_refuse_is_a_bad_request(sim: Sim) -> None:
    client = claude(sim)
    # OpenAI's tool-result turn, as a gateway that forgot to translate it would send it.
    turn: Any = {"role": "tool", "tool_call_id": "call_1", "content": "18C"}
    with pytest.raises(anthropic.BadRequestError) as raised:
        client.messages.create(model="sim", max_tokens=10, messages=[*MESSAGES, turn])
    client.close()
    message = "messages.1.role: Input should be 'user', 'assistant' or 'system'"
    assert raised.value.body == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": message},
    }


async def stream_text(sim: Sim, rid: str, options: str, texts: list[str]) -> None:
    """Stream a Message with the async SDK, keeping its text deltas in ``texts`` as they come."""
    client = anthropic.AsyncAnthropic(
        base_url=sim.url, api_key="x", max_retries=0, default_headers={"X-Request-ID": rid}
    )
    try:
        async with client.messages.stream(
            model=f"sim?{options}", max_tokens=100, messages=MESSAGES
        ) as stream:
            async for text in stream.text_stream:
                texts.append(text)
    finally:
        await client.close()


async def test_an_error_event_mid_stream_raises_in_the_sdk_after_the_text(sim: Sim) -> None:
    rid, texts = new_request_id(), list[str]()
    with pytest.raises(anthropic.APIStatusError) as raised:
        await stream_text(sim, rid, "tokens=20&error_after=2", texts)
    assert len(texts) == 2
    assert raised.value.body == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
    }
    upstream = await sim.wait_ended(rid)
    assert (upstream["end"], upstream["chunks_sent"]) == ("error_event", 2)


@pytest.mark.parametrize(
    ("drop", "error"), [("fin", httpx2.RemoteProtocolError), ("reset", httpx2.ReadError)]
)
async def test_drop_after_cuts_the_connection_mid_stream(sim: Sim, drop: str, error: type[Exception]) -> None:
    """The SDK (on ``httpx2``, a fork of httpx) reads 5 text deltas, then a cut body: an
    incomplete chunked body after a FIN, a read error after a reset."""
    rid, texts = new_request_id(), list[str]()
    with pytest.raises(error):
        await stream_text(sim, rid, f"tokens=20&drop_after=5&drop={drop}&tps=200", texts)
    assert len(texts) == 5
    upstream = await sim.wait_ended(rid)
    assert (upstream["end"], upstream["chunks_sent"]) == ("dropped", 5)


async def test_a_client_that_leaves_mid_stream_is_recorded_as_gone(sim: Sim) -> None:
    """While the simulator is stalled, the client closes: ``/_stats`` says so at once."""
    rid = new_request_id()
    body = {"model": "sim?tokens=20&stall_after=3", "max_tokens": 50, "stream": True, "messages": MESSAGES}
    stream = await open_raw_stream(sim.url, "/v1/messages", orjson.dumps(body), rid)
    await stream.read_until(b"text_delta", count=3)
    closed_at = stream.close()
    # The FIN leaves at the loop's next turn: let it go before wait_ended builds an httpx client,
    # whose SSL set-up blocks this loop for 50-100 ms and would be counted against the simulator.
    await asyncio.sleep(0)
    upstream = await sim.wait_ended(rid)
    assert (upstream["end"], upstream["chunks_sent"]) == ("client_closed", 3)
    assert upstream["ended_at"] - closed_at < 0.1


def test_openai_tool_call_after_reasoning_through_the_openai_sdk(sim: Sim) -> None:
    client = openai.OpenAI(base_url=sim.base_url, api_key="x", max_retries=0)
    tool: ChatCompletionToolParam = {
        "type": "function",
        "function": {"name": "lookup_weather", "parameters": {"type": "object", "properties": {}}},
    }
    stream = client.chat.completions.create(
        model="sim?tool=1&think=2&cache_read=40",
        messages=OPENAI_MESSAGES,
        tools=[tool],
        stream=True,
        stream_options={"include_usage": True},
    )
    reasoning, calls, finish, usage, order = [], [], None, None, []
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        finish = chunk.choices[0].finish_reason or finish
        if (delta.model_extra or {}).get("reasoning_content"):
            reasoning.append(delta.model_extra["reasoning_content"])  # type: ignore[index]
            order.append("reasoning")
        for call in delta.tool_calls or ():
            calls.append(call)
            order.append("tool")
        assert not delta.content
    created = client.chat.completions.create(
        model="sim?tool=1&think=2", messages=OPENAI_MESSAGES, tools=[tool]
    )
    client.close()

    assert len(reasoning) == 2 and order == ["reasoning"] * 2 + ["tool"] * 4
    head, *pieces = calls
    assert head.id is not None and head.id.startswith("call_") and head.type == "function"
    assert head.function is not None and head.function.name == "lookup_weather"
    assert len(pieces) == 3 and all(p.index == 0 and p.id is None for p in pieces)
    arguments = "".join(p.function.arguments or "" for p in pieces if p.function)
    assert orjson.loads(arguments) == TOOL_INPUT
    assert finish == "tool_calls"
    assert usage is not None and usage.completion_tokens == 2 + 3
    assert usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens == 40
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 2

    choice = created.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [whole] = choice.message.tool_calls or []
    assert isinstance(whole, ChatCompletionMessageFunctionToolCall)
    assert whole.function.name == "lookup_weather" and whole.id.startswith("call_")
    assert orjson.loads(whole.function.arguments) == TOOL_INPUT
    assert (choice.message.model_extra or {})["reasoning_content"] == "".join(reasoning)


def test_openai_finish_length_and_default_tool_name(sim: Sim) -> None:
    client = openai.OpenAI(base_url=sim.base_url, api_key="x", max_retries=0)
    text = client.chat.completions.create(model="sim?tokens=4&finish=length", messages=OPENAI_MESSAGES)
    tool = client.chat.completions.create(model="sim?tool=1", messages=OPENAI_MESSAGES)
    client.close()
    assert text.choices[0].finish_reason == "length"
    assert text.usage is not None and text.usage.completion_tokens == 4
    assert text.usage.prompt_tokens_details is None, "no cache details unless asked for"
    [call] = tool.choices[0].message.tool_calls or []
    assert isinstance(call, ChatCompletionMessageFunctionToolCall) and call.function.name == "get_weather"
