"""The asyncio client."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Self

import httpx

from tokenrelay.client._events import ChatEvent, ChatResult, StreamInterrupted, _api_error
from tokenrelay.client._protocol import (
    DEFAULT_RESUME_SECONDS,
    DEFAULT_TIMEOUT,
    RESUME_DELAYS,
    Message,
    _headers,
    _model_ids,
    _request_body,
    _resolve,
    _resume_headers,
)
from tokenrelay.client._sync import _Stream

# --- async -----------------------------------------------------------------------------------


class AsyncChatStream(_Stream):
    """The async twin of :class:`ChatStream`."""

    def __init__(
        self,
        response: httpx.Response,
        started: float,
        client: AsyncClient | None = None,
        resume_seconds: float = 0.0,
    ) -> None:
        super().__init__(response, started, resume_seconds)
        self._client = client

    async def __aiter__(self) -> AsyncIterator[ChatEvent]:
        while True:
            try:
                async for data in self._response.aiter_raw():
                    for event in self._reader.feed(data):
                        yield event
                break
            except httpx.TransportError as exc:
                if not await self._reconnect():
                    raise self._interrupted(exc) from exc
        self._reader.check_finished()

    async def _reconnect(self) -> bool:
        url = self._resume_url(self._client.base_url) if self._client is not None else None
        if url is None or self._client is None:
            return False
        deadline = time.monotonic() + self._resume_seconds
        for attempt in itertools.count():
            await asyncio.sleep(RESUME_DELAYS[min(attempt, len(RESUME_DELAYS) - 1)])
            request = self._client._http.build_request(
                "GET", url, headers=_resume_headers(self._client._api_key, self._reader.events_seen)
            )
            try:
                response = await self._client._http.send(request, stream=True)
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    return False
                continue
            if response.status_code >= 400:
                error = _api_error(response.status_code, await response.aread(), response.headers)
                await response.aclose()
                raise error
            await self._response.aclose()
            self._response = response
            self._reader.restart()
            self.resumes += 1
            return True
        return False  # unreachable: count() never ends

    async def aclose(self) -> None:
        await self._response.aclose()


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
        resumable: bool = False,
        resume_seconds: float = DEFAULT_RESUME_SECONDS,
        **params: Any,
    ) -> AsyncIterator[AsyncChatStream]:
        """Start a streamed answer; raises :class:`APIError` if the gateway refuses it.

        ``resumable`` as for :meth:`Client.stream_chat`. Leaving the ``async with`` block
        closes the connection, done or not.
        """
        if resumable:
            params = {**params, "resumable": True}
        body = _request_body(messages, model, params)
        started = time.monotonic()
        request = self._http.build_request(
            "POST", f"{self.base_url}/chat", content=body, headers=_headers(self._api_key, request_id)
        )
        try:
            response = await self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise StreamInterrupted(f"cannot reach {self.base_url}: {exc}", code="connection_failed") from exc
        if response.status_code >= 400:
            try:
                raise _api_error(response.status_code, await response.aread(), response.headers)
            finally:
                await response.aclose()
        stream = AsyncChatStream(response, started, self, resume_seconds if resumable else 0.0)
        try:
            yield stream
        finally:
            await stream.aclose()

    async def stop(self, stream_id: str) -> bool:
        """Stop a resumable stream wherever it runs; False if it had already ended."""
        response = await self._http.post(
            f"{self.base_url}/v1/streams/{stream_id}/stop", headers=_headers(self._api_key, None)
        )
        if response.status_code >= 400:
            raise _api_error(response.status_code, response.content, response.headers)
        return bool(response.json()["stopped"])

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
