"""The blocking client."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Self

import httpx

from tokenrelay.client._events import ChatEvent, ChatResult, StreamInterrupted, _api_error
from tokenrelay.client._protocol import (
    DEFAULT_TIMEOUT,
    Message,
    _EventReader,
    _headers,
    _model_ids,
    _request_body,
    _resolve,
)

# --- sync ------------------------------------------------------------------------------------


class _Stream:
    def __init__(self, response: httpx.Response, started: float) -> None:
        self._response = response
        self.request_id = response.headers.get("x-request-id")
        self._reader = _EventReader(self.request_id, started)

    @property
    def result(self) -> ChatResult:
        """The whole answer; raises :class:`StreamInterrupted` if the stream did not end with ``done``."""
        self._reader.check_finished()
        assert self._reader.result is not None
        return self._reader.result


class ChatStream(_Stream):
    """One streamed answer: iterate for its events; ``result`` once it is done."""

    def __iter__(self) -> Iterator[ChatEvent]:
        try:
            for data in self._response.iter_raw():
                yield from self._reader.feed(data)
        except httpx.TransportError as exc:
            raise StreamInterrupted(str(exc) or type(exc).__name__, code="stream_interrupted") from exc
        self._reader.check_finished()


class Client:
    """A connection pool to one gateway. ``base_url`` defaults to ``$TOKENRELAY_URL``."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        http_client: httpx.Client | None = None,
    ) -> None:
        self.base_url, self._api_key = _resolve(base_url, api_key)
        self._http = http_client or httpx.Client(timeout=timeout)
        self._owns_http = http_client is None

    @contextmanager
    def stream_chat(
        self,
        messages: Sequence[Message],
        *,
        model: str | None = None,
        request_id: str | None = None,
        **params: Any,
    ) -> Iterator[ChatStream]:
        """Start a streamed answer; raises :class:`APIError` if the gateway refuses it.

        Leaving the ``with`` block closes the connection, done or not.
        """
        body = _request_body(messages, model, params)
        started = time.monotonic()
        request = self._http.build_request(
            "POST", f"{self.base_url}/chat", content=body, headers=_headers(self._api_key, request_id)
        )
        try:
            response = self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise StreamInterrupted(f"cannot reach {self.base_url}: {exc}", code="connection_failed") from exc
        try:
            if response.status_code >= 400:
                raise _api_error(response.status_code, response.read(), response.headers)
            yield ChatStream(response, started)
        finally:
            response.close()

    def chat(self, messages: Sequence[Message], *, model: str | None = None, **params: Any) -> ChatResult:
        """The whole answer at once (still streamed underneath)."""
        with self.stream_chat(messages, model=model, **params) as stream:
            for _ in stream:
                pass
            return stream.result

    def models(self) -> list[str]:
        """The ids of the models the gateway serves."""
        headers = _headers(self._api_key, None)
        return _model_ids(self._http.get(f"{self.base_url}/v1/models", headers=headers))

    def close(self) -> None:
        """Close the connection pool (if this client created it)."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
