"""What the relay needs of an upstream, and how an upstream's HTTP errors are classified.

An upstream opens a stream for one request; the stream yields neutral events
(``tokenrelay.events``) read by read, and is closed exactly once. The contract every
implementation keeps:

* ``read()`` waits for what arrived since the last read and returns its events as an iterator,
  parsed as they are taken, and sets ``ended`` once the upstream said the answer is complete.
  Take every event of one read before the next read, and take what you need from an event
  before the next one: the iterator reuses one ``Chunk`` (one chunk is parsed, handled and
  dropped before the next: measured, the cheapest way through, see ``upstreams/openai.py``).
* A failure comes only after every event that arrived before it: an error the upstream sent
  in its stream (or a chunk that cannot be read) ends the iteration with an ``UpstreamError``;
  a dropped connection is raised by the next ``read()``. Tokens that reached the gateway
  reach the client, whatever happened afterwards.
* ``aclose()`` returns a fully read connection to the pool and closes any other, which is what
  tells the upstream to stop generating.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import orjson

from tokenrelay.config import DeploymentConfig
from tokenrelay.errors import (
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from tokenrelay.events import Chunk

# Upstream statuses the client caused and can fix; they pass through with their own status.
CLIENT_FAULT_STATUSES = frozenset({400, 404, 413, 422})


class UpstreamStream(Protocol):
    """One open answer from an upstream."""

    ended: bool

    async def read(self) -> Iterator[Chunk]:
        """The events of the next read (possibly none); raises an ``UpstreamError``."""
        ...

    async def aclose(self) -> None:
        """Close (idempotent); an unfinished answer is aborted upstream."""
        ...


class Upstream(Protocol):
    """What the relay needs of an upstream: open a stream; be started and closed with the app."""

    def start(self) -> None: ...

    async def open_stream(
        self, *, body: dict[str, Any], upstream_model: str, config: DeploymentConfig, request_id: str
    ) -> UpstreamStream: ...

    async def aclose(self) -> None: ...


def status_error(status: int, message: str, retry_after: str | None) -> UpstreamError:
    """The error for an upstream's HTTP error status."""
    if status == 429:
        return UpstreamRateLimited(f"upstream rate limit: {message}", retry_after=retry_after)
    if status in CLIENT_FAULT_STATUSES:
        return UpstreamRejected(f"upstream rejected the request: {message}", upstream_status=status)
    if status in (401, 403):
        # The gateway's own upstream credentials are wrong: not something the client can fix.
        return UpstreamUnavailable(
            f"upstream refused the gateway's credentials (HTTP {status})", failure="auth"
        )
    if status in (408, 504):
        return UpstreamTimeout(f"upstream timed out (HTTP {status})")
    if status == 529:
        # Anthropic's "overloaded": a 503 by another number, counted apart in the metrics.
        return UpstreamUnavailable(f"upstream overloaded (HTTP 529): {message}", failure="overloaded")
    return UpstreamUnavailable(f"upstream failed with HTTP {status}: {message}")


def error_message(body: bytes) -> str:
    """The human part of an upstream's error body, whatever shape its server gives it."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:200].decode(errors="replace") or "no details"
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    if isinstance(error, str):
        return error[:500]
    if isinstance(parsed, dict) and isinstance(parsed.get("message"), str):
        return str(parsed["message"])
    detail = parsed.get("detail") if isinstance(parsed, dict) else None
    if detail:
        # FastAPI-based servers (vLLM, llama-cpp-python): a string, or a list of field errors.
        return str(detail)[:500]
    return "no details"
