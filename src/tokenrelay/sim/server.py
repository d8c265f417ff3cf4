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
import collections
import itertools
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.types import Receive, Scope, Send

_FILLER_TEXT = (
    "tokens stream from the simulated upstream through tokenrelay so that every chunk can be seen "
    "as it is generated and nothing waits for the end of the answer"
)
FILLER = _FILLER_TEXT.split()

_BATCH_EVENTS = 64  # events per write when sending as fast as possible


@dataclass(slots=True)
class SimOptions:
    tokens: int | None = None
    echo: bool = False
    piece: int = 3
    tps: float = 0.0
    headers_delay: float = 0.0
    ttft: float = 0.0
    stall_after: int | None = None
    stall_seconds: float = 30.0
    drop_after: int | None = None
    error_after: int | None = None
    status: int | None = None
    retry_after: str | None = None
    usage: bool = True

    @classmethod
    def parse(cls, text: str) -> SimOptions:
        options = cls()
        for key, value in parse_qsl(text, keep_blank_values=True):
            if key in ("echo", "usage"):
                setattr(options, key, value not in ("0", "false", ""))
            elif key == "retry_after":
                options.retry_after = value
            elif key in ("tokens", "piece", "stall_after", "drop_after", "error_after", "status"):
                setattr(options, key, int(value))
            elif key in ("tps", "headers_delay", "ttft", "stall_seconds"):
                setattr(options, key, float(value))
        return options


@dataclass(slots=True)
class RequestStats:
    request_id: str
    model: str
    stream: bool
    started_at: float
    headers_sent_at: float | None = None
    first_chunk_at: float | None = None
    chunks_sent: int = 0
    ended_at: float | None = None
    end: str | None = None


@dataclass
class SimState:
    requests: collections.deque[RequestStats] = field(
        default_factory=lambda: collections.deque(maxlen=20_000)
    )
    active: int = 0

    def snapshot(self) -> dict[str, Any]:
        return {"active": self.active, "requests": [asdict(r) for r in self.requests]}


class _Dropped(Exception):
    """Raised inside the app so the server closes the connection without ending the body."""


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
        answer = _answer(request.get("messages", []), options)
        include_usage = bool((request.get("stream_options") or {}).get("include_usage")) and options.usage
        task = asyncio.ensure_future(_respond(send, request, answer, options, stats, include_usage))
        watcher = asyncio.ensure_future(_wait_disconnect(receive))
        try:
            done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if task in done:
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


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        content = message.get("content")
        if message.get("role") == "user" and isinstance(content, str):
            return content
    return ""


class _FillerWords(Sequence[str]):
    """N filler words, made as they are streamed (a list of 100,000 would stall the loop)."""

    def __init__(self, count: int) -> None:
        self._count = count

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: Any) -> Any:
        raise NotImplementedError("iterate instead")

    def __iter__(self) -> Iterator[str]:
        words = itertools.islice(itertools.cycle(FILLER), self._count)
        return (word if i == 0 else " " + word for i, word in enumerate(words))


def _answer(messages: list[dict[str, Any]], options: SimOptions) -> Sequence[str]:
    """The answer as the pieces that will be streamed, one per chunk."""
    if options.echo:
        text = _last_user_text(messages)
        return [text[i : i + options.piece] for i in range(0, len(text), options.piece)]
    if options.tokens is not None:
        return _FillerWords(options.tokens)
    said = _last_user_text(messages)[:200]
    text = f"Hello from the simulated model. You said: {said!r}. " + " ".join(FILLER) + "."
    return [text[i : i + 4] for i in range(0, len(text), 4)]


def _prompt_tokens(messages: list[dict[str, Any]]) -> int:
    return sum(len(str(m.get("content", "")).split()) + 3 for m in messages) + 3


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
        usage = _usage(request, len(answer))
        batch += b"data: " + head + b',"choices":[],"usage":' + orjson.dumps(usage) + b"}\n\n"
    batch += b"data: [DONE]\n\n"
    await write(bytes(batch))
    await send({"type": "http.response.body", "body": b""})
    stats.end = "completed"


def _usage(request: dict[str, Any], completion_tokens: int) -> dict[str, int]:
    prompt = _prompt_tokens(request.get("messages", []))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt + completion_tokens,
    }


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
        "usage": _usage(request, len(answer)),
    }
    await _json(send, 200, body)
    stats.end = "completed"
