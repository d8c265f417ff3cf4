"""One run's measurements, in order, against processes the harness has started (``harness.run``).

The order matters: memory first, on fresh processes; the ledger comparison early, while its
gateways share the same (empty) history; the tutorial app last, since it leaks the upstream
requests its clients abandon. With ``--baseline`` the baseline's gateways join the measurements
that already alternate or interleave their gateways, so they see the same state of the machine
as this checkout's ledger-off gateway.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import aiohttp

import pgdb
from loadgen import SimControl, Target
from processes import CHILD_ENV, GATEWAY_CORE, PYTHON, ROOT, Child, log
from results import Latency, Memory, Results
from scenarios_hold import ABORT_AT_ONCE, ABORT_PHASES, abort_latency, memory
from scenarios_load import interleaved_slices, throughput, ttft_concurrent, ttft_sequential
from scenarios_routes import protocol_throughput, routes_ttft
from stats import ms, pct
from workload import AA_GATEWAY, BASELINE_GATEWAY, BASELINE_MEM, LEDGER_GATEWAYS


def micro_benchmark(
    script: str, args: list[str], workdir: Path, results: Results, *, pinned: bool = True
) -> dict[str, Any] | None:
    """Run ``bench/<script>`` (on the gateway core if ``pinned``) with this checkout's ``src``;
    its JSON, or None."""
    out = workdir / f"{Path(script).stem}.json"
    argv = [
        *(["taskset", "-c", str(GATEWAY_CORE)] if pinned else []),
        PYTHON,
        str(ROOT / "bench" / script),
        *args,
        "--json",
        str(out),
    ]
    try:
        proc = subprocess.run(
            argv, env={**os.environ, **CHILD_ENV}, capture_output=True, text=True, timeout=600, cwd=ROOT
        )
    except subprocess.TimeoutExpired:
        results.notes.append(f"`bench/{script}` did not finish within 600 s")
        return None
    if proc.returncode != 0 or not out.exists():
        results.notes.append(
            f"`bench/{script}` failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}"
        )
        return None
    data: dict[str, Any] = json.loads(out.read_text())
    log(f"{script}:\n{proc.stdout.rstrip()}")
    return data


def pooled(into: dict[str, Latency], label: str, run: Latency) -> None:
    """Add one run's samples to ``label``'s pooled latency (rounds of the same measurement)."""
    have = into.get(label)
    if have is None:
        into[label] = run
        return
    have.ttft += run.ttft
    have.gaps += run.gaps
    have.requests += run.requests
    have.errors += run.errors
    have.window += run.window
    have.events += run.events
    have.target_cpu += run.target_cpu
    have.sim_cpu += run.sim_cpu


async def measure(targets: dict[str, Target], sim: Child, results: Results, workdir: Path) -> None:
    p = results.profile
    sim_proc = sim.proc
    pg_cpu = pgdb.ServerCpu() if "gw-pg" in targets else None
    base = results.baseline
    async with aiohttp.ClientSession() as session:
        control = SimControl(session, sim.port)

        async def settle(label: str, what: str) -> None:
            """Wait for the simulator to see every request of the last step end."""
            if label != "tutorial":
                if not await control.wait_ended(10):
                    results.notes.append(f"{what}: upstream requests still open 10 s later")
                return
            await control.wait_ended(2)
            leaked = sum(1 for e in (await control.stats())["requests"] if e["ended_at"] is None)
            if leaked:
                results.notes.append(
                    f"{what}: {leaked} upstream requests abandoned by the tutorial app were still open "
                    "2 s after its clients left (it does not close the SDK stream when it stops)"
                )

        async def tput(label: str, concurrency: int, key: str) -> None:
            await control.reset()
            run = await throughput(targets[label], sim_proc, concurrency, p.tput_warmup, p.tput_seconds, key)
            (results.tput if key == "tput" else results.setup).append(run)
            log(
                f"{key}: {label} x{concurrency}: {run.rate:,.0f} chunks/s, "
                f"{run.per_cpu_s:,.0f} chunks/CPU-s, {run.streams_per_s:,.0f} streams/s"
            )
            await settle(label, f"{key} {label} x{concurrency}")

        async def ledger_run(label: str, round_no: int, key: str, warmup: float, seconds: float) -> None:
            await control.reset()
            run = await throughput(
                targets[label], sim_proc, p.ledger_concurrency, warmup, seconds, key, pg_cpu=pg_cpu
            )
            run.round_no = round_no
            results.ledger.append(run)
            log(
                f"ledger round {round_no + 1}, {key}: {label}: {run.rate:,.0f} chunks/s, "
                f"{run.streams_per_s:,.0f} streams/s, {run.cpu_ms_per_stream:.2f} CPU-ms/stream"
            )
            await settle(label, f"ledger {key} {label} round {round_no + 1}")

        async def mem(label: str) -> Memory:
            await control.reset()
            end_wait = 2.0 if label == "tutorial" else 15.0
            m = await memory(targets[label], sim_proc, control, p.mem_streams, end_wait)
            log(
                f"memory: {label}: {m.kib_per_stream:.1f} KiB/stream, warm heap {m.kib_per_stream_warm:.1f} "
                f"({m.opened}/{m.streams} with a delta)"
            )
            if label == "tutorial":
                await settle(label, "memory tutorial")
            return m

        async def c200(label: str, key: str = "pace200") -> Latency:
            await control.reset()
            lat = await ttft_concurrent(targets[label], sim_proc, 200, p.c200_seconds, key)
            light = " lighter" if key == "pace200l" else ""
            log(f"TTFT, 200{light} streams: {label}: p50 {ms(pct(lat.ttft, 0.5))} ms")
            await control.wait_ended(5)
            return lat

        async def aborts(label: str, concurrency: int = 1) -> None:
            for phase in ABORT_PHASES:
                wait_end = 2.0 if label == "tutorial" else 3.0
                a = await abort_latency(
                    targets[label], control, phase, p.abort_samples, concurrency, wait_end
                )
                results.aborts.append(a)
                log(
                    f"abort: {label} x{concurrency}, {phase}: p50 {ms(pct(a.latencies, 0.5))} ms "
                    f"p99 {ms(pct(a.latencies, 0.99))} ms n={len(a.latencies)} "
                    f"not-ended={a.not_ended} invalid={a.invalid}"
                )

        # 3. Memory on fresh processes (after other tests the heap holds freed blocks that new
        # allocations reuse, which would hide part of the per-stream cost): gw-mem serves nothing else.
        for label in p.mem_targets:
            if label != "tutorial":
                results.mem.append(await mem(label))
        if base is not None and BASELINE_MEM in targets:
            base.mem = await mem(BASELINE_MEM)  # also a process that serves nothing else

        # 5. The ledger's cost, early, while the four gateways share the same (empty) history.
        # Short streams: interleaved slices of about a second, many cycles. Long streams: the
        # gateways in alternating rounds, the order rotating.
        # The baseline's gateway joins them: the same rounds give its throughput and CPU per
        # stream against gw-off's, with gw-off2 as the A/A control.
        variants = [k for k in (*LEDGER_GATEWAYS, BASELINE_GATEWAY) if k in targets]
        await control.reset()
        slices = await interleaved_slices(
            [targets[k] for k in variants],
            sim_proc,
            p.ledger_concurrency,
            "short20",
            p.slice_cycles,
            p.slice_seconds,
            pg_cpu=pg_cpu,
        )
        results.ledger += slices
        for label in variants:
            mine = [t for t in slices if t.target == label]
            log(
                f"ledger slices, short20: {label}: streams/s "
                f"{', '.join(f'{t.streams_per_s:,.0f}' for t in mine)}; CPU-ms/stream "
                f"{', '.join(f'{t.cpu_ms_per_stream:.3f}' for t in mine)}"
            )
        await settle("gw-off", "ledger slices")
        for round_no in range(p.ledger_rounds):
            shift = round_no % len(variants)
            for label in variants[shift:] + variants[:shift]:
                await ledger_run(label, round_no, "tput", 0.5, p.ledger_long_seconds)

        # 1. Latency (the tutorial completes these streams normally, so it can run alongside).
        # With a baseline, its gateway and the A/A process join the 1-stream interleaving; their
        # rows go to ``results.baseline``, so section 1 shows what it shows without one.
        c1_labels = [k for k in p.c1_targets if k in targets]
        extra = [k for k in (BASELINE_GATEWAY, AA_GATEWAY) if base and k in targets and k not in c1_labels]
        log(f"TTFT, 1 stream: {p.c1_requests} requests x {len(c1_labels) + len(extra)} targets")
        await control.reset()
        c1 = await ttft_sequential([targets[k] for k in c1_labels + extra], p.c1_requests)
        results.c1 = {k: c1[k] for k in c1_labels}
        if base is not None:
            base.c1 = {k: c1[k] for k in extra}
        for label in p.c200_targets:
            results.c200[label] = await c200(label)
            if base is not None and label == "gw-off":
                # The baseline, this checkout and the A/A process in alternating rounds, the order
                # rotating: a single run each showed an order effect larger than the difference
                # looked for (whoever ran right after the direct run came out slower).
                trio = [k for k in ("gw-off", BASELINE_GATEWAY, AA_GATEWAY) if k in targets]
                for round_no in range(p.baseline_c200_rounds):
                    shift = round_no % len(trio)
                    for other in trio[shift:] + trio[:shift]:
                        pooled(base.c200, other, await c200(other))
        for label in p.c200_light_targets:
            results.c200l[label] = await c200(label, "pace200l")

        # 2. Throughput and stream set-up (everything but the tutorial app: it leaks every upstream
        # request its client abandons, so it goes last).
        for label in p.tput_targets:
            for concurrency in p.tput_concurrency:
                await tput(label, concurrency, "tput")
        for label in ("direct", "gw-off"):
            await tput(label, p.setup_concurrency, "short")

        # 4. Abort latency.
        for label in p.abort_targets:
            if label != "tutorial":
                await aborts(label)
        if "gw-off" in p.abort_targets:
            at_once = min(ABORT_AT_ONCE, p.abort_samples)
            await aborts("gw-off", at_once)  # all leaving at about the same time
            if "direct" in p.abort_targets:
                await aborts("direct", at_once)  # the floor: the simulator noticing as many at once

        # 12 and 13: failover's TTFT, and /v1/messages beside /v1/chat/completions (this
        # checkout's ledger-off gateway; skipped where it lacks the features).
        await routes_ttft(targets, results, session, control)
        for label, lat in results.c1_routes.items():
            log(
                f"TTFT, 1 stream (sections 12-13): {label}: p50 {ms(pct(lat.ttft, 0.5), 3)} ms "
                f"p99 {ms(pct(lat.ttft, 0.99), 3)} ms n={len(lat.ttft)} errors={lat.errors}"
            )
        if results.attempts:
            log(f"attempts counted by the gateway: {results.attempts}")
        await settle("gw-off", "TTFT sections 12-13")
        await protocol_throughput(targets, sim_proc, results, control, settle, log)

        # 6, 7 and 11: in-process micro-benchmarks (the gateways are idle meanwhile).
        await control.reset()
        if p.selection_rounds > 0:
            results.selection_bench = await asyncio.to_thread(
                micro_benchmark,
                "selection_overhead.py",
                ["--rounds", str(p.selection_rounds), "--picks", str(p.selection_picks)],
                workdir,
                results,
            )
        results.clients_bench = await asyncio.to_thread(
            micro_benchmark,
            "upstream_clients.py",
            [
                "--base-url",
                f"http://127.0.0.1:{sim.port}/v1",
                "--requests",
                str(p.client_requests),
                "--rounds",
                str(p.client_rounds),
                "--read-rounds",
                "3" if p.name == "full" else "1",
            ],
            workdir,
            results,
        )
        if results.pg_problem is None:
            results.rows_bench = await asyncio.to_thread(
                micro_benchmark,
                "ledger_rows.py",
                [
                    "--rows",
                    str(p.ledger_rows),
                    "--paced-seconds",
                    "3" if p.name == "full" else "1",
                    "--paced-rounds",
                    "3" if p.name == "full" else "1",
                ],
                workdir,
                results,
            )
            if results.rows_bench:
                origin = results.rows_bench.get("tokenrelay_file", "")
                if not origin.startswith(str(ROOT / "src")):
                    results.notes.append(f"`bench/ledger_rows.py` imported tokenrelay from {origin}")

        # 9: metrics on vs off (its own simulator and gateways, which it pins itself).
        results.metrics_bench = await asyncio.to_thread(
            micro_benchmark,
            "metrics_overhead.py",
            ["--rounds", "6" if p.name == "full" else "2", "--seconds", "3" if p.name == "full" else "1"],
            workdir,
            results,
            pinned=False,
        )

        # 10: the relay alone against the baseline's (its own simulator and relay processes).
        if base is not None:
            results.relay_bench = await asyncio.to_thread(
                micro_benchmark,
                "relay_chunks.py",
                ["--baseline", base.commit, "--rounds", "5" if p.name == "full" else "1"],
                workdir,
                results,
                pinned=False,
            )

        # 8: the local model (its own gateway and model process; not pinned: the model needs a
        # core of its own, as it would have in use).
        from tokenrelay.local.discovery import bundled_model_path, unavailable_reason

        reason = unavailable_reason(bundled_model_path())
        if reason is None:
            results.local_bench = await asyncio.to_thread(
                micro_benchmark,
                "local_model.py",
                ["--rounds", "10" if p.name == "full" else "3"],
                workdir,
                results,
                pinned=False,
            )
        else:
            results.notes.append(f"local model not measured: {reason}")

        if p.tutorial_everything:
            for concurrency in p.tput_concurrency:
                await tput("tutorial", concurrency, "tput")
            await tput("tutorial", p.setup_concurrency, "short")
            if "tutorial" in p.mem_targets:
                results.mem.append(await mem("tutorial"))
            if "tutorial" in p.abort_targets:
                await aborts("tutorial")
