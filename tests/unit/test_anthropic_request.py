"""The Anthropic upstream's request: an OpenAI-shaped body translated to the Messages API, and
what a ``/v1/messages`` client sent coming out of that translation as it went in."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tokenrelay.api.anthropic import MessagesRequest
from tokenrelay.events import ANTHROPIC_FIELDS
from tokenrelay.upstreams.anthropic import messages_request


def translate(body: dict[str, Any], default_max_tokens: int = 4096) -> dict[str, Any]:
    return messages_request(body, model="claude-x", default_max_tokens=default_max_tokens)


# -- the request ---------------------------------------------------------------------------


def test_a_plain_chat_becomes_a_streaming_messages_request_with_max_tokens() -> None:
    request = translate({"model": "public", "messages": [{"role": "user", "content": "Hi"}]}, 123)
    assert request == {
        "model": "claude-x",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        "max_tokens": 123,
        "stream": True,
    }
    assert translate({"messages": [], "max_tokens": 50})["max_tokens"] == 50
    assert translate({"messages": [], "max_completion_tokens": 60})["max_tokens"] == 60


def test_system_and_developer_messages_become_the_system_string() -> None:
    request = translate(
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Use French."}]},
                {"role": "user", "content": "Hi"},
            ]
        }
    )
    assert request["system"] == "Be brief.\n\nUse French."
    assert [m["role"] for m in request["messages"]] == ["user"]


def test_content_parts_text_and_images() -> None:
    request = translate(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                        {"type": "input_audio", "input_audio": {"data": "...", "format": "wav"}},
                    ],
                }
            ]
        }
    )
    assert request["messages"][0]["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


def test_tool_calls_and_results_become_tool_use_and_one_user_turn_of_tool_results() -> None:
    request = translate(
        {
            "messages": [
                {"role": "user", "content": "Weather in Paris and Rome?"},
                {
                    "role": "assistant",
                    "content": "Let me look.",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                        },
                        {
                            "id": "call_2",
                            "type": "function",
                            "function": {"name": "weather", "arguments": "{oops"},
                        },
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
                {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "22C"}]},
                {"role": "user", "content": "Thanks"},
            ]
        }
    )
    assert request["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris and Rome?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "call_2", "name": "weather", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
                {
                    "type": "tool_result",
                    "tool_use_id": "call_2",
                    "content": [{"type": "text", "text": "22C"}],
                },
                {"type": "text", "text": "Thanks"},
            ],
        },
    ]


def test_consecutive_turns_of_one_role_are_merged_and_empty_ones_dropped() -> None:
    request = translate(
        {
            "messages": [
                {"role": "user", "content": "one"},
                {"role": "user", "content": "two"},
                {"role": "assistant", "content": ""},
                {"role": "assistant", "content": "three"},
                {"role": "assistant", "content": None, "tool_calls": []},
            ]
        }
    )
    assert request["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "three"}]},
    ]


def test_sampling_fields_are_translated_and_temperature_clamped() -> None:
    request = translate({"messages": [], "temperature": 1.7, "top_p": 0.9, "stop": "END", "user": "alice"})
    assert request["temperature"] == 1.0
    assert request["top_p"] == 0.9
    assert request["stop_sequences"] == ["END"]
    assert request["metadata"] == {"user_id": "alice"}
    request = translate({"messages": [], "temperature": 0.2, "stop": ["a", "b"]})
    assert request["temperature"] == 0.2
    assert request["stop_sequences"] == ["a", "b"]


def test_openai_only_fields_are_dropped() -> None:
    request = translate(
        {
            "model": "public",
            "messages": [],
            "seed": 1,
            "frequency_penalty": 0.5,
            "presence_penalty": 0.5,
            "response_format": {"type": "json_object"},
            "logprobs": True,
            "top_logprobs": 2,
            "n": 1,
            "stream_options": {"include_usage": True},
            "logit_bias": {"1": 2},
        }
    )
    assert set(request) == {"model", "messages", "max_tokens", "stream"}


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@pytest.mark.parametrize(
    ("tool_choice", "expected"),
    [
        ("auto", {"type": "auto"}),
        ("required", {"type": "any"}),
        ("none", {"type": "none"}),
        ({"type": "function", "function": {"name": "weather"}}, {"type": "tool", "name": "weather"}),
    ],
)
def test_tools_and_tool_choice(tool_choice: Any, expected: dict[str, Any]) -> None:
    request = translate({"messages": [], "tools": [WEATHER_TOOL], "tool_choice": tool_choice})
    assert request["tools"] == [
        {
            "name": "weather",
            "description": "The weather in a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ]
    assert request["tool_choice"] == expected


def test_no_parallel_tool_calls_disables_parallel_tool_use() -> None:
    bare = {"type": "function", "function": {"name": "now"}}
    request = translate({"messages": [], "tools": [bare], "parallel_tool_calls": False})
    assert request["tools"] == [{"name": "now", "input_schema": {"type": "object", "properties": {}}}]
    assert request["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    request = translate(
        {"messages": [], "tools": [bare], "tool_choice": "required", "parallel_tool_calls": False}
    )
    assert request["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert "tool_choice" not in translate({"messages": [], "parallel_tool_calls": False})


def test_anthropic_fields_are_merged_verbatim_and_win() -> None:
    system = [{"type": "text", "text": "Long context", "cache_control": {"type": "ephemeral"}}]
    request = translate(
        {
            "messages": [{"role": "system", "content": "ignored"}, {"role": "user", "content": "Hi"}],
            "user": "alice",
            "max_tokens": 10,
            ANTHROPIC_FIELDS: {
                "thinking": {"type": "enabled", "budget_tokens": 1024},
                "top_k": 5,
                "metadata": {"user_id": "bob"},
                "system": system,
                "max_tokens": 2048,
                "model": "not-this-one",
                "stream": False,
            },
        }
    )
    assert request["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert request["top_k"] == 5
    assert request["metadata"] == {"user_id": "bob"}
    assert request["system"] == system
    assert request["max_tokens"] == 2048
    assert ANTHROPIC_FIELDS not in request
    assert request["model"] == "claude-x" and request["stream"] is True, "ours, whatever the client said"


def test_tool_choice_without_tools_is_dropped() -> None:
    """Anthropic refuses it ("tool_choice may only be specified while providing tools")."""
    for choice in ("auto", "required", "none", {"type": "function", "function": {"name": "weather"}}):
        assert "tool_choice" not in translate({"messages": [], "tool_choice": choice})
        assert "tool_choice" not in translate({"messages": [], "tools": [], "tool_choice": choice})
    verbatim = [
        {"name": "weather", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral"}}
    ]
    request = translate({"messages": [], "tool_choice": "required", ANTHROPIC_FIELDS: {"tools": verbatim}})
    assert request["tools"] == verbatim and request["tool_choice"] == {"type": "any"}


def test_messages_that_carry_their_anthropic_blocks_are_sent_as_those_blocks() -> None:
    """A /v1/messages client's turns, as ``api/anthropic.py`` carries them: the signed thinking
    first, text after a tool use where it was, cache marks and the error flag kept."""
    thinking = {"type": "thinking", "thinking": "Weather first.", "signature": "EqQBsig"}
    redacted = {"type": "redacted_thinking", "data": "EmwKopaque"}
    tool_use = {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}}
    after = {"type": "text", "text": "Then the map.", "cache_control": {"type": "ephemeral"}}
    result = {
        "type": "tool_result",
        "tool_use_id": "toolu_1",
        "content": [{"type": "image", "source": {"type": "url", "url": "https://x/map.png"}}],
        "is_error": True,
        "cache_control": {"type": "ephemeral"},
    }
    question = {"type": "text", "text": "And tomorrow?", "cache_control": {"type": "ephemeral"}}
    assistant_blocks = [thinking, redacted, {"type": "text", "text": "Checking."}, tool_use, after]
    body: dict[str, Any] = {
        "messages": [
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "content": "Checking.Then the map.",
                "tool_calls": [
                    {"id": "toolu_1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
                ],
                ANTHROPIC_FIELDS: {"content": assistant_blocks},
            },
            {
                "role": "tool",
                "tool_call_id": "toolu_1",
                "content": "",
                ANTHROPIC_FIELDS: {"content": [result]},
            },
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": "https://x/map.png"}}, question],
                ANTHROPIC_FIELDS: {"content": [question]},
            },
        ],
        ANTHROPIC_FIELDS: {},
    }
    request = translate(body)
    assert request["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
        {"role": "assistant", "content": assistant_blocks},
        {"role": "user", "content": [result, question]},
    ]
    assert body["messages"][2][ANTHROPIC_FIELDS] == {"content": [result]}, "merging copies the blocks"


# -- from /v1/messages, through the neutral body -------------------------------------------

THINKING = {"type": "thinking", "thinking": "Weather first.", "signature": "EqQBsig"}
TOOL_USE = {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}}
EPHEMERAL = {"type": "ephemeral"}


def neutral(**fields: Any) -> dict[str, Any]:
    body = {"model": "claude", "max_tokens": 100, **fields}
    return MessagesRequest.model_validate_json(orjson.dumps(body)).upstream_body()


def test_a_thinking_tool_loop_reaches_anthropic_as_the_client_sent_it() -> None:
    """Claude Code's loop with extended thinking: Anthropic refuses the tool-use turn without its
    signed thinking block first; cache marks and ``is_error`` must not be lost either."""
    assistant = [THINKING, {"type": "redacted_thinking", "data": "EmwKopaque"}, TOOL_USE]
    assistant += [{"type": "text", "text": "Meanwhile...", "cache_control": EPHEMERAL}]
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "timeout", "is_error": True}
    tool = {"name": "weather", "input_schema": {"type": "object"}, "cache_control": EPHEMERAL}
    body = neutral(
        thinking={"type": "enabled", "budget_tokens": 1024},
        tools=[tool],
        tool_choice={"type": "auto"},
        messages=[
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": assistant},
            {
                "role": "user",
                "content": [result, {"type": "text", "text": "Retry.", "cache_control": EPHEMERAL}],
            },
        ],
    )
    # What other providers get is unchanged: the blocks ride along under the Anthropic key.
    assert body["messages"][1]["content"] == "Meanwhile..." and len(body["messages"][1]["tool_calls"]) == 1
    assert body["messages"][2]["content"] == "timeout"
    assert body["tools"][0]["function"]["name"] == "weather"

    request = translate(body)
    assert request["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
        {"role": "assistant", "content": assistant},
        {"role": "user", "content": [result, {"type": "text", "text": "Retry.", "cache_control": EPHEMERAL}]},
    ]
    assert request["tools"] == [tool] and request["tool_choice"] == {"type": "auto"}
    assert request["thinking"] == {"type": "enabled", "budget_tokens": 1024}


def test_marks_inside_a_tool_result_keep_its_images_in_it() -> None:
    image = {
        "type": "image",
        "source": {"type": "url", "url": "https://x/map.png"},
        "cache_control": EPHEMERAL,
    }
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": [image]}
    body = neutral(
        messages=[
            {"role": "user", "content": "Map?"},
            {"role": "assistant", "content": [TOOL_USE]},
            {"role": "user", "content": [result]},
        ]
    )
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "tool", "user"]
    assert translate(body)["messages"][2] == {"role": "user", "content": [result]}


def test_unmarked_turns_and_unsigned_thinking_travel_as_before() -> None:
    """Nothing rides along that the OpenAI shape keeps; thinking with no signature (another
    provider's reasoning, as we return it) is dropped: Anthropic would refuse it."""
    unsigned = {"type": "thinking", "thinking": "hmm", "signature": ""}
    body = neutral(
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
            {"role": "assistant", "content": [unsigned, {"type": "text", "text": "Checking."}, TOOL_USE]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "is_error": False}],
            },
        ]
    )
    assert ANTHROPIC_FIELDS not in body
    assert not any(ANTHROPIC_FIELDS in message for message in body["messages"])
    assert translate(body)["messages"][1]["content"] == [{"type": "text", "text": "Checking."}, TOOL_USE]
