"""The live summary behind ``GET /v1/admin/summary``: a small JSON view of the same
Prometheus metrics ``/metrics`` exposes (summed over workers in multiprocess mode).

Counts are since the gateway started (as on ``/metrics``); ``streams_per_second`` is over the
last ~10 s, from the streams counter read once a second by :class:`StreamRate` (a task the app
owns: nothing is added to the per-stream path). TTFT quantiles are interpolated within the
histogram's buckets, as Prometheus's ``histogram_quantile`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import defaultdict, deque
from collections.abc import Iterable
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Any

from prometheus_client.metrics_core import Metric

from tokenrelay.observability.metrics import Metrics, NoMetrics

log = logging.getLogger(__name__)

_STREAMS = "tokenrelay_streams_total"
_TTFT_BUCKETS = "tokenrelay_time_to_first_token_seconds_bucket"
# tokenrelay_deployment_state's states, as the summary names them.
_STATE_NAMES = {"healthy": "up"}
_WORST = {"healthy": 0, "probing": 1, "ejected": 2}


class Samples:
    """The samples of some metric families, queryable by name and labels."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._rows: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
        for family in families:
            for sample in family.samples:
                self._rows[sample.name].append((sample.labels, sample.value))

    def total(self, name: str, **match: str) -> float:
        """``name`` summed over the samples whose labels include ``match``."""
        return sum(value for labels, value in self._rows.get(name, ()) if _matches(labels, match))

    def by(self, name: str, *label: str, **match: str) -> dict[tuple[str, ...], float]:
        """``name`` summed per value of ``label`` (a tuple of labels), over samples matching ``match``."""
        out: dict[tuple[str, ...], float] = defaultdict(float)
        for labels, value in self._rows.get(name, ()):
            if _matches(labels, match):
                out[tuple(labels.get(each, "") for each in label)] += value
        return out

    def buckets(self, name: str, **match: str) -> dict[float, float]:
        """Cumulative bucket counts of a histogram by upper bound (``le``), summed over ``match``."""
        return {float(le): count for (le,), count in self.by(name, "le", **match).items()}


def _matches(labels: dict[str, str], match: dict[str, str]) -> bool:
    return all(labels.get(name) == value for name, value in match.items())


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """The ``q`` quantile of cumulative ``buckets`` (upper bound → count), or None if empty."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower  # beyond the last finite bucket: its bound is all that is known
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = bound, count
    return lower


def _ttft_ms(buckets: dict[float, float]) -> dict[str, float] | None:
    p50, p99 = quantile(0.5, buckets), quantile(0.99, buckets)
    if p50 is None or p99 is None:
        return None
    return {"p50": round(p50 * 1000, 1), "p99": round(p99 * 1000, 1)}


class StreamRate:
    """Reads the streams counter every ``interval`` seconds and keeps ~``window`` seconds of
    readings, so that a summary can say how many streams finished per second lately."""

    def __init__(self, metrics: Metrics, *, window: float = 10.0, interval: float = 1.0) -> None:
        self._metrics = metrics
        self._window = window
        self._interval = interval
        self._readings: deque[tuple[float, float]] = deque()
        self._task: asyncio.Task[None] | None = None
        self.started_mono = time.monotonic()

    def start(self) -> None:
        """Begin sampling (a task of this event loop)."""
        self._task = asyncio.create_task(self._run(), name="stream-rate-sampler")

    async def stop(self) -> None:
        """Stop sampling."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def total(self) -> float:
        """Streams finished so far (blocking file reads in multiprocess mode)."""
        if self._metrics.multiprocess_dir is None:
            # The one counter, not the whole registry: this runs every second.
            return Samples(self._metrics.streams.collect()).total(_STREAMS)
        return Samples(self._metrics.families()).total(_STREAMS)

    def record(self, now: float, total: float) -> None:
        """Keep a reading; forget those no longer needed for a ``window``-long span."""
        readings = self._readings
        readings.append((now, total))
        while len(readings) > 1 and readings[1][0] <= now - self._window:
            readings.popleft()

    def per_second(self, now: float, total: float) -> float:
        """Streams finished per second between the oldest kept reading and ``(now, total)``."""
        if not self._readings:
            return 0.0
        then, before = self._readings[0]
        if now - then < min(self._interval, 0.5):
            return 0.0
        return round(max(total - before, 0.0) / (now - then), 3)

    async def _run(self) -> None:
        multiprocess = self._metrics.multiprocess_dir is not None
        failing = False
        while True:
            try:
                total = await asyncio.to_thread(self.total) if multiprocess else self.total()
                self.record(time.monotonic(), total)
                failing = False
            except Exception as exc:
                if not failing:  # once per outage, not once a second
                    log.warning("stream rate sampling failed", extra={"error": repr(exc)})
                failing = True
            await asyncio.sleep(self._interval)


