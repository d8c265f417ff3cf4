"""HTTP to upstreams over aiohttp: a connection pool per upstream, and a body reader that loses
nothing when the upstream's connection drops.

Why aiohttp and not the provider SDKs: measured in ``bench/upstream_clients.py`` (numbers in
BENCHMARKS.md), opening one streaming request costs about 1.0 ms of CPU through the ``openai``
SDK's ``chat.completions.create``, 0.5 ms through its lower-level ``post``, and 0.15 ms with
aiohttp directly. The SDK's contributions we would keep -- a key header, joining the base
URL, time-outs, mapping statuses to errors -- are the few lines here and in ``base.py``.

The gateway never retries a request to the same upstream: clients (the OpenAI SDK among them)
retry with their own backoff, and retrying here too would multiply upstream calls and hide a
429's ``Retry-After`` from the client that must honour it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import aiohttp
import yarl
from aiohttp.helpers import get_env_proxy_for_url

from tokenrelay.errors import UpstreamError, UpstreamProtocolError, UpstreamTimeout, UpstreamUnavailable
from tokenrelay.events import Chunk
from tokenrelay.sse import SSEDecoder
from tokenrelay.upstreams.base import error_message, status_error

_ERROR_BODY_LIMIT = 64 * 1024
# After the protocol's last event, how long the body's own end (the terminating chunk) may take
# to arrive: only a body read to its end can go back to the pool. It usually follows within a
# millisecond; without this wait, most connections were closed and the next request paid for a
# new one (about 1 ms of a lone stream's time to first token, BENCHMARKS.md).
_EOF_WAIT_SECONDS = 0.2


class HttpClient:
    """One connection pool (aiohttp session) for one upstream."""

    def __init__(self, *, max_connections: int) -> None:
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        # The proxy for each URL, from HTTP(S)_PROXY and NO_PROXY, looked up once (see start).
        self._proxies: dict[str, tuple[yarl.URL | None, aiohttp.BasicAuth | None]] = {}

    def start(self) -> None:
        """Create the session (inside the running event loop)."""
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._max_connections, ttl_dns_cache=300)
            # Not trust_env: aiohttp would then read the proxy variables and ~/.netrc on every
            # request (measured: 1.5 % of a gateway's CPU on short streams); the proxy is looked
            # up once per URL instead. Compressed SSE would have to be decompressed before it
            # could be parsed: no decompression.
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)

    def _proxy(self, url: str) -> tuple[yarl.URL | None, aiohttp.BasicAuth | None]:
        found = self._proxies.get(url)
        if found is None:
            try:
                found = get_env_proxy_for_url(yarl.URL(url))
            except LookupError:
                found = (None, None)  # no proxy for it (none set, or NO_PROXY says so)
            self._proxies[url] = found
        return found

    async def post(
        self, url: str, *, payload: bytes, headers: dict[str, str], connect_timeout_seconds: float
    ) -> aiohttp.ClientResponse:
        """Send a request and wait for the response headers; a 2xx response or an UpstreamError."""
        self.start()
        assert self._session is not None
        connect = connect_timeout_seconds
        # Reading is timed by the relay (first token, idle, total): it knows which phase it is in.
        timeout = aiohttp.ClientTimeout(total=None, connect=connect, sock_connect=connect, sock_read=None)
        proxy, proxy_auth = self._proxy(url)
        try:
            response = await self._session.post(
                url, data=payload, headers=headers, timeout=timeout, proxy=proxy, proxy_auth=proxy_auth
            )
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamTimeout("upstream did not answer in time") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(
                f"cannot reach upstream: {type(exc).__name__}", failure="connection"
            ) from exc
        if response.status >= 400:
            raise await _status_error(response, connect)
        return response

    async def aclose(self) -> None:
        """Close the connection pool."""
        if self._session is not None:
            await self._session.close()
            self._session = None


class HttpUpstream:
    """What every HTTP upstream shares: its endpoint, its headers (with its key), its pool.

    Subclasses add the wire format: how the request is written, how the stream is read.
    """

    def __init__(self, *, url: str, auth_headers: dict[str, str], max_connections: int) -> None:
        self._url = url
        self._headers = {
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
            # Compressed SSE would have to be decompressed before it could be parsed.
            "Accept-Encoding": "identity",
            **auth_headers,
        }
        self._http = HttpClient(max_connections=max_connections)

    def start(self) -> None:
        """Create the connection pool (inside the running event loop)."""
        self._http.start()

    async def _post(
        self, payload: bytes, *, request_id: str, connect_timeout_seconds: float, headers: dict[str, str]
    ) -> aiohttp.ClientResponse:
        """POST the request to the endpoint; the response once its headers are in."""
        return await self._http.post(
            self._url,
            payload=payload,
            headers={**self._headers, **headers, "X-Request-ID": request_id},
            connect_timeout_seconds=connect_timeout_seconds,
        )

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()


class HttpBody:
    """The body of a streamed response: bytes as they arrive, then the end, or the failure.

    A dropped connection (a FIN before the body's end, or a reset) is raised only after every
    byte that arrived before it was handed over; see :func:`_buffered` for why that takes
    more than aiohttp's public reads.
    """

    __slots__ = ("_closed", "_content", "_failure", "_on_close", "_response")

    def __init__(self, response: aiohttp.ClientResponse, on_close: Callable[[], None] | None = None) -> None:
        self._response = response
        self._content = response.content
        self._failure: UpstreamError | None = None
        self._closed = False
        self._on_close = on_close

    async def read(self) -> bytes:
        """Everything received since the last read (any framing); ``b""`` at the body's end.

        All that is buffered at once: one client write can then carry many events (they are
        parsed one at a time as they are taken, so a large read costs no memory to speak of).
        """
        if self._failure is not None:
            raise self._failure
        try:
            return await self._content.readany()
        except aiohttp.ClientError as exc:
            failure = UpstreamProtocolError(
                f"upstream connection dropped mid-stream: {type(exc).__name__}", failure="mid_stream_drop"
            )
            failure.__cause__ = exc
            left = _buffered(self._content)
            if not left:
                raise failure from exc
            self._failure = failure
            return left

    async def aclose(self, *, answered: bool = False) -> None:
        """Give the connection back if the body was read to its end; otherwise close it.

        Closing is what tells the upstream to stop generating: an unfinished answer must never
        go back to the pool. ``answered``: the protocol's last event came, so only the body's
        own end is missing; it is waited for (briefly) so the connection can be reused.
        """
        if self._closed:
            return
        self._closed = True
        content = self._content
        try:
            if answered and not content.at_eof() and self._failure is None:
                async with asyncio.timeout(_EOF_WAIT_SECONDS):
                    while await content.readany():
                        pass  # nothing is expected after the last event; whatever comes is dropped
        except (TimeoutError, aiohttp.ClientError):
            pass
        finally:
            if content.at_eof():
                self._response.release()
            else:
                self._response.close()
            if self._on_close is not None:
                self._on_close()


def _buffered(content: aiohttp.StreamReader) -> bytes:
    """What the body reader still holds although its connection failed.

    aiohttp's ``StreamReader.read()`` and ``readany()`` (3.x, ``streams.py``) check for a stored
    exception before they look at the buffer, and so does the public ``read_nowait()``. When the last bytes
    and the connection's end arrive in one event-loop iteration -- a fast upstream writing its
    chunks and closing, often before the response headers were even handed to us -- the
    protocol feeds the bytes, then stores the error, and every public read raises it with the
    bytes still buffered. ``_read_nowait(-1)`` is the step both public methods take after
    their checks: it drains the buffer. It is private, hence the guard; aiohttp is pinned in
    requirements.lock and ``tests/unit/test_upstream_http.py`` fails if this stops working.
    """
    take = getattr(content, "_read_nowait", None)
    if take is None:
        return b""
    try:
        return bytes(take(-1))
    except Exception:
        return b""


async def _status_error(response: aiohttp.ClientResponse, timeout_seconds: float) -> UpstreamError:
    try:
        async with asyncio.timeout(timeout_seconds):
            body = (await response.read())[:_ERROR_BODY_LIMIT]
    except (TimeoutError, aiohttp.ClientError):
        body = b""
    finally:
        response.close()
    return status_error(response.status, error_message(body), response.headers.get("Retry-After"))


class SseStream:
    """What the SSE stream readers share: the body read by read, and how an answer ends.

    A subclass parses ``_events(raw)`` and sets ``_finish_seen`` once the answer said how it
    finished (then a body that ends or drops without the protocol's last word is still a
    complete answer; before it, that is a mid-stream drop).
    """

    __slots__ = ("_body", "_decoder", "_event", "_finish_seen", "ended")

    def __init__(self, body: HttpBody) -> None:
        self._body = body
        self._decoder = SSEDecoder()
        self._finish_seen = False
        # The one Chunk handed out for the common events (see upstreams.base: taken before the next).
        self._event = Chunk()
        self.ended = False

    async def read(self) -> Iterator[Chunk]:
        """The events of the next read, parsed as they are taken; see ``upstreams.base``."""
        try:
            raw = await self._body.read()
        except UpstreamProtocolError:
            if not self._finish_seen:
                raise
            raw = b""  # the answer was complete; only the protocol's last word went missing
        if raw:
            return self._events(raw)
        self.ended = True
        if not self._finish_seen:
            raise UpstreamProtocolError(
                "upstream closed the stream before it finished", failure="mid_stream_drop"
            )
        return iter(())

    def _events(self, raw: bytes) -> Iterator[Chunk]:
        raise NotImplementedError

    async def aclose(self) -> None:
        """Close the response (aborting the answer upstream unless it was read to its end)."""
        await self._body.aclose(answered=self.ended and self._finish_seen)
