"""The blocking client."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Self

import httpx

from tokenrelay.client._events import ChatEvent, ChatResult, StreamInterrupted, _api_error
from tokenrelay.client._protocol import (
    DEFAULT_RESUME_SECONDS,
    DEFAULT_TIMEOUT,
    RESUME_DELAYS,
    Message,
    _EventReader,
    _headers,
    _model_ids,
    _request_body,
    _resolve,
    _resume_headers,
)

# --- sync ------------------------------------------------------------------------------------


class _Stream:
    def __init__(self, response: httpx.Response, started: float, resume_seconds: float = 0.0) -> None:
        self._response = response
        self.request_id = response.headers.get("x-request-id")
        # A resumable stream's id (None: a plain stream, which a dropped connection ends).
        self.stream_id: str | None = response.headers.get("x-stream-id")
        self._resume_seconds = resume_seconds
        # How many times the stream was resumed after a dropped connection.
        self.resumes = 0
        self._reader = _EventReader(self.request_id, started)

    def _resume_url(self, base_url: str) -> str | None:
        if self.stream_id is None or self._resume_seconds <= 0 or self._reader.result is not None:
            return None
        return f"{base_url}/v1/streams/{self.stream_id}"

    def _interrupted(self, exc: httpx.TransportError) -> StreamInterrupted:
        return StreamInterrupted(
            str(exc) or type(exc).__name__, code="stream_interrupted", request_id=self.request_id
        )

    @property
    def result(self) -> ChatResult:
        """The whole answer; raises :class:`StreamInterrupted` if the stream did not end with ``done``."""
        self._reader.check_finished()
        assert self._reader.result is not None
        return self._reader.result


class ChatStream(_Stream):
    """One streamed answer: iterate for its events; ``result`` once it is done.

    A resumable stream (``stream_chat(..., resumable=True)``) survives a dropped connection:
    the client reconnects with ``Last-Event-ID`` and the events go on with no gap or repeat.
    """

    def __init__(
        self,
        response: httpx.Response,
        started: float,
        client: Client | None = None,
        resume_seconds: float = 0.0,
    ) -> None:
        super().__init__(response, started, resume_seconds)
        self._client = client

    def __iter__(self) -> Iterator[ChatEvent]:
        while True:
            try:
                for data in self._response.iter_raw():
                    yield from self._reader.feed(data)
                break
            except httpx.TransportError as exc:
                if not self._reconnect():
                    raise self._interrupted(exc) from exc
        self._reader.check_finished()

    def _reconnect(self) -> bool:
        url = self._resume_url(self._client.base_url) if self._client is not None else None
        if url is None or self._client is None:
            return False
        deadline = time.monotonic() + self._resume_seconds
        for attempt in itertools.count():
            time.sleep(RESUME_DELAYS[min(attempt, len(RESUME_DELAYS) - 1)])
            request = self._client._http.build_request(
                "GET", url, headers=_resume_headers(self._client._api_key, self._reader.events_seen)
            )
            try:
                response = self._client._http.send(request, stream=True)
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    return False
                continue
            if response.status_code >= 400:
                error = _api_error(response.status_code, response.read(), response.headers)
                response.close()
                raise error
            self._response.close()
            self._response = response
            self._reader.restart()
            self.resumes += 1
            return True
        return False  # unreachable: count() never ends

    def close(self) -> None:
        self._response.close()


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
        resumable: bool = False,
        resume_seconds: float = DEFAULT_RESUME_SECONDS,
        **params: Any,
    ) -> Iterator[ChatStream]:
        """Start a streamed answer; raises :class:`APIError` if the gateway refuses it.

        ``resumable``: the answer survives dropped connections (the gateway needs Redis); the
        client reconnects by itself for up to ``resume_seconds``. Leaving the ``with`` block
        closes the connection, done or not (a resumable stream then generates on for the
        gateway's grace period: call :meth:`stop` to end it at once).
        """
        if resumable:
            params = {**params, "resumable": True}
        body = _request_body(messages, model, params)
        started = time.monotonic()
        request = self._http.build_request(
            "POST", f"{self.base_url}/chat", content=body, headers=_headers(self._api_key, request_id)
        )
        try:
            response = self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise StreamInterrupted(f"cannot reach {self.base_url}: {exc}", code="connection_failed") from exc
        if response.status_code >= 400:
            try:
                raise _api_error(response.status_code, response.read(), response.headers)
            finally:
                response.close()
        stream = ChatStream(response, started, self, resume_seconds if resumable else 0.0)
        try:
            yield stream
        finally:
            stream.close()

    def stop(self, stream_id: str) -> bool:
        """Stop a resumable stream wherever it runs; False if it had already ended."""
        response = self._http.post(
            f"{self.base_url}/v1/streams/{stream_id}/stop", headers=_headers(self._api_key, None)
        )
        if response.status_code >= 400:
            raise _api_error(response.status_code, response.content, response.headers)
        return bool(response.json()["stopped"])

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
