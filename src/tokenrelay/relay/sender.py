"""The one writer of a stream's ASGI ``send``.

Invariants (each one is a test in ``tests/unit/test_sender.py``):

* One message on the wire at a time. The forwarder writes; a keep-alive is started only by
  the stream's watchdog, only while no write is in flight, and a write that comes while a
  keep-alive is on the wire waits for it. Nothing interleaves two messages; nothing is sent
  after the last one; a keep-alive never raises into anyone.
* The response starts late: at the first output or the first keep-alive. Until then encoded
  bytes are held back (an answer that fails before its first token is still an HTTP error),
  and a non-streamed answer is only ever sent whole.
* ``blocked_since`` says whether a write (or keep-alive) is in flight and since when: a client
  that stopped reading is seen by the watchdog, not mistaken for a silent upstream.

``writing`` is the forwarder's claim on ``send``: it is set before a write waits for a
keep-alive already on the wire, so the watchdog cannot slip a new one in between.
"""

from __future__ import annotations

import asyncio
import logging
import time

from starlette.types import Message, Scope, Send

from tokenrelay.observability.metrics import Metrics, NoMetrics

log = logging.getLogger(__name__)

# scope["extensions"] key of the server's own ``send``, before any middleware wrapped it.
WIRE_SEND = "tokenrelay.wire_send"


def wire_send_of(scope: Scope) -> Send | None:
    """The server's unwrapped ``send``, where the app put it in the scope (``app.TokenRelayApp``)."""
    extensions = scope.get("extensions")
    return extensions.get(WIRE_SEND) if extensions else None


async def _nowhere(_message: Message) -> None:
    return None


class Sender:
    """Owns ``send``, the bytes held back before the first output, and keep-alives."""

    __slots__ = (
        "_headers",
        "_keepalive",
        "_metrics",
        "_ping",
        "_send",
        "_streaming",
        "_wire",
        "closed",
        "holding",
        "last_write_at",
        "pending",
        "started",
        "writing",
    )

    def __init__(
        self,
        send: Send,
        *,
        headers: list[tuple[bytes, bytes]],
        streaming: bool,
        keepalive: bytes,
        metrics: Metrics | NoMetrics,
        wire_send: Send | None = None,
    ) -> None:
        self._send = send
        # Body chunks after the response has started go straight to the server: the
        # middleware around ``send`` (request id, Starlette's two error handlers) only acts on
        # the start message, and crossing their three wrappers cost about 6 % of the gateway's
        # CPU per chunk (BENCHMARKS.md, "Where the gateway's CPU goes").
        self._wire = wire_send or send
        self._headers = headers
        self._streaming = streaming
        self._keepalive = keepalive
        self._metrics = metrics
        self._ping: asyncio.Task[None] | None = None
        # Encoded bytes not sent yet; encoders append here.
        self.pending = bytearray()
        # Before the first output: pending bytes wait (see the module docstring).
        self.holding = True
        self.started = False
        self.closed = False
        self.writing = False
        self.last_write_at = time.monotonic()

    # -- the forwarder's side ----------------------------------------------------------------

    def release(self) -> None:
        """The first output arrived: pending bytes may go from now on."""
        self.holding = False

    @property
    def blocked_since(self) -> float | None:
        """When the write now in flight began; None when nothing is being written."""
        return self.last_write_at if self.writing or self._ping is not None else None

    async def flush(self) -> None:
        """Send the pending bytes, unless they are still held back."""
        if not (self.pending and not self.holding and self._streaming):
            return
        data = bytes(self.pending)
        self.pending.clear()
        if not self.started or self._ping is not None:
            await self._body(data, more=True)
            return
        # The common case, once per upstream read: straight to the wire (what _body does).
        self.writing = True
        self.last_write_at = time.monotonic()
        try:
            await self._wire({"type": "http.response.body", "body": data, "more_body": True})
        finally:
            self.writing = False

    async def finish(self, data: bytes) -> None:
        """The final bytes, after anything still pending (e.g. an answer with no content)."""
        if self.pending:
            data = bytes(self.pending) + data
            self.pending.clear()
        await self._body(data, more=False)

    async def fail(self, response: tuple[int, list[tuple[bytes, bytes]], bytes], event: bytes) -> None:
        """End with an error: ``response`` if nothing was sent yet, else ``event`` in the stream."""
        if self.closed:
            return  # the response is complete: there is nothing left to say it in
        try:
            await self._claim()  # a keep-alive in flight may be starting the response: decide after it
            if self.started:
                data = bytes(self.pending) + event
                await self._send_now({"type": "http.response.body", "body": data, "more_body": False})
            else:
                status, headers, body = response
                self.started = True
                await self._send_now({"type": "http.response.start", "status": status, "headers": headers})
                await self._send_now({"type": "http.response.body", "body": body, "more_body": False})
            self.closed = True
        finally:
            self.pending.clear()
            self.writing = False

    async def _body(self, data: bytes, *, more: bool) -> None:
        send = self._send
        try:
            self.writing = True  # claimed: no keep-alive starts from now on
            if self._ping is not None:
                await asyncio.wait((self._ping,))  # one already on the wire may start the response
            self.last_write_at = time.monotonic()
            if not self.started:
                self.started = True
                await send({"type": "http.response.start", "status": 200, "headers": self._headers})
            await send({"type": "http.response.body", "body": data, "more_body": more})
            if not more:
                self.closed = True
        finally:
            self.writing = False

    async def _claim(self) -> None:
        """Become the writer: no keep-alive starts from now on; one already on the wire ends first."""
        self.writing = True
        ping = self._ping
        if ping is not None:
            await asyncio.wait((ping,))

    async def _send_now(self, message: Message) -> None:
        self.last_write_at = time.monotonic()
        await self._send(message)

    def detach(self) -> None:
        """The client left a resumable stream: from now on every write goes nowhere."""
        self._send = self._wire = _nowhere
        self.closed = True  # no keep-alives

    # -- the watchdog's side -----------------------------------------------------------------

    def keepalive(self) -> None:
        """Send a keep-alive if no write is in flight (called from the watchdog's timer)."""
        if self.writing or self._ping is not None or self.closed or not self._streaming:
            return
        self._ping = asyncio.ensure_future(self._send_keepalive())

    @property
    def keepalive_in_flight(self) -> bool:
        return self._ping is not None

    async def _send_keepalive(self) -> None:
        try:
            if self.closed:
                return
            # The response starts with this ping, so nothing is held back any more: an error
            # from here on is an event in the stream either way.
            data = bytes(self.pending) + self._keepalive
            self.pending.clear()
            self.holding = False
            if not self.started:
                self.started = True
                await self._send_now({"type": "http.response.start", "status": 200, "headers": self._headers})
            await self._send_now({"type": "http.response.body", "body": data, "more_body": True})
            self._metrics.keepalive_sent()
        except OSError:
            pass  # the client is gone; the disconnect watcher ends the stream
        except Exception:
            # Never into anyone: the stream's own writes will meet whatever this was.
            log.exception("keep-alive failed")
        finally:
            self._ping = None

    async def aclose(self) -> None:
        """Stop a keep-alive still in flight (the stream is over)."""
        ping = self._ping
        if ping is not None:
            ping.cancel()
            await asyncio.wait((ping,))
