"""Talking to one OpenAI-compatible upstream.

We keep the ``openai`` SDK for what it is good at (auth, base URL handling, time-outs, its error
classes) and step around what costs on the hot path:

* ``with_streaming_response`` hands us the raw HTTP response instead of parsing every chunk
  into a pydantic model; the relay parses the SSE bytes itself.
* The SDK's aiohttp transport (``DefaultAioHttpClient``) yields everything already buffered
  in one read, so one client write can carry many events (see BENCHMARKS.md for the numbers
  that chose it over the default httpx transport).
* ``max_retries=0``: the gateway never retries. Clients (the OpenAI SDK among them) retry on
  their own with backoff; retrying here too multiplies upstream calls (2 SDK retries times 2
  gateway retries = 9 calls for one user action) and would hide a 429's ``Retry-After``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx2
import openai
from openai._response import AsyncAPIResponse

from tokenrelay.config import ModelConfig
from tokenrelay.errors import (
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)

# Upstream statuses the client caused and can fix; they pass through with their own status.
_CLIENT_FAULT_STATUSES = frozenset({400, 404, 413, 422})


class UpstreamStream:
    """An open streaming response from the upstream. Close it exactly once with ``aclose``."""

    __slots__ = ("_closed", "_response")

    def __init__(self, response: AsyncAPIResponse[Any]) -> None:
        self._response = response
        self._closed = False

    async def iter_raw(self) -> AsyncIterator[bytes]:
        """Raw body bytes as they arrive (any framing); transport errors become UpstreamErrors."""
        try:
            async for data in self._response.http_response.aiter_raw():
                yield data
        except httpx2.TimeoutException as exc:
            raise UpstreamTimeout("upstream read timed out") from exc
        except httpx2.HTTPError as exc:
            raise UpstreamProtocolError(
                f"upstream connection dropped mid-stream: {type(exc).__name__}"
            ) from exc

    async def aclose(self) -> None:
        """Close the connection; an unfinished body makes the transport drop it, not pool it."""
        if not self._closed:
            self._closed = True
            await self._response.close()


class UpstreamClient:
    """One reused SDK client (and connection pool) for one upstream base URL and key."""

    def __init__(
        self, *, base_url: str, api_key: str | None, max_connections: int, http_backend: str = "aiohttp"
    ) -> None:
        limits = httpx2.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        if http_backend == "aiohttp":
            self._http: httpx2.AsyncClient = openai.DefaultAioHttpClient(limits=limits)
        else:
            self._http = openai.DefaultAsyncHttpxClient(limits=limits)
        self._sdk = openai.AsyncOpenAI(
            base_url=base_url,
            # Local servers accept any key; the SDK insists on one being set.
            api_key=api_key or "unused",
            max_retries=0,
            http_client=self._http,
        )

    def warm_up(self) -> None:
        """Import the SDK's lazily loaded request path now, not during the first user's request."""
        _ = self._sdk.chat.completions.with_streaming_response

    async def open_stream(
        self, *, body: dict[str, Any], upstream_model: str, config: ModelConfig, request_id: str
    ) -> UpstreamStream:
        """Send the request and wait for the response headers. Raises an UpstreamError."""
        params = dict(body)
        messages = params.pop("messages")
        params.pop("model", None)
        params.pop("stream", None)
        params.pop("stream_options", None)
        timeout = httpx2.Timeout(
            connect=config.connect_timeout_seconds,
            pool=config.connect_timeout_seconds,
            write=config.connect_timeout_seconds,
            # Reading is timed by the relay (first token, idle, total): it knows which phase it is in.
            read=None,
        )
        try:
            response = await self._sdk.chat.completions.with_streaming_response.create(
                model=upstream_model,
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
                extra_body=params or None,
                extra_headers={"X-Request-ID": request_id, "Accept-Encoding": "identity"},
                timeout=timeout,
            ).__aenter__()
        except openai.APIStatusError as exc:
            raise _status_error(exc) from exc
        except openai.APITimeoutError as exc:
            if _is_refused_connection(exc):
                raise UpstreamUnavailable(f"cannot reach upstream: {_cause(exc)}") from exc
            raise UpstreamTimeout("upstream did not answer in time") from exc
        except openai.APIConnectionError as exc:
            raise UpstreamUnavailable(f"cannot reach upstream: {_cause(exc)}") from exc
        return UpstreamStream(response)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._sdk.close()


def _causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < 10:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _is_refused_connection(exc: BaseException) -> bool:
    """The SDK's aiohttp transport reports a refused connection as a connect *time-out*
    (it maps aiohttp's ClientConnectionError to ConnectTimeout); tell the two apart."""
    chain = _causes(exc)
    refused = any(isinstance(e, aiohttp.ClientConnectorError) for e in chain)
    timed_out = any(isinstance(e, aiohttp.ServerTimeoutError | TimeoutError) for e in chain)
    return refused and not timed_out


def _cause(exc: BaseException) -> str:
    return type(_causes(exc)[-1]).__name__


def _upstream_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        message = body.get("message") or (body.get("error") or {}).get("message")
        if isinstance(message, str):
            return message
    return exc.message


def _status_error(exc: openai.APIStatusError) -> UpstreamError:
    status = exc.status_code
    message = _upstream_message(exc)
    if status == 429:
        return UpstreamRateLimited(
            f"upstream rate limit: {message}", retry_after=exc.response.headers.get("retry-after")
        )
    if status in _CLIENT_FAULT_STATUSES:
        return UpstreamRejected(f"upstream rejected the request: {message}", upstream_status=status)
    if status in (401, 403):
        # The gateway's own upstream credentials are wrong: not something the client can fix.
        return UpstreamUnavailable(f"upstream refused the gateway's credentials (HTTP {status})")
    if status in (408, 504):
        return UpstreamTimeout(f"upstream timed out (HTTP {status})")
    return UpstreamUnavailable(f"upstream failed with HTTP {status}: {message}")
