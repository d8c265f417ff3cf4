"""Python client for tokenrelay's ``POST /chat`` event protocol, sync and async, on httpx.

::

    from tokenrelay.client import Client, Delta

    with Client("http://127.0.0.1:8000") as client:
        with client.stream_chat([{"role": "user", "content": "Hi"}]) as stream:
            for event in stream:
                if isinstance(event, Delta):
                    print(event.text, end="", flush=True)
        print(stream.result.usage)

Leaving the ``with`` block early (``break``, an exception, Ctrl-C) closes the connection, and
the gateway then aborts the upstream call. The key comes from ``api_key`` or the
``TOKENRELAY_API_KEY`` environment variable. This module imports none of the server.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import httpx
import orjson

from tokenrelay.sse import SSEDecoder

API_KEY_ENV = "TOKENRELAY_API_KEY"
URL_ENV = "TOKENRELAY_URL"
DEFAULT_URL = "http://127.0.0.1:8000"
# The gateway sends a keep-alive at least every 15 s by default, so a read that waits much
# longer than that means the connection is gone.
DEFAULT_TIMEOUT = httpx.Timeout(10.0, read=60.0)

Message = Mapping[str, Any]


# --- events -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delta:
    """A piece of the answer's text."""

    text: str


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts; ``source`` is ``upstream`` or ``estimated`` (counted by the gateway)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    source: str


@dataclass(frozen=True, slots=True)
class Done:
    """The stream ended normally."""

    finish_reason: str | None


ChatEvent = Delta | Usage | Done


@dataclass(frozen=True, slots=True)
class ChatResult:
    """A whole answer, available once its stream is done."""

    text: str
    usage: Usage | None
    finish_reason: str | None
    request_id: str | None
    time_to_first_token: float | None
    duration: float


# --- errors -------------------------------------------------------------------------------


class TokenRelayClientError(Exception):
    """Base class of the client's errors; ``code`` is the gateway's error code."""

    def __init__(self, message: str, *, code: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.request_id = request_id


class APIError(TokenRelayClientError):
    """The gateway refused the request with an HTTP error before the stream started."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str,
        error_type: str | None = None,
        param: str | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, code=code, request_id=request_id)
        self.status = status
        self.error_type = error_type
        self.param = param
        self.retry_after = retry_after


class BadRequestError(APIError):
    """400/404/413/422: the request itself is wrong (unknown model, invalid field, ...)."""


class AuthenticationError(APIError):
    """401/403: a missing, wrong or insufficient key."""


class RateLimitError(APIError):
    """429: a rate limit or budget; ``retry_after`` says when to try again, if known."""


class UpstreamError(APIError):
    """5xx: the model provider is down or timed out, or the gateway is shutting down."""


class StreamError(TokenRelayClientError):
    """The stream started, then failed: the gateway sent an ``error`` event."""


class StreamInterrupted(TokenRelayClientError):
    """The connection failed, or the stream ended without ``done`` or ``error``."""


def _api_error(status: int, body: bytes, headers: httpx.Headers) -> APIError:
    request_id = headers.get("x-request-id")
    retry_after = _seconds(headers.get("retry-after"))
    try:
        error = orjson.loads(body)["error"]
        message, code = str(error["message"]), str(error.get("code") or "http_error")
        error_type, param = error.get("type"), error.get("param")
    except (orjson.JSONDecodeError, KeyError, TypeError):
        # Not our JSON: a proxy's HTML page, say. Keep a readable excerpt.
        excerpt = " ".join(body[:200].decode("utf-8", "replace").split())
        message, code, error_type, param = f"HTTP {status}: {excerpt}".rstrip(": "), "http_error", None, None
    cls: type[APIError]
    if status == 429:
        cls = RateLimitError
    elif status in (401, 403):
        cls = AuthenticationError
    elif status >= 500:
        cls = UpstreamError
    else:
        cls = BadRequestError
    return cls(
        message,
        status=status,
        code=code,
        error_type=error_type,
        param=param,
        request_id=request_id,
        retry_after=retry_after,
    )


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date: rare enough for a client to ignore


# --- the protocol, without I/O --------------------------------------------------------------


class _EventReader:
    """Bytes of a ``/chat`` response in, events out; keeps what the result needs."""

    def __init__(self, request_id: str | None, started: float) -> None:
        self._decoder = SSEDecoder()
        self._request_id = request_id
        self._started = started
        self._parts: list[str] = []
        self._first_token_at: float | None = None
        self._usage: Usage | None = None
        self.result: ChatResult | None = None

    def feed(self, data: bytes) -> list[ChatEvent]:
        events: list[ChatEvent] = []
        for payload in self._decoder.feed(data):
            try:
                event = orjson.loads(payload)
                kind = event["type"]
            except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
                raise StreamInterrupted(
                    f"unreadable event from the gateway: {payload[:100]!r}",
                    code="protocol_error",
                    request_id=self._request_id,
                ) from exc
            if kind == "delta":
                if self._first_token_at is None:
                    self._first_token_at = time.monotonic()
                self._parts.append(event["text"])
                events.append(Delta(event["text"]))
            elif kind == "usage":
                self._usage = Usage(
                    event["prompt_tokens"], event["completion_tokens"], event["total_tokens"], event["source"]
                )
                events.append(self._usage)
            elif kind == "done":
                now = time.monotonic()
                self.result = ChatResult(
                    text="".join(self._parts),
                    usage=self._usage,
                    finish_reason=event.get("finish_reason"),
                    request_id=self._request_id,
                    time_to_first_token=None
                    if self._first_token_at is None
                    else self._first_token_at - self._started,
                    duration=now - self._started,
                )
                events.append(Done(self.result.finish_reason))
            elif kind == "error":
                raise StreamError(
                    str(event.get("message", "the stream failed")),
                    code=str(event.get("code", "error")),
                    request_id=self._request_id,
                )
            # Other types are newer than this client: skipped, so old clients keep working.
        return events

    def check_finished(self) -> None:
        if self.result is None:
            raise StreamInterrupted(
                "the stream ended before the answer was complete",
                code="stream_interrupted",
                request_id=self._request_id,
            )


def _request_body(messages: Sequence[Message], model: str | None, params: Mapping[str, Any]) -> bytes:
    if not messages:
        raise ValueError("messages must not be empty")
    body: dict[str, Any] = {"messages": list(messages), **params}
    if model is not None:
        body["model"] = model
    return orjson.dumps(body)


def _headers(api_key: str | None, request_id: str | None) -> dict[str, str]:
    headers = {"content-type": "application/json", "accept": "text/event-stream"}
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    if request_id:
        headers["x-request-id"] = request_id
    return headers


def _resolve(base_url: str | None, api_key: str | None) -> tuple[str, str | None]:
    url = (base_url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
    return url, api_key if api_key is not None else os.environ.get(API_KEY_ENV)


def _model_ids(response: httpx.Response) -> list[str]:
    if response.status_code >= 400:
        raise _api_error(response.status_code, response.content, response.headers)
    return [str(model["id"]) for model in response.json()["data"]]


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
