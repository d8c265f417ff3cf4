"""One stream's clocks in one timer: keep-alives, the slow-client check and the time-outs.

A timer callback rather than a task: one TimerHandle per stream instead of a task and its
frame (memory per idle stream is a target), and nothing puts a time-out around the
upstream's reads (cancelling inside an async generator finalises it). The timer compares
clocks and wakes at the earliest deadline:

* total: the stream's whole life (``total_timeout_seconds``);
* the upstream's silence: the first-token time-out until the first output, the idle time-out
  after it, counted only while the relay waits on the upstream -- time spent blocked on the
  client is not the upstream's silence;
* the client: one write (or keep-alive) blocked for ``client_write_timeout_seconds`` ends the
  stream as ``client_too_slow``;
* a keep-alive once nothing was written for ``keepalive_seconds`` (never during a write).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from tokenrelay.config import ModelConfig
from tokenrelay.errors import TokenRelayError, UpstreamTimeout
from tokenrelay.record import StreamStatus
from tokenrelay.relay.sender import Sender

StopStream = Callable[[StreamStatus, TokenRelayError | None], None]


class Watchdog:
    """Watches one stream's clocks; ``stop`` is called (once) when one runs out."""

    __slots__ = (
        "_keepalive_seconds",
        "_loop",
        "_model",
        "_sender",
        "_started_mono",
        "_stop",
        "_stopped",
        "_timer",
        "_write_timeout",
        "first_output_at",
        "last_data_at",
    )

    def __init__(
        self,
        *,
        model: ModelConfig,
        started_mono: float,
        sender: Sender,
        keepalive_seconds: float,
        write_timeout_seconds: float,
        stop: StopStream,
        stopped: Callable[[], bool],
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._model = model
        self._started_mono = started_mono
        self._sender = sender
        self._keepalive_seconds = keepalive_seconds
        self._write_timeout = write_timeout_seconds
        self._stop = stop
        self._stopped = stopped
        self._timer: asyncio.TimerHandle | None = None
        # First output: a content delta, or tool-call / reasoning progress. Before it the
        # first-token time-out applies; after it, the idle time-out.
        self.first_output_at: float | None = None
        # When the relay last went back to waiting on the upstream (the idle clock's start).
        self.last_data_at = started_mono

    def start(self) -> None:
        """Look at the clocks now, then whenever the next deadline comes."""
        self._on_timer()

    def cancel(self) -> None:
        """Stop watching (the stream is over), and let go of the stream's callbacks: they refer
        to the stream, which refers to this watchdog, a cycle only the garbage collector could
        break (measured: 17 objects per stream left for it, and its pauses in the latency tail)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._stop = _ignore_stop
        self._stopped = _stopped

    def _on_timer(self) -> None:
        self._timer = None
        if self._stopped():
            return
        model, sender = self._model, self._sender
        now = time.monotonic()
        total_at = self._started_mono + model.total_timeout_seconds
        if now >= total_at:
            self._stop(StreamStatus.TIMEOUT, UpstreamTimeout("the stream exceeded its total time-out"))
            return
        never = float("inf")
        blocked_since = sender.blocked_since
        if blocked_since is not None:
            # Blocked on the client: its own deadline runs, the upstream's clocks wait.
            data_deadline, write_deadline = never, blocked_since + self._write_timeout
            if now >= write_deadline:
                self._stop(StreamStatus.CLIENT_TOO_SLOW, None)
                return
        else:
            write_deadline = never
            if self.first_output_at is None:
                data_deadline = self._started_mono + model.first_token_timeout_seconds
                what = "the first token"
            else:
                data_deadline = self.last_data_at + model.idle_timeout_seconds
                what = "the next chunk"
            if now >= data_deadline:
                self._stop(StreamStatus.TIMEOUT, UpstreamTimeout(f"upstream timed out waiting for {what}"))
                return
        ping_at = sender.last_write_at + self._keepalive_seconds
        if now >= ping_at:
            sender.keepalive()
            ping_at = now + self._keepalive_seconds  # one at a time; look again after this one
        wake_at = min(total_at, data_deadline, write_deadline, ping_at)
        self._timer = self._loop.call_later(wake_at - now, self._on_timer)


def _ignore_stop(_status: StreamStatus, _error: TokenRelayError | None) -> None:
    pass


def _stopped() -> bool:
    return True
