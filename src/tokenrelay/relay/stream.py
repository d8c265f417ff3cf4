"""The life of one stream: admit -> open upstream -> forward -> finish.

This module is the only place that knows about client disconnects. Invariants:

* Everything a stream takes is taken inside the structure that gives it back: the key's slot
  by ``Admission``'s ``async with``; the drain registration, the in-flight gauge, the span,
  the disconnect watcher and the watchdog timer inside the ``try`` whose ``finally`` ends them.
* The exit path accounts before it awaits. The status, the times, the span's end and the
  ledger ``submit`` are synchronous and come first; closing the upstream, stopping the
  watchers and releasing the slot come after. A cancellation landing in any of those awaits
  cannot lose the row.
* The client is watched from the start, concurrently: a task waits on ASGI ``receive()`` for
  ``http.disconnect`` while the upstream is being opened and while it is silent. Polling
  ``request.is_disconnected()`` between chunks cannot see a client leave a stalled stream.
* Whatever ends first -- upstream done, client gone, time-out, shutdown -- resolves one
  ``stop`` future; the main coroutine races each phase against it and cancels the loser.
* Time-outs, keep-alives and the slow-client check live in one watchdog timer that compares
  clocks (``watchdog.py``); nothing puts a time-out around the upstream's reads.
* Only the ``Sender`` writes to the client (see ``sender.py``); wire formats live in the
  upstream (events in) and the encoder (bytes out), never here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Iterable
from datetime import UTC, datetime
from typing import Any

from starlette.types import Receive, Scope, Send

from tokenrelay.cluster import Resume
from tokenrelay.config import ModelConfig
from tokenrelay.errors import (
    BudgetExceeded,
    StreamAbandoned,
    StreamShutdown,
    TokenRelayError,
    UpstreamError,
    UpstreamTimeout,
)
from tokenrelay.events import Chunk
from tokenrelay.observability.tracing import NO_SPAN, NoSpan, StreamSpan
from tokenrelay.protocols import Encoder
from tokenrelay.record import FOLD_EVERY, DisconnectPhase, StreamRecord, StreamStatus
from tokenrelay.relay.failover import Failover
from tokenrelay.relay.runtime import RelayRuntime
from tokenrelay.relay.sender import Sender, wire_send_of
from tokenrelay.relay.stopping import StopSignal, StreamStopped
from tokenrelay.relay.watchdog import Watchdog
from tokenrelay.routing import ModelRouter
from tokenrelay.upstreams import UpstreamStream

log = logging.getLogger(__name__)

# Longest a stream may keep the event loop before it lets others run.
_FAIR_SHARE_SECONDS = 0.002
# scope["extensions"] key of a callable that aborts the client's connection (see
# api.middleware.ConnectionAbortMiddleware): how a client that stopped reading is let go.
ABORT_CONNECTION = "tokenrelay.abort_connection"


class StreamRelay:
    """One stream, from the opened upstream to the submitted record."""

    def __init__(
        self,
        *,
        runtime: RelayRuntime,
        record: StreamRecord,
        model: ModelConfig,
        body: dict[str, Any],
        router: ModelRouter,
        encoder: Encoder,
        completion_allowance: int | None = None,
        resume: Resume | None = None,
    ) -> None:
        self.record = record
        self._runtime = runtime
        self._model = model
        self._failover = Failover(router=router, record=record, body=body)
        self._encoder = encoder
        # Completion tokens this stream may still produce before its key's budget runs out.
        self._completion_allowance = completion_allowance
        self._loop = asyncio.get_running_loop()
        self._stop = StopSignal(self._loop)
        self._sender: Sender | None = None
        self._watchdog: Watchdog | None = None
        self._client_gone_at: float | None = None
        self._span: StreamSpan | NoSpan = NO_SPAN
        self._counted = False
        self._scope: Scope | None = None
        self._watcher: asyncio.Task[None] | None = None
        # Resumable: outlives its client's connection for a grace period; stoppable by id.
        self._resume = resume

    # -- the lifecycle, top to bottom ------------------------------------------------------

    async def run(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Relay the stream to ``send``; returns once it is over and accounted for."""
        runtime, record, encoder = self._runtime, self.record, self._encoder
        sender = self._sender = Sender(
            send,
            headers=encoder.headers,
            streaming=encoder.streaming,
            keepalive=encoder.keepalive,
            metrics=runtime.metrics,
            wire_send=wire_send_of(scope),
        )
        settings = runtime.settings
        watchdog = self._watchdog = Watchdog(
            model=self._model,
            started_mono=record.started_mono,
            sender=sender,
            keepalive_seconds=settings.keepalive_seconds if encoder.streaming else float("inf"),
            write_timeout_seconds=settings.client_write_timeout_seconds,
            stop=self.request_stop,
            stopped=self._stop.done,
        )
        self._scope = scope
        watcher: asyncio.Task[None] | None = None
        try:
            runtime.drain.register(self)
            if self._resume is not None:
                self._resume.cluster.register(record.stream_id, self)
            runtime.metrics.stream_started(record.model)
            self._counted = True
            self._span = runtime.tracing.stream_span(record, scope["headers"], type(encoder).__name__)
            watcher = self._watcher = asyncio.ensure_future(self._watch_client(receive))
            watchdog.start()
            # The upstream call's span (if tracing) is a child of this stream's.
            opening = self._open() if runtime.tracing.enabled else self._open_untraced()
            upstream, primed = await self._stop.race(opening)
            await self._stop.race(self._forward(upstream, primed, sender, watchdog))
            await self._end_completed(sender)
        except StreamStopped as stop:
            await self._end_stopped(stop, sender)
        except OSError:
            # Some servers raise on send() to a closed connection instead of reporting a disconnect.
            await self._end_stopped(StreamStopped(StreamStatus.CLIENT_DISCONNECTED, None), sender)
        except UpstreamError as error:
            self._failover.served_failed()
            log.warning(
                "upstream failed",
                extra={
                    "request_id": record.request_id,
                    "error_class": type(error).__name__,
                    "error": error.message,
                },
            )
            status = (
                StreamStatus.TIMEOUT if isinstance(error, UpstreamTimeout) else StreamStatus.UPSTREAM_ERROR
            )
            await self._end_with_error(status, error, sender)
        except Exception as exc:
            log.exception("stream failed", extra={"request_id": record.request_id})
            await self._end_with_error(
                StreamStatus.UPSTREAM_ERROR, TokenRelayError(f"internal error ({type(exc).__name__})"), sender
            )
        finally:
            self._account()
            await self._release(watcher, sender)

    async def _open(self) -> tuple[UpstreamStream, Iterable[Chunk]]:
        token = self._span.current()
        try:
            return await self._open_untraced()
        finally:
            self._span.restore(token)

    def _open_untraced(self) -> Awaitable[tuple[UpstreamStream, Iterable[Chunk]]]:
        return self._failover.open()  # attempts until one gives its first output (failover.py)

    async def _forward(
        self, upstream: UpstreamStream, primed: Iterable[Chunk], sender: Sender, watchdog: Watchdog
    ) -> None:
        """Upstream events -> counted in the record -> encoded once -> one write per read.

        ``primed``: the serving attempt's events up to its first output, and the rest of that read.
        """
        record = self.record
        encode = self._encoder.encode
        parts = record.completion_parts
        out = sender.pending
        clock = time.monotonic
        read = upstream.read
        budget = self._completion_allowance
        yielded_at = clock()
        events = primed
        while True:
            now = clock()
            chunks = 0
            try:
                for event in events:  # one reused Chunk: everything is taken from it here
                    chunks += 1
                    text = event.text
                    if text:
                        parts.append(text)
                        if record.first_token_mono is None:
                            self._first_token(now)
                    elif watchdog.first_output_at is None and event.is_progress:
                        self._first_output(now)
                    finish_reason = event.finish_reason
                    if finish_reason:
                        record.finish_reason = finish_reason
                    usage = event.usage
                    if usage is not None:
                        record.set_upstream_usage(
                            usage.prompt_tokens,
                            usage.completion_tokens,
                            usage.cache_read_tokens,
                            usage.cache_creation_tokens,
                        )
                    encode(event, out)
            except UpstreamError:
                # An error the upstream sent in its stream: what came before it still goes out.
                record.chunk_count += chunks
                await sender.flush()
                raise
            record.chunk_count += chunks
            if len(parts) >= FOLD_EVERY:
                record.fold_completion()  # per read, not per chunk: a long answer stays compact
            if out:
                await sender.flush()
            if upstream.ended:
                return
            if budget is not None and record.content_chunks >= budget:
                # The key's budget is spent (a content chunk counts as a token; checked per read).
                self.request_stop(
                    StreamStatus.BUDGET_EXCEEDED,
                    BudgetExceeded("this API key's budget ran out during the answer"),
                )
                raise self._stop.result()
            now = watchdog.last_data_at = clock()  # back to waiting on the upstream from here
            if now - yielded_at > _FAIR_SHARE_SECONDS:
                # With data already buffered, neither read() nor send() suspends: without this a
                # fast upstream would hold the loop, starving other streams and our own watchers.
                await asyncio.sleep(0)
                yielded_at = clock()
            events = await read()

    def _first_token(self, now: float) -> None:
        self.record.first_token_mono = now
        self._span.first_token()
        assert self._watchdog is not None
        if self._watchdog.first_output_at is None:
            self._first_output(now)

    def _first_output(self, now: float) -> None:
        assert self._watchdog is not None and self._sender is not None
        self._watchdog.first_output_at = now  # from now on the idle time-out applies
        self._sender.release()  # and held bytes may go

    async def _end_completed(self, sender: Sender) -> None:
        record = self.record
        record.status = StreamStatus.COMPLETED
        if record.usage_source is None:
            # Providers that ignore include_usage: count with our tokenizer, off the event loop.
            await asyncio.to_thread(self._runtime.counter.estimate, record)
        self._failover.completed()
        await sender.finish(self._encoder.encode_end(record))

    async def _end_stopped(self, stop: StreamStopped, sender: Sender) -> None:
        record = self.record
        self._failover.interrupted(stop.status)
        if stop.status is StreamStatus.CLIENT_DISCONNECTED:
            record.status = stop.status
            record.disconnect_phase = (
                DisconnectPhase.BEFORE_FIRST_TOKEN
                if record.first_token_mono is None
                else DisconnectPhase.MID_STREAM
            )
            self._span.client_disconnected(str(record.disconnect_phase))
            return  # nobody is listening
        if stop.status is StreamStatus.STOPPED:
            # The user's Stop (from any replica): the answer so far is complete, and says so.
            record.status, record.finish_reason = stop.status, "stopped"
            with contextlib.suppress(Exception):  # _release logs a failure to close
                await self._failover.aclose()  # the upstream stops first: counting takes a while
            if record.usage_source is None:
                await asyncio.to_thread(self._runtime.counter.estimate, record)
            await sender.finish(self._encoder.encode_end(record))
            return
        if stop.status is StreamStatus.CLIENT_TOO_SLOW:
            record.status = stop.status
            log.info(
                "client stopped reading; stream ended",
                extra={
                    "request_id": record.request_id,
                    "blocked_s": self._runtime.settings.client_write_timeout_seconds,
                },
            )
            await self._abort_connection()
            return  # the client is not reading: nothing more can reach it
        assert stop.error is not None
        await self._end_with_error(stop.status, stop.error, sender)

    async def _end_with_error(self, status: StreamStatus, error: TokenRelayError, sender: Sender) -> None:
        record = self.record
        record.status = status
        record.error_code = error.code
        record.error_class = type(error).__name__
        if isinstance(error, UpstreamError):
            record.upstream_failure = error.failure
        self._span.error(error.code, error.message)
        # OSError: the client left while we were telling it; the record already says why we ended.
        with contextlib.suppress(OSError):
            await sender.fail(self._encoder.error_response(error), self._encoder.encode_error(error))

    async def _abort_connection(self) -> None:
        """Cut the client's connection: a graceful close would wait for it to read, for ever."""
        extensions = (self._scope or {}).get("extensions") or {}
        abort = extensions.get(ABORT_CONNECTION)
        if abort is None:
            return  # not offered by this server: it closes the connection when we return
        abort()
        if self._watcher is not None:
            # The server reports the connection gone on receive(); once it has, returning
            # with the response unfinished is a disconnect to it, not an application error.
            await asyncio.wait((self._watcher,), timeout=1.0)

    def _account(self) -> None:
        """The record's end, handed to the ledger: synchronous, so nothing can cut it short."""
        record = self.record
        self._runtime.drain.unregister(self)
        if self._resume is not None:
            self._close_log()
        if self._watchdog is not None:
            self._watchdog.cancel()
        if record.status is None:
            # Our own task was cancelled (e.g. the server's graceful-shutdown timeout).
            record.status = StreamStatus.SHUTDOWN
        record.finished_mono = time.monotonic()
        record.finished_at = datetime.now(UTC)
        self._span.end(record)
        self._runtime.ledger.submit(record)

    def _close_log(self) -> None:
        """A resumable stream's log always ends: followers are told how, even with nobody here."""
        assert self._resume is not None
        self._resume.cluster.unregister(self.record.stream_id)
        if not self._resume.log.ended:
            status = self.record.status
            error: TokenRelayError = (
                StreamShutdown("the gateway is shutting down")
                if status is None or status is StreamStatus.SHUTDOWN
                else StreamAbandoned(f"the stream ended ({status}) with nobody following it")
            )
            self._encoder.encode_error(error)  # into the log only: the client is gone or told

    async def _release(self, watcher: asyncio.Task[None] | None, sender: Sender) -> None:
        """Close the upstream (which stops generation) and stop watching the client."""
        try:
            if watcher is not None:
                watcher.cancel()
            try:
                # First: the serving stream (whether or not its opening reached us) and its slot.
                await self._failover.aclose()
            except Exception:
                log.debug(
                    "closing the upstream failed", exc_info=True, extra={"request_id": self.record.request_id}
                )
            await sender.aclose()
            if watcher is not None:
                try:
                    await watcher  # cancelled above: it ends at once
                except asyncio.CancelledError:
                    current = asyncio.current_task()
                    if current is not None and current.cancelling():
                        raise  # we are being cancelled ourselves, not just the watcher

        finally:
            # Nothing of this stream refers back to it any more: freed by reference counting,
            # never left to the cyclic garbage collector (whose pauses show in the latency tail).
            self._watcher = None
            if self._counted:
                gone = self._client_gone_at
                aborted_in = time.monotonic() - gone if gone is not None else None
                self._runtime.metrics.stream_relayed(self.record.model, aborted_in)

    # -- racing phases against the stop signal ----------------------------------------------

    def request_stop(self, status: StreamStatus, error: TokenRelayError | None = None) -> None:
        """End the stream from outside the running phase (first caller wins)."""
        self._stop.request(status, error)

    async def _watch_client(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                if self._resume is not None and self._sender is not None:
                    # Resumable: generation goes on into the log; a client may come back (on any
                    # replica) within the grace period. Nobody does: the upstream is aborted.
                    self._sender.detach()
                    await self._resume.cluster.wait_abandoned(self.record.stream_id)
                self._client_gone_at = time.monotonic()
                self.request_stop(StreamStatus.CLIENT_DISCONNECTED)
                return
