"""Report section "Against the baseline" (``--baseline``): this checkout's ledger-off gateway
against the same gateway running an older commit's code, both measured in the same run.

Every figure is a ratio this / baseline with a verdict; beside it, where the run has one, the
same ratio between two identical processes of this checkout (gw-off and gw-off2, the A/A
control): a change no further from 1 than that is not distinguishable from noise on this machine.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from analysis import paired
from report_format import table
from results import Latency, Results, Throughput
from stats import median, pct
from workload import AA_GATEWAY, BASELINE_GATEWAY, MODELS

WITHIN = 0.05  # a change smaller than this either way is "within 5 %"


@dataclass
class Figure:
    what: str
    baseline: float
    this: float
    ratio: float  # this / baseline: the median of the round-by-round ratios where there are rounds
    lower_is_better: bool
    cell: Callable[[float], str]
    aa: float = math.nan  # the same ratio, gw-off / gw-off2
    rounds: list[float] = field(default_factory=list)
    aa_rounds: list[float] = field(default_factory=list)
    design: str = ""  # how the rounds ran, for the table

    @property
    def title(self) -> str:
        return f"{self.what} ({self.design})" if self.design else self.what


def ratio(this: float, baseline: float) -> float:
    """this / baseline; NaN unless both are positive (an added latency can come out at or below 0)."""
    return this / baseline if this > 0 and baseline > 0 else math.nan


def change(f: Figure) -> str:
    if math.isnan(f.ratio):
        return "n/a"
    if abs(f.ratio - 1) <= WITHIN:
        return f"within {100 * WITHIN:.0f} %"
    better = f.ratio < 1 if f.lower_is_better else f.ratio > 1
    text = (
        f"improved by {100 * abs(f.ratio - 1):.1f} %"
        if better
        else f"**regressed by {100 * abs(f.ratio - 1):.1f} %**"
    )
    if not math.isnan(f.aa) and abs(f.ratio - 1) <= abs(f.aa - 1):
        text += " (no further from 1 than the A/A control)"
    return text


def added_ms(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x * 1000:+.3f} ms"


def count(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:,.0f}"


def added(lat: Latency | None, direct: Latency, q: float) -> float:
    """What the gateway adds to the time to first token at quantile ``q``: its minus direct's."""
    return pct(lat.ttft, q) - pct(direct.ttft, q) if lat and lat.ttft else math.nan


def per_cpu_s(lat: Latency | None) -> float:
    return lat.events / lat.target_cpu if lat and lat.target_cpu > 0 else math.nan


def latency_figures(r: Results) -> list[Figure]:
    """TTFT added at 1 and 200 streams; chunks per gateway CPU-second at 200 streams."""
    assert r.baseline is not None
    out: list[Figure] = []
    for load, mine, theirs in (
        ("1 stream", r.c1, r.baseline.c1),
        ("200 paced streams at 50 tok/s", r.c200, r.baseline.c200),
    ):
        # The 200-stream rounds pool this checkout's runs with the baseline's; 1 stream interleaves.
        direct, off = mine.get("direct"), theirs.get("gw-off") or mine.get("gw-off")
        base, aa = theirs.get(BASELINE_GATEWAY), theirs.get(AA_GATEWAY)
        if not (direct and off and base and direct.ttft):
            continue
        for q, name in ((0.5, "p50"), (0.99, "p99")):
            this = added(off, direct, q)
            out.append(
                Figure(
                    f"TTFT added at {name}, {load}, `/v1/chat/completions`",
                    added(base, direct, q),
                    this,
                    ratio(this, added(base, direct, q)),
                    True,
                    added_ms,
                    aa=ratio(this, added(aa, direct, q)),
                )
            )
        if load != "1 stream":
            out.append(
                Figure(
                    f"Chunks per gateway CPU-second, {load} (one event per upstream read)",
                    per_cpu_s(base),
                    per_cpu_s(off),
                    ratio(per_cpu_s(off), per_cpu_s(base)),
                    False,
                    count,
                    aa=ratio(per_cpu_s(off), per_cpu_s(aa)),
                )
            )
    return out


