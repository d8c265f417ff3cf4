"""OpenAI-compatible upstreams (OpenAI, Azure OpenAI's v1 API, vLLM, llama.cpp, Ollama, ...).

The request is ``POST {base_url}/chat/completions`` with ``stream: true`` and
``stream_options.include_usage`` always set (the ledger wants the upstream's counts), the
client's ``X-Request-ID`` and ``Accept-Encoding: identity``. The stream's ``data:`` chunks
become :class:`~tokenrelay.events.Chunk` events, each carrying its parsed chunk as
``native`` so that the OpenAI endpoint can pass it on instead of rebuilding it. An in-band
``{"error": ...}`` ends the events with an ``UpstreamProtocolError`` (``mid_stream_error``).

An answer is complete at ``data: [DONE]``, or when the body ends (or its connection drops)
after a finish reason (some servers omit ``[DONE]``); a body that ends before either is a
mid-stream drop.
Each read hands over everything already buffered, so one client write can carry many events.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import orjson

from tokenrelay.config import DeploymentConfig
from tokenrelay.errors import UpstreamProtocolError
from tokenrelay.events import ANTHROPIC_FIELDS, Chunk, ToolCallDelta, Usage
from tokenrelay.upstreams.http import HttpBody, HttpUpstream, SseStream


class OpenAIUpstream(HttpUpstream):
    """One OpenAI-compatible upstream: its base URL, key and connection pool."""

    def __init__(self, *, base_url: str, api_key: str | None, max_connections: int) -> None:
        super().__init__(
            url=base_url.rstrip("/") + "/chat/completions",
            auth_headers={"Authorization": f"Bearer {api_key}"} if api_key else {},
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
    ) -> OpenAIStream:
        """Send the request and wait for the response headers. Raises an UpstreamError.

        ``on_close`` runs once the stream is closed (not if this raises).
        """
        request = {**body, "model": upstream_model, "stream": True, "stream_options": {"include_usage": True}}
        # Anthropic-only fields from a /v1/messages client, and the Anthropic blocks its messages
        # may carry (only then: see api/anthropic.py): an OpenAI server would refuse them.
        if request.pop(ANTHROPIC_FIELDS, None) is not None:
            request["messages"] = [
                {k: v for k, v in m.items() if k != ANTHROPIC_FIELDS} if ANTHROPIC_FIELDS in m else m
                for m in request.get("messages") or ()
            ]
        response = await self._post(
            orjson.dumps(request),
            request_id=request_id,
            connect_timeout_seconds=config.connect_timeout_seconds,
            headers={},
        )
        return OpenAIStream(HttpBody(response, on_close))


class OpenAIStream(SseStream):
    """An OpenAI chat-completions stream, read as neutral events."""

    __slots__ = ()

    def _events(self, raw: bytes) -> Iterator[Chunk]:
        # Parsed one at a time, as the relay takes them, into one reused Chunk: each chunk is
        # parsed, counted, encoded and dropped before the next (measured: building all of a
        # read's events first cost 60 % more CPU per chunk; a new Chunk per event 15 %).
        try:
            payloads = self._decoder.feed(raw)
        except ValueError as exc:
            raise UpstreamProtocolError(str(exc)) from exc
        event = self._event
        loads = orjson.loads
        for payload in payloads:
            if payload == b"[DONE]":
                self.ended = True
                return
            try:
                chunk = loads(payload)
            except orjson.JSONDecodeError:
                raise UpstreamProtocolError("upstream sent a chunk that is not JSON") from None
            if "error" in chunk:
                raise UpstreamProtocolError(
                    f"upstream error mid-stream: {_error_message(chunk)}", failure="mid_stream_error"
                )
            text = finish_reason = None
            choices = chunk.get("choices")
            if choices:
                choice = choices[0]
                finish_reason = choice.get("finish_reason")
                if finish_reason:
                    self._finish_seen = True
                delta = choice.get("delta")
                if delta:
                    text = delta.get("content")
                    if not text and (
                        delta.get("tool_calls") or delta.get("reasoning_content") or delta.get("reasoning")
                    ):
                        yield _progress(chunk, delta, finish_reason)  # rare: a Chunk of its own
                        continue
            usage = chunk.get("usage")
            # Only these fields change on the reused Chunk: its reasoning and tool calls stay None.
            event.text = text
            event.finish_reason = finish_reason
            event.usage = _usage(usage) if usage else None
            event.native = chunk
            yield event


def _progress(chunk: dict[str, Any], delta: dict[str, Any], finish_reason: str | None) -> Chunk:
    """A chunk with no text that shows the model working: tool-call fragments or reasoning."""
    calls = delta.get("tool_calls")
    usage = chunk.get("usage")
    return Chunk(
        None,
        delta.get("reasoning_content") or delta.get("reasoning"),
        [_tool_call(call) for call in calls] if calls else None,
        finish_reason,
        _usage(usage) if usage else None,
        chunk,
    )


def _tool_call(call: dict[str, Any]) -> ToolCallDelta:
    function = call.get("function") or {}
    return ToolCallDelta(
        index=int(call.get("index", 0)),
        id=call.get("id"),
        name=function.get("name"),
        arguments=function.get("arguments"),
    )


def _usage(usage: dict[str, Any]) -> Usage:
    details = usage.get("prompt_tokens_details") or {}
    return Usage(
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        cache_read_tokens=details.get("cached_tokens"),
    )


def _error_message(chunk: dict[str, Any]) -> str:
    error = chunk.get("error")
    if isinstance(error, dict):
        return str(error.get("message", "unknown"))
    return str(error)
