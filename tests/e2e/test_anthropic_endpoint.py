"""``POST /v1/messages`` end to end over TCP, with Anthropic's own SDK as the client.

The gateway's upstream here is the simulator speaking OpenAI's protocol: what reaches the
SDK is built from the neutral events, whatever provider produced them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import orjson
import pytest

from tests.e2e.test_protocols import TRICKY_TEXT
from tests.helpers import (
    Gateway,
    Sim,
    delta_text,
    launch_gateway,
    new_request_id,
    open_raw_stream,
    parse_events,
)
from tokenrelay.sim.anthropic import SIGNATURE

WEATHER_TOOL: Any = {
    "name": "get_weather",
    "description": "The weather in a city now",
    "input_schema": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city"],
    },
}
KEEPALIVE_SECONDS = 0.2
ADMIN_KEY = "admin-" + "x" * 40


def sdk(gateway: Gateway, **options: Any) -> anthropic.AsyncAnthropic:
    """The SDK as an application would configure it, minus retries (tests count requests)."""
    return anthropic.AsyncAnthropic(
        base_url=gateway.url, api_key=options.pop("api_key", "unused"), max_retries=0, **options
    )


def user(content: str) -> Any:
    return [{"role": "user", "content": content}]


def ledger_usage(rows: list[dict[str, Any]]) -> tuple[int, int]:
    assert len(rows) == 1, rows
    return rows[0]["prompt_tokens"], rows[0]["completion_tokens"]


@pytest.fixture(scope="module")
def features_gateway(sim: Sim, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """The simulator's tool, thinking and prompt-cache answers, from OpenAI and Anthropic
    upstreams (``claude-*``), and a short keep-alive."""
    tmp = tmp_path_factory.mktemp("anthropic-gateway")
    behaviours = {
        "tools": "tool=1",
        "thinking": "think=3&tokens=4",
        "stall": "tokens=50&stall_after=3&stall_seconds=30",
        "claude-tools": "tool=1",
        "claude-thinking": "think=3&tokens=4",
        "claude-cached": "tokens=5&cache_read=100&cache_creation=30",
        "claude-think-tools": "think=2&tool=1",
    }
    lines = ['default_model = "tools"', ""]
    for name, options in behaviours.items():
        provider = ['provider = "anthropic"'] if name.startswith("claude-") else []
        model = [f'[models."{name}"]', *provider, f'base_url = "{sim.base_url}"']
        lines += [*model, f'upstream_model = "sim?{options}"', ""]
    gw = launch_gateway(
        tmp,
        config="\n".join(lines),
        database_url=f"sqlite+aiosqlite:///{tmp / 'ledger.db'}",
        env={"TOKENRELAY_KEEPALIVE_SECONDS": str(KEEPALIVE_SECONDS), "TOKENRELAY_MAX_BODY_BYTES": "4096"},
    )
    yield gw
    gw.stop()


# -- answers -------------------------------------------------------------------------------


async def test_a_message_has_the_text_chat_gives_and_the_ledgers_usage(gateway: Gateway) -> None:
    rid = new_request_id()
    client = sdk(gateway)
    message = await client.messages.create(
        model="echo", max_tokens=1000, messages=user(TRICKY_TEXT), extra_headers={"X-Request-ID": rid}
    )
    await client.close()
    async with httpx.AsyncClient(timeout=10) as http:
        chat = await http.post(f"{gateway.url}/chat", json={"model": "echo", "messages": user(TRICKY_TEXT)})

    assert message.id.startswith("msg_") and message.type == "message" and message.role == "assistant"
    assert message.model == "echo"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == delta_text(parse_events(chat.content)) == TRICKY_TEXT  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    prompt, completion = ledger_usage(await gateway.ledger_rows(rid))
    assert (message.usage.input_tokens, message.usage.output_tokens) == (prompt, completion)
    assert completion > 0 and prompt > 0


async def test_a_streamed_message_folds_into_the_same_message(gateway: Gateway) -> None:
    whole_rid, streamed_rid = new_request_id(), new_request_id()
    client = sdk(gateway)
    whole = await client.messages.create(
        model="echo", max_tokens=1000, messages=user(TRICKY_TEXT), extra_headers={"X-Request-ID": whole_rid}
    )
    texts = []
    async with client.messages.stream(
        model="echo",
        max_tokens=1000,
        messages=user(TRICKY_TEXT),
        extra_headers={"X-Request-ID": streamed_rid},
    ) as stream:
        async for text in stream.text_stream:
            texts.append(text)
        final = await stream.get_final_message()
    await client.close()

    assert len(texts) > 10, "the answer should arrive in many deltas"
    assert "".join(texts) == TRICKY_TEXT
    assert final.model_dump(exclude={"id"}) == whole.model_dump(exclude={"id"})
    assert final.id != whole.id
    prompt, completion = ledger_usage(await gateway.ledger_rows(streamed_rid))
    assert (final.usage.input_tokens, final.usage.output_tokens) == (prompt, completion)


async def test_the_raw_stream_is_anthropics_event_sequence(gateway: Gateway) -> None:
    body = {"model": "fast", "max_tokens": 50, "stream": True, "messages": user("hi")}
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(
            f"{gateway.url}/v1/messages", json=body, headers={"anthropic-version": "2023-06-01"}
        )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    names = [line[7:] for line in response.text.split("\n") if line.startswith("event: ")]
    assert names == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * 20,  # the "fast" model: 20 tokens
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert [event["type"] for event in parse_events(response.content)] == names


@pytest.mark.parametrize("model", ["tools", "claude-tools"])
async def test_tool_use_streams_and_folds_into_a_tool_use_block(
    features_gateway: Gateway, model: str
) -> None:
    client = sdk(features_gateway)
    request: Any = {
        "model": model,
        "max_tokens": 200,
        "messages": user("Weather in Paris?"),
        "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "auto"},
    }
    async with client.messages.stream(**request) as stream:
        json_pieces = [event.partial_json async for event in stream if event.type == "input_json"]
        final = await stream.get_final_message()
    whole = await client.messages.create(**request)
    await client.close()

    assert len(json_pieces) == 3, "the arguments arrive in the pieces the upstream sent"
    for message in (final, whole):
        assert message.stop_reason == "tool_use"
        (block,) = message.content
        assert isinstance(block, anthropic.types.ToolUseBlock)
        assert block.name == "get_weather" and block.id
        assert block.input == {"city": "Paris", "unit": "celsius"}
    # Each request's call has an id of its own (the upstream's); the rest is the same.
    ids: Any = {"id": True, "content": {0: {"id"}}}
    assert final.model_dump(exclude=ids) == whole.model_dump(exclude=ids)


async def test_a_tool_result_conversation_is_accepted(features_gateway: Gateway) -> None:
    """The SDK's own answer blocks, sent back with a tool result, are a valid next turn."""
    client = sdk(features_gateway)
    first = await client.messages.create(
        model="tools", max_tokens=200, messages=user("Weather in Paris?"), tools=[WEATHER_TOOL]
    )
    tool_use = first.content[0]
    assert tool_use.type == "tool_use"
    result = {"type": "tool_result", "tool_use_id": tool_use.id, "content": "18 C, sunny"}
    conversation: Any = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": first.content},
        {"role": "user", "content": [result]},
    ]
    second = await client.messages.create(
        model="tools", max_tokens=200, tools=[WEATHER_TOOL], messages=conversation
    )
    await client.close()
    assert second.stop_reason == "tool_use"