def start_stream_rate(metrics: Metrics | NoMetrics, stack: AsyncExitStack) -> StreamRate | None:
    """The app's stream-rate sampler, stopped when ``stack`` closes; None with metrics off."""
    if not isinstance(metrics, Metrics):
        return None
    rate = StreamRate(metrics)
    rate.start()
    stack.push_async_callback(rate.stop)
    return rate


def live_summary(
    metrics: Metrics,
    rate: StreamRate,
    *,
    models: list[str],
    ledger: dict[str, Any] | None,
    local_model: dict[str, Any] | None,
    cluster: dict[str, Any] | None,
) -> dict[str, Any]:
    """The summary (see docs/observability.md); blocking file reads in multiprocess mode."""
    samples = Samples(metrics.families())
    now = time.monotonic()
    streams_total = samples.total(_STREAMS)
    in_flight = samples.by("tokenrelay_streams_in_flight", "model")
    finished = samples.by(_STREAMS, "model")
    errors = samples.by("tokenrelay_upstream_errors_total", "model")
    tokens = samples.by("tokenrelay_tokens_total", "model")
    seen = {name for (name,) in (*in_flight, *finished)}
    return {
        "generated_at": datetime.now(UTC).isoformat(),
        "uptime_seconds": round(now - rate.started_mono, 1),
        "streams_in_flight": _count(samples.total("tokenrelay_streams_in_flight")),
        "streams_total": _count(streams_total),
        "streams_per_second": rate.per_second(now, streams_total),
        "ttft_ms": _ttft_ms(samples.buckets(_TTFT_BUCKETS)),
        "statuses": _counts(samples.by(_STREAMS, "status")),
        "errors": _counts(samples.by("tokenrelay_upstream_errors_total", "class")),
        "disconnects": _counts(samples.by("tokenrelay_client_disconnects_total", "phase")),
        "models": [
            {
                "model": name,
                "in_flight": _count(in_flight.get((name,), 0.0)),
                "streams": _count(finished.get((name,), 0.0)),
                "errors": _count(errors.get((name,), 0.0)),
                "tokens": _count(tokens.get((name,), 0.0)),
                "ttft_ms": _ttft_ms(samples.buckets(_TTFT_BUCKETS, model=name)),
            }
            for name in [*models, *sorted(seen - set(models))]
        ],
        "deployments": _deployments(samples),
        "ledger": {
            "enabled": ledger is not None,
            "state": "disabled" if ledger is None else ledger["state"],
            "spooled_rows": _count(samples.total("tokenrelay_ledger_spooled_rows")),
            "write_failures": _count(samples.total("tokenrelay_ledger_write_failures_total")),
            "dead_lettered": _count(samples.total("tokenrelay_ledger_dead_lettered_rows_total")),
        },
        "local_model": local_model,
        "cluster": cluster,
    }


def _deployments(samples: Samples) -> list[dict[str, Any]]:
    states = samples.by("tokenrelay_deployment_state", "model", "deployment", "state")
    in_flight = samples.by("tokenrelay_deployment_in_flight", "model", "deployment")
    current: dict[tuple[str, str], str] = {}
    # Workers may disagree (each has its own view): the worst state wins.
    for (model, deployment, state), value in sorted(
        states.items(), key=lambda item: _WORST.get(item[0][2], 0)
    ):
        if value >= 1:
            current[(model, deployment)] = _STATE_NAMES.get(state, state)
    return [
        {
            "model": model,
            "deployment": deployment,
            "state": current.get((model, deployment), "unknown"),
            "in_flight": _count(in_flight.get((model, deployment), 0.0)),
        }
        for model, deployment in sorted({*current, *in_flight})
    ]


def _count(value: float) -> int:
    return round(value)


def _counts(values: dict[tuple[str, ...], float]) -> dict[str, int]:
    return {name: _count(value) for (name,), value in sorted(values.items()) if value}
