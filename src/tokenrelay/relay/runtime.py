"""What every stream of a running gateway shares, and the drain that ends them all."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Protocol

from tokenrelay.auth.keys import Authenticator
from tokenrelay.cluster import Cluster
from tokenrelay.config import Settings
from tokenrelay.errors import StreamShutdown, TokenRelayError
from tokenrelay.ledger.tokens import TokenCounter
from tokenrelay.ledger.writer import LedgerWriter
from tokenrelay.limits import RateLimiter
from tokenrelay.limits.budgets import Spending
from tokenrelay.observability.metrics import Metrics, NoMetrics
from tokenrelay.observability.tracing import NoTracing, Tracing
from tokenrelay.record import StreamStatus
from tokenrelay.routing import Routing

log = logging.getLogger(__name__)


@dataclass(slots=True)
class RelayRuntime:
    """What every stream of a running gateway shares. Built by the app's lifespan."""

    settings: Settings
    ledger: LedgerWriter
    counter: TokenCounter
    drain: DrainCoordinator
    metrics: Metrics | NoMetrics
    tracing: Tracing | NoTracing
    routing: Routing
    auth: Authenticator | None = None
    limiter: RateLimiter | None = None
    spending: Spending | None = None
    # Replicas sharing Redis: leases, resumable streams, stop (None: one process alone).
    cluster: Cluster | None = None


class Stoppable(Protocol):
    """A running stream, as the drain sees it."""

    def request_stop(self, status: StreamStatus, error: TokenRelayError | None = None) -> None: ...


class DrainCoordinator:
    """Graceful shutdown: refuse new streams, let running ones finish, then stop the rest."""

    def __init__(self, drain_seconds: float) -> None:
        self.drain_seconds = drain_seconds
        self.draining = False
        self._streams: set[Stoppable] = set()
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

    def register(self, stream: Stoppable) -> None:
        self._streams.add(stream)

    def unregister(self, stream: Stoppable) -> None:
        self._streams.discard(stream)

    def close(self) -> None:
        """Cancel the pending drain deadline, if any."""
        if self._deadline is not None:
            self._deadline.cancel()
