"""Gateway CPU per chunk, this checkout against another commit, whole gateways, in one run.

    .venv/bin/python bench/hot_path.py --baseline REF [--rounds 6] [--seconds 4] [--workloads paced,batched]
    .venv/bin/python bench/hot_path.py --server granian [...]

With ``--server granian`` the two gateways both run this checkout's code, one under uvicorn
(the baseline) and one under granian (a Rust HTTP server; a dev dependency, for this
comparison only), to see what the HTTP server's share of the cost would become.

Issue 14's A/B for a change on the hot path: two gateways (ledger off), one running REF's code
(a detached worktree), one this checkout's, both on core 0 (one at a time: the other is idle),
the simulator and the load generator on core 1. In alternating rounds (the order rotating),
each gateway serves the same workload for ``--seconds`` after 2 s of ramp; CPU per chunk =
the gateway's user+system CPU over the chunks the clients received in the window. Reported:
each round's figures, the medians and the median of the round-by-round ratios
(this / baseline; below 1 is cheaper). Unlike ``bench/relay_chunks.py`` this includes uvicorn,
the ASGI layers and aiohttp, which is where a change to how chunks are written shows.

Workloads: *paced* (``pace200``: 200 connections looping 2-s streams at 50 tokens/s, one event
per upstream read) and *batched* (``tput``: 32 connections, ``tokens=20000``, 64 events per read).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import statistics
import tempfile
import time
from pathlib import Path

import psutil

from baseline import add_worktree, head, remove_worktree
from loadgen import Target
from processes import (
    GATEWAY_CORE,
    PYTHON,
    ROOT,
    Child,
    free_port,
    gateway_config,
    log,
    raise_nofile,
    spawn,
    start_simulator,
    stop_children,
    wait_quiet,
    wait_ready,
)
from scenarios_load import throughput

BASELINE_SECTION = "## This checkout against an earlier commit, whole gateways (bench/hot_path.py)"
SERVER_SECTION = "## uvicorn against granian, the same gateway (bench/hot_path.py --server granian)"
WORKLOADS = {"paced": ("pace200", 200), "batched": ("tput", 32)}


def start_gateway(name: str, src: Path, sim_port: int, workdir: Path, server: str = "uvicorn") -> Child:
    port = free_port()
    config = workdir / f"{name}.toml"
    config.write_text(gateway_config(sim_port))
    env = {"TOKENRELAY_LEDGER__ENABLED": "false", "TOKENRELAY_LOG_LEVEL": "WARNING"}
    argv = [PYTHON, "-m", "tokenrelay", "serve", "--port", str(port), "--config", str(config)]
    if server == "granian":
        env["TOKENRELAY_CONFIG_FILE"] = str(config)
        argv = [
            str(Path(PYTHON).parent / "granian"), "--interface", "asgi", "--factory", "--host", "127.0.0.1",
            "--port", str(port), "--workers", "1", "--loop", "uvloop", "--log-level", "warning",
            "tokenrelay.app:create_app_from_env",
        ]  # fmt: skip
    child = spawn(name, GATEWAY_CORE, argv, env, port, workdir, src=src)
    wait_ready(child, "/healthz")
    return child


def serving_process(child: Child) -> psutil.Process:
    """The process that serves requests: granian's worker is a child of its supervisor."""
    workers = child.proc.children()
    return workers[0] if workers else child.proc


