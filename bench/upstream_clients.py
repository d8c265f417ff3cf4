"""Choosing the upstream client by measurement: three ways to open and read a streamed answer.

    python bench/upstream_clients.py                       # starts its own simulator
    python bench/upstream_clients.py --base-url http://127.0.0.1:8001/v1 --json out.json

Against the simulated upstream, one request at a time, the variants interleaved in rounds
(the order rotating from round to round) so that drift hits them alike:

* ``sdk-create``: ``openai.AsyncOpenAI(max_retries=0, http_client=DefaultAioHttpClient())``,
  ``chat.completions.with_streaming_response.create(..., stream=True).__aenter__()``, the body
  read with ``http_response.aiter_raw()``, then ``__aexit__``: the SDK as the gateway used it;
* ``sdk-post``: the same client's lower-level ``post("/chat/completions", cast_to=httpx2.Response,
  stream=True)`` (no per-message transformation), read with ``aiter_raw()``, then ``aclose()``;
* ``aiohttp``: ``ClientSession.post`` with an orjson body, read with ``content.readany()``:
  what the gateway does now (``src/tokenrelay/upstreams/openai_compat.py``).

Per request: wall time from starting to build the request to having the response headers
(*open*), this process's CPU time for the same span, and CPU time for the whole request
(open + read 10 events of ``sim?tokens=6`` + close); ``time.process_time()``. Read side: one
``sim?tokens=20000`` stream per client and round, events (``b"\\n\\n"``) counted over each
client's raw byte iteration, from the response headers to the end of the body.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx2
import openai
import orjson

ROOT = Path(__file__).resolve().parent.parent
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
    {"role": "user", "content": "Summarise the plot of a short story about a lighthouse keeper."},
]
SHORT = "sim?tokens=6"
LONG = "sim?tokens=20000"
VARIANTS = ("sdk-create", "sdk-post", "aiohttp")


@dataclass
class Timings:
    variant: str
    open_wall: list[float] = field(default_factory=list)
    open_cpu: list[float] = field(default_factory=list)
    request_cpu: list[float] = field(default_factory=list)
    events: list[int] = field(default_factory=list)
    errors: int = 0


@dataclass
class ReadRun:
    variant: str
    events: int
    reads: int
    seconds: float
    cpu_seconds: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    @property
    def per_cpu_s(self) -> float:
        return self.events / self.cpu_seconds if self.cpu_seconds > 0 else float("nan")


def count_events(previous_last: int, data: bytes) -> tuple[int, int]:
    """Events (``\\n\\n``) in ``data``, counting one split across two reads; returns (n, last byte)."""
    n = data.count(b"\n\n")
    if previous_last == 10 and data[:1] == b"\n":
        n += 1
    return n, data[-1] if data else previous_last


class Clients:
    """The three clients, each with its own connection pool to the same base URL."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.sdk = openai.AsyncOpenAI(
            base_url=self.base_url, api_key="unused", max_retries=0, http_client=openai.DefaultAioHttpClient()
        )
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100), auto_decompress=False)
        self.url = self.base_url + "/chat/completions"
        self.headers = {
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
            "Accept-Encoding": "identity",
            "Authorization": "Bearer unused",
        }
        self.timeout = aiohttp.ClientTimeout(total=None, connect=5, sock_connect=5, sock_read=None)

    async def close(self) -> None:
        await self.sdk.close()
        await self.session.close()

    # Each opener returns (body iterator, closer) once the response headers are in.

    async def open_sdk_create(
        self, model: str, rid: str
    ) -> tuple[AsyncIterator[bytes], Callable[[], Awaitable[Any]]]:
        manager = self.sdk.chat.completions.with_streaming_response.create(
            model=model,
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"X-Request-ID": rid, "Accept-Encoding": "identity"},
        )
        response = await manager.__aenter__()
        return response.http_response.aiter_raw(), lambda: manager.__aexit__(None, None, None)

    async def open_sdk_post(
        self, model: str, rid: str
    ) -> tuple[AsyncIterator[bytes], Callable[[], Awaitable[Any]]]:
        response = await self.sdk.post(
            "/chat/completions",
            body={
                "model": model,
                "messages": MESSAGES,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
            cast_to=httpx2.Response,
            stream=True,
            options={
                "headers": {
                    "X-Stainless-Raw-Response": "stream",
                    "X-Request-ID": rid,
                    "Accept-Encoding": "identity",
                }
            },
        )
        return response.aiter_raw(), response.aclose

    async def open_aiohttp(
        self, model: str, rid: str
    ) -> tuple[AsyncIterator[bytes], Callable[[], Awaitable[Any]]]:
        payload = orjson.dumps(
            {"model": model, "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
        )
        response = await self.session.post(
            self.url, data=payload, headers={**self.headers, "X-Request-ID": rid}, timeout=self.timeout
        )
        if response.status >= 400:
            response.close()
            raise RuntimeError(f"HTTP {response.status}")
        content = response.content

        async def body() -> AsyncIterator[bytes]:
            while data := await content.readany():
                yield data

        async def close() -> None:
            if content.at_eof():
                response.release()
            else:
                response.close()

        return body(), close

    def opener(self, variant: str) -> Callable[[str, str], Awaitable[tuple[AsyncIterator[bytes], Any]]]:
        return {
            "sdk-create": self.open_sdk_create,
            "sdk-post": self.open_sdk_post,
            "aiohttp": self.open_aiohttp,
        }[variant]


async def one_request(clients: Clients, variant: str, rid: str, into: Timings | None) -> None:
    opener = clients.opener(variant)
    c0, t0 = time.process_time(), time.perf_counter()
    body, close = await opener(SHORT, rid)
    t1, c1 = time.perf_counter(), time.process_time()
    events, last = 0, 0
    try:
        async for data in body:
            n, last = count_events(last, data)
            events += n
    finally:
        await close()
    c2 = time.process_time()
    if into is not None:
        into.open_wall.append(t1 - t0)
        into.open_cpu.append(c1 - c0)
        into.request_cpu.append(c2 - c0)
        into.events.append(events)


async def read_long(clients: Clients, variant: str, rid: str) -> ReadRun:
    body, close = await clients.opener(variant)(LONG, rid)
    events = reads = 0
    last = 0
    c0, t0 = time.process_time(), time.perf_counter()
    try:
        async for data in body:
            reads += 1
            n, last = count_events(last, data)
            events += n
    finally:
        await close()
    return ReadRun(variant, events, reads, time.perf_counter() - t0, time.process_time() - c0)


async def measure(base_url: str, requests: int, rounds: int, read_rounds: int) -> dict[str, Any]:
    clients = Clients(base_url)
    timings = {v: Timings(v) for v in VARIANTS}
    reads: list[ReadRun] = []
    per_round = max(1, requests // rounds)
    try:
        for variant in VARIANTS:  # warm-up: connections, lazy imports, caches
            for i in range(20):
                await one_request(clients, variant, f"uc-warm-{variant}-{i}", None)
        for r in range(rounds):
            order = VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]
            for variant in order:
                for i in range(per_round):
                    try:
                        await one_request(clients, variant, f"uc-{variant}-{r}-{i}", timings[variant])
                    except Exception:
                        timings[variant].errors += 1
        for r in range(read_rounds):
            order = VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]
            for variant in order:
                reads.append(await read_long(clients, variant, f"uc-long-{variant}-{r}"))
    finally:
        await clients.close()
    summary = []
    for variant in VARIANTS:
        t = timings[variant]
        runs = [x for x in reads if x.variant == variant]
        summary.append(
            {
                "variant": variant,
                "requests": len(t.open_wall),
                "errors": t.errors,
                "events_per_request": statistics.median(t.events) if t.events else None,
                "open_wall_p50_ms": 1000 * statistics.median(t.open_wall),
                "open_wall_p90_ms": 1000 * statistics.quantiles(t.open_wall, n=10)[-1],
                "open_cpu_ms": 1000 * statistics.fmean(t.open_cpu),
                "request_cpu_ms": 1000 * statistics.fmean(t.request_cpu),
                "read_events": statistics.median(x.events for x in runs) if runs else None,
                "read_reads": statistics.median(x.reads for x in runs) if runs else None,
                "read_chunks_per_s": statistics.median(x.rate for x in runs) if runs else None,
                "read_chunks_per_s_each": [round(x.rate) for x in runs],
                "read_chunks_per_cpu_s": statistics.median(x.per_cpu_s for x in runs) if runs else None,
            }
        )
    versions = {}
    for package in ("openai", "httpx2", "aiohttp"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    return {
        "base_url": base_url,
        "rounds": rounds,
        "requests_per_round": per_round,
        "read_rounds": read_rounds,
        "versions": versions,
        "summary": summary,
        "reads": [asdict(x) for x in reads],
    }


def start_sim() -> tuple[subprocess.Popen[bytes], str]:
    """The simulator of this checkout on a free port (core 1 when there are two, we take core 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    argv = [sys.executable, "-m", "tokenrelay", "sim", "--port", str(port)]
    if (os.cpu_count() or 1) >= 2:
        argv = ["taskset", "-c", "1", *argv]
        os.sched_setaffinity(0, {0})
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with (
            contextlib.suppress(urllib.error.URLError, OSError),
            urllib.request.urlopen(f"http://127.0.0.1:{port}/_stats", timeout=1),
        ):
            return proc, f"http://127.0.0.1:{port}/v1"
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.terminate()
    raise RuntimeError("simulator did not start")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base-url", help="a running simulator's /v1 URL (default: start one)")
    parser.add_argument("--requests", type=int, default=360, help="timed requests per variant")
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds")
    parser.add_argument("--read-rounds", type=int, default=3, help="long streams read per variant")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    sim = None
    base_url = args.base_url
    if base_url is None:
        sim, base_url = start_sim()
    try:
        result = asyncio.run(measure(base_url, args.requests, args.rounds, args.read_rounds))
    finally:
        if sim is not None:
            sim.terminate()
            sim.wait(10)
    print(
        f"{'variant':<11} {'open p50 ms':>11} {'open CPU ms':>11} {'request CPU ms':>14} "
        f"{'read chunks/s':>13} {'per CPU-s':>10} {'reads':>6}"
    )
    for row in result["summary"]:
        print(
            f"{row['variant']:<11} {row['open_wall_p50_ms']:>11.3f} {row['open_cpu_ms']:>11.3f} "
            f"{row['request_cpu_ms']:>14.3f} {row['read_chunks_per_s']:>13,.0f} "
            f"{row['read_chunks_per_cpu_s']:>10,.0f} {row['read_reads']:>6.0f}"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
