"""Figures derived from the alternating rounds and interleaved slices of section 5.

The rounds are paired: every gateway runs once per round (or slice cycle), a few seconds from
the others, so the ratio between two gateways within a round cancels most of the machine's slow
drift; the headline ratios are medians of those round-by-round ratios. ``--baseline`` compares
its gateway with the same machinery.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from report_format import LEDGER_NAMES
from results import Results, Throughput
from stats import median, median_ci, spread
from workload import LEDGER_GATEWAYS


@dataclass
class LedgerRow:
    """One gateway in one workload of the ledger comparison: medians over the rounds."""

    label: str
    runs: list[Throughput]

    @property
    def rate(self) -> float:
        return median(t.rate for t in self.runs)

    @property
    def streams(self) -> float:
        return median(t.streams_per_s for t in self.runs)

    @property
    def cpu_ms(self) -> float:
        return median(t.cpu_ms_per_stream for t in self.runs)

    @property
    def per_cpu_s(self) -> float:
        return median(t.per_cpu_s for t in self.runs)

    @property
    def busy(self) -> float:
        return median(t.target_cpu / t.seconds for t in self.runs)

    @property
    def pg_busy(self) -> float:
        return median(t.pg_cpu / t.seconds for t in self.runs if t.pg_cpu is not None)

    @property
    def pg_ms(self) -> float:
        return median(
            1000 * t.pg_cpu / t.completed for t in self.runs if t.pg_cpu is not None and t.completed
        )

    @property
    def core1(self) -> str:
        sim = median(t.sim_cpu / t.seconds for t in self.runs)
        load = median(t.load_cpu / t.seconds for t in self.runs)
        return f"{100 * sim:.0f} % + {100 * load:.0f} %"

    @property
    def errors(self) -> int:
        return sum(t.errors for t in self.runs)


def ledger_rows(r: Results, key: str, labels: Iterable[str] = LEDGER_GATEWAYS) -> dict[str, LedgerRow]:
    found = {}
    for label in labels:
        runs = sorted((t for t in r.ledger if t.target == label and t.key == key), key=lambda t: t.round_no)
        if runs:
            found[label] = LedgerRow(label, runs)
    return found


def paired(
    r: Results, key: str, label: str, metric: Callable[[Throughput], float], over: str = "gw-off"
) -> list[float]:
    """Per round: ``label``'s metric / ``over``'s (the ledger-off gateway's) in the same round."""
    off = {t.round_no: metric(t) for t in r.ledger if t.target == over and t.key == key}
    return [
        metric(t) / off[t.round_no]
        for t in sorted(r.ledger, key=lambda t: t.round_no)
        if t.target == label and t.key == key and off.get(t.round_no)
    ]


def ledger_noise(r: Results) -> tuple[float, str]:
    """The largest spread between rounds of one gateway in one workload, and where it was."""
    worst, where = math.nan, ""
    for key, metric, unit in (("tput", "rate", "chunks/s"), ("short20", "streams", "streams/s")):
        for label, row in ledger_rows(r, key).items():
            values = [t.rate if metric == "rate" else t.streams_per_s for t in row.runs]
            s = spread(values)
            if not math.isnan(s) and (math.isnan(worst) or s > worst):
                worst, where = (
                    s,
                    f"{LEDGER_NAMES[label]}, {'long' if key == 'tput' else 'short'} streams, {unit}",
                )
    return worst, where


def work(key: str, t: Throughput) -> float:
    """What a workload delivers: chunks/s for long streams, streams/s for short ones."""
    return t.rate if key == "tput" else t.streams_per_s


def efficiency(key: str, t: Throughput) -> float:
    """Work per gateway CPU-second: chunks per CPU-s, or streams per CPU-s (1 / CPU per stream)."""
    if key == "tput":
        return t.per_cpu_s
    return t.completed / t.target_cpu if t.target_cpu > 0 else math.nan


@dataclass
class Comparison:
    """One ledger gateway against the ledger-off one, in one workload."""

    key: str
    label: str
    rounds: list[float]  # work / the ledger-off gateway's work, round (or cycle) by round
    efficiency_rounds: list[float]  # the same for work per gateway CPU-second
    of_medians: float  # median work / the ledger-off gateway's median work

    @property
    def ratio(self) -> float:
        """The headline: the median of the round-by-round ratios (paired, so drift cancels)."""
        return median(self.rounds)

    @property
    def efficiency(self) -> float:
        return median(self.efficiency_rounds)

    @property
    def ci(self) -> tuple[float, float, float]:
        """Confidence interval of ``ratio`` (low, high, coverage)."""
        return median_ci(self.rounds)


def compare(r: Results, key: str, label: str) -> Comparison | None:
    rows = ledger_rows(r, key, ("gw-off", label))
    if "gw-off" not in rows or label not in rows:
        return None
    off, other = rows["gw-off"], rows[label]
    return Comparison(
        key=key,
        label=label,
        rounds=paired(r, key, label, lambda t: work(key, t)),
        efficiency_rounds=paired(r, key, label, lambda t: efficiency(key, t)),
        of_medians=median(work(key, t) for t in other.runs) / median(work(key, t) for t in off.runs),
    )


def accounting(r: Results, key: str, store: str = "postgresql") -> tuple[float, float, float] | None:
    """(µs the ledger adds per stream, ledger-off gateway CPU ms per stream, expected work ratio).

    The added CPU comes from bench/ledger_rows.py's paced runs; the base from the ledger-off
    gateway's runs in section 5. A CPU-bound gateway's work ratio is then base / (base + added).
    """
    rows = {row["name"]: row for row in (r.rows_bench or {}).get("summary", [])}
    paced = rows.get(f"paced-{store}")
    off = ledger_rows(r, key).get("gw-off")
    if paced is None or paced["minus_off_us"] is None or off is None:
        return None
    added, base = paced["minus_off_us"], off.cpu_ms
    return added, base, base / (base + added / 1000)
