"""Report sections on deployments and the Messages API: 11 selection, 12 failover, 13 ``/v1/messages``."""

from __future__ import annotations

import math

from processes import GATEWAY_CORE
from report_format import describe, table, verdict
from results import Latency, Results, Throughput
from stats import median, ms, pct
from workload import FAILOVER_PREFIXES, MODELS, NEVER_EJECT

TARGET_SELECTION_US = 20.0  # selection overhead per request
LATER_MESSAGES_RATIO = 1.15  # the later target: /v1/messages within 15 % per chunk
MESSAGES = ("gw-off-msg", "gw-off-msg-anth")
# Client path and upstream protocol of section 13's rows.
PATHS = {
    "direct": ("`/v1/chat/completions` (simulator, direct)", "-"),
    "direct-msg": ("`/v1/messages` (simulator, direct)", "-"),
    "gw-off": ("`/v1/chat/completions`", "OpenAI (pass-through)"),
    "gw-off-msg": ("`/v1/messages`", "OpenAI (re-encoded as Anthropic)"),
    "gw-off-msg-anth": ("`/v1/messages`", 'Anthropic (`provider = "anthropic"`)'),
}
# The direct connection speaking the protocol the gateway speaks upstream, per row.
DIRECT_OF = {"gw-off": "direct", "gw-off-msg": "direct", "gw-off-msg-anth": "direct-msg"}


def _added(lat: Latency, base: Latency | None) -> str:
    if base is None or not lat.ttft or not base.ttft:
        return ""
    p50 = pct(lat.ttft, 0.5) - pct(base.ttft, 0.5)
    return f"{ms(p50, 3)} / {ms(pct(lat.ttft, 0.99) - pct(base.ttft, 0.99), 3)}"


def selection_rows(r: Results) -> list[tuple[str, float, bool]]:
    """(variant, µs per request, met) of bench/selection_overhead.py."""
    b = r.selection_bench
    if not b or "variants" not in b:
        return []
    return [
        (name, v["us_per_request"], v["us_per_request"] < TARGET_SELECTION_US)
        for name, v in b["variants"].items()
    ]


def render_selection(r: Results) -> list[str]:
    b = r.selection_bench
    if not b:
        return []
    out = ["## 11. Choosing a deployment: selection overhead per request", ""]
    if "skipped" in b:
        return [*out, f"Not measured: {b['skipped']}.", ""]
    eight = ", ".join(
        f"{row['weight']:g}/{row['in_flight']}/" + ("-" if row["ewma_ms"] is None else f"{row['ewma_ms']:g}")
        for row in b["eight"]
    )
    out += [
        f"`bench/selection_overhead.py`, in process, pinned to core {GATEWAY_CORE} (the gateways idle): "
        "what each request spends choosing its deployment, `ModelRouter.pick()` for its first attempt "
        "and `Attempt.release()` when its stream ends, without any upstream (`Failover.open()` is not "
        f"part of it). {b['picks']:,} pairs back to back per round, {b['rounds']} rounds, the two "
        "variants interleaved; the median round, in CPU time of the thread (`time.thread_time_ns`: "
        "time spent descheduled on a busy machine does not count; the wall time beside it). "
        "*1 deployment*: a model in the single-upstream form. "
        "*8 deployments*: one priority group, so every pick draws two by weight and compares them "
        "(power of two choices); weight / attempts in flight / time-to-first-output EWMA in ms per "
        f"deployment: {eight} (some pairs within 25 % or 5 ms, compared by load; others not, compared by "
        "load times EWMA; `-` never measured). The routers are built as the gateway builds them, with a "
        "placeholder for each upstream client.",
        "",
    ]
    rows = []
    for name, v in b["variants"].items():
        us = v["us_per_request"]
        rows.append(
            [
                name,
                f"**{us:.2f}**",
                ", ".join(f"{x:.2f}" for x in v["rounds_us"]),
                f"{v['wall_us']:.2f}" if "wall_us" in v else "",
                f"< {TARGET_SELECTION_US:g} µs",
                verdict(us < TARGET_SELECTION_US),
            ]
        )
    out += table(
        ["Model", "CPU µs per request (pick + release)", "each round", "Wall µs", "Target", "Verdict"], rows
    )
    notes = [f"The loop itself (two trivial calls per iteration) takes {b['loop_us']:.3f} µs of that."]
    v8 = b["variants"].get("8 deployments")
    if v8:
        share = ", ".join(f"{100 * s:.0f} %" for s in v8["chosen_share"].values())
        notes.append(
            f"Share of 10,000 picks per deployment of the 8 (in the order above): {share}: the loaded "
            "and slow ones get less than their weight."
        )
    if not all(v["in_flight_restored"] for v in b["variants"].values()):
        notes.append("**The in-flight counts were not restored after pick + release (a leak).**")
    return [*out, "", " ".join(notes), ""]


