"""The simulated OpenAI-compatible upstream: a raw ASGI app, cheap per chunk.

Behaviour is chosen per request by query-style options in the model name
(``sim?ttft=0.2&tokens=50``) or in an ``X-Sim-Options`` header (same syntax, wins):

=================  =============================================================
``tokens=N``       answer with N filler words (default: a short echo answer)
``echo=1``         answer with the last user message, exactly, in ``piece``-char pieces
``piece=N``        characters per chunk for ``echo`` (default 3)
``tps=X``          tokens per second; 0 = as fast as possible (default 0)
``headers_delay``  seconds before the response headers are sent
``ttft=S``         seconds between the headers and the first content chunk
``stall_after=N``  after N content chunks, go silent for ``stall_seconds`` (default 30)
``drop_after=N``   after N content chunks, drop the connection abruptly
``drop=reset``     drop with a TCP reset instead of a clean close (FIN), the default ``fin``
``burst=1``        hold every write until the end (or the drop): headers, chunks and the close
                   reach the client together, as from a fast upstream behind a buffering proxy
``error_after=N``  after N content chunks, send an in-stream ``{"error": ...}`` and end
``status=C``       answer HTTP C with an OpenAI-shaped error before streaming
``retry_after=S``  ``Retry-After`` header with ``status``
``usage=0``        never send a usage chunk, even when asked
=================  =============================================================

``GET /_stats`` lists recent requests: chunks sent, timings (``time.monotonic()``, which is
system-wide on Linux so tests in another process can compare) and how each one ended:
``completed``, ``client_closed`` (the client left first), ``dropped``, ``error_status``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send

from tokenrelay.sim.behaviour import RequestStats, SimOptions, SimState, answer, usage
from tokenrelay.sim.connection import cork, drop_connection, peer_gone

_BATCH_EVENTS = 64  # events per write when sending as fast as possible


class _Dropped(Exception):
    """Raised inside the app so the server closes the connection without ending the body."""


class _PeerGone(Exception):
    """The client's connection is gone (the write that found out was dropped)."""


class SimulatedUpstream:
    """ASGI app implementing the parts of the OpenAI API the gateway uses."""

    def __init__(self) -> None:
        self.state = SimState()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        method: str = scope["method"]
        if path.endswith("/chat/completions") and method == "POST":
            await self._chat(scope, receive, send)
        elif path.endswith("/models") and method == "GET":
            await _json(
                send, 200, {"object": "list", "data": [{"id": "sim", "object": "model", "owned_by": "sim"}]}
            )
        elif path == "/_stats" and method == "GET":
            await _json(send, 200, self.state.snapshot())
        elif path == "/_stats/reset" and method == "POST":
            self.state.requests.clear()
            await _json(send, 200, {"ok": True})
        else:
            await _json(send, 404, {"error": {"message": "not found", "type": "invalid_request_error"}})

    async def _chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await _read_body(receive)
        request = orjson.loads(body)
        headers = dict(scope["headers"])
        model: str = request.get("model", "sim")
        _, _, query = model.partition("?")
        header_options = headers.get(b"x-sim-options", b"").decode()
        options = SimOptions.parse(header_options or query)
        stream = bool(request.get("stream"))
        stats = RequestStats(
            request_id=headers.get(b"x-request-id", b"").decode() or uuid.uuid4().hex,
            model=model,
            stream=stream,
            started_at=time.monotonic(),
        )
        self.state.requests.append(stats)
        self.state.active += 1
        pieces = answer(request.get("messages", []), options)
        include_usage = bool((request.get("stream_options") or {}).get("include_usage")) and options.usage
        task = asyncio.ensure_future(_respond(send, request, pieces, options, stats, include_usage))
        watcher = asyncio.ensure_future(_wait_disconnect(receive))
        try:
            done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if task in done and not isinstance(task.exception(), _PeerGone):
                task.result()  # re-raises _Dropped so uvicorn cuts the connection
            else:
                stats.end = "client_closed"
        finally:
            stats.ended_at = time.monotonic()
            self.state.active -= 1
            for pending in (task, watcher):
                pending.cancel()
            await asyncio.gather(task, watcher, return_exceptions=True)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _json(
    send: Send, status: int, payload: Any, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = orjson.dumps(payload)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), *(headers or [])],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _error_status(send: Send, options: SimOptions, stats: RequestStats) -> None:
    status = options.status or 500
    headers = [(b"retry-after", options.retry_after.encode())] if options.retry_after else []
    stats.end = "error_status"
    kind = "rate_limit_error" if status == 429 else "server_error"
    await _json(
        send, status, {"error": {"message": f"simulated {status}", "type": kind, "code": None}}, headers
    )


