"""The life of one stream: admit -> open upstream -> forward -> finish.

This module is the only place that knows about client disconnects. Invariants:

* The client is watched from the start, concurrently: a task waits on ASGI ``receive()`` for
  ``http.disconnect`` while the upstream is being opened and while it is silent. Polling
  ``request.is_disconnected()`` between chunks cannot see a client leave a stalled stream.
* Whatever ends first -- upstream done, client gone, time-out, shutdown -- resolves one
  ``stop`` future; the main coroutine races each phase against it and cancels the loser.
* Time-outs and keep-alives live in one watchdog timer that compares clocks; nothing puts a
  time-out around the upstream iterator's ``__anext__`` (cancelling inside an async generator
  finalises it).
* The response starts late: at the first bytes to send or the first keep-alive. Until then a
  failure is a proper HTTP error; after it, an ``error`` event.
* ``finally`` always closes the upstream, stops the watchers, and hands the record to the
  ledger writer with ``submit`` (synchronous, so cancellation cannot cut it in half).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from tokenrelay.auth.keys import Authenticator
from tokenrelay.config import ModelConfig, Settings
from tokenrelay.errors import (
    BudgetExceeded,
    StreamShutdown,
    TokenRelayError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from tokenrelay.ledger.record import DisconnectPhase, StreamRecord, StreamStatus
from tokenrelay.ledger.tokens import TokenCounter
from tokenrelay.ledger.writer import LedgerWriter
from tokenrelay.limits import RateLimiter
from tokenrelay.limits.budgets import Spending
from tokenrelay.observability.metrics import Metrics
from tokenrelay.observability.tracing import StreamSpan, Tracing
from tokenrelay.relay.protocols import PING, WireProtocol
from tokenrelay.sse import SSEDecoder
from tokenrelay.upstreams.openai_compat import Upstream, UpstreamStream

log = logging.getLogger(__name__)

# Longest a stream may keep the event loop before it lets others run.
_FAIR_SHARE_SECONDS = 0.002

T = TypeVar("T")


class StreamStopped(Exception):
    """Something outside the current phase ended the stream (client, time-out, shutdown)."""

    def __init__(self, status: StreamStatus, error: TokenRelayError | None) -> None:
        super().__init__(status)
        self.status = status
        self.error = error


@dataclass(slots=True)
class RelayRuntime:
    """What every stream of a running gateway shares. Built by the app's lifespan."""

    settings: Settings
    ledger: LedgerWriter
    counter: TokenCounter
    drain: DrainCoordinator
    metrics: Metrics | None = None
    tracing: Tracing | None = None
    auth: Authenticator | None = None
    limiter: RateLimiter | None = None
    spending: Spending | None = None


class DrainCoordinator:
    """Graceful shutdown: refuse new streams, let running ones finish, then stop the rest."""

    def __init__(self, drain_seconds: float) -> None:
        self.drain_seconds = drain_seconds
        self.draining = False
        self._streams: set[StreamRelay] = set()
        self._deadline: asyncio.TimerHandle | None = None

    @property
    def active(self) -> int:
        """Streams currently running."""
        return len(self._streams)

    def begin(self) -> None:
        """Start draining (idempotent). Streams still running after ``drain_seconds`` are stopped."""
        if self.draining:
            return
        self.draining = True
        log.info("draining", extra={"streams": len(self._streams), "drain_seconds": self.drain_seconds})
        self._deadline = asyncio.get_running_loop().call_later(self.drain_seconds, self.stop_all)

    def stop_all(self) -> None:
        """End every running stream with a ``shutdown`` error."""
        for stream in list(self._streams):
            stream.request_stop(StreamStatus.SHUTDOWN, StreamShutdown("the gateway is shutting down"))

    def register(self, stream: StreamRelay) -> None:
        self._streams.add(stream)

    def unregister(self, stream: StreamRelay) -> None:
        self._streams.discard(stream)

    def close(self) -> None:
        """Cancel the pending drain deadline, if any."""
        if self._deadline is not None:
            self._deadline.cancel()


