"""The asyncio client."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Self

import httpx

from tokenrelay.client._events import ChatEvent, ChatResult, StreamInterrupted, _api_error
from tokenrelay.client._protocol import (
    DEFAULT_TIMEOUT,
    Message,
    _headers,
    _model_ids,
    _request_body,
    _resolve,
)
from tokenrelay.client._sync import _Stream

# --- async -----------------------------------------------------------------------------------


class AsyncChatStream(_Stream):
    """The async twin of :class:`ChatStream`."""

    async def __aiter__(self) -> AsyncIterator[ChatEvent]:
        try:
            async for data in self._response.aiter_raw():
                for event in self._reader.feed(data):
                    yield event
        except httpx.TransportError as exc:
            raise StreamInterrupted(str(exc) or type(exc).__name__, code="stream_interrupted") from exc
        self._reader.check_finished()


class AsyncClient:
    """The async twin of :class:`Client`."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url, self._api_key = _resolve(base_url, api_key)
        self._http = http_client or httpx.AsyncClient(timeout=timeout)
        self._owns_http = http_client is None

    @asynccontextmanager
    async def stream_chat(
        self,
        messages: Sequence[Message],
        *,
        model: str | None = None,
        request_id: str | None = None,
        **params: Any,
    ) -> AsyncIterator[AsyncChatStream]:
        """Start a streamed answer; raises :class:`APIError` if the gateway refuses it.

        Leaving the ``async with`` block closes the connection, done or not.
        """
        body = _request_body(messages, model, params)
        started = time.monotonic()
        request = self._http.build_request(
            "POST", f"{self.base_url}/chat", content=body, headers=_headers(self._api_key, request_id)
        )
        try:
            response = await self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise StreamInterrupted(f"cannot reach {self.base_url}: {exc}", code="connection_failed") from exc
        try:
            if response.status_code >= 400:
                raise _api_error(response.status_code, await response.aread(), response.headers)
            yield AsyncChatStream(response, started)
        finally:
            await response.aclose()

    async def chat(
        self, messages: Sequence[Message], *, model: str | None = None, **params: Any
    ) -> ChatResult:
        """The whole answer at once (still streamed underneath)."""
        async with self.stream_chat(messages, model=model, **params) as stream:
            async for _ in stream:
                pass
            return stream.result

    async def models(self) -> list[str]:
        """The ids of the models the gateway serves."""
        headers = _headers(self._api_key, None)
        return _model_ids(await self._http.get(f"{self.base_url}/v1/models", headers=headers))

    async def aclose(self) -> None:
        """Close the connection pool (if this client created it)."""
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()
