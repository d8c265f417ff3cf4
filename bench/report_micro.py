"""Report sections on the micro-benchmarks: 7 upstream clients, 8 the local model, 9 metrics."""

from __future__ import annotations

from typing import Any

from report_format import table
from results import Results


def read_side_sentence(rows: list[dict[str, Any]]) -> str:
    """What the read-side numbers of bench/upstream_clients.py say, in one sentence."""
    per_cpu = {row["variant"]: row["read_chunks_per_cpu_s"] for row in rows if row["read_chunks_per_cpu_s"]}
    if len(per_cpu) < 2:
        return ""
    low, high = min(per_cpu.values()), max(per_cpu.values())
    best = max(per_cpu, key=lambda k: per_cpu[k])
    if high / low < 1.15:
        return (
            f"Reading a fast stream costs about the same with each client ({low:,.0f}-{high:,.0f} chunks "
            "per CPU-s, within 15 %): the per-request cost decides."
        )
    return (
        f"Reading a fast stream: {best} is the cheapest ({high:,.0f} chunks per CPU-s against "
        f"{low:,.0f} for the most expensive)."
    )


def render_clients(r: Results) -> list[str]:
    data = r.clients_bench
    if not data:
        return []
    out = ["## 7. Choosing the upstream client", ""]
    versions = ", ".join(f"{k} {v}" for k, v in data["versions"].items())
    out += [
        "`bench/upstream_clients.py` against the simulator (`sim?tokens=6`: 10 events), one request at a "
        f"time: {data['rounds']} interleaved rounds of {data['requests_per_round']} requests per client "
        "(after 20 warm-up requests each), the order rotating. *Open* = from starting to build the "
        "streaming chat request to having the response headers (wall time, and this process's CPU time "
        "for it); *request CPU* = open + read the body + close. Read side: one `sim?tokens=20000` "
        f"stream per client and round ({data['read_rounds']} rounds), events counted over the client's "
        "raw byte iteration from the headers to the end; the simulator on the other core writes 64 events "
        "at a time and is the limit of *chunks/s*, so *chunks per CPU-s* tells the clients apart. "
        f"{versions}.",
        "",
        "- *sdk-create*: `openai.AsyncOpenAI(max_retries=0, http_client=openai.DefaultAioHttpClient())`, "
        "`chat.completions.with_streaming_response.create(..., stream=True, stream_options=...)`, body via "
        "`.http_response.aiter_raw()` (the gateway before this change);",
        "- *sdk-post*: the same client's `post('/chat/completions', cast_to=httpx2.Response, stream=True)` "
        "with `X-Stainless-Raw-Response: stream`, body via `aiter_raw()`, then `aclose()`;",
        "- *aiohttp*: `ClientSession.post` with an orjson body, body via `content.readany()` "
        "(the gateway now).",
        "",
    ]
    summary = {row["variant"]: row for row in data["summary"]}
    base = summary.get("aiohttp")
    rows = [
        [
            f"**{row['variant']}**" if row["variant"] == "aiohttp" else row["variant"],
            f"{row['requests']:,}",
            f"{row['open_wall_p50_ms']:.3f}",
            f"{row['open_wall_p90_ms']:.3f}",
            f"{row['open_cpu_ms']:.3f}",
            f"{row['request_cpu_ms']:.3f}",
            f"{row['request_cpu_ms'] / base['request_cpu_ms']:.1f}" if base else "",
            f"{row['read_chunks_per_s']:,.0f}",
            f"{row['read_chunks_per_cpu_s']:,.0f}",
            f"{row['read_reads']:,.0f}",
            str(row["errors"]),
        ]
        for row in data["summary"]
    ]
    out += table(
        [
            "Client",
            "Requests",
            "Open p50 (ms)",
            "Open p90 (ms)",
            "Open CPU (ms)",
            "Request CPU (ms)",
            "x aiohttp",
            "Read chunks/s",
            "Read chunks per CPU-s",
            "Reads per stream",
            "Errors",
        ],
        rows,
    )
    if base and "sdk-create" in summary:
        saved = summary["sdk-create"]["request_cpu_ms"] - base["request_cpu_ms"]
        out += [
            "",
            f"aiohttp directly saves {saved:.2f} ms of CPU per request against the SDK's `create` and "
            f"{summary['sdk-post']['request_cpu_ms'] - base['request_cpu_ms']:.2f} ms against its `post`"
            if "sdk-post" in summary
            else f"aiohttp directly saves {saved:.2f} ms of CPU per request against the SDK's `create`",
        ]
        out[-1] += ". " + read_side_sentence(data["summary"])
    return [*out, ""]