def render_failover(r: Results) -> list[str]:
    c1 = r.c1_routes
    labels = [k for k in ("gw-off-refused", "gw-off-inband") if k in c1]
    if not labels:
        if r.profile.routes_c1_requests > 0:  # measured, but not these (a file from before: nothing)
            why = "the gateway has no deployments" if "deployments" not in r.features else "see the notes"
            return ["## 12. Time to first token with one failover", "", f"Not measured: {why}.", ""]
        return []
    direct, single = c1.get("direct"), c1.get("gw-off")
    out = ["## 12. Time to first token with one failover", ""]
    failing = "; ".join(f"`{prefix}pace1`: {what}" for prefix, what in FAILOVER_PREFIXES.items())
    out += [
        f"The ledger-off gateway (`gw-off`), two models of two deployments each on `sim?{MODELS['pace1']}`: "
        f"priority 0 fails every request before its first token, priority 1 is the simulator ({failing}). "
        f"`eject_after_failures = {NEVER_EJECT:,}`, so the failing deployment is never ejected and every "
        "request pays for exactly one failover (with the default, 3 failures eject it for 30 s and "
        "requests go straight to the second one). Beside them in the same interleaving, request by "
        f"request: the direct connection to the simulator and the same gateway's single-deployment model "
        f"(`pace1`, the same options); 1 stream, {r.profile.routes_c1_requests} sequential requests per "
        "target on keep-alive connections, TTFT as in section 1. *Added by the failover* = this row "
        "minus the single-deployment row at the same percentile. Times in ms.",
        "",
    ]
    rows = []
    for label in ("direct", "gw-off", *labels):
        lat = c1.get(label)
        if lat is None:
            continue
        model = (
            "" if label == "direct" else ("pace1" if label == "gw-off" else label.split("-")[-1] + "/pace1")
        )
        counts = r.attempts.get(model, {})
        rows.append(
            [
                describe(label)
                if label == "direct"
                else f"gateway, `{model}`" + (" (1 deployment)" if label == "gw-off" else ""),
                ms(pct(lat.ttft, 0.5), 3),
                ms(pct(lat.ttft, 0.99), 3),
                "" if label == "direct" else _added(lat, direct),
                _added(lat, single) if label in labels else "",
                f"{len(lat.ttft):,}",
                str(lat.errors),
                ", ".join(f"{k} {v:,.0f}" for k, v in counts.items()),
            ]
        )
    out += table(
        [
            "Target",
            "TTFT p50",
            "TTFT p99",
            "Added vs direct p50 / p99",
            "Added by the failover p50 / p99",
            "Samples",
            "Errors",
            "Attempts counted by the gateway (`/metrics`)",
        ],
        rows,
    )
    out += [
        "",
        "*Attempts counted by the gateway*: `tokenrelay_upstream_attempts_total` over this run, by "
        "deployment and outcome; a failed attempt on `failing` and a served one on `sim` per request "
        "means every request failed over once.",
        "",
    ]
    return out