@pytest.mark.parametrize("stream", [True, False])
async def test_a_thinking_tool_loop_sends_the_signed_thinking_back_to_anthropic(
    features_gateway: Gateway, stream: bool
) -> None:
    """Claude Code's loop with extended thinking, against an Anthropic deployment: the answer's
    thinking comes with Anthropic's signature, and the next turn, sending it back, is accepted
    (the simulator refuses, as Anthropic does, a tool-use turn without its signed thinking)."""
    client = sdk(features_gateway)
    request: Any = {
        "model": "claude-think-tools",
        "max_tokens": 2000,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "tools": [{**WEATHER_TOOL, "cache_control": {"type": "ephemeral"}}],
    }
    ask: Any = {"role": "user", "content": "Weather in Paris?"}
    if stream:
        async with client.messages.stream(**request, messages=[ask]) as answer:
            first = await answer.get_final_message()
    else:
        first = await client.messages.create(**request, messages=[ask])
    thinking, tool_use = first.content
    assert isinstance(thinking, anthropic.types.ThinkingBlock) and thinking.signature == SIGNATURE
    assert isinstance(tool_use, anthropic.types.ToolUseBlock)

    result = {"type": "tool_result", "tool_use_id": tool_use.id, "content": "18 C", "is_error": False}
    conversation: Any = [
        ask,
        {"role": "assistant", "content": first.content},
        {"role": "user", "content": [result]},
    ]
    second = await client.messages.create(**request, messages=conversation)
    # The same conversation to an OpenAI deployment: the thinking is not for it, and must not break it.
    elsewhere = await client.messages.create(**{**request, "model": "tools"}, messages=conversation)
    await client.close()
    assert second.stop_reason == elsewhere.stop_reason == "tool_use"
    assert [block.type for block in second.content] == ["thinking", "tool_use"]


