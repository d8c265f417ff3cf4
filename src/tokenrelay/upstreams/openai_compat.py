"""Talking to one OpenAI-compatible upstream over aiohttp.

Why not the ``openai`` SDK here (it is what the tests use as a client): measured in
``bench/upstream_clients.py`` (numbers in BENCHMARKS.md), opening one streaming request costs
about 1.0 ms of CPU through ``chat.completions.create`` (it transforms every message through
its TypedDict machinery), about 0.5 ms through the SDK's lower-level ``post``, and about
0.15 ms with aiohttp directly; the SDK also wraps each read in three generator layers
(httpx2, its vendored aiohttp transport, aiohttp). The SDK's contributions we would keep --
a bearer header, joining the base URL, time-outs, mapping statuses to errors -- are the few
lines below, so the gateway talks aiohttp directly and reads with ``readany()``, which hands
over everything already buffered: one client write can carry many events.

The gateway never retries: clients (the OpenAI SDK among them) retry with their own backoff;
retrying here too multiplies upstream calls (2 SDK retries times 2 gateway retries = 9 calls
for one user action) and would hide a 429's ``Retry-After`` from the client that must honour it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

import aiohttp
import orjson

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
_ERROR_BODY_LIMIT = 64 * 1024


class UpstreamStream:
    """An open streaming response from the upstream. Close it exactly once with ``aclose``."""

    __slots__ = ("_closed", "_content", "_on_close", "_response")

    def __init__(self, response: aiohttp.ClientResponse, on_close: Callable[[], None] | None = None) -> None:
        self._response = response
        self._content = response.content
        self._closed = False
        self._on_close = on_close

    async def read(self) -> bytes:
        """Everything received since the last read (any framing); ``b""`` at the end."""
        try:
            return await self._content.readany()
        except aiohttp.ClientError as exc:
            raise UpstreamProtocolError(
                f"upstream connection dropped mid-stream: {type(exc).__name__}", failure="mid_stream_drop"
            ) from exc

    async def aclose(self) -> None:
        """Give the connection back if the body was read to its end; otherwise close it.

        Closing is what tells the upstream to stop generating: an unfinished body must never
        go back to the pool.
        """
        if self._closed:
            return
        self._closed = True
        if self._content.at_eof():
            self._response.release()
        else:
            self._response.close()
        if self._on_close is not None:
            self._on_close()


class Upstream(Protocol):
    """What the relay needs of an upstream: open a stream; be started and closed with the app."""

    def start(self) -> None: ...

    async def open_stream(
        self, *, body: dict[str, Any], upstream_model: str, config: ModelConfig, request_id: str
    ) -> UpstreamStream: ...

    async def aclose(self) -> None: ...


class UpstreamClient:
    """One connection pool for one upstream base URL and key."""

    def __init__(self, *, base_url: str, api_key: str | None, max_connections: int) -> None:
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._headers = {
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
            # Compressed SSE would have to be decompressed before it could be parsed.
            "Accept-Encoding": "identity",
        }
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def start(self) -> None:
        """Create the session (inside the running event loop)."""
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._max_connections, ttl_dns_cache=300)
            # trust_env: honour HTTP(S)_PROXY and NO_PROXY like every HTTP client.
            self._session = aiohttp.ClientSession(connector=connector, trust_env=True, auto_decompress=False)

    async def open_stream(
        self,
        *,
        body: dict[str, Any],
        upstream_model: str,
        config: ModelConfig,
        request_id: str,
        on_close: Callable[[], None] | None = None,
    ) -> UpstreamStream:
        """Send the request and wait for the response headers. Raises an UpstreamError.

        ``on_close`` runs once the stream is closed (not if this raises).
        """
        self.start()
        assert self._session is not None
        payload = orjson.dumps(
            {**body, "model": upstream_model, "stream": True, "stream_options": {"include_usage": True}}
        )
        headers = {**self._headers, "X-Request-ID": request_id}
        connect = config.connect_timeout_seconds
        # Reading is timed by the relay (first token, idle, total): it knows which phase it is in.
        timeout = aiohttp.ClientTimeout(total=None, connect=connect, sock_connect=connect, sock_read=None)
        try:
            response = await self._session.post(self._url, data=payload, headers=headers, timeout=timeout)
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamTimeout("upstream did not answer in time") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(
                f"cannot reach upstream: {type(exc).__name__}", failure="connection"
            ) from exc
        if response.status >= 400:
            raise await _status_error(response, config)
        return UpstreamStream(response, on_close)

    async def aclose(self) -> None:
        """Close the connection pool."""
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _status_error(response: aiohttp.ClientResponse, config: ModelConfig) -> UpstreamError:
    try:
        async with asyncio.timeout(config.connect_timeout_seconds):
            body = (await response.read())[:_ERROR_BODY_LIMIT]
    except (TimeoutError, aiohttp.ClientError):
        body = b""
    finally:
        response.close()
    return status_error(response.status, _upstream_message(body), response.headers.get("Retry-After"))


def _upstream_message(body: bytes) -> str:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:200].decode(errors="replace") or "no details"
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    if isinstance(parsed, dict) and isinstance(parsed.get("message"), str):
        return str(parsed["message"])
    detail = parsed.get("detail") if isinstance(parsed, dict) else None
    if detail:
        # FastAPI-based servers (vLLM, llama-cpp-python): a string, or a list of field errors.
        return str(detail)[:500]
    return "no details"


def status_error(status: int, message: str, retry_after: str | None) -> UpstreamError:
    """The error for an upstream's HTTP error status."""
    if status == 429:
        return UpstreamRateLimited(f"upstream rate limit: {message}", retry_after=retry_after)
    if status in _CLIENT_FAULT_STATUSES:
        return UpstreamRejected(f"upstream rejected the request: {message}", upstream_status=status)
    if status in (401, 403):
        # The gateway's own upstream credentials are wrong: not something the client can fix.
        return UpstreamUnavailable(
            f"upstream refused the gateway's credentials (HTTP {status})", failure="auth"
        )
    if status in (408, 504):
        return UpstreamTimeout(f"upstream timed out (HTTP {status})")
    return UpstreamUnavailable(f"upstream failed with HTTP {status}: {message}")
