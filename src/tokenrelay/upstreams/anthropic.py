"""Anthropic's Messages API as an upstream (``provider = "anthropic"``).

The relay hands every upstream an OpenAI chat-completions body; :func:`messages_request`
translates it: system and developer messages become ``system``, tool calls ``tool_use`` blocks,
tool messages ``tool_result`` blocks in a user turn, consecutive turns of one role are merged
(Anthropic requires alternating roles), ``max_tokens`` is always set, OpenAI-only fields are
dropped, and the fields under ``events.ANTHROPIC_FIELDS`` are applied last, verbatim. A message
that carries its Anthropic blocks under that key (a ``/v1/messages`` client's turn whose
thinking signatures, cache marks or block order the OpenAI shape would lose) is sent as those
blocks, not translated. ``tool_choice`` goes only with tools (Anthropic refuses it alone). The
request is ``POST {base_url}/v1/messages`` (``/messages`` when the base URL ends in ``/v1``).

The stream's events become neutral :class:`~tokenrelay.events.Chunk` events: text deltas in one
reused Chunk (as in ``upstreams/openai.py``), tool-call fragments, reasoning, thinking
signatures and redacted thinking in Chunks of their own, and the finish reason with the final
usage on ``message_delta``. The prompt's count
(cache reads and writes included) comes in ``message_start`` but is only reported with the
output count: a usage of 0 completion tokens would stand in the ledger if the stream dropped.
Every ``data:`` carries its event's ``type``, so the SSE ``event:`` lines are not needed.
``Chunk.native`` stays None: the OpenAI endpoint builds its chunks from the neutral fields.

An answer is complete at ``message_stop``, or when the body ends (or drops) after a
``message_delta`` with a stop reason; an ``error`` event ends the events with an
``UpstreamProtocolError`` (``mid_stream_error``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import orjson

from tokenrelay.config import DeploymentConfig
from tokenrelay.errors import UpstreamProtocolError
from tokenrelay.events import ANTHROPIC_FIELDS, Chunk, ToolCallDelta, Usage
from tokenrelay.upstreams.http import HttpBody, HttpUpstream, SseStream

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "pause_turn": "stop",
    # The answer ran into the model's context window: cut short, as with max_tokens.
    "model_context_window_exceeded": "length",
}
# Anthropic accepts temperatures in [0, 1]; OpenAI's go up to 2.
_MAX_TEMPERATURE = 1.0
_TOOL_CHOICES = {"auto": "auto", "required": "any", "none": "none"}


class AnthropicUpstream(HttpUpstream):
    """One Anthropic Messages API endpoint: its base URL, key and connection pool."""

    def __init__(self, *, base_url: str, api_key: str | None, max_connections: int) -> None:
        base = base_url.rstrip("/")
        super().__init__(
            url=base + ("/messages" if base.endswith("/v1") else "/v1/messages"),
            auth_headers={"x-api-key": api_key} if api_key else {},
            max_connections=max_connections,
        )

    async def open_stream(
        self,
        *,
        body: dict[str, Any],
        upstream_model: str,
        config: DeploymentConfig,
        request_id: str,
        on_close: Callable[[], None] | None = None,
    ) -> AnthropicStream:
        """Send the request and wait for the response headers. Raises an UpstreamError.

        ``on_close`` runs once the stream is closed (not if this raises).
        """
        payload = orjson.dumps(
            messages_request(body, model=upstream_model, default_max_tokens=config.default_max_tokens)
        )
        response = await self._post(
            payload,
            request_id=request_id,
            connect_timeout_seconds=config.connect_timeout_seconds,
            headers={"anthropic-version": config.anthropic_version},
        )
        return AnthropicStream(HttpBody(response, on_close))


# -- the request ---------------------------------------------------------------------------


def messages_request(body: dict[str, Any], *, model: str, default_max_tokens: int) -> dict[str, Any]:
    """The Messages API request for an OpenAI chat-completions ``body``."""
    system: list[str] = []
    messages: list[dict[str, Any]] = []
    for message in body.get("messages") or ():
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            system.extend(block["text"] for block in _blocks(content) if block["type"] == "text")
            continue
        carried = message.get(ANTHROPIC_FIELDS)
        if isinstance(carried, dict) and isinstance(carried.get("content"), list):
            # A copy: merging turns extends it, and the body may go to another deployment next.
            role, blocks = "assistant" if role == "assistant" else "user", list(carried["content"])
        elif role == "tool":
            role, blocks = "user", [_tool_result(message)]
        elif role == "assistant":
            blocks = _blocks(content) + [_tool_use(call) for call in message.get("tool_calls") or ()]
        else:
            role, blocks = "user", _blocks(content)
        if not blocks:
            continue  # Anthropic refuses empty turns
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"].extend(blocks)  # tool results in a row become one user turn
        else:
            messages.append({"role": role, "content": blocks})

    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or default_max_tokens
    request: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": max_tokens}
    if system:
        request["system"] = "\n\n".join(system)
    temperature = body.get("temperature")
    if temperature is not None:
        request["temperature"] = min(float(temperature), _MAX_TEMPERATURE)
    if body.get("top_p") is not None:
        request["top_p"] = body["top_p"]
    stop = body.get("stop")
    if stop:
        request["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    tools = [_tool(tool) for tool in body.get("tools") or () if tool.get("type") == "function"]
    if tools:
        request["tools"] = tools
    tool_choice = _tool_choice(body.get("tool_choice"))
    if body.get("parallel_tool_calls") is False and tools:
        tool_choice = tool_choice or {"type": "auto"}
        if tool_choice["type"] != "none":
            tool_choice["disable_parallel_tool_use"] = True
    if tool_choice is not None:
        request["tool_choice"] = tool_choice
    if body.get("user"):
        request["metadata"] = {"user_id": str(body["user"])}
    extra = body.get(ANTHROPIC_FIELDS)
    if isinstance(extra, dict):
        request.update(extra)  # the client spoke Anthropic's own words: they win
    if not request.get("tools"):
        request.pop("tool_choice", None)  # "tool_choice may only be specified while providing tools"
    request["model"] = model
    request["stream"] = True
    return request


def _blocks(content: Any) -> list[dict[str, Any]]:
    """Anthropic content blocks for OpenAI message content (a string or content parts)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for part in content or ():
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and part.get("text"):
            blocks.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if isinstance(url, str):
                blocks.append(_image(url))
        # Other parts (audio, files) have no Messages API twin here: dropped.
    return blocks


