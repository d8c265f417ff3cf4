"""Report sections on the gateway's own figures: wake-up latency, 1 TTFT, 2 throughput, 3 memory, 4 aborts."""

from __future__ import annotations

import math

from processes import GATEWAY_CORE, LOAD_CORE
from report_format import describe, table
from results import Results
from stats import ms, pct
from workload import MODELS


def render_wakeup(r: Results) -> list[str]:
    if not r.wakeup:
        return []
    out = ["### Wake-up latency", ""]
    out += [
        "Loopback TCP ping-pong (1 byte, blocking sockets, `TCP_NODELAY`) between this process (core "
        f"{LOAD_CORE}) and an echo process (core {GATEWAY_CORE}), after the echo process has been idle "
        "for the given time; and how late `time.sleep(0.001)` returns. Milliseconds.",
        "",
    ]
    rows = [
        [
            f"ping-pong after {w.idle_ms:g} ms idle",
            ms(pct(w.rtts, 0.5), 3),
            ms(pct(w.rtts, 0.99), 3),
            str(len(w.rtts)),
        ]
        for w in r.wakeup
    ]
    rows.append(
        [
            "`time.sleep(1 ms)` overshoot",
            ms(pct(r.oversleep, 0.5), 3),
            ms(pct(r.oversleep, 0.99), 3),
            str(len(r.oversleep)),
        ]
    )
    out += table(["What", "p50", "p99", "Samples"], rows)
    return [*out, ""]


def render_latency(r: Results) -> list[str]:
    p = r.profile
    out = ["## 1. Time to first token and inter-chunk gaps", ""]
    out += [
        f"TTFT = from writing the request to receiving the first content delta; gaps = between consecutive "
        f"content deltas. Keep-alive connections. 1 stream: `sim?{MODELS['pace1']}`, {p.c1_requests} "
        f"sequential requests per target, the targets interleaved request by request. 200 streams: "
        f"`sim?{MODELS['pace200']}` (10,000 chunks/s and 100 new streams/s in total) and, lighter, "
        f"`sim?{MODELS['pace200l']}` (4,000 chunks/s, 67 new streams/s); 200 connections looping for "
        f"{p.c200_seconds:g} s per target, their first requests spread over one stream's duration. "
        "Times in ms; *added* = gateway minus direct at the same percentile.",
        "",
    ]
    rows = []
    loads = (("1 stream", r.c1), ("200 streams at 50 tok/s", r.c200), ("200 streams at 20 tok/s", r.c200l))
    for conc, data in loads:
        direct = data.get("direct")
        for label, lat in data.items():
            d50 = pct(direct.ttft, 0.5) if direct else math.nan
            d99 = pct(direct.ttft, 0.99) if direct else math.nan
            t50, t99 = pct(lat.ttft, 0.5), pct(lat.ttft, 0.99)
            added = "" if label == "direct" else f"{ms(t50 - d50, 3)} / {ms(t99 - d99, 3)}"
            rows.append(
                [
                    conc,
                    describe(label),
                    ms(t50, 3),
                    ms(t99, 3),
                    added,
                    ms(pct(lat.gaps, 0.5), 3),
                    ms(pct(lat.gaps, 0.99), 3),
                    f"{len(lat.ttft):,}",
                    str(lat.errors),
                    f"{100 * lat.target_cpu / lat.window:.0f} %" if lat.window else "",
                    f"{lat.events / lat.target_cpu:,.0f}" if lat.window and lat.target_cpu else "",
                ]
            )
    out += table(
        [
            "Load",
            "Target",
            "TTFT p50",
            "TTFT p99",
            "Added p50 / p99",
            "Gap p50",
            "Gap p99",
            "Samples",
            "Errors",
            "CPU of process",
            "Chunks per CPU-s",
        ],
        rows,
    )
    out += [
        "",
        "*CPU of process* (200 streams only): CPU use of the process under test (the simulator for the "
        "direct row) in the steady part of the run, as a share of its one core; at 100 % it is the "
        "bottleneck and latency is queueing. Paced upstream writes arrive one event per read, the "
        "opposite of the batched throughput test below.",
        "",
    ]
    return out