def protocol_rows(r: Results) -> dict[str, list[Throughput]]:
    rows: dict[str, list[Throughput]] = {}
    for t in sorted(r.protocol_tput, key=lambda t: t.round_no):
        rows.setdefault(t.target, []).append(t)
    return rows


def per_chunk_ratio(r: Results, label: str) -> list[float]:
    """Round by round: gateway CPU per chunk of ``label`` / that of ``/v1/chat/completions``."""
    chat = {t.round_no: t.per_cpu_s for t in r.protocol_tput if t.target == "gw-off"}
    return [
        chat[t.round_no] / t.per_cpu_s
        for t in sorted(r.protocol_tput, key=lambda t: t.round_no)
        if t.target == label and chat.get(t.round_no) and t.per_cpu_s > 0
    ]


def rate_ratio(r: Results, label: str) -> list[float]:
    chat = {t.round_no: t.rate for t in r.protocol_tput if t.target == "gw-off"}
    return [
        t.rate / chat[t.round_no]
        for t in sorted(r.protocol_tput, key=lambda t: t.round_no)
        if t.target == label and chat.get(t.round_no)
    ]


def render_messages(r: Results) -> list[str]:
    c1 = r.c1_routes
    runs = protocol_rows(r)
    if not any(k in c1 or k in runs for k in MESSAGES):
        if r.profile.routes_c1_requests > 0:
            why = "the gateway has no `/v1/messages`" if "messages-api" not in r.features else "see the notes"
            return ["## 13. `/v1/messages` beside `/v1/chat/completions`", "", f"Not measured: {why}.", ""]
        return []
    p = r.profile
    out = ["## 13. `/v1/messages` beside `/v1/chat/completions`", ""]
    out += [
        "The ledger-off gateway's three ways to the same simulator: `/v1/chat/completions` with an OpenAI "
        "upstream (passed through), `/v1/messages` with the same OpenAI upstream (its events re-encoded as "
        "Anthropic's), and `/v1/messages` with an Anthropic upstream (the simulator's `/v1/messages`); and "
        "the simulator directly in both protocols. Requests to `/v1/messages` carry `model`, "
        "`max_tokens`, `messages` and `stream: true`. The load generator counts SSE events by `\\n\\n` "
        "(an Anthropic event, `event: …\\ndata: {…}\\n\\n`, counts once); for Anthropic streams the first "
        'token is the first event carrying `"text_delta"` (not `message_start`, `ping` or '
        "`content_block_start`).",
        "",
        f"**TTFT, 1 stream**: `sim?{MODELS['pace1']}`, {p.routes_c1_requests} sequential requests per "
        "target, interleaved with section 12's. *Added* = this row minus the direct connection speaking "
        "the gateway's upstream protocol, at the same percentile. Times in ms.",
        "",
    ]
    rows = []
    for label in ("direct", "direct-msg", "gw-off", *MESSAGES):
        lat = c1.get(label)
        if lat is None:
            continue
        path, upstream = PATHS[label]
        base = c1.get(DIRECT_OF.get(label, ""))
        rows.append(
            [
                path,
                upstream,
                ms(pct(lat.ttft, 0.5), 3),
                ms(pct(lat.ttft, 0.99), 3),
                _added(lat, base) if label in DIRECT_OF else "",
                ms(pct(lat.gaps, 0.5), 3),
                ms(pct(lat.gaps, 0.99), 3),
                f"{len(lat.ttft):,}",
                str(lat.errors),
            ]
        )
    out += table(
        [
            "Client path",
            "Upstream",
            "TTFT p50",
            "TTFT p99",
            "Added p50 / p99",
            "Gap p50",
            "Gap p99",
            "Samples",
            "Errors",
        ],
        rows,
    )
    if runs:
        conc = next(iter(runs.values()))[0].concurrency
        n = max(len(v) for v in runs.values())
        out += [
            "",
            f"**Throughput**: as section 2, `sim?{MODELS['tput']}` on {conc} keep-alive connections, events "
            f"counted at the client over {p.protocol_seconds:g} s after {p.protocol_warmup:g} s of warm-up; "
            f"{n} alternating round{'s' if n != 1 else ''} of the gateway's paths, the order rotating, "
            "medians (the direct rows, for scale, in the first round only; their process is the "
            "simulator). *x chat*: this path's figure over `/v1/chat/completions`' in the same round "
            "(median of the rounds); *CPU per chunk x chat* is the gateway's CPU per chunk.",
            "",
        ]
        trows = []
        for label in ("direct", "direct-msg", "gw-off", *MESSAGES):
            if label not in runs:
                continue
            mine = runs[label]
            path, upstream = PATHS[label]
            rate = median(t.rate for t in mine)
            per_cpu = median(t.per_cpu_s for t in mine)
            cpu_ratio = median(per_chunk_ratio(r, label)) if label in MESSAGES else math.nan
            trows.append(
                [
                    path,
                    upstream,
                    f"{rate:,.0f}",
                    ", ".join(f"{t.rate:,.0f}" for t in mine),
                    f"{median(rate_ratio(r, label)):.3f}" if label in MESSAGES else "",
                    f"{100 * median(t.target_cpu / t.seconds for t in mine):.0f} %",
                    f"{per_cpu:,.0f}",
                    f"{1e6 / per_cpu:.2f}" if per_cpu > 0 else "n/a",
                    "" if math.isnan(cpu_ratio) else f"**x{cpu_ratio:.3f}**",
                    f"{100 * median(t.sim_cpu / t.seconds for t in mine):.0f} % + "
                    f"{100 * median(t.load_cpu / t.seconds for t in mine):.0f} %",
                    str(sum(t.errors for t in mine)),
                ]
            )
        out += table(
            [
                "Client path",
                "Upstream",
                "Chunks/s at client",
                "each round",
                "Chunks/s x chat",
                "CPU of process",
                "Chunks per CPU-s",
                "CPU µs per chunk",
                "CPU per chunk x chat",
                "Sim + load CPU (core 1)",
                "Errors",
            ],
            trows,
        )
        later = []
        for label in MESSAGES:
            ratios = per_chunk_ratio(r, label)
            if ratios:
                x = median(ratios)
                later.append(
                    f"{PATHS[label][1].split(' (')[0]} upstream x{x:.3f} "
                    f"({'within' if x <= LATER_MESSAGES_RATIO else '**not within**'} 15 %)"
                )
        if later:
            out += [
                "",
                "Issue 14's target, `/v1/messages` within 15 % of `/v1/chat/completions` in gateway "
                f"CPU per chunk: {'; '.join(later)}.",
            ]
    return [*out, ""]


def target_rows(r: Results) -> list[list[str]]:
    """Rows for the report's Targets table."""
    rows = []
    for name, us, ok in selection_rows(r):
        rows.append(
            [
                f"Selection overhead per request (`pick` + `release`), {name} (section 11)",
                f"< {TARGET_SELECTION_US:g} µs",
                f"{us:.2f} µs",
                verdict(ok),
            ]
        )
    for label in MESSAGES:
        ratios = per_chunk_ratio(r, label)
        if ratios:
            x = median(ratios)
            rows.append(
                [
                    f"`/v1/messages` ({PATHS[label][1].split(' (')[0]} upstream) vs `/v1/chat/completions`, "
                    "gateway CPU per chunk (section 13)",
                    f"≤ x{LATER_MESSAGES_RATIO:.2f}",
                    f"x{x:.3f} ("
                    + (f"median of {len(ratios)} rounds" if len(ratios) > 1 else "1 round")
                    + ")",
                    verdict(x <= LATER_MESSAGES_RATIO),
                ]
            )
    return rows