def _image(url: str) -> dict[str, Any]:
    head, sep, data = url.partition(",")
    if url.startswith("data:") and sep and head.endswith(";base64"):
        media_type = head[len("data:") : -len(";base64")]
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _tool_use(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function") or {}
    try:
        arguments = orjson.loads(function.get("arguments") or "{}")
    except orjson.JSONDecodeError:
        arguments = {}
    return {
        "type": "tool_use",
        "id": call.get("id"),
        "name": function.get("name"),
        # Anthropic wants an object; a model's broken arguments must not fail the next turn.
        "input": arguments if isinstance(arguments, dict) else {},
    }


def _tool_result(message: dict[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    return {
        "type": "tool_result",
        "tool_use_id": message.get("tool_call_id"),
        "content": content if isinstance(content, str) else _blocks(content),
    }


def _tool(tool: dict[str, Any]) -> dict[str, Any]:
    function = tool.get("function") or {}
    converted: dict[str, Any] = {
        "name": function.get("name"),
        "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
    }
    if function.get("description"):
        converted["description"] = function["description"]
    return converted


def _tool_choice(choice: Any) -> dict[str, Any] | None:
    if isinstance(choice, str):
        kind = _TOOL_CHOICES.get(choice)
        return {"type": kind} if kind else None
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "tool", "name": (choice.get("function") or {}).get("name")}
    return None


# -- the stream ----------------------------------------------------------------------------


class AnthropicStream(SseStream):
    """A Messages API stream, read as neutral events."""

    __slots__ = ("_cache_creation", "_cache_read", "_input", "_tool_calls")

    def __init__(self, body: HttpBody) -> None:
        super().__init__(body)
        # Content block index -> tool call ordinal (0, 1, ... over tool_use blocks only).
        self._tool_calls: dict[int, int] = {}
        self._input = 0
        self._cache_read: int | None = None
        self._cache_creation: int | None = None

    def _events(self, raw: bytes) -> Iterator[Chunk]:
        try:
            payloads = self._decoder.feed(raw)
        except ValueError as exc:
            raise UpstreamProtocolError(str(exc)) from exc
        event = self._event
        loads = orjson.loads
        for payload in payloads:
            try:
                data = loads(payload)
            except orjson.JSONDecodeError:
                raise UpstreamProtocolError("upstream sent an event that is not JSON") from None
            if not isinstance(data, dict):
                raise UpstreamProtocolError("upstream sent an event that is not a JSON object")
            kind = data.get("type")
            if kind == "content_block_delta":
                delta = data.get("delta") or {}
                delta_kind = delta.get("type")
                if delta_kind == "text_delta":
                    event.text = delta.get("text")
                    event.finish_reason = event.usage = None
                    yield event
                elif delta_kind == "input_json_delta":
                    ordinal = self._tool_calls.get(data.get("index", -1))
                    if ordinal is not None and delta.get("partial_json"):
                        yield Chunk(tool_calls=[ToolCallDelta(ordinal, arguments=delta["partial_json"])])
                elif delta_kind == "thinking_delta" and delta.get("thinking"):
                    yield Chunk(reasoning=delta["thinking"])
                elif delta_kind == "signature_delta" and isinstance(delta.get("signature"), str):
                    # The client must send it back with the block (see events.Chunk).
                    yield Chunk(signature=delta["signature"])
                # citations_delta: nothing a client protocol carries.
            elif kind == "content_block_start":
                started = self._block_start(data)
                if started is not None:
                    yield started
            elif kind == "message_delta":
                stop_reason = (data.get("delta") or {}).get("stop_reason")
                if stop_reason:
                    self._finish_seen = True
                event.text = None
                event.finish_reason = FINISH_REASONS.get(stop_reason, "stop") if stop_reason else None
                event.usage = self._usage(data.get("usage") or {})
                yield event
            elif kind == "message_start":
                self._usage((data.get("message") or {}).get("usage") or {})
            elif kind == "message_stop":
                self.ended = True
                return
            elif kind == "error":
                raise UpstreamProtocolError(
                    f"upstream error mid-stream: {_error_message(data)}", failure="mid_stream_error"
                )
            # ping, content_block_stop and event types added later: nothing to pass on.

    def _block_start(self, data: dict[str, Any]) -> Chunk | None:
        block = data.get("content_block") or {}
        kind = block.get("type")
        if kind == "text" and block.get("text"):
            return Chunk(text=block["text"])
        if kind == "tool_use":
            ordinal = self._tool_calls[data.get("index", -1)] = len(self._tool_calls)
            return Chunk(
                tool_calls=[ToolCallDelta(ordinal, id=block.get("id"), name=block.get("name"), arguments="")]
            )
        if kind == "thinking" and block.get("thinking"):
            return Chunk(reasoning=block["thinking"])
        if kind == "redacted_thinking" and isinstance(block.get("data"), str):
            return Chunk(redacted_thinking=block["data"])
        return None  # server tools: nothing a client protocol carries

    def _usage(self, usage: dict[str, Any]) -> Usage:
        """The usage so far: counts in ``message_delta`` are cumulative and may repeat the input."""
        if usage.get("input_tokens") is not None:
            self._input = int(usage["input_tokens"])
        if usage.get("cache_read_input_tokens") is not None:
            self._cache_read = int(usage["cache_read_input_tokens"])
        if usage.get("cache_creation_input_tokens") is not None:
            self._cache_creation = int(usage["cache_creation_input_tokens"])
        return Usage(
            prompt_tokens=self._input + (self._cache_read or 0) + (self._cache_creation or 0),
            completion_tokens=int(usage.get("output_tokens") or 0),
            cache_read_tokens=self._cache_read,
            cache_creation_tokens=self._cache_creation,
        )


def _error_message(data: dict[str, Any]) -> str:
    error = data.get("error")
    if isinstance(error, dict):
        return str(error.get("message") or error.get("type") or "unknown")
    return str(error)