def render_throughput(r: Results) -> list[str]:
    p = r.profile
    out = ["## 2. Throughput", ""]
    out += [
        f"`sim?{MODELS['tput']}` (the simulator writes as fast as it can, 64 events per write); N "
        f"connections loop requests; events (`\\n\\n`) counted at the client over {p.tput_seconds:g} s after "
        f"{p.tput_warmup:g} s of warm-up. *CPU-s* = user+system CPU of the process under test over the "
        "window (for the direct row: the simulator). Core 1 carries both the simulator and the load "
        "generator, so *sim + load* near 100 % means core 1, not the gateway, limited the row. "
        "At the end of the window the client closes its streams mid-answer; *CPU after the window* is "
        "what the process under test then spent before going quiet (the next row waits for that). "
        "The ledger-on gateways are in section 5.",
        "",
    ]
    direct_rates = {t.concurrency: t.rate for t in r.tput if t.target == "direct"}
    rows = []
    for run in r.tput:
        base = direct_rates.get(run.concurrency)
        rows.append(
            [
                describe(run.target),
                str(run.concurrency),
                f"{run.rate:,.0f}",
                f"{run.rate / base:.2f}" if base and run.target != "direct" else "",
                f"{100 * run.target_cpu / run.seconds:.0f} %",
                f"{run.per_cpu_s:,.0f}",
                f"{100 * run.sim_cpu / run.seconds:.0f} % + {100 * run.load_cpu / run.seconds:.0f} %",
                f"{run.after_cpu:.2f} s in {run.after_seconds:.1f} s",
                str(run.errors),
            ]
        )
    out += table(
        [
            "Target",
            "Streams",
            "Chunks/s at client",
            "x direct",
            "CPU of process",
            "Chunks per CPU-s",
            "Sim + load CPU (core 1)",
            "CPU after the window",
            "Errors",
        ],
        rows,
    )
    out += ["", "### Stream set-up rate", ""]
    out += [
        f"`sim?{MODELS['short']}` (one content chunk per stream), {p.setup_concurrency} keep-alive "
        f"connections looping requests for {p.tput_seconds:g} s: what each stream costs to open, relay, "
        "close and account, independent of its length.",
        "",
    ]
    direct_setup = next((t.streams_per_s for t in r.setup if t.target == "direct"), None)
    rows = [
        [
            describe(run.target),
            f"{run.streams_per_s:,.0f}",
            f"{run.streams_per_s / direct_setup:.2f}" if direct_setup and run.target != "direct" else "",
            f"{100 * run.target_cpu / run.seconds:.0f} %",
            f"{run.cpu_ms_per_stream:.2f}",
            f"{100 * run.sim_cpu / run.seconds:.0f} % + {100 * run.load_cpu / run.seconds:.0f} %",
            str(run.errors),
        ]
        for run in r.setup
    ]
    out += table(
        [
            "Target",
            "Streams/s",
            "x direct",
            "CPU of process",
            "CPU ms per stream",
            "Sim + load CPU",
            "Errors",
        ],
        rows,
    )
    return [*out, ""]


def render_memory(r: Results) -> list[str]:
    p = r.profile
    out = ["## 3. Resident memory per idle open stream", ""]
    out += [
        f"`sim?{MODELS['idle']}` through `/v1/chat/completions`, measured first, on fresh processes "
        "(the gateway: a process that serves only this test; the tutorial app's row last: it leaks "
        "the upstream requests of abandoned streams). RSS (psutil) of the process under test after a "
        f"warm-up of 50 streams (opened, closed), then with {p.mem_streams:,} streams open, each "
        "having received its first delta. For the direct row the process is the "
        "simulator itself (its cost per stream, for scale). *After close*: RSS 1 s after all "
        "streams were closed. *2nd round*: the same again on the grown heap (RSS with the streams "
        "open minus RSS after close): a lower bound, since freed blocks are reused. *Sim KiB per "
        "stream*: the simulator's growth during the first round.",
        "",
    ]
    rows = [
        [
            describe(m.target),
            f"{m.opened:,} / {m.streams:,}",
            f"{m.rss_before / 2**20:.1f}",
            f"{m.rss_open / 2**20:.1f}",
            f"**{m.kib_per_stream:.1f}**",
            f"{m.rss_after / 2**20:.1f}",
            f"{m.kib_per_stream_warm:.1f}",
            f"{m.sim_rss_delta / 1024 / max(m.opened, 1):.1f}",
            f"{m.open_seconds:.1f}",
            "yes" if m.closed_clean else "**no**",
        ]
        for m in r.mem
    ]
    out += table(
        [
            "Target",
            "Streams with a delta",
            "RSS before (MiB)",
            "RSS open (MiB)",
            "KiB per stream",
            "RSS after close (MiB)",
            "KiB per stream, 2nd round",
            "Sim KiB per stream",
            "Open time (s)",
            "Upstream all closed",
        ],
        rows,
    )
    return [*out, ""]


def render_aborts(r: Results) -> list[str]:
    p = r.profile
    out = ["## 4. Abort latency", ""]
    out += [
        "The client shuts its socket down (FIN) at *t*; latency = the simulator's `ended_at` for that "
        f"request id - *t* (both `time.monotonic()`). {p.abort_samples} samples per phase, one at a time "
        "(*Conc.* 1) and 50 at a time (each new stream costs the gateway milliseconds of CPU, which "
        "delays the handling of another stream's disconnect; the waiters share one read of the "
        "simulator's `/_stats` at a time, so that polling does not keep it from noticing). The client "
        "closes 20 ms after the simulator has the request (*headers*) or has sent its headers (*before "
        "first token*), after 3 content deltas at 100/s (*active*), or 30 ms into the stall after 3 "
        "deltas (*stalled*). "
        "Through the gateway this is: gateway notices the client left → cancels the upstream request → "
        "simulator notices. The direct row is the simulator noticing a client of its own (the floor). "
        "*Not ended*: the upstream request was still open when we stopped waiting "
        "(3 s; 2 s for the tutorial).",
        "",
    ]
    rows = [
        [
            describe(a.target),
            str(a.concurrency),
            a.phase,
            ms(pct(a.latencies, 0.5), 3),
            ms(pct(a.latencies, 0.99), 3),
            ms(max(a.latencies) if a.latencies else math.nan, 3),
            str(len(a.latencies)),
            str(a.not_ended) if not a.not_ended else f"**{a.not_ended}**",
            str(a.invalid),
        ]
        for a in r.aborts
    ]
    out += table(
        ["Target", "Conc.", "Phase", "p50 (ms)", "p99 (ms)", "max (ms)", "Samples", "Not ended", "Invalid"],
        rows,
    )
    return [*out, ""]
