"""``/v1/messages``: the request's translation into the neutral (OpenAI-shaped) body."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from tokenrelay.api.anthropic import MessagesRequest
from tokenrelay.errors import (
    InvalidRequest,
)
from tokenrelay.events import ANTHROPIC_FIELDS


def translate(**body: Any) -> dict[str, Any]:
    full = {"model": "m", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}], **body}
    return MessagesRequest.model_validate_json(orjson.dumps(full)).upstream_body()


def test_a_plain_request_translates_to_the_same_openai_body() -> None:
    assert translate() == {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100}


def test_a_tool_conversation_translates_to_openai_tool_calls_and_tool_messages() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}}
    body = translate(
        system="Be brief.",
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "Weather?"}, image]},
            {
                "role": "assistant",
                "content": [
                    # Unsigned (another provider's reasoning, as we return it): dropped everywhere.
                    {"type": "thinking", "thinking": "use the tool", "signature": ""},
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "content": [
                            {"type": "text", "text": "18 C"},
                            {"type": "image", "source": {"type": "url", "url": "https://x/map.png"}},
                        ],
                        "is_error": False,
                    },
                    {"type": "text", "text": "And tomorrow?"},
                ],
            },
        ],
        tools=[{"name": "weather", "description": "Weather now", "input_schema": {"type": "object"}}],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        stop_sequences=["END"],
        temperature=0.5,
        top_p=0.9,
    )
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
            ],
        },
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": [{"type": "text", "text": "18 C"}]},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "https://x/map.png"}},
                {"type": "text", "text": "And tomorrow?"},
            ],
        },
    ]
    assert body["tools"] == [
        {
            "type": "function",
            "function": {"name": "weather", "parameters": {"type": "object"}, "description": "Weather now"},
        }
    ]
    assert body["tool_choice"] == "required" and body["parallel_tool_calls"] is False
    assert body["stop"] == ["END"] and body["temperature"] == 0.5 and body["top_p"] == 0.9
    assert ANTHROPIC_FIELDS not in body


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "weather"}, {"type": "function", "function": {"name": "weather"}}),
    ],
)
def test_tool_choice_maps_to_openais(choice: dict[str, Any], expected: Any) -> None:
    tools = [{"name": "weather", "input_schema": {"type": "object"}}]
    body = translate(tools=tools, tool_choice=choice)
    assert body["tool_choice"] == expected and "parallel_tool_calls" not in body


def test_anthropic_only_fields_travel_verbatim_under_their_own_key() -> None:
    system = [{"type": "text", "text": "Long rules.", "cache_control": {"type": "ephemeral"}}]
    body = translate(
        system=system,
        thinking={"type": "enabled", "budget_tokens": 1024},
        top_k=5,
        metadata={"user_id": "u-1"},
    )
    assert body["user"] == "u-1"
    assert body["messages"][0] == {"role": "system", "content": [{"type": "text", "text": "Long rules."}]}
    assert body[ANTHROPIC_FIELDS] == {
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "top_k": 5,
        "metadata": {"user_id": "u-1"},
        "system": system,
    }


def test_system_messages_in_the_conversation_stay_in_place() -> None:
    body = translate(
        messages=[
            {"role": "user", "content": "hi"},
            {"role": "system", "content": [{"type": "text", "text": "Now be brief."}]},
            {"role": "user", "content": "again"},
        ],
        cache_control={"type": "ephemeral"},
    )
    assert body["messages"][1] == {"role": "system", "content": [{"type": "text", "text": "Now be brief."}]}
    assert body[ANTHROPIC_FIELDS] == {"cache_control": {"type": "ephemeral"}}


def test_an_assistant_turn_of_only_thinking_is_dropped() -> None:
    body = translate(
        messages=[
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [{"type": "redacted_thinking", "data": "xyz"}]},
            {"role": "user", "content": "again"},
        ]
    )
    assert [m["role"] for m in body["messages"]] == ["user", "user"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"max_tokens": None}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages"),
        ({"temperature": 1.5}, "temperature"),
        ({"tool_choice": {"type": "tool"}}, "tool_choice"),
        ({"frequency_penalty": 1}, "frequency_penalty"),
        ({"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}, "messages"),
    ],
)
def test_invalid_bodies_are_refused(body: dict[str, Any], field: str) -> None:
    full = {"model": "m", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}], **body}
    full = {k: v for k, v in full.items() if v is not None}
    with pytest.raises(ValidationError) as caught:
        MessagesRequest.model_validate_json(orjson.dumps(full))
    assert caught.value.errors()[0]["loc"][0] == field


@pytest.mark.parametrize("role", ["user", "system"])
def test_a_block_in_the_wrong_role_is_refused(role: str) -> None:
    tool_use = {"type": "tool_use", "id": "t", "name": "f", "input": {}}
    with pytest.raises(InvalidRequest) as caught:
        translate(messages=[{"role": "user", "content": "hi"}, {"role": role, "content": [tool_use]}])
    assert caught.value.param == "messages.1.content.0"
    assert caught.value.message == f"messages.1.content.0: a tool_use block cannot be in a {role} message"