class StreamRelay(Response):
    """One relayed stream, as the ASGI response a route returns."""

    def __init__(
        self,
        *,
        record: StreamRecord,
        body: dict[str, Any],
        model: ModelConfig,
        upstream: Upstream,
        protocol: WireProtocol,
        runtime: RelayRuntime,
        on_finished: Callable[[], Awaitable[None]] | None = None,
        completion_budget: int | None = None,
    ) -> None:
        self.background = None
        # Completion tokens this stream may still produce before its key's budget runs out.
        self._completion_budget = completion_budget
        # E.g. releasing the key's concurrency slot; awaited once, on every exit path.
        self._on_finished = on_finished
        self.record = record
        self._body = body
        self._model = model
        self._upstream = upstream
        self._protocol = protocol
        self._runtime = runtime
        self._loop = asyncio.get_running_loop()
        self._stop: asyncio.Future[StreamStopped] = self._loop.create_future()
        self._send: Send | None = None
        self._started = False
        self._last_sent_at = record.started_mono
        # First output: a content delta, or tool-call / reasoning progress. Before it, the
        # first-token time-out applies and bytes are held back (role-only chunks), so that a
        # failure is still an HTTP error; after it, the idle time-out applies.
        self._first_output_at: float | None = None
        self._last_data_at = record.started_mono
        self._held = bytearray()
        self._keepalive = runtime.settings.keepalive_seconds if protocol.streaming else float("inf")
        self._timer: asyncio.TimerHandle | None = None
        self._ping: asyncio.Future[None] | None = None
        self._client_gone_at: float | None = None
        self._span: StreamSpan | None = None

    # -- the lifecycle, top to bottom ------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._send = send
        self._runtime.drain.register(self)
        if self._runtime.metrics is not None:
            self._runtime.metrics.stream_started(self.record.model)
        if self._runtime.tracing is not None:
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            self._span = self._runtime.tracing.stream_span(
                self.record, headers, type(self._protocol).__name__
            )
        watcher = asyncio.ensure_future(self._watch_client(receive))
        self._on_timer()
        upstream: UpstreamStream | None = None
        try:
            # The upstream call's span (if tracing) is a child of this stream's.
            token = self._span.current() if self._span is not None else None
            try:
                upstream = await self._race(
                    self._upstream.open_stream(
                        body=self._body,
                        upstream_model=self.record.upstream_model,
                        config=self._model,
                        request_id=self.record.request_id,
                    )
                )
            finally:
                if token is not None:
                    StreamSpan.restore(token)
            await self._race(self._forward(upstream))
            await self._end_completed()
        except StreamStopped as stop:
            await self._end_stopped(stop)
        except OSError:
            # Some servers raise on send() to a closed connection instead of reporting a disconnect.
            await self._end_stopped(StreamStopped(StreamStatus.CLIENT_DISCONNECTED, None))
        except UpstreamError as error:
            log.warning(
                "upstream failed",
                extra={
                    "request_id": self.record.request_id,
                    "error_class": type(error).__name__,
                    "error": error.message,
                },
            )
            status = (
                StreamStatus.TIMEOUT if isinstance(error, UpstreamTimeout) else StreamStatus.UPSTREAM_ERROR
            )
            await self._end_with_error(status, error)
        except Exception as exc:
            log.exception("stream failed", extra={"request_id": self.record.request_id})
            await self._end_with_error(
                StreamStatus.UPSTREAM_ERROR, TokenRelayError(f"internal error ({type(exc).__name__})")
            )
        finally:
            await self._finish(upstream, watcher)

    async def _forward(self, upstream: UpstreamStream) -> None:
        """Upstream chunks -> counted in the record -> encoded once -> one write per read."""
        record = self.record
        encode = self._protocol.encode_chunk
        decoder = SSEDecoder()
        clock = time.monotonic
        read = upstream.read
        saw_done = False
        out = self._held
        yielded_at = clock()
        while raw := await read():
            now = clock()
            self._last_data_at = now
            try:
                payloads = decoder.feed(raw)
            except ValueError as exc:
                raise UpstreamProtocolError(str(exc)) from exc
            for payload in payloads:
                if payload == b"[DONE]":
                    saw_done = True
                    break
                try:
                    chunk = orjson.loads(payload)
                except orjson.JSONDecodeError as exc:
                    await self._flush_output()  # what arrived before the bad chunk still goes out
                    raise UpstreamProtocolError("upstream sent a chunk that is not JSON") from exc
                if "error" in chunk:
                    await self._flush_output()
                    raise UpstreamProtocolError(
                        f"upstream error mid-stream: {_error_message(chunk)}", failure="mid_stream_error"
                    )
                record.chunk_count += 1
                content = None
                choices = chunk.get("choices")
                if choices:
                    choice = choices[0]
                    delta = choice.get("delta")
                    if delta:
                        content = delta.get("content")
                        if content:
                            record.completion_parts.append(content)
                            if record.first_token_mono is None:
                                record.first_token_mono = now
                                self._first_output_at = self._first_output_at or now
                                if self._span is not None:
                                    self._span.first_token()
                        elif self._first_output_at is None and _is_progress(delta):
                            self._first_output_at = now
                    if choice.get("finish_reason"):
                        record.finish_reason = choice["finish_reason"]
                usage = chunk.get("usage")
                if usage:
                    record.set_upstream_usage(usage)
                encode(chunk, content, out)
            if out:
                await self._flush_output()
            if saw_done:
                return
            if (
                self._completion_budget is not None
                and len(record.completion_parts) >= self._completion_budget
            ):
                # The key's budget is spent (a content chunk counts as a token; checked per read).
                self.request_stop(
                    StreamStatus.BUDGET_EXCEEDED,
                    BudgetExceeded("this API key's budget ran out during the answer"),
                )
                raise self._stop.result()
            if clock() - yielded_at > _FAIR_SHARE_SECONDS:
                # With data already buffered, neither read() nor send() suspends: without this a
                # fast upstream would hold the loop, starving other streams and our own watchers.
                await asyncio.sleep(0)
                yielded_at = clock()
        if record.finish_reason is None:
            raise UpstreamProtocolError(
                "upstream closed the stream before it finished", failure="mid_stream_drop"
            )

    async def _end_completed(self) -> None:
        record = self.record
        record.status = StreamStatus.COMPLETED
        if record.usage_source is None:
            # Providers that ignore include_usage: count with our tokenizer, off the event loop.
            await asyncio.to_thread(self._runtime.counter.estimate, record)
        await self._send_last(self._protocol.encode_end(record))

    async def _end_stopped(self, stop: StreamStopped) -> None:
        if stop.status is StreamStatus.CLIENT_DISCONNECTED:
            self.record.status = stop.status
            self.record.disconnect_phase = (
                DisconnectPhase.BEFORE_FIRST_TOKEN
                if self.record.first_token_mono is None
                else DisconnectPhase.MID_STREAM
            )
            if self._span is not None:
                self._span.client_disconnected(str(self.record.disconnect_phase))
            return  # nobody is listening
        assert stop.error is not None
        await self._end_with_error(stop.status, stop.error)

    async def _end_with_error(self, status: StreamStatus, error: TokenRelayError) -> None:
        record = self.record
        record.status = status
        record.error_code = error.code
        record.error_class = type(error).__name__
        if isinstance(error, UpstreamError):
            record.upstream_failure = error.failure
        if self._span is not None:
            self._span.error(error.code, error.message)
        try:
            if self._started:
                await self._send_last(self._protocol.encode_error(error))
            else:
                self._started = True
                assert self._send is not None
                headers = [(b"content-type", b"application/json")]
                headers += [(k.lower().encode(), v.encode()) for k, v in error.headers().items()]
                await self._send(
                    {"type": "http.response.start", "status": error.http_status, "headers": headers}
                )
                await self._send({"type": "http.response.body", "body": error.openai_body()})
        except OSError:
            pass  # the client left while we were telling it; the record already says why we ended

    async def _finish(self, upstream: UpstreamStream | None, watcher: asyncio.Future[None]) -> None:
        """Runs on every exit path: close, stop watching, account."""
        record = self.record
        try:
            watcher.cancel()
            if self._timer is not None:
                self._timer.cancel()
            background = [watcher] if self._ping is None else [watcher, self._ping]
            if self._ping is not None:
                self._ping.cancel()
            if upstream is not None:
                try:
                    await upstream.aclose()
                except Exception:
                    log.debug(
                        "closing the upstream failed", exc_info=True, extra={"request_id": record.request_id}
                    )
            await asyncio.gather(*background, return_exceptions=True)
        finally:
            # Reached even if this task is cancelled again during the awaits above.
            self._runtime.drain.unregister(self)
            if self._on_finished is not None:
                try:
                    await self._on_finished()
                except Exception:
                    log.exception(
                        "releasing the stream's limits failed", extra={"request_id": record.request_id}
                    )
            if self._runtime.metrics is not None:
                gone = self._client_gone_at
                aborted_in = time.monotonic() - gone if gone is not None else None
                self._runtime.metrics.stream_relayed(record.model, aborted_in)
            if record.status is None:
                # Our own task was cancelled (e.g. the server's graceful-shutdown timeout).
                record.status = StreamStatus.SHUTDOWN
            record.finished_mono = time.monotonic()
            record.finished_at = datetime.now(UTC)
            if self._span is not None:
                self._span.end(record)
            self._runtime.ledger.submit(record)

    # -- racing phases against the stop signal ----------------------------------------------

    def request_stop(self, status: StreamStatus, error: TokenRelayError | None = None) -> None:
        """End the stream from outside the running phase (first caller wins)."""
        if not self._stop.done():
            self._stop.set_result(StreamStopped(status, error))

    async def _race(self, phase: Awaitable[T]) -> T:
        """Run ``phase`` until it finishes or the stream is stopped; the loser is cancelled."""
        task = asyncio.ensure_future(phase)
        try:
            await asyncio.wait((task, self._stop), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not task.done():
                task.cancel()
                # Wait for the phase to unwind (it closes what it opened) before going on.
                await asyncio.wait((task,))
        succeeded = task.done() and not task.cancelled() and task.exception() is None
        if not succeeded and self._stop.done():
            # Whatever the phase raised while being stopped is a consequence, not the cause.
            raise self._stop.result()
        return task.result()

    async def _watch_client(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self._client_gone_at = time.monotonic()
                self.request_stop(StreamStatus.CLIENT_DISCONNECTED)
                return

    def _on_timer(self) -> None:
        """Keep-alive pings and the first-token, idle and total time-outs, from one timer.

        A timer callback rather than a task: one TimerHandle per stream instead of a task and
        its frame (memory per idle stream is a target); a ping, which must await, gets a
        short-lived task of its own.
        """
        self._timer = None
        if self._stop.done():
            return
        model = self._model
        now = time.monotonic()
        total_at = self.record.started_mono + model.total_timeout_seconds
        if self._first_output_at is None:
            data_deadline = self.record.started_mono + model.first_token_timeout_seconds
            what = "the first token"
        else:
            data_deadline = self._last_data_at + model.idle_timeout_seconds
            what = "the next chunk"
        if now >= total_at:
            self.request_stop(StreamStatus.TIMEOUT, UpstreamTimeout("the stream exceeded its total time-out"))
            return
        if now >= data_deadline:
            self.request_stop(StreamStatus.TIMEOUT, UpstreamTimeout(f"upstream timed out waiting for {what}"))
            return
        ping_at = self._last_sent_at + self._keepalive
        if now >= ping_at and self._ping is None:
            self._ping = asyncio.ensure_future(self._send_ping())
        if self._ping is not None:
            ping_at = now + self._keepalive  # one ping at a time; look again after this one
        self._timer = self._loop.call_later(min(total_at, data_deadline, ping_at) - now, self._on_timer)

    async def _send_ping(self) -> None:
        try:
            held = bytes(self._held) + PING
            self._held.clear()
            await self._send_body(held)
            if self._runtime.metrics is not None:
                self._runtime.metrics.keepalive_pings.inc()
        except OSError:
            pass  # the client is gone; the disconnect watcher ends the stream
        finally:
            self._ping = None

    # -- sending ----------------------------------------------------------------------------

    async def _send_start(self) -> None:
        assert self._send is not None
        # Set before awaiting: a keep-alive ping and the forwarder may both get here.
        self._started = True
        await self._send({"type": "http.response.start", "status": 200, "headers": self._protocol.headers})

    async def _send_body(self, data: bytes) -> None:
        if not self._started:
            if not self._protocol.streaming:
                return  # a non-streamed answer is sent whole by _send_last
            await self._send_start()
        assert self._send is not None
        await self._send({"type": "http.response.body", "body": data, "more_body": True})
        self._last_sent_at = time.monotonic()

    async def _flush_output(self) -> None:
        """Send the encoded bytes of this read, unless still holding back before the first output."""
        if self._held and self._first_output_at is not None:
            data = bytes(self._held)
            self._held.clear()  # before the await: a keep-alive ping may flush held bytes meanwhile
            await self._send_body(data)

    async def _send_last(self, data: bytes) -> None:
        """The final bytes, after anything still held back (e.g. an answer with no content)."""
        if not self._started:
            await self._send_start()
        assert self._send is not None
        if self._held:
            data = bytes(self._held) + data
            self._held.clear()
        await self._send({"type": "http.response.body", "body": data, "more_body": False})


def _is_progress(delta: dict[str, Any]) -> bool:
    """A delta without content that still shows the model working (tool calls, reasoning)."""
    return bool(delta.get("tool_calls") or delta.get("reasoning_content") or delta.get("reasoning"))


def _error_message(chunk: dict[str, Any]) -> str:
    error = chunk.get("error")
    if isinstance(error, dict):
        return str(error.get("message", "unknown"))
    return str(error)