async def test_tool_choice_without_tools_is_accepted_by_an_anthropic_deployment(
    features_gateway: Gateway,
) -> None:
    client = sdk(features_gateway)
    message = await client.messages.create(
        model="claude-cached", max_tokens=50, tool_choice={"type": "auto"}, messages=user("hi")
    )
    await client.close()
    assert message.stop_reason == "end_turn"


@pytest.mark.parametrize("model", ["thinking", "claude-thinking"])
async def test_reasoning_streams_as_a_thinking_block(features_gateway: Gateway, model: str) -> None:
    client = sdk(features_gateway)
    async with client.messages.stream(model=model, max_tokens=200, messages=user("think")) as stream:
        final = await stream.get_final_message()
    await client.close()
    assert [block.type for block in final.content] == ["thinking", "text"]
    assert final.content[0].thinking  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"


async def test_prompt_cache_counts_come_back_apart_as_anthropic_counts_them(
    features_gateway: Gateway,
) -> None:
    """Through an Anthropic upstream, with Anthropic-only fields that only it can apply."""
    rid = new_request_id()
    client = sdk(features_gateway)
    system: Any = [{"type": "text", "text": "Long rules.", "cache_control": {"type": "ephemeral"}}]
    async with client.messages.stream(
        model="claude-cached",
        max_tokens=50,
        system=system,
        metadata={"user_id": "u-1"},
        extra_body={"top_k": 5},  # no longer in this SDK's signature; older clients send it
        messages=user("hi"),
        extra_headers={"X-Request-ID": rid},
    ) as stream:
        final = await stream.get_final_message()
    await client.close()
    prompt, completion = ledger_usage(await features_gateway.ledger_rows(rid))
    usage = final.usage
    assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (100, 30)
    assert usage.input_tokens + 100 + 30 == prompt and usage.output_tokens == completion == 5


# -- errors ------------------------------------------------------------------------------------


async def test_a_body_without_max_tokens_is_an_anthropic_400(gateway: Gateway) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(
            f"{gateway.url}/v1/messages", json={"model": "fast", "messages": user("hi")}
        )
    assert response.status_code == 400
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in body["error"]["message"]

    client = sdk(gateway)
    with pytest.raises(anthropic.BadRequestError) as caught:
        await client.messages.create(model="fast", max_tokens=0, messages=user("hi"))
    await client.close()
    assert caught.value.status_code == 400
    assert caught.value.body == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "max_tokens: Input should be greater than or equal to 1",
        },
    }


async def test_an_unknown_model_is_not_found(gateway: Gateway) -> None:
    client = sdk(gateway)
    with pytest.raises(anthropic.NotFoundError) as caught:
        await client.messages.create(model="no-such-model", max_tokens=10, messages=user("hi"))
    await client.close()
    assert caught.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


async def test_an_upstream_rate_limit_is_a_rate_limit_error_with_retry_after(gateway: Gateway) -> None:
    client = sdk(gateway)
    with pytest.raises(anthropic.RateLimitError) as caught:
        async with client.messages.stream(model="ratelimit", max_tokens=10, messages=user("hi")) as stream:
            await stream.get_final_message()
    await client.close()
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.body["type"] == "error"  # type: ignore[index]
    assert caught.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]


async def test_a_body_too_large_is_an_anthropic_413(features_gateway: Gateway) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        big = {"model": "tools", "max_tokens": 10, "messages": user("x" * 5000)}
        response = await http.post(f"{features_gateway.url}/v1/messages", json=big)
        openai_response = await http.post(f"{features_gateway.url}/v1/chat/completions", json=big)
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "request_too_large"
    assert (
        openai_response.status_code == 413 and openai_response.json()["error"]["code"] == "request_too_large"
    )