def round_figures(r: Results) -> list[Figure]:
    """From section 5's alternating rounds (long streams) and interleaved slices (short streams)."""
    conc = r.profile.ledger_concurrency
    long = f"fast batched upstream (`sim?{MODELS['tput']}`), {conc} streams"
    specs: list[tuple[str, Callable[[Throughput], float], str, bool, Callable[[float], str]]] = [
        ("tput", lambda t: t.rate, f"Throughput, chunks/s, {long}", False, count),
        ("tput", lambda t: t.per_cpu_s, f"Chunks per gateway CPU-second, {long}", False, count),
        (
            "short20",
            lambda t: t.cpu_ms_per_stream,
            f"Gateway CPU per short stream (`sim?{MODELS['short20']}`), {conc} connections",
            True,
            lambda x: "n/a" if math.isnan(x) else f"{x:.3f} ms",
        ),
    ]
    out = []
    for key, metric, what, lower, cell in specs:
        base_runs = [t for t in r.ledger if t.target == BASELINE_GATEWAY and t.key == key]
        off_runs = [t for t in r.ledger if t.target == "gw-off" and t.key == key]
        if not base_runs or not off_runs:
            continue
        rounds = paired(r, key, "gw-off", metric, over=BASELINE_GATEWAY)
        aa_rounds = paired(r, key, "gw-off", metric, over=AA_GATEWAY)
        design = "alternating rounds" if key == "tput" else "interleaved slices"
        out.append(
            Figure(
                what,
                median(metric(t) for t in base_runs),
                median(metric(t) for t in off_runs),
                median(rounds),
                lower,
                cell,
                aa=median(aa_rounds),
                rounds=rounds,
                aa_rounds=aa_rounds,
                design=f"median of {len(rounds)} {design}",
            )
        )
    return out


def memory_figure(r: Results) -> Figure | None:
    assert r.baseline is not None
    base, off = r.baseline.mem, next((m for m in r.mem if m.target == "gw-mem"), None)
    if base is None or off is None:
        return None
    return Figure(
        f"RSS per idle open stream at {off.streams:,} streams, a process that serves only this test",
        base.kib_per_stream,
        off.kib_per_stream,
        ratio(off.kib_per_stream, base.kib_per_stream),
        True,
        lambda x: "n/a" if math.isnan(x) else f"{x:.1f} KiB",
    )


def render_baseline(r: Results) -> list[str]:
    b = r.baseline
    if b is None:
        return []
    p = r.profile
    out = ["## Against the baseline", ""]
    this = (
        "this checkout"
        + (f" at `{r.commit}`" if r.commit else "")
        + (", with the uncommitted changes in its `src/`" if b.this_dirty else "")
    )
    out += [
        f"Baseline: {b.name} ({b.subject}), checked out as a detached git worktree in the "
        "scratch directory. Two more gateways run its code (their `PYTHONPATH` is the worktree's `src/`, "
        "checked), with the settings, environment and core of the ledger-off gateway: one measured "
        "beside it, one that serves only the memory test. *This commit*: the ledger-off gateway of "
        f"{this}. Where they come from:",
        "",
        "- TTFT at 1 stream: the 1-stream run of section 1, the baseline's gateway and the 2nd "
        f"ledger-off process interleaved with the other targets request by request ({p.c1_requests} "
        "requests each);",
        f"- 200 paced streams: {p.baseline_c200_rounds} alternating round(s) of {p.c200_seconds:g} s "
        "each of the ledger-off gateway, the baseline's and the 2nd ledger-off process, the order "
        "rotating; each one's samples pooled over its rounds (section 1's row is a run of its own);",
        "- throughput and CPU per short stream: the baseline's gateway is one more gateway in section 5's "
        "alternating rounds and interleaved slices;",
        "- memory: measured like section 3's gateway row, right after it.",
        "",
        "*This / baseline*: for rounds and slices the median of the round-by-round ratios, else the "
        "ratio of the two figures. *A/A control*: the same ratio between two identical ledger-off "
        "processes of this checkout; a change no further from 1 than that cannot be told from noise. "
        f"Verdict: within {100 * WITHIN:.0f} % either way, else improved or regressed by the change "
        "(lower is better for times, CPU and memory).",
        "",
    ]
    figures = [*latency_figures(r), *round_figures(r)]
    mem = memory_figure(r)
    if mem:
        figures.append(mem)
    rows = [
        [
            f.title,
            f.cell(f.baseline),
            f.cell(f.this),
            "n/a" if math.isnan(f.ratio) else f"x{f.ratio:.3f}",
            change(f),
            "" if math.isnan(f.aa) else f"x{f.aa:.3f}",
        ]
        for f in figures
    ]
    out += table(
        ["Measurement", "Baseline", "This commit", "This / baseline", "Verdict", "A/A control"], rows
    )
    notes = [
        f"- {f.what}, this / baseline round by round: "
        + ", ".join(f"{x:.3f}" for x in f.rounds)
        + (f" (A/A: {', '.join(f'{x:.3f}' for x in f.aa_rounds)})" if f.aa_rounds else "")
        for f in figures
        if f.rounds
    ]
    errors = sum(t.errors for t in r.ledger if t.target == BASELINE_GATEWAY)
    errors += sum(lat.errors for lat in (*b.c1.values(), *b.c200.values()) if lat.target == BASELINE_GATEWAY)
    if errors:
        notes.append(f"- The baseline's gateway had **{errors}** failed requests in these runs.")
    if b.mem and b.mem.opened != b.mem.streams:
        notes.append(
            f"- Memory: only {b.mem.opened:,} of the baseline's {b.mem.streams:,} streams got a delta."
        )
    return [*out, "", *notes, ""] if notes else [*out, ""]
