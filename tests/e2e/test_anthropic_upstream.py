"""Models served by an Anthropic upstream (``provider = "anthropic"``), end to end over TCP.

A real gateway in front of the simulator's ``POST /v1/messages``: what reaches clients of
``/chat`` and ``/v1/chat/completions`` (the ``openai`` SDK), and the ledger, must be what the
Anthropic stream said: text, tool calls, reasoning, the finish reason, exact usage with the
prompt cache counted in, and typed errors before and after the first token.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest
from openai.types.chat import ChatCompletionFunctionToolParam

from tests.helpers import Gateway, Sim, delta_text, launch_gateway, new_request_id, parse_events, post_chat
from tokenrelay.sim.anthropic import SIGNATURE

CLAUDE_MODELS = {
    "claude": "tokens=20",
    "claude-echo": "echo=1",
    "claude-tool": "tool=1",
    "claude-think": "think=3&tokens=4",
    "claude-cached": "tokens=5&cache_read=100&cache_creation=30",
    "claude-overloaded": "status=529",
    "claude-ratelimit": "status=429&retry_after=7",
    "claude-error": "tokens=50&error_after=5",
}
WEATHER: ChatCompletionFunctionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
TEXT = 'Bonjour, "Claude" — ünïcödé 🚀\nsecond line\n\n'


@pytest.fixture(scope="module")
def claude_gateway(sim: Sim, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("anthropic-gateway")
    lines = ['default_model = "claude"', ""]
    for name, options in CLAUDE_MODELS.items():
        # sim.url has no /v1: the upstream adds it (the echo model uses the /v1 form).
        base_url = sim.base_url if name == "claude-echo" else sim.url
        lines += [
            f'[models."{name}"]',
            'provider = "anthropic"',
            f'base_url = "{base_url}"',
            f'upstream_model = "sim?{options}"',
            "",
        ]
    gw = launch_gateway(tmp, config="\n".join(lines), database_url=f"sqlite+aiosqlite:///{tmp / 'ledger.db'}")
    yield gw
    gw.stop()


def openai_client(gateway: Gateway, rid: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"{gateway.url}/v1", api_key="unused", default_headers={"X-Request-ID": rid}, max_retries=0
    )


async def test_chat_deltas_are_the_anthropic_text_with_upstream_usage(
    claude_gateway: Gateway, sim: Sim
) -> None:
    rid = new_request_id()
    response = await post_chat(claude_gateway.url, "claude-echo", rid, content=TEXT)
    assert response.status_code == 200
    events = parse_events(response.content)
    assert delta_text(events) == TEXT
    usage, done = events[-2], events[-1]
    assert usage["type"] == "usage" and usage["source"] == "upstream"
    assert done == {"type": "done", "finish_reason": "stop"}

    upstream = await sim.wait_ended(rid)
    assert upstream["model"] == "sim?echo=1" and upstream["stream"] is True
    assert usage["completion_tokens"] == upstream["chunks_sent"], "one output token per chunk"
    [row] = await claude_gateway.ledger_rows(rid)
    assert row["status"] == "completed" and row["usage_source"] == "upstream"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )


async def test_openai_sdk_streams_the_text_with_exact_usage(claude_gateway: Gateway) -> None:
    rid = new_request_id()
    client = openai_client(claude_gateway, rid)
    stream = await client.chat.completions.create(
        model="claude",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say something"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usages, models = "", None, [], set()
    async for chunk in stream:
        models.add(chunk.model)
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usages.append(chunk.usage)
    await client.close()
    assert len(text.split()) == 20
    assert finish == "stop" and models == {"claude"}
    [usage] = usages
    assert usage.completion_tokens == 20
    # The simulator's prompt guess: words + 3 per message (system included), + 3.
    assert usage.prompt_tokens == (2 + 3) + (2 + 3) + 3
    [row] = await claude_gateway.ledger_rows(rid)
    assert (row["prompt_tokens"], row["completion_tokens"], row["finish_reason"]) == (13, 20, "stop")


async def test_prompt_cache_reads_and_writes_count_in_the_prompt(claude_gateway: Gateway) -> None:
    rids = [new_request_id(), new_request_id()]
    chats = [
        await post_chat(claude_gateway.url, model, rid)
        for model, rid in zip(("claude", "claude-cached"), rids, strict=True)
    ]
    plain, cached = (parse_events(chat.content)[-2] for chat in chats)
    assert cached["prompt_tokens"] == plain["prompt_tokens"] + 100 + 30
    assert cached["completion_tokens"] == 5
    [row] = await claude_gateway.ledger_rows(rids[1])
    assert row["prompt_tokens"] == cached["prompt_tokens"]
    assert (row["cache_read_tokens"], row["cache_creation_tokens"]) == (100, 30)


async def test_tool_use_reaches_the_openai_sdk_as_tool_call_deltas(claude_gateway: Gateway, sim: Sim) -> None:
    rid = new_request_id()
    client = openai_client(claude_gateway, rid)
    stream = await client.chat.completions.create(
        model="claude-tool",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER],
        tool_choice="required",
        stream=True,
    )
    calls: dict[int, dict[str, Any]] = {}
    text, finish, fragments = "", None, 0
    async for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        text += delta.content or ""
        finish = chunk.choices[0].finish_reason or finish
        for call in delta.tool_calls or ():
            fragments += 1
            merged = calls.setdefault(call.index, {"id": None, "name": "", "arguments": ""})
            merged["id"] = call.id or merged["id"]
            if call.function is not None:
                merged["name"] += call.function.name or ""
                merged["arguments"] += call.function.arguments or ""
    await client.close()
    assert text == "" and finish == "tool_calls"
    assert list(calls) == [0] and fragments == 4, "the tool_use start, then 3 argument pieces"
    assert calls[0]["id"].startswith("toolu_") and calls[0]["name"] == "get_weather"
    assert orjson.loads(calls[0]["arguments"]) == {"city": "Paris", "unit": "celsius"}
    assert (await sim.wait_ended(rid))["end"] == "completed"
    [row] = await claude_gateway.ledger_rows(rid)
    assert row["status"] == "completed" and row["finish_reason"] == "tool_calls"
    assert row["completion_tokens"] == 3


async def test_tool_calls_fold_into_a_non_streaming_completion(claude_gateway: Gateway) -> None:
    client = openai_client(claude_gateway, new_request_id())
    completion = await client.chat.completions.create(
        model="claude-tool",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER],
    )
    await client.close()
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert orjson.loads(call.function.arguments) == {"city": "Paris", "unit": "celsius"}  # type: ignore[union-attr]


async def test_thinking_arrives_as_reasoning_content_before_the_text(claude_gateway: Gateway) -> None:
    rid = new_request_id()
    response = await post_chat(
        claude_gateway.url, "claude-think", rid, path="/v1/chat/completions", stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    assert response.status_code == 200
    deltas = [c["choices"][0]["delta"] for c in parse_events(response.content) if c.get("choices")]
    reasoning = [d["reasoning_content"] for d in deltas if d.get("reasoning_content")]
    content = [d["content"] for d in deltas if d.get("content")]
    assert len(reasoning) == 3 and len(content) == 4
    assert deltas.index(next(d for d in deltas if d.get("content"))) > 2, "thinking comes first"
    usage = next(c["usage"] for c in parse_events(response.content) if c.get("usage"))
    assert usage["completion_tokens"] == 3 + 4
    [row] = await claude_gateway.ledger_rows(rid)
    assert row["completion_tokens"] == 7 and row["status"] == "completed"


async def test_an_overloaded_upstream_is_a_502_with_its_message(claude_gateway: Gateway) -> None:
    rid = new_request_id()
    response = await post_chat(claude_gateway.url, "claude-overloaded", rid, path="/v1/chat/completions")
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "upstream_unavailable"
    assert error["message"] == "upstream overloaded (HTTP 529): simulated 529", "the upstream's own words"
    [row] = await claude_gateway.ledger_rows(rid)
    assert row["status"] == "upstream_error" and row["completion_tokens"] == 0


async def test_an_upstream_rate_limit_passes_on_retry_after(claude_gateway: Gateway) -> None:
    response = await post_chat(claude_gateway.url, "claude-ratelimit", new_request_id())
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert response.json()["error"]["code"] == "upstream_rate_limited"


async def test_an_error_event_mid_stream_is_a_typed_error_after_the_text(claude_gateway: Gateway) -> None:
    rid = new_request_id()
    response = await post_chat(claude_gateway.url, "claude-error", rid)
    assert response.status_code == 200
    events = parse_events(response.content)
    assert [e["type"] for e in events] == ["delta"] * 5 + ["error"]
    assert events[-1]["code"] == "upstream_protocol_error"
    assert events[-1]["message"] == "upstream error mid-stream: Overloaded"
    [row] = await claude_gateway.ledger_rows(rid)
    assert row["status"] == "upstream_error" and row["completion_tokens"] == 5


async def test_an_openai_tool_conversation_with_openai_only_fields_is_answered(
    claude_gateway: Gateway, sim: Sim
) -> None:
    """The whole path for a body only OpenAI understands: translated (exactly what to, the unit
    tests say), sent to ``/v1/messages`` and answered."""
    rid = new_request_id()
    body = {
        "model": "claude",
        "stream": True,
        "seed": 7,
        "frequency_penalty": 0.1,
        "response_format": {"type": "text"},
        "temperature": 1.8,
        "stop": "never",
        "tools": [WEATHER],
        "messages": [
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "toolu_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": "{}"},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
        ],
    }
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(
            f"{claude_gateway.url}/v1/chat/completions", json=body, headers={"X-Request-ID": rid}
        )
    assert response.status_code == 200
    assert len(delta_text(parse_events(response.content)).split()) == 20
    upstream = await sim.wait_ended(rid)
    assert upstream["model"] == "sim?tokens=20" and upstream["end"] == "completed"


async def test_the_simulator_refuses_what_anthropic_refuses_of_a_thinking_tool_loop(sim: Sim) -> None:
    """What the gateway's tests of thinking tool loops rely on: the simulator answers 400, as
    Anthropic does, to a tool-use turn sent back without its thinking, to a thinking block
    without the signature it gave, and to ``tool_choice`` without tools."""
    tool_use = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"}

    def body(assistant: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
        messages = [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": assistant},
            {"role": "user", "content": [result]},
        ]
        return {"model": "sim?tokens=2", "max_tokens": 2000, "messages": messages, **fields}

    thinking_on = {"thinking": {"type": "enabled", "budget_tokens": 1024}}
    signed = {"type": "thinking", "thinking": "hmm", "signature": SIGNATURE}
    cases = [
        (body([tool_use], **thinking_on), "must start with a thinking block"),
        (body([{**signed, "signature": "forged"}, tool_use], **thinking_on), "Invalid `signature`"),
        (body([tool_use], tool_choice={"type": "auto"}), "tool_choice may only be specified"),
        (body([signed, tool_use], **thinking_on), None),
        (body([tool_use]), None),
    ]
    async with httpx.AsyncClient(timeout=10) as client:
        for request, refusal in cases:
            response = await client.post(f"{sim.base_url}/messages", json=request)
            if refusal is None:
                assert response.status_code == 200, response.text
            else:
                assert response.status_code == 400
                assert refusal in response.json()["error"]["message"]
