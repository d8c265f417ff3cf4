"""``tokenrelay top``: a live terminal view of a running gateway, read from its ``/metrics``.

Per model: streams in flight, streams finished per second, completion tokens per second, time
to first token p50/p99 and errors and disconnects per second, all over the last interval;
below, the ledger's backlog. Quantiles are interpolated within histogram buckets, as
Prometheus's ``histogram_quantile`` does.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from tokenrelay.observability.summary import quantile

Labels = frozenset[tuple[str, str]]


@dataclass
class Scrape:
    """The samples of one ``/metrics`` read and when it was taken."""

    at: float
    samples: dict[tuple[str, Labels], float] = field(default_factory=dict)

    def by_model(self, name: str, **labels: str) -> dict[str, float]:
        """``name`` summed per ``model`` label over samples that include ``labels``."""
        wanted = set(labels.items())
        out: dict[str, float] = defaultdict(float)
        for (sample, sample_labels), value in self.samples.items():
            if sample == name and wanted <= sample_labels:
                out[dict(sample_labels).get("model", "")] += value
        return out

    def total(self, name: str) -> float:
        """``name`` summed over all its samples."""
        return sum(v for (sample, _), v in self.samples.items() if sample == name)

    def buckets(self, name: str, model: str) -> dict[float, float]:
        """Cumulative bucket counts of histogram ``name`` for ``model``, by upper bound."""
        out: dict[float, float] = defaultdict(float)
        for (sample, labels), value in self.samples.items():
            label = dict(labels)
            if sample == f"{name}_bucket" and label.get("model") == model:
                out[float(label["le"])] += value
        return out


def scrape(url: str, client: httpx.Client) -> Scrape:
    """Read ``/metrics`` once."""
    response = client.get(f"{url.rstrip('/')}/metrics")
    response.raise_for_status()
    result = Scrape(at=time.monotonic())
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            result.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return result


def _rate(now: dict[str, float], before: dict[str, float], model: str, seconds: float) -> float:
    return max(now.get(model, 0.0) - before.get(model, 0.0), 0.0) / seconds


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}"


def view(before: Scrape, now: Scrape, url: str) -> Group:
    """The table for the interval between two scrapes."""
    seconds = max(now.at - before.at, 1e-6)
    in_flight = now.by_model("tokenrelay_streams_in_flight")
    finished = (now.by_model("tokenrelay_streams_total"), before.by_model("tokenrelay_streams_total"))
    tokens = (
        now.by_model("tokenrelay_tokens_total", kind="completion"),
        before.by_model("tokenrelay_tokens_total", kind="completion"),
    )
    errors = (
        now.by_model("tokenrelay_upstream_errors_total"),
        before.by_model("tokenrelay_upstream_errors_total"),
    )
    gone = (
        now.by_model("tokenrelay_client_disconnects_total"),
        before.by_model("tokenrelay_client_disconnects_total"),
    )
    models = sorted(set(in_flight) | set(finished[0]))
    table = Table(title=f"tokenrelay at {url} — last {seconds:.1f} s", title_justify="left")
    for column in (
        "model",
        "in flight",
        "streams/s",
        "tokens/s",
        "TTFT p50 ms",
        "TTFT p99 ms",
        "errors/s",
        "left/s",
    ):
        table.add_column(column, justify="left" if column == "model" else "right")
    for model in models:
        ttft_now = now.buckets("tokenrelay_time_to_first_token_seconds", model)
        ttft_before = before.buckets("tokenrelay_time_to_first_token_seconds", model)
        window = {le: count - ttft_before.get(le, 0.0) for le, count in ttft_now.items()}
        table.add_row(
            model,
            f"{in_flight.get(model, 0):.0f}",
            f"{_rate(*finished, model, seconds):.1f}",
            f"{_rate(*tokens, model, seconds):.0f}",
            _ms(quantile(0.5, window)),
            _ms(quantile(0.99, window)),
            f"{_rate(*errors, model, seconds):.2f}",
            f"{_rate(*gone, model, seconds):.2f}",
        )
    pings = now.total("tokenrelay_keepalive_pings_total") - before.total("tokenrelay_keepalive_pings_total")
    ledger = Text(
        f"ledger: {now.total('tokenrelay_ledger_spooled_rows'):.0f} rows spooled, "
        f"{now.total('tokenrelay_ledger_write_failures_total'):.0f} lost · "
        f"keep-alive pings {pings / seconds:.1f}/s"
    )
    return Group(table, ledger)


def run(url: str, interval: float, once: bool) -> int:
    """Show the view every ``interval`` seconds until Ctrl-C (or once, after one interval)."""
    console = Console()
    with httpx.Client(timeout=5) as client:
        try:
            before = scrape(url, client)
        except httpx.HTTPError as exc:
            console.print(f"tokenrelay top: cannot read {url}/metrics: {exc}")
            return 1
        if once:
            time.sleep(interval)
            console.print(view(before, scrape(url, client), url))
            return 0
        try:
            with Live(console=console, auto_refresh=False) as live:
                while True:
                    time.sleep(interval)
                    now = scrape(url, client)
                    live.update(view(before, now, url), refresh=True)
                    before = now
        except KeyboardInterrupt:
            return 0
        except httpx.HTTPError as exc:
            console.print(f"tokenrelay top: lost {url}: {exc}")
            return 1
