"""The relay's own cost per chunk, this checkout against another commit, in one run.

    .venv/bin/python bench/relay_chunks.py --baseline REF [--rounds 5] [--json FILE]

The gateway's cost per chunk is uvicorn's, aiohttp's and the relay's; the first two are the
same in any two versions of tokenrelay, so a whole-gateway A/B mostly measures noise around
a small difference. Here each version's relay runs in a process of its own (pinned to core 0,
the simulator on core 1), in process, without uvicorn: real upstream connections to the
simulator, the relay, the OpenAI encoder, and an ASGI ``send`` that drops the bytes. CPU per
chunk = the process's CPU time over the chunks relayed, in alternating rounds; medians.

Workloads: *batched* (``sim?tokens=20000``, 64 events per upstream read: the parser, encoder
and record per chunk), *one event per read* (300 streams paced at 50 tokens/s: every chunk
pays for a read, a write and the loop's wake-up) and *short streams* (``sim?tokens=20`` on 32
connections: what opening, running and accounting for a stream costs, per stream).

The baseline's code is a detached ``git worktree`` of REF in a scratch directory. Both
versions are driven through their own public API (the adapter below knows the relay's API
before and after lifecycle v2).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GATEWAY_CORE, LOAD_CORE = 0, 1
WORKLOADS = {
    # name: (model options, streams, seconds)
    "batched": ("sim?tokens=20000", 4, 3.0),
    "one event per read": ("sim?tokens=100000&tps=50", 300, 8.0),
    # Many short streams: what each stream costs the relay to open, run and account for.
    "short streams": ("sim?tokens=20", 32, 3.0),
}

CHILD = r"""
import asyncio, json, os, sys, time
from datetime import UTC, datetime

import uvloop

try:  # lifecycle v2 and later
    from tokenrelay.config import ModelConfig, Settings
    from tokenrelay.ledger.tokens import TokenCounter
    from tokenrelay.ledger.writer import LedgerWriter
    from tokenrelay.observability.metrics import NoMetrics
    from tokenrelay.observability.tracing import NoTracing
    from tokenrelay.protocols import OpenAIChunks
    from tokenrelay.record import StreamRecord
    from tokenrelay.relay import DrainCoordinator, RelayedStream, RelayRuntime
    from tokenrelay.upstreams import OpenAIUpstream as Upstream
    V2 = True
except ImportError:  # before it
    from tokenrelay.config import ModelConfig, Settings
    from tokenrelay.ledger.record import StreamRecord
    from tokenrelay.ledger.tokens import TokenCounter
    from tokenrelay.ledger.writer import LedgerWriter
    from tokenrelay.relay.lifecycle import DrainCoordinator, RelayRuntime, StreamRelay
    from tokenrelay.relay.protocols import OpenAIChunks
    from tokenrelay.upstreams.openai_compat import UpstreamClient as Upstream
    V2 = False

sim_url, options, streams, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])


async def main():
    model = ModelConfig(base_url=sim_url, upstream_model=options)
    settings = Settings(models={"m": model}, keepalive_seconds=15)
    counter = TokenCounter()
    await counter.load([])
    writer = LedgerWriter(store=None, counter=counter, batch_max_rows=200, batch_max_seconds=0.1)
    await writer.start()
    extra = {"metrics": NoMetrics(), "tracing": NoTracing()} if V2 else {}
    drain = DrainCoordinator(5)
    if V2 and "routing" in RelayRuntime.__dataclass_fields__:
        extra["routing"] = None  # the routes' concern; the relay is handed its router directly
    runtime = RelayRuntime(settings=settings, ledger=writer, counter=counter, drain=drain, **extra)
    upstream = Upstream(base_url=sim_url, api_key=None, max_connections=1000)
    upstream.start()
    route = {}
    if V2:
        try:  # with deployments (routing/): the relay takes the model's router
            from tokenrelay.routing import ModelRouter

            route = {"router": ModelRouter("m", model, [(model.resolved_deployments()[0], upstream)])}
        except ImportError:
            route = {"upstream": upstream}
    chunks = 0
    streams_done = 0

    async def one(index, deadline):
        nonlocal chunks

        async def send(message):
            nonlocal chunks, streams_done
            chunks += message.get("body", b"").count(b"\n\n")
            if message.get("more_body") is False:
                streams_done += 1

        while time.monotonic() < deadline:
            gone = asyncio.Event()  # per stream: a cancelled watcher takes its waiter down with it

            async def receive():
                await gone.wait()
                return {"type": "http.disconnect"}

            record = StreamRecord(
                stream_id=os.urandom(8).hex(), request_id=f"r{index}", model="m", upstream_model=options,
                messages=[{"role": "user", "content": "hi"}], tokenizer_encoding="cl100k_base",
                started_at=datetime.now(UTC), started_mono=time.monotonic(),
            )
            encoder = OpenAIChunks(public_model="m", include_usage=False)
            body = {"messages": record.messages}
            scope = {"type": "http", "headers": [], "extensions": {}}
            if V2:
                response = RelayedStream(runtime=runtime, record=record, key=None, model=model, body=body,
                                         encoder=encoder, **route)
            else:
                response = StreamRelay(record=record, body=body, model=model, upstream=upstream,
                                       protocol=encoder, runtime=runtime)
            task = asyncio.ensure_future(response(scope, receive, send))
            done, _ = await asyncio.wait({task}, timeout=max(deadline - time.monotonic(), 0))
            if not done:
                gone.set()
                await task
                return

    # Warm up (first connections, first allocations), then measure a fresh window.
    warm_until = time.monotonic() + 0.5
    await asyncio.gather(*(one(i, warm_until) for i in range(min(streams, 4))))
    chunks = streams_done = 0
    until = time.monotonic() + seconds
    cpu = time.process_time()
    await asyncio.gather(*(one(i, until) for i in range(streams)))
    cpu = time.process_time() - cpu
    await writer.close()
    await upstream.aclose()
    print(json.dumps({"chunks": chunks, "streams": streams_done, "cpu_seconds": cpu, "v2": V2}))