async def test_errors_elsewhere_keep_openais_shape(gateway: Gateway) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(
            f"{gateway.url}/v1/chat/completions", json={"model": "no-such-model", "messages": user("hi")}
        )
        wrong_method = await http.get(f"{gateway.url}/v1/messages")
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"
    assert wrong_method.status_code == 405
    assert wrong_method.json() == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "Method Not Allowed"},
    }


async def test_an_upstream_error_mid_stream_raises_in_the_sdk_after_the_first_text(gateway: Gateway) -> None:
    client = sdk(gateway)
    texts: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as caught:
        async with client.messages.stream(
            model="midstream-error", max_tokens=100, messages=user("hi")
        ) as stream:
            async for text in stream.text_stream:
                texts.append(text)
    await client.close()
    assert len(texts) == 5, "the text before the error reaches the client first"
    assert caught.value.body["error"]["type"] == "api_error"  # type: ignore[index]


# -- keys ------------------------------------------------------------------------------------


@pytest.fixture
def auth_gateway(start_gateway: Any, tmp_path: Path) -> tuple[Gateway, str]:
    """A gateway with keys required, and one valid key."""
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'keys.db'}"
    env = {"TOKENRELAY_AUTH__ENABLED": "true", "TOKENRELAY_AUTH__ADMIN_KEY": ADMIN_KEY}
    gw: Gateway = start_gateway(env=env, database_url=database_url)
    created = subprocess.run(
        [sys.executable, "-m", "tokenrelay", "keys", "create", "--name", "sdk"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TOKENRELAY_LEDGER__DATABASE_URL": database_url},
        check=True,
    )
    return gw, created.stdout.strip()


async def test_keys_come_in_x_api_key_or_a_bearer_header(auth_gateway: tuple[Gateway, str]) -> None:
    gw, key = auth_gateway
    for client in (
        sdk(gw, api_key=key),
        anthropic.AsyncAnthropic(base_url=gw.url, auth_token=key, max_retries=0),
    ):
        message = await client.messages.create(model="fast", max_tokens=10, messages=user("hi"))
        await client.close()
        assert message.stop_reason == "end_turn"

    for wrong in (None, "trk_00000000_" + "x" * 43):
        async with httpx.AsyncClient(timeout=10) as http:
            headers = {"x-api-key": wrong} if wrong else {}
            response = await http.post(f"{gw.url}/v1/messages", headers=headers, content=b"{}")
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "authentication_error"

    client = sdk(gw, api_key="wrong")
    with pytest.raises(anthropic.AuthenticationError):
        await client.messages.create(model="fast", max_tokens=10, messages=user("hi"))
    await client.close()

    async with httpx.AsyncClient(timeout=10) as http:
        chat = await http.post(f"{gw.url}/chat", headers={"x-api-key": key}, json={"messages": user("hi")})
        refused = await http.post(f"{gw.url}/chat", json={"messages": user("hi")})
    assert chat.status_code == 200, "the other endpoints take x-api-key too"
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"


# -- the stream's life -------------------------------------------------------------------------


async def test_keepalives_are_ping_events(features_gateway: Gateway) -> None:
    body = {"model": "stall", "max_tokens": 100, "stream": True, "messages": user("hi")}
    received = b""
    async with (
        httpx.AsyncClient(timeout=10) as http,
        http.stream("POST", f"{features_gateway.url}/v1/messages", json=body) as response,
    ):
        async for data in response.aiter_bytes():
            received += data
            if received.count(b"event: ping\n") >= 2:
                break
    assert b'event: ping\ndata: {"type": "ping"}\n\n' in received
    assert received.startswith(b"event: message_start\n"), "the stream starts with the message"


async def test_a_client_that_leaves_ends_the_upstream_call_and_leaves_one_row(
    gateway: Gateway, sim: Sim
) -> None:
    rid = new_request_id()
    body = orjson.dumps({"model": "slow", "max_tokens": 4000, "stream": True, "messages": user("hi")})
    stream = await open_raw_stream(gateway.url, "/v1/messages", body, rid)
    await stream.read_until(b'"type":"content_block_delta"', count=3)
    closed_at = stream.close()

    upstream = await sim.wait_ended(rid)
    assert upstream["end"] == "client_closed"
    assert upstream["ended_at"] - closed_at < 1.0
    rows = await gateway.ledger_rows(rid)
    assert [(row["status"], row["disconnect_phase"]) for row in rows] == [
        ("client_disconnected", "mid_stream")
    ]