async def _respond(
    send: Send,
    request: dict[str, Any],
    answer: Sequence[str],
    options: SimOptions,
    stats: RequestStats,
    include_usage: bool,
) -> None:
    if options.headers_delay:
        await asyncio.sleep(options.headers_delay)
    if options.status:
        await _error_status(send, options, stats)
    elif stats.stream:
        await _stream(send, request, answer, options, stats, include_usage)
    else:
        await _complete(send, request, answer, options, stats)


async def _stream(
    send: Send,
    request: dict[str, Any],
    answer: Sequence[str],
    options: SimOptions,
    stats: RequestStats,
    include_usage: bool,
) -> None:
    if options.burst:
        cork(send, True)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")],
        }
    )
    stats.headers_sent_at = time.monotonic()
    completion_id = "chatcmpl-sim" + uuid.uuid4().hex[:20]
    head = orjson.dumps(
        {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": request["model"],
        }
    )[:-1]
    prefix = b"data: " + head + b',"choices":[{"index":0,"delta":{"content":'
    suffix = b'},"finish_reason":null}]}\n\n'

    async def write(payload: bytes) -> None:
        await send({"type": "http.response.body", "body": payload, "more_body": True})
        if peer_gone(send):
            # uvicorn drops writes to a connection that is gone without a word: stop generating,
            # as a real server does when its client leaves.
            raise _PeerGone

    await write(
        b"data: " + head + b',"choices":[{"index":0,"delta":{"role":"assistant","content":""},'
        b'"finish_reason":null}]}\n\n'
    )
    if options.ttft:
        await asyncio.sleep(options.ttft)
    interval = 1.0 / options.tps if options.tps > 0 else 0.0
    batch = bytearray()
    next_at = time.monotonic()
    for index, piece in enumerate(answer):
        if index == options.stall_after:
            await write(bytes(batch))
            batch.clear()
            await asyncio.sleep(options.stall_seconds)
        if index == options.drop_after:
            await write(bytes(batch))
            stats.end = "dropped"
            drop_connection(send, reset=options.drop == "reset")
            raise _Dropped
        if index == options.error_after:
            batch += (
                b'data: {"error":{"message":"simulated mid-stream failure",'
                b'"type":"server_error","code":null}}\n\n'
            )
            await write(bytes(batch))
            stats.end = "error_event"
            await send({"type": "http.response.body", "body": b""})
            return
        batch += prefix + orjson.dumps(piece) + suffix
        stats.chunks_sent += 1
        if stats.first_chunk_at is None:
            stats.first_chunk_at = time.monotonic()
        if interval:
            await write(bytes(batch))
            batch.clear()
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        elif len(batch) >= _BATCH_EVENTS * 100:
            await write(bytes(batch))
            batch.clear()
    batch += b"data: " + head + b',"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
    if include_usage:
        counts = usage(request, len(answer))
        batch += b"data: " + head + b',"choices":[],"usage":' + orjson.dumps(counts) + b"}\n\n"
    batch += b"data: [DONE]\n\n"
    await write(bytes(batch))
    await send({"type": "http.response.body", "body": b""})
    if options.burst:
        cork(send, False)
    stats.end = "client_closed" if peer_gone(send) else "completed"


async def _complete(
    send: Send, request: dict[str, Any], answer: Sequence[str], options: SimOptions, stats: RequestStats
) -> None:
    if options.ttft:
        await asyncio.sleep(options.ttft)
    stats.chunks_sent = len(answer)
    body = {
        "id": "chatcmpl-sim" + uuid.uuid4().hex[:20],
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request["model"],
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(answer)},
                "finish_reason": "stop",
            }
        ],
        "usage": usage(request, len(answer)),
    }
    await _json(send, 200, body)
    stats.end = "completed"