uvloop.run(main())
"""


def spawn_sim(port: int, src: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["taskset", "-c", str(LOAD_CORE), sys.executable, "-m", "tokenrelay", "sim", "--port", str(port)],
        env={**os.environ, "PYTHONPATH": str(src)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, timeout: float = 20.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def measure(src: Path, sim_url: str, workload: str) -> dict[str, Any]:
    options, streams, seconds = WORKLOADS[workload]
    done = subprocess.run(
        [
            "taskset",
            "-c",
            str(GATEWAY_CORE),
            sys.executable,
            "-c",
            CHILD,
            sim_url,
            options,
            str(streams),
            str(seconds),
        ],
        env={**os.environ, "PYTHONPATH": str(src), "PYTHONHASHSEED": "0"},
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the relay process failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["us_per_chunk"] = result["cpu_seconds"] / max(result["chunks"], 1) * 1e6
    result["us_per_stream"] = result["cpu_seconds"] / max(result["streams"], 1) * 1e6
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline", required=True, help="a git ref to compare against")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the measurements here")
    args = parser.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="tokenrelay-relay-chunks-"))
    worktree = scratch / "baseline"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(worktree), args.baseline],
        check=True,
        capture_output=True,
    )
    commit = subprocess.run(
        ["git", "-C", str(worktree), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    sources = {"this checkout": ROOT / "src", f"baseline {commit}": worktree / "src"}
    port = free_port()
    sim = spawn_sim(port, ROOT / "src")
    results: dict[str, dict[str, list[dict[str, Any]]]] = {
        w: {name: [] for name in sources} for w in WORKLOADS
    }
    try:
        wait_listening(port)
        sim_url = f"http://127.0.0.1:{port}/v1"
        for round_number in range(args.rounds):
            order = list(sources.items())
            if round_number % 2:
                order.reverse()  # alternate who goes first: drift does not favour one side
            for workload in WORKLOADS:
                for name, src in order:
                    result = measure(src, sim_url, workload)
                    results[workload][name].append(result)
                    print(
                        f"round {round_number + 1} {workload:>20} {name:>18}: "
                        f"{result['us_per_chunk']:7.2f} µs per chunk ({result['chunks']:,} chunks), "
                        f"{result['us_per_stream']:7.1f} µs per stream",
                        flush=True,
                    )
    finally:
        sim.terminate()
        sim.wait(10)
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)], check=False)
    print()
    names = list(sources)
    summary: dict[str, dict[str, Any]] = {}
    for workload, by_name in results.items():
        unit = "stream" if workload == "short streams" else "chunk"
        key = f"us_per_{unit}"
        ratios = [new[key] / old[key] for new, old in zip(by_name[names[0]], by_name[names[1]], strict=True)]
        summary[workload] = {
            "unit": unit,
            "this_us": statistics.median(r[key] for r in by_name[names[0]]),
            "baseline_us": statistics.median(r[key] for r in by_name[names[1]]),
            "ratios": ratios,
            "median_ratio": statistics.median(ratios),
        }
        s = summary[workload]
        print(
            f"{workload}: {names[0]} {s['this_us']:.2f} µs, {names[1]} {s['baseline_us']:.2f} µs "
            f"per {unit}; ratio per round {', '.join(f'{r:.3f}' for r in ratios)} "
            f"(median {s['median_ratio']:.3f})"
        )
    if args.json:
        args.json.write_text(
            json.dumps({"baseline": commit, "rounds": args.rounds, "summary": summary, "results": results})
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
