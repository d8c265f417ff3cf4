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

from tokenrelay.config import ModelConfig
from tokenrelay.errors import UpstreamProtocolError
from tokenrelay.events import Chunk, ToolCallDelta, Usage
from tokenrelay.sse import SSEDecoder
from tokenrelay.upstreams.http import HttpBody, HttpClient


class OpenAIUpstream:
    """One OpenAI-compatible upstream: its base URL, key and connection pool."""

    def __init__(self, *, base_url: str, api_key: str | None, max_connections: int) -> None:
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._headers = {
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
            "Accept-Encoding": "identity",
        }
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._http = HttpClient(max_connections=max_connections)

    def start(self) -> None:
        """Create the connection pool (inside the running event loop)."""
        self._http.start()

    async def open_stream(
        self,
        *,
        body: dict[str, Any],
        upstream_model: str,
        config: ModelConfig,
        request_id: str,
        on_close: Callable[[], None] | None = None,
    ) -> OpenAIStream:
        """Send the request and wait for the response headers. Raises an UpstreamError.

        ``on_close`` runs once the stream is closed (not if this raises).
        """
        payload = orjson.dumps(
            {**body, "model": upstream_model, "stream": True, "stream_options": {"include_usage": True}}
        )
        response = await self._http.post(
            self._url,
            payload=payload,
            headers={**self._headers, "X-Request-ID": request_id},
            connect_timeout_seconds=config.connect_timeout_seconds,
        )
        return OpenAIStream(HttpBody(response, on_close))

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()


class OpenAIStream:
    """An OpenAI chat-completions stream, read as neutral events."""

    __slots__ = ("_body", "_decoder", "_event", "_finish_seen", "ended")

    def __init__(self, body: HttpBody) -> None:
        self._body = body
        self._decoder = SSEDecoder()
        self._finish_seen = False
        # The one Chunk handed out for every event (see upstreams.base: taken before the next).
        self._event = Chunk()
        self.ended = False

    async def read(self) -> Iterator[Chunk]:
        """The events of the next read, parsed as they are taken; see ``upstreams.base``."""
        try:
            raw = await self._body.read()
        except UpstreamProtocolError:
            if not self._finish_seen:
                raise
            raw = b""  # the answer was complete; only its usage chunk or [DONE] went missing
        if raw:
            return self._events(raw)
        self.ended = True
        if not self._finish_seen:
            raise UpstreamProtocolError(
                "upstream closed the stream before it finished", failure="mid_stream_drop"
            )
        return iter(())

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

    async def aclose(self) -> None:
        """Close the response (aborting the answer upstream unless it was read to its end)."""
        await self._body.aclose()


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
