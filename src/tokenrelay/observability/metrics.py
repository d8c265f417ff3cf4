"""Prometheus metrics (prometheus-client), correct with ``--workers N``.

Everything is recorded once per stream (at its start and its end), per keep-alive ping, and
per ledger event: nothing per chunk. Labels are bounded: the model and the deployment (from
the configuration), the end status, the phase, the failure class, the usage source. Never a
request id or a key.

With several workers ``tokenrelay serve`` sets ``PROMETHEUS_MULTIPROC_DIR`` before the workers
start; prometheus-client then keeps values in memory-mapped files there and ``/metrics`` sums
them over all workers (gauges: over the live ones).
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.metrics_core import Metric

from tokenrelay.record import StreamRecord, StreamStatus

__all__ = ["CONTENT_TYPE", "Metrics", "NoMetrics"]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_DEPLOYMENT_STATES = ("healthy", "ejected", "probing")
# LLM latencies: a fast first token is 50 ms, a long answer two minutes.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# Client gone to upstream closed: milliseconds when it works, seconds when it does not.
ABORT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


def upstream_failure(record: StreamRecord) -> str | None:
    """The upstream failure class of a finished stream, or None if the upstream did not fail."""
    if record.status not in (StreamStatus.UPSTREAM_ERROR, StreamStatus.TIMEOUT):
        return None
    return record.upstream_failure


class Metrics:
    """The gateway's metrics, in a registry of their own (one per app)."""

    def __init__(self) -> None:
        self.multiprocess_dir = os.environ.get(MULTIPROC_ENV) or None
        self.registry = CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        r = self.registry
        self.streams_in_flight = Gauge(
            "tokenrelay_streams_in_flight",
            "Streams being relayed now",
            ["model"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.streams = Counter(
            "tokenrelay_streams", "Streams finished, by end status", ["model", "status"], registry=r
        )
        self.ttft = Histogram(
            "tokenrelay_time_to_first_token_seconds",
            "From admission to the first content token",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.duration = Histogram(
            "tokenrelay_stream_duration_seconds",
            "From admission to the end of the stream",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "tokenrelay_tokens",
            "Tokens of finished streams, by kind (prompt, completion) and where the count came from",
            ["model", "kind", "source"],
            registry=r,
        )
        self.upstream_errors = Counter(
            "tokenrelay_upstream_errors",
            "Upstream failures by class: rate_limited (429), server_error (5xx), timeout, connection, "
            "mid_stream_drop, mid_stream_error, protocol, rejected (the upstream's 4xx), auth, "
            "overloaded (529), other",
            ["model", "class"],
            registry=r,
        )
        self.disconnects = Counter(
            "tokenrelay_client_disconnects",
            "Clients that left before their stream ended, by phase",
            ["model", "phase"],
            registry=r,
        )
        self.abort_latency = Histogram(
            "tokenrelay_abort_latency_seconds",
            "From noticing the client left to the upstream connection closed",
            buckets=ABORT_BUCKETS,
            registry=r,
        )
        self.slow_clients = Counter(
            "tokenrelay_slow_clients",
            "Streams ended because the client stopped reading (one write blocked for "
            "client_write_timeout_seconds)",
            ["model"],
            registry=r,
        )
        self.attempts = Counter(
            "tokenrelay_upstream_attempts",
            "Upstream attempts by deployment and outcome: ok (it served), a failure class, or "
            "interrupted / client_disconnected / shutdown (the stream ended during the attempt)",
            ["model", "deployment", "outcome"],
            registry=r,
        )
        self.failovers = Counter(
            "tokenrelay_failovers",
            "Attempts that failed before the first token and were followed by another deployment",
            ["model", "deployment"],
            registry=r,
        )
        self.deployment_up = Gauge(
            "tokenrelay_deployment_state",
            "1 for the state a deployment is in (healthy, ejected, probing), per worker's view",
            ["model", "deployment", "state"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.deployment_in_flight_gauge = Gauge(
            "tokenrelay_deployment_in_flight",
            "Attempts open on a deployment now",
            ["model", "deployment"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.keepalive_pings = Counter("tokenrelay_keepalive_pings", "Keep-alive pings sent", registry=r)
        self.stream_follows = Counter(
            "tokenrelay_stream_follows",
            "GET /v1/streams/{id}: resumes and extra followers of resumable streams, by outcome",
            ["outcome"],
            registry=r,
        )
        self.stream_followers = Gauge(
            "tokenrelay_stream_followers",
            "Clients following a resumable stream through GET /v1/streams/{id} now",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.ledger_spooled_rows = Gauge(
            "tokenrelay_ledger_spooled_rows",
            "Usage rows waiting in the spool for the database",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.ledger_write_failures = Counter(
            "tokenrelay_ledger_write_failures",
            "Usage rows neither written nor spooled (lost; their request ids are in the log)",
            registry=r,
        )
        self.ledger_rows_dead_lettered = Counter(
            "tokenrelay_ledger_dead_lettered_rows",
            "Usage rows the database refused, kept in the dead-letter file",
            registry=r,
        )

    # -- recording -----------------------------------------------------------------------------

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, resolved once: ``labels()`` takes a lock and builds a key
        each time (measured: most of the metrics' cost per stream); label values are bounded by
        the configuration, so the cache is too."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def stream_started(self, model: str) -> None:
        """A stream was admitted."""
        self._child(self.streams_in_flight, model).inc()

    def stream_relayed(self, model: str, abort_seconds: float | None) -> None:
        """The stream's connections are closed (the ledger row and the counts come later)."""
        self._child(self.streams_in_flight, model).dec()
        if abort_seconds is not None:
            self.abort_latency.observe(abort_seconds)

    def keepalive_sent(self) -> None:
        """A keep-alive went out."""
        self.keepalive_pings.inc()

    def follower(self, delta: int, outcome: str | None = None) -> None:
        """A follower attached (+1) or left (-1, with how its follow ended)."""
        self.stream_followers.inc(delta)
        if outcome is not None:
            self.stream_follows.labels(outcome).inc()

    def stream_finished(self, record: StreamRecord) -> None:
        """A stream's outcome, once its usage is known (called by the ledger writer)."""
        model = record.model
        child = self._child
        child(self.streams, model, str(record.status)).inc()
        if record.ttft_ms is not None:
            child(self.ttft, model).observe(record.ttft_ms / 1000)
        if record.duration_ms is not None:
            child(self.duration, model).observe(record.duration_ms / 1000)
        source = str(record.usage_source) if record.usage_source is not None else "none"
        if record.prompt_tokens:
            child(self.tokens, model, "prompt", source).inc(record.prompt_tokens)
        if record.completion_tokens:
            child(self.tokens, model, "completion", source).inc(record.completion_tokens)
        if record.status is StreamStatus.CLIENT_DISCONNECTED and record.disconnect_phase is not None:
            child(self.disconnects, model, str(record.disconnect_phase)).inc()
        elif record.status is StreamStatus.CLIENT_TOO_SLOW:
            child(self.slow_clients, model).inc()
        failure = upstream_failure(record)
        if failure is not None:
            child(self.upstream_errors, model, failure).inc()
        log = record.attempt_log
        for index, (deployment, outcome) in enumerate(log):
            child(self.attempts, model, deployment, outcome).inc()
            if index < len(log) - 1:
                child(self.failovers, model, deployment).inc()

    # -- deployments (routing.RoutingEvents) ------------------------------------------------------

    def deployment_state(self, model: str, deployment: str, state: str) -> None:
        """A deployment changed state: its gauge says 1 for the new state, 0 for the others."""
        for each in _DEPLOYMENT_STATES:
            self._child(self.deployment_up, model, deployment, each).set(1 if each == state else 0)

    def deployment_in_flight(self, model: str, deployment: str, delta: int) -> None:
        """An attempt on ``deployment`` began (+1) or ended (-1)."""
        self._child(self.deployment_in_flight_gauge, model, deployment).inc(delta)

    # -- the ledger (ledger.store.LedgerEvents) -------------------------------------------------

    def spooled_rows(self, rows: int) -> None:
        """Rows waiting in the spool now."""
        self.ledger_spooled_rows.set(rows)

    def rows_lost(self, rows: int) -> None:
        """Rows neither written nor spooled."""
        self.ledger_write_failures.inc(rows)

    def row_dead_lettered(self) -> None:
        """A row the database refused went to the dead-letter file."""
        self.ledger_rows_dead_lettered.inc()

    # -- exposition ----------------------------------------------------------------------------

    def _readable(self) -> CollectorRegistry:
        """This registry, or in multiprocess mode one summing every worker's files."""
        if self.multiprocess_dir is None:
            return self.registry
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
        return registry

    def exposition(self) -> bytes:
        """The text format, summed over all workers in multiprocess mode (blocking file reads)."""
        return generate_latest(self._readable())

    def families(self) -> list[Metric]:
        """The same values as :meth:`exposition`, as metric families with their samples (read
        only; blocking file reads in multiprocess mode)."""
        return list(self._readable().collect())

    def close(self) -> None:
        """This worker is going away: its live gauges stop counting."""
        if self.multiprocess_dir is not None:
            multiprocess.mark_process_dead(os.getpid(), self.multiprocess_dir)  # type: ignore[no-untyped-call]


class NoMetrics:
    """Metrics turned off: the same calls, doing nothing (no branch on the hot path)."""

    multiprocess_dir = None

    def stream_started(self, model: str) -> None:
        pass

    def stream_relayed(self, model: str, abort_seconds: float | None) -> None:
        pass

    def keepalive_sent(self) -> None:
        pass

    def follower(self, delta: int, outcome: str | None = None) -> None:
        pass

    def stream_finished(self, record: StreamRecord) -> None:
        pass

    def deployment_state(self, model: str, deployment: str, state: str) -> None:
        pass

    def deployment_in_flight(self, model: str, deployment: str, delta: int) -> None:
        pass

    def spooled_rows(self, rows: int) -> None:
        pass

    def rows_lost(self, rows: int) -> None:
        pass

    def row_dead_lettered(self) -> None:
        pass

    def close(self) -> None:
        pass