async def measure(
    baseline_src: Path, rounds: int, seconds: float, workloads: list[str], workdir: Path, server: str
) -> str:
    children: list[Child] = []
    try:
        sim = start_simulator(workdir)
        children.append(sim)
        sim_port = sim.port
        gateways = {
            "baseline": start_gateway("baseline", baseline_src, sim_port, workdir),
            "this": start_gateway("this", ROOT / "src", sim_port, workdir, server),
        }
        children.extend(gateways.values())
        lines: list[str] = []
        for workload in workloads:
            key, streams = WORKLOADS[workload]
            per_chunk: dict[str, list[float]] = {"baseline": [], "this": []}
            ratios: list[float] = []
            for round_no in range(rounds):
                order = ["baseline", "this"] if round_no % 2 == 0 else ["this", "baseline"]
                figures: dict[str, float] = {}
                for name in order:
                    child = gateways[name]
                    target = Target(name, child.port, "v1", serving_process(child))
                    run = await throughput(target, sim.proc, streams, 2.0, seconds, key)
                    figures[name] = run.target_cpu / max(run.events, 1) * 1e6
                    per_chunk[name].append(figures[name])
                    log(
                        f"{workload} round {round_no + 1} {name}: {run.events:,} chunks, "
                        f"{figures[name]:.1f} µs/chunk, {run.errors} errors"
                    )
                    # The streams cut at the window's end: their clean-up stays off the next window.
                    leftover, waited = await wait_quiet(target.proc)
                    if waited >= 14.9:
                        log(f"{name}: still busy after the window ({leftover:.1f} CPU-s in {waited:.0f} s)")
                ratios.append(figures["this"] / figures["baseline"])
            lines.append(
                f"| {workload} (`{key}`, {streams} connections) "
                f"| {statistics.median(per_chunk['baseline']):.1f} "
                f"| {statistics.median(per_chunk['this']):.1f} | x{statistics.median(ratios):.3f} "
                f"| {', '.join(f'{r:.3f}' for r in ratios)} |"
            )
        return "\n".join(
            [
                "| workload | baseline µs per chunk (median) | this µs per chunk (median) "
                "| this / baseline (median of rounds) | rounds |",
                "|---|---:|---:|---:|---|",
                *lines,
            ]
        )
    finally:
        stop_children(children)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--baseline", help="a git ref to compare against")
    which.add_argument(
        "--server", choices=["granian"], help="this checkout under uvicorn against this server"
    )
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--workloads", default="paced,batched")
    parser.add_argument("--output", type=Path, help="replace (or append) this run's section in the file")
    args = parser.parse_args(argv)
    workloads = [w for w in args.workloads.split(",") if w]
    unknown = set(workloads) - WORKLOADS.keys()
    if unknown:
        parser.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    raise_nofile()
    with tempfile.TemporaryDirectory(prefix="tokenrelay-hotpath-") as scratch:
        workdir = Path(scratch)
        if args.server:
            table = asyncio.run(
                measure(ROOT / "src", args.rounds, args.seconds, workloads, workdir, args.server)
            )
            intro = (
                f"{time.strftime('%Y-%m-%d %H:%M')}, commit {head()}: the same gateway under uvicorn "
                f"(*baseline*) and under granian {importlib.metadata.version('granian')} (*this*, ASGI "
                "interface, uvloop, one worker), alternating rounds of 4 s; CPU of the process that "
                "serves (granian's worker)."
            )
            return emit(SERVER_SECTION, intro, table, args.output)
        worktree = workdir / "baseline-tree"
        baseline = add_worktree(args.baseline, worktree)
        try:
            table = asyncio.run(
                measure(worktree / "src", args.rounds, args.seconds, workloads, workdir, "uvicorn")
            )
        finally:
            remove_worktree(worktree)
    dirty = " (with uncommitted changes)" if baseline.this_dirty else ""
    intro = (
        f"{time.strftime('%Y-%m-%d %H:%M')}: *baseline* {baseline.commit} ({baseline.subject[:80]}), "
        f"*this* {head()}{dirty}; alternating rounds of 4 s, the order rotating; ledger off."
    )
    return emit(BASELINE_SECTION, intro, table, args.output)


def emit(heading: str, intro: str, table: str, output: Path | None) -> int:
    """Print the section; with ``output``, also put it in that file."""
    section = f"{heading}\n\n{intro}\n\n{table}\n"
    print(section)
    if output is not None:
        from resumable import with_section

        text = output.read_text() if output.exists() else ""
        output.write_text(with_section(text, section, heading))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
