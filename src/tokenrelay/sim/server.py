"""The simulated upstream: OpenAI chat completions and Anthropic Messages, a raw ASGI app,
cheap per chunk.

``POST .../chat/completions`` speaks OpenAI's protocol, ``POST .../messages`` Anthropic's
(``x-api-key`` and ``anthropic-version`` accepted, not checked; ``stop_sequences`` ignored).
Behaviour is chosen per request by query-style options in the model name
(``sim?ttft=0.2&tokens=50``) or in an ``X-Sim-Options`` header (same syntax, wins); every
option works on both protocols. A "chunk" is one streamed piece: of text, thinking or a
tool call's arguments.

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
``error_after=N``  after N content chunks, send an in-stream error and end (OpenAI
                   ``{"error": ...}``; Anthropic ``event: error``, ``overloaded_error``)
``status=C``       answer HTTP C with the protocol's error body before streaming
``retry_after=S``  ``Retry-After`` header with ``status``
``usage=0``        OpenAI: never send a usage chunk, even when asked (Anthropic: no effect,
                   its usage is part of ``message_start`` and ``message_delta``)
``malformed=1``    OpenAI: the first chunk is valid JSON in the wrong shape (``"choices"`` a string)
``tool=1``         answer with one call of the request's first tool (default ``get_weather``),
                   no text: arguments ``{"city": "Paris", "unit": "celsius"}`` in 3 chunks;
                   OpenAI ``delta.tool_calls``, Anthropic a ``tool_use`` block
``think=N``        N thinking chunks first: OpenAI ``delta.reasoning_content``, Anthropic
                   a ``thinking`` block (then a ``signature_delta``)
``finish=R``       the finish reason: ``length`` (Anthropic ``max_tokens``), ``stop``
                   (``end_turn``), ``tool_calls`` (``tool_use``), others verbatim; the
                   default is ``tool_calls`` with ``tool=1``, else ``stop``
``cache_read=N``   cached prompt tokens: Anthropic ``cache_read_input_tokens``, OpenAI
                   ``usage.prompt_tokens_details.cached_tokens``
``cache_creation`` Anthropic ``cache_creation_input_tokens`` (OpenAI has none)
=================  =============================================================

Usage counts one output token per chunk, and the prompt with a words-plus-overhead guess.

``GET /_stats`` lists recent requests: chunks sent, timings (``time.monotonic()``, which is
system-wide on Linux so tests in another process can compare) and how each one ended:
``completed``, ``client_closed`` (the client left first), ``dropped``, ``error_status``,
``error_event``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send

from tokenrelay.sim import anthropic, openai
from tokenrelay.sim.behaviour import Answer, Frames, RequestStats, SimOptions, SimState, plan
from tokenrelay.sim.connection import cork, drop_connection, peer_gone

_BATCH_EVENTS = 64  # events per write when sending as fast as possible


@dataclass(frozen=True, slots=True)
class _Wire:
    """A protocol: what it refuses, its stream, its whole answer, its error bodies."""

    problem: Callable[[dict[str, Any]], str | None]
    frames: Callable[[dict[str, Any], Answer, SimOptions], Frames]
    body: Callable[[dict[str, Any], Answer, SimOptions], dict[str, Any]]
    error_body: Callable[[int, str | None], dict[str, Any]]


_OPENAI = _Wire(openai.problem, openai.frames, openai.completion, openai.error_body)
_ANTHROPIC = _Wire(anthropic.problem, anthropic.frames, anthropic.message, anthropic.error_body)


class _Dropped(Exception):
    """Raised inside the app so the server closes the connection without ending the body."""


class _PeerGone(Exception):
    """The client's connection is gone (the write that found out was dropped)."""


class SimulatedUpstream:
    """ASGI app implementing the parts of the OpenAI and Anthropic APIs a gateway uses."""

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
            await self._generate(scope, receive, send, _OPENAI)
        elif path.endswith("/messages") and method == "POST":
            await self._generate(scope, receive, send, _ANTHROPIC)
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

    async def _generate(self, scope: Scope, receive: Receive, send: Send, wire: _Wire) -> None:
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
            client_port=scope["client"][1] if scope.get("client") else None,
        )
        self.state.requests.append(stats)
        self.state.active += 1
        task = asyncio.ensure_future(_respond(send, wire, request, options, stats))
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


async def _respond(
    send: Send, wire: _Wire, request: dict[str, Any], options: SimOptions, stats: RequestStats
) -> None:
    if options.headers_delay:
        await asyncio.sleep(options.headers_delay)
    problem = wire.problem(request)
    if options.status or problem:
        # A simulated status says "simulated <status>"; a refused request says why.
        status, message = (options.status, None) if options.status else (400, problem)
        headers = [(b"retry-after", options.retry_after.encode())] if options.retry_after else []
        stats.end = "error_status"
        await _json(send, status, wire.error_body(status, message), headers)
        return
    answer = plan(request, options)
    if stats.stream:
        await _stream(send, wire.frames(request, answer, options), options, stats)
    else:
        if options.ttft:
            await asyncio.sleep(options.ttft)
        stats.chunks_sent = answer.output_tokens
        await _json(send, 200, wire.body(request, answer, options))
        stats.end = "completed"


def _writer(send: Send) -> Callable[[bytes], Awaitable[None]]:
    async def write(payload: bytes) -> None:
        await send({"type": "http.response.body", "body": payload, "more_body": True})
        if peer_gone(send):
            # uvicorn drops writes to a connection that is gone without a word: stop generating,
            # as a real server does when its client leaves.
            raise _PeerGone

    return write


async def _stream(send: Send, frames: Frames, options: SimOptions, stats: RequestStats) -> None:
    """Send ``frames`` paced, stalled, dropped or cut by an error as ``options`` say."""
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
    write = _writer(send)
    await write(frames.opening)
    if options.ttft:
        await asyncio.sleep(options.ttft)
    interval = 1.0 / options.tps if options.tps > 0 else 0.0
    batch = bytearray()
    next_at = time.monotonic()
    for index, frame in enumerate(frames):
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
            await write(bytes(batch + frames.error))
            stats.end = "error_event"
            await send({"type": "http.response.body", "body": b""})
            return
        batch += frame
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
    await write(bytes(batch + frames.tail()))
    await send({"type": "http.response.body", "body": b""})
    if options.burst:
        cork(send, False)
    stats.end = "client_closed" if peer_gone(send) else "completed"
