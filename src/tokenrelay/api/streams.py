"""Resumable streams, from any replica: ``GET /v1/streams/{id}`` and ``POST .../stop``.

Only the key that started a stream (or the admin key) may follow or stop it; an unknown id,
an expired one and another key's all get the same 404, so ids cannot be probed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from tokenrelay.api.routes import caller_of
from tokenrelay.cluster import Cluster
from tokenrelay.errors import InvalidRequest, ResumableUnavailable, StreamNotFound
from tokenrelay.observability.metrics import Metrics, NoMetrics
from tokenrelay.protocols.base import SSE_HEADERS
from tokenrelay.protocols.resumable import error_event, keepalive_of
from tokenrelay.relay import RelayRuntime

log = logging.getLogger(__name__)

_STREAM_ID = re.compile(r"[0-9a-f]{32}")


async def _stream_of(request: Request) -> tuple[Cluster, str, dict[str, str]]:
    """The cluster, the stream id and its meta, if the caller may see the stream (else 404)."""
    runtime: RelayRuntime = request.app.state.runtime
    caller = await caller_of(request)
    stream_id = request.path_params["stream_id"]
    cluster = runtime.cluster
    if cluster is None or not _STREAM_ID.fullmatch(stream_id):
        # Ids are ours (uuid4 hex): anything else names no stream, and never reaches Redis.
        raise StreamNotFound("no such stream")
    if not cluster.available:
        raise ResumableUnavailable("resumable streams need Redis, which is unavailable right now")
    meta = await cluster.meta(stream_id)
    if meta is None or (caller is not None and not caller.is_admin and meta.get("key") != caller.key_id):
        raise StreamNotFound("no such stream")
    return cluster, stream_id, meta


def _last_event_id(request: Request) -> int:
    raw = request.headers.get("last-event-id") or request.query_params.get("last_event_id") or "0"
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(
            "Last-Event-ID must be an event id of this stream", param="last_event_id"
        ) from None
    if value < 0:
        raise InvalidRequest("Last-Event-ID must be an event id of this stream", param="last_event_id")
    return value


async def follow_stream(request: Request) -> Response:
    """``GET /v1/streams/{id}``: the events after ``Last-Event-ID``, then live until the end."""
    cluster, stream_id, meta = await _stream_of(request)
    metrics: Metrics | NoMetrics = request.app.state.metrics
    return FollowedStream(cluster, stream_id, meta, _last_event_id(request), metrics)


async def stop_stream(request: Request) -> Response:
    """``POST /v1/streams/{id}/stop``: end the answer where it is (not a disconnect)."""
    cluster, stream_id, meta = await _stream_of(request)
    if meta.get("ended"):
        return JSONResponse({"id": stream_id, "stopped": False, "reason": "the stream has ended"})
    await cluster.stop(stream_id)
    return JSONResponse({"id": stream_id, "stopped": True}, status_code=202)


class FollowedStream(Response):
    """One follower: replays from its position, follows live, keep-alives while silent."""

    def __init__(
        self,
        cluster: Cluster,
        stream_id: str,
        meta: dict[str, str],
        last_id: int,
        metrics: Metrics | NoMetrics,
    ) -> None:
        self.background = None
        self._metrics = metrics
        self._cluster = cluster
        self._stream_id = stream_id
        self._meta = meta
        self._last_id = last_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:  # noqa: ARG002
        headers = [*SSE_HEADERS, (b"x-stream-id", self._stream_id.encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        pump = asyncio.ensure_future(self._pump(send))
        watcher = asyncio.ensure_future(_disconnected(receive))
        self._metrics.follower(+1)
        outcome = "client_left"
        try:
            await asyncio.wait((pump, watcher), return_when=asyncio.FIRST_COMPLETED)
            if pump.done():
                outcome = "redis_lost" if pump.cancelled() or pump.exception() else pump.result()
        finally:
            for task in (pump, watcher):
                task.cancel()
            await asyncio.wait((pump, watcher))
            self._metrics.follower(-1, outcome)

    async def _pump(self, send: Send) -> str:
        """Send the stream's events; returns how the follow ended (``ended``, ``redis_lost``)."""
        from redis.exceptions import RedisError

        protocol = self._meta["protocol"]
        keepalive = keepalive_of(protocol)
        quiet_since = time.monotonic()
        events = self._cluster.follow(self._stream_id, self._meta, self._last_id)
        try:
            async with contextlib.aclosing(events):
                async for data in events:
                    if data:
                        await send({"type": "http.response.body", "body": data, "more_body": True})
                        quiet_since = time.monotonic()
                    elif time.monotonic() - quiet_since >= self._cluster.keepalive_seconds:
                        await send({"type": "http.response.body", "body": keepalive, "more_body": True})
                        quiet_since = time.monotonic()
        except (RedisError, OSError) as exc:
            self._cluster.down(exc)
            # No id: the stream goes on without this follower, and its next id is still to come.
            lost = error_event(protocol, ResumableUnavailable("lost Redis while following"))
            await send({"type": "http.response.body", "body": lost, "more_body": False})
            return "redis_lost"
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return "ended"


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


stream_control_routes = [
    Route("/v1/streams/{stream_id}", follow_stream, methods=["GET"]),
    Route("/v1/streams/{stream_id}/stop", stop_stream, methods=["POST"]),
]
