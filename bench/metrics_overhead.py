"""What Prometheus metrics cost the hot path: the same gateway with metrics on and off.

    python bench/metrics_overhead.py [--rounds 6] [--seconds 3] [--json out.json]

Starts the simulated upstream (core 1) and two gateways pinned to core 0, identical but for
``TOKENRELAY_METRICS_ENABLED`` (ledger off in both, so only the metrics differ). Alternating
rounds, each gateway in turn, the load generator (this process) on core 1:

* **chunk throughput**: 32 concurrent long fast streams (``sim?tokens=20000``) through
  ``/v1/chat/completions``, SSE events counted at the client for ``--seconds``;
* **short streams**: 32 concurrent clients doing 20-token streams back to back, streams per
  second (metrics are recorded per stream, so this is where they would show).

Reported: medians over the rounds and the ratio on/off for each. And, without the noise of
two processes: what recording one stream's metrics costs in process (a child process pinned
to core 0 calling ``Metrics`` as the gateway does for one stream, timed over 20,000 streams).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
GATEWAY_CORE, LOAD_CORE = "0", "1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, process: subprocess.Popen[bytes]) -> None:
    import urllib.request

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{url}: process exited")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{url} did not answer")


def start(argv: list[str], core: str, env: dict[str, str], probe: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        ["taskset", "-c", core, sys.executable, "-m", "tokenrelay", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **env},
    )
    wait_http(probe, process)
    return process


async def throughput(url: str, seconds: float, streams: int = 32) -> float:
    """SSE events per second over ``streams`` long fast streams."""
    body = {"model": "fast-long", "messages": [{"role": "user", "content": "go"}], "stream": True}
    counted = 0
    stop_at = time.monotonic() + seconds

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal counted
        async with session.post(f"{url}/v1/chat/completions", json=body) as response:
            while time.monotonic() < stop_at:
                data = await response.content.readany()
                if not data:
                    return
                counted += data.count(b"\n\n")

    started = time.monotonic()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(one(session) for _ in range(streams)))
    return counted / (time.monotonic() - started)


async def short_streams(url: str, seconds: float, clients: int = 32) -> float:
    """Completed 20-token streams per second with ``clients`` back-to-back clients."""
    body = {"model": "fast-short", "messages": [{"role": "user", "content": "go"}], "stream": True}
    done = 0
    stop_at = time.monotonic() + seconds

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal done
        while time.monotonic() < stop_at:
            async with session.post(f"{url}/v1/chat/completions", json=body) as response:
                await response.read()
            done += 1

    started = time.monotonic()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(one(session) for _ in range(clients)))
    return done / (time.monotonic() - started)


async def measure(urls: dict[str, str], rounds: int, seconds: float) -> dict[str, Any]:
    results: dict[str, dict[str, list[float]]] = {
        way: {"chunks_per_s": [], "streams_per_s": []} for way in urls
    }
    for n in range(rounds):
        order = list(urls) if n % 2 == 0 else list(reversed(urls))
        for way in order:
            results[way]["chunks_per_s"].append(await throughput(urls[way], seconds))
        for way in order:
            results[way]["streams_per_s"].append(await short_streams(urls[way], seconds))
    summary: dict[str, Any] = {"rounds": rounds, "seconds": seconds}
    for way, values in results.items():
        summary[way] = {key: statistics.median(v) for key, v in values.items()}
        summary[way]["all"] = values
    for key in ("chunks_per_s", "streams_per_s"):
        summary[f"{key}_on_over_off"] = summary["metrics_on"][key] / summary["metrics_off"][key]
    return summary


IN_PROCESS = """
import json, time
from datetime import UTC, datetime
from tokenrelay.observability.metrics import Metrics
from tokenrelay.record import StreamRecord, StreamStatus, UsageSource

metrics = Metrics()
record = StreamRecord(
    stream_id="s", request_id="r", model="m", upstream_model="u", messages=[], tokenizer_encoding="x",
    started_at=datetime.now(UTC), started_mono=0.0, first_token_mono=0.001, finished_mono=0.01,
    prompt_tokens=5, completion_tokens=20, usage_source=UsageSource.UPSTREAM, status=StreamStatus.COMPLETED,
)
best = float("inf")
for _ in range(5):
    started = time.process_time()
    for _ in range(20000):
        metrics.stream_started("m")
        metrics.stream_relayed("m", None)
        metrics.stream_finished(record)
    best = min(best, (time.process_time() - started) / 20000)
print(json.dumps(best * 1e6))
"""


def in_process_us_per_stream() -> float:
    """CPU µs to record one stream's metrics (the best of 5 runs of 20,000)."""
    done = subprocess.run(
        ["taskset", "-c", GATEWAY_CORE, sys.executable, "-c", IN_PROCESS],
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        capture_output=True,
        text=True,
        check=True,
    )
    return float(json.loads(done.stdout))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    os.sched_setaffinity(0, {int(LOAD_CORE)})
    env = {"PYTHONHASHSEED": "0", "TOKENRELAY_LOG_LEVEL": "WARNING", "TOKENRELAY_LEDGER__ENABLED": "false"}
    with tempfile.TemporaryDirectory() as tmp:
        sim_port = free_port()
        processes = [
            start(["sim", "--port", str(sim_port)], LOAD_CORE, {}, f"http://127.0.0.1:{sim_port}/_stats")
        ]
        config = Path(tmp) / "bench.toml"
        sim_url = f"http://127.0.0.1:{sim_port}/v1"
        config.write_text(
            "".join(
                f'[models."{name}"]\nbase_url = "{sim_url}"\nupstream_model = "sim?tokens={tokens}"\n'
                for name, tokens in (("fast-long", 20000), ("fast-short", 20))
            )
        )
        urls = {}
        try:
            for way, enabled in (("metrics_on", "true"), ("metrics_off", "false")):
                port = free_port()
                gateway_env = {**env, "TOKENRELAY_METRICS_ENABLED": enabled, "TOKENRELAY_WEB_PAGE": "false"}
                argv = ["serve", "--port", str(port), "--config", str(config)]
                processes.append(start(argv, GATEWAY_CORE, gateway_env, f"http://127.0.0.1:{port}/healthz"))
                urls[way] = f"http://127.0.0.1:{port}"
            summary = asyncio.run(measure(urls, args.rounds, args.seconds))
            summary["in_process_us_per_stream"] = in_process_us_per_stream()
        finally:
            for process in processes:
                process.terminate()
                process.wait(30)
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