def render_local(r: Results) -> list[str]:
    b = r.local_bench
    if not b:
        return []
    out = ["## 8. The local model", ""]
    out.append(
        f"`bench/local_model.py`: a gateway whose model is the local one (SmolLM2-135M Q4_1, "
        f"llama.cpp, 1 thread, not pinned), {b['rounds']} rounds alternating a greedy 64-token answer "
        "streamed from the model's own server (`/v1/chat/completions` of the child process) and one "
        "through the gateway's `/v1/chat/completions`, each round a new question (no cached prompt). "
        "TTFT: request sent to first content; decode: (64 - 1) tokens over first to last content."
    )
    out.append("")
    rows = []
    for way in ("direct", "gateway"):
        d = b[way]
        rows.append(
            [
                "model server directly" if way == "direct" else "**through tokenrelay**",
                f"{d['ttft_ms_p50']:.1f}",
                f"{d['ttft_ms_min']:.1f}-{d['ttft_ms_max']:.1f}",
                f"{d['decode_tokens_per_s_p50']:.1f}",
            ]
        )
    out += table(["Path", "TTFT p50 (ms)", "TTFT range (ms)", "Decode tokens/s p50"], rows)
    ratio_ttft = b["gateway"]["ttft_ms_p50"] / b["direct"]["ttft_ms_p50"]
    ratio_tps = b["gateway"]["decode_tokens_per_s_p50"] / b["direct"]["decode_tokens_per_s_p50"]
    out += ["", f"Through tokenrelay: TTFT x{ratio_ttft:.2f}, decode speed x{ratio_tps:.2f} of direct.", ""]
    out.append(
        "CPU of the model's process (cores, median of 3 trials) while it generates a long answer and "
        "in windows after the client closed its connection (20 deltas read first):"
    )
    out.append("")
    keys = [k for k in b["gateway_disconnect"] if k != "busy_cores"]
    header = [
        "Client",
        "generating",
        *[k.removeprefix("after_").removesuffix("s_cores").replace("_", "-") + " s after" for k in keys],
    ]
    crow = []
    for way in ("direct", "gateway"):
        d = b[f"{way}_disconnect"]
        crow.append(
            [
                "closes its connection to the model server"
                if way == "direct"
                else "**closes its connection to tokenrelay**",
                f"{d['busy_cores']:.2f}",
                *[f"{d[k]:.2f}" for k in keys],
            ]
        )
    out += table(header, crow)
    out.append("")
    return out


def render_metrics_overhead(r: Results) -> list[str]:
    b = r.metrics_bench
    if not b:
        return []
    out = ["## 9. What metrics cost", ""]
    out.append(
        "`bench/metrics_overhead.py`: two gateways pinned to core 0, identical but for "
        "`metrics_enabled` (ledger off in both), the simulator and the load on core 1; "
        f"{b['rounds']} alternating rounds of {b['seconds']:g} s each: 32 long fast streams "
        "(chunks/s at the client) and 32 clients doing 20-token streams back to back (streams/s). "
        "Metrics are recorded per stream and per keep-alive, never per chunk."
    )
    out.append("")
    rows = []
    for way in ("metrics_on", "metrics_off"):
        d = b[way]
        rows.append(
            [
                way.replace("_", " "),
                f"{d['chunks_per_s']:,.0f}",
                ", ".join(f"{v:,.0f}" for v in d["all"]["chunks_per_s"]),
                f"{d['streams_per_s']:,.0f}",
                ", ".join(f"{v:,.0f}" for v in d["all"]["streams_per_s"]),
            ]
        )
    out += table(
        ["Gateway", "Chunks/s (median)", "each round", "Short streams/s (median)", "each round"], rows
    )
    out += [
        "",
        f"On / off: chunks x{b['chunks_per_s_on_over_off']:.3f}, "
        f"short streams x{b['streams_per_s_on_over_off']:.3f}.",
        "",
    ]
    if "in_process_us_per_stream" in b:
        out += [
            "In process, free of two processes' noise: recording one stream's metrics (start, end, "
            "outcome) costs "
            f"**{b['in_process_us_per_stream']:.1f} µs** of CPU (the best of 5 runs of 20,000 streams).",
            "",
        ]
    return out


def render_relay_chunks(r: Results) -> list[str]:
    b = r.relay_bench
    if not b:
        return []
    out = ["## 10. The relay's own CPU against the baseline", ""]
    out.append(
        f"`bench/relay_chunks.py --baseline {b['baseline']}`: each version's relay in a process of its "
        "own on core 0, in process without uvicorn (real upstream connections to the simulator on "
        "core 1, the relay, the OpenAI encoder, an ASGI `send` that drops the bytes), "
        f"{b['rounds']} alternating rounds; CPU per chunk = the process's CPU over the chunks relayed. "
        "The HTTP server and client are the same in both versions, so this is the relay's own "
        "difference, free of most of a whole-gateway A/B's noise. *Batched*: `sim?tokens=20000` "
        "(64 events per upstream read); *one event per read*: 300 streams paced at 50 tokens/s; "
        "*short streams*: `sim?tokens=20` on 32 connections, CPU per stream."
    )
    out.append("")
    rows = []
    for workload, s in b["summary"].items():
        change = s["median_ratio"] - 1
        verdict = "within 5 %" if abs(change) <= 0.05 else ("regressed" if change > 0 else "improved")
        unit = s.get("unit", "chunk")
        rows.append(
            [
                f"{workload} (µs per {unit})",
                f"{s['baseline_us']:.2f}",
                f"{s['this_us']:.2f}",
                ", ".join(f"{x:.3f}" for x in s["ratios"]),
                f"**x{s['median_ratio']:.3f}** ({verdict})",
            ]
        )
    out += table(
        [
            "Workload",
            "Baseline µs per chunk",
            "This commit µs per chunk",
            "This / baseline, each round",
            "Median",
        ],
        rows,
    )
    out.append("")
    return out
