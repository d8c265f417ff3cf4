"""tokenrelay benchmark: gateway vs a direct connection to the simulated upstream, in one run.

    .venv/bin/python bench/run.py            # full run (~5 minutes), writes BENCHMARKS.md
    .venv/bin/python bench/run.py --quick    # smaller samples (~1 minute)

Starts the simulator and the gateways as subprocesses on free loopback ports (gateways pinned to
core 0 with ``taskset``; the simulator and this load generator share core 1), measures, stops
everything and writes the report. The load generator is a raw asyncio protocol (uvloop): it
writes a prepared HTTP/1.1 request and counts SSE events by counting ``b"\\n\\n"`` in what it
reads, with ``time.monotonic()`` timestamps (system-wide, comparable with the simulator's).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import importlib.metadata
import math
import os
import platform
import resource
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil
import uvloop

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
GATEWAY_CORE = 0
LOAD_CORE = 1  # the simulator and this process
clock = time.monotonic

# Simulator behaviours, by the public model name the gateways know them under.
MODELS = {
    "pace1": "tokens=6&tps=200",  # 1 stream: TTFT + 5 gaps of 5 ms per request
    "pace200": "tokens=20&tps=50",  # 200 streams: 10,000 chunks/s in total, gaps of 20 ms
    "tput": "tokens=20000",  # as fast as possible (the simulator writes 64 events at a time)
    "idle": "tokens=50&stall_after=1&stall_seconds=60",  # one delta, then silence
    "ab-headers": "headers_delay=30",
    "ab-first": "stall_after=0&stall_seconds=30&tokens=50",
    "ab-active": "tokens=100000&tps=100",
    "ab-stall": "tokens=50&stall_after=3&stall_seconds=30",
}
MESSAGES = [{"role": "user", "content": "hi"}]

TARGET_TTFT_ADDED_MS = 1.0
TARGET_CHUNKS_S = 25_000
STRETCH_CHUNKS_S = 50_000
TARGET_KIB_PER_STREAM = 20.0
TARGET_ABORT_P99_MS = 10.0


@dataclass(frozen=True)
class Profile:
    name: str
    c1_requests: int  # sequential requests per target at concurrency 1
    c200_seconds: float
    tput_warmup: float
    tput_seconds: float
    tput_concurrency: tuple[int, ...]
    mem_streams: int
    mem_targets: tuple[str, ...]
    abort_samples: int
    abort_targets: tuple[str, ...]


FULL = Profile(
    name="full",
    c1_requests=300,
    c200_seconds=8.0,
    tput_warmup=1.0,
    tput_seconds=5.0,
    tput_concurrency=(4, 32),
    mem_streams=1000,
    mem_targets=("direct", "gw-aiohttp", "gw-httpx", "tutorial"),
    abort_samples=50,
    abort_targets=("direct", "gw-aiohttp", "gw-httpx", "tutorial"),
)
QUICK = Profile(
    name="quick",
    c1_requests=60,
    c200_seconds=2.5,
    tput_warmup=0.5,
    tput_seconds=1.5,
    tput_concurrency=(4, 32),
    mem_streams=1000,
    mem_targets=("direct", "gw-aiohttp"),
    abort_samples=15,
    abort_targets=("direct", "gw-aiohttp"),
)


# -- small helpers ------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """Percentile with linear interpolation (q in 0..1); NaN for no values."""
    if not values:
        return math.nan
    s = sorted(values)
    k = (len(s) - 1) * q
    lo = math.floor(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def ms(seconds: float, digits: int = 2) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.{digits}f}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**missed**")


# -- the load generator's connection ----------------------------------------------------------


class Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection running one streamed request at a time."""

    def __init__(self, counter: list[int]) -> None:
        self.loop = asyncio.get_running_loop()
        self.counter = counter  # shared event counter (throughput)
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.done: asyncio.Future[bool] | None = None
        self.waiter: asyncio.Future[bool] | None = None
        self.wait_n = 0
        self._reset(0, 0)

    def _reset(self, first_content: int, n_content: int) -> None:
        self.hbuf = b""
        self.headers = False
        self.status = 0
        self.clen: int | None = None
        self.body = 0
        self.events = 0
        self.last_nl = False
        self.tail = b""
        self.first_content = first_content  # event index (1-based) of the first content delta
        self.gap_end = first_content + n_content - 1  # last content event index
        self.ttft: float | None = None
        self.gaps: list[float] = []
        self.last_t = 0.0
        self.sent_at = 0.0

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's are not asyncio.Transport

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: ARG002
        self.lost = True
        for fut in (self.done, self.waiter):
            if fut is not None and not fut.done():
                fut.set_result(False)

    def data_received(self, data: bytes) -> None:
        now = clock()
        if not self.headers:
            data = self.hbuf + data
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self.hbuf = data
                return
            head = data[:end].lower()
            data = data[end + 4 :]
            self.headers = True
            self.status = int(head[9:12])
            if b"transfer-encoding: chunked" not in head:
                self.clen = 0
                for line in head.split(b"\r\n"):
                    if line.startswith(b"content-length:"):
                        self.clen = int(line[15:])
                if self.clen == 0:
                    self._finish(False)
            if not data:
                return
        if self.clen is not None:  # a non-streamed (error) answer
            self.body += len(data)
            if self.body >= self.clen:
                self._finish(False)
            return
        n = data.count(b"\n\n")
        if self.last_nl and data[0] == 10:
            n += 1
        self.last_nl = data[-1] == 10
        if n:
            prev = self.events
            self.events = prev + n
            self.counter[0] += n
            if self.first_content and prev < self.gap_end:
                for index in range(prev + 1, min(self.events, self.gap_end) + 1):
                    if index == self.first_content:
                        self.ttft = now - self.sent_at
                        self.last_t = now
                    elif index > self.first_content:
                        self.gaps.append(now - self.last_t)
                        self.last_t = now
            if self.waiter is not None and self.events >= self.wait_n and not self.waiter.done():
                self.waiter.set_result(True)
        tail = data[-7:] if len(data) >= 7 else (self.tail + data)[-7:]
        self.tail = tail
        if tail == b"\r\n0\r\n\r\n":
            self._finish(self.status == 200)

    def _finish(self, ok: bool) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(ok)

    # API
    def begin(self, payload: bytes, first_content: int = 0, n_content: int = 0) -> asyncio.Future[bool]:
        """Send one request; the future is True when its stream completed with status 200."""
        assert self.transport is not None
        self._reset(first_content, n_content)
        self.waiter = None
        self.done = self.loop.create_future()
        if self.lost:
            self.done.set_result(False)
            return self.done
        self.sent_at = clock()
        self.transport.write(payload)
        return self.done

    def wait_events(self, n: int) -> asyncio.Future[bool]:
        """A future that is True once ``n`` events of the current response have arrived."""
        self.wait_n = n
        self.waiter = self.loop.create_future()
        if self.events >= n:
            self.waiter.set_result(True)
        elif self.lost:
            self.waiter.set_result(False)
        return self.waiter

    def close(self) -> float:
        """Close the socket now (FIN); returns the monotonic time just before."""
        t = clock()
        if self.transport is not None and not self.lost:
            sock = self.transport.get_extra_info("socket")
            with contextlib.suppress(OSError, AttributeError):
                sock.shutdown(socket.SHUT_RDWR)
            self.transport.close()
        return t


async def connect(port: int, counter: list[int]) -> Conn:
    loop = asyncio.get_running_loop()
    _, conn = await asyncio.wait_for(
        loop.create_connection(lambda: Conn(counter), "127.0.0.1", port), timeout=5
    )
    return conn


# -- what we talk to ------------------------------------------------------------------------------


@dataclass
class Target:
    """One way to reach the simulator: directly, through a gateway endpoint, or the tutorial app."""

    label: str
    port: int
    style: str  # "direct" | "v1" | "chat" | "tutorial"
    proc: psutil.Process  # the process whose CPU / RSS is measured (the simulator for "direct")
    description: str = ""
    _prefix: dict[str, bytes] = field(default_factory=dict)

    @property
    def path(self) -> str:
        return "/chat" if self.style == "chat" else "/v1/chat/completions"

    @property
    def first_content(self) -> int:
        """Index of the first content event: /chat has no role-only event in front."""
        return 1 if self.style == "chat" else 2

    def _body(self, key: str) -> bytes:
        if self.style in ("direct", "tutorial"):
            body: dict[str, Any] = {"model": "sim?" + MODELS[key], "stream": True, "messages": MESSAGES}
            if self.style == "direct":
                body["stream_options"] = {"include_usage": True}  # as the gateway asks upstream
        elif self.style == "v1":
            body = {"model": key, "stream": True, "messages": MESSAGES}
        else:
            body = {"model": key, "messages": MESSAGES}
        return orjson.dumps(body)

    def request(self, key: str, rid: str) -> bytes:
        body = self._body(key)
        return (
            f"POST {self.path} HTTP/1.1\r\nhost: 127.0.0.1:{self.port}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"x-request-id: {rid}\r\n\r\n"
        ).encode() + body


# -- processes ----------------------------------------------------------------------------------


@dataclass
class Child:
    name: str
    popen: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def proc(self) -> psutil.Process:
        return psutil.Process(self.popen.pid)


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _child_limits() -> None:
    # Children inherit the raised limit already; set it again in case the parent could not.
    with contextlib.suppress(ValueError, OSError):
        raise_nofile()


def spawn(name: str, core: int, argv: list[str], env: dict[str, str], port: int, workdir: Path) -> Child:
    log = workdir / f"{name}.log"
    with open(log, "wb") as out:
        popen = subprocess.Popen(
            ["taskset", "-c", str(core), *argv],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            preexec_fn=_child_limits,
        )
    return Child(name, popen, port, log)


def wait_ready(child: Child, path: str, timeout: float = 30.0) -> None:
    deadline = clock() + timeout
    url = f"http://127.0.0.1:{child.port}{path}"
    while clock() < deadline:
        if child.popen.poll() is not None:
            raise RuntimeError(f"{child.name} exited early:\n{child.log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status < 500:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{child.name} not ready after {timeout}s:\n{child.log.read_text()[-3000:]}")


def stop_children(children: Iterable[Child]) -> None:
    children = list(children)
    for child in children:
        if child.popen.poll() is None:
            child.popen.terminate()
    deadline = clock() + 10
    for child in children:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.popen.wait(max(0.1, deadline - clock()))
        if child.popen.poll() is None:
            child.popen.kill()
            child.popen.wait(5)


def gateway_config(sim_port: int, probe_port: int) -> str:
    lines = ['default_model = "pace1"', ""]
    for name, options in MODELS.items():
        lines += [
            f'[models."{name}"]',
            f'base_url = "http://127.0.0.1:{sim_port}/v1"',
            f'upstream_model = "sim?{options}"',
            "",
        ]
    lines += [
        '[models."probe"]',
        f'base_url = "http://127.0.0.1:{probe_port}/v1"',
        'upstream_model = "p"',
        "",
    ]
    return "\n".join(lines)


# -- the sim's control plane ----------------------------------------------------------------------


class SimControl:
    def __init__(self, session: aiohttp.ClientSession, port: int) -> None:
        self.session = session
        self.base = f"http://127.0.0.1:{port}"

    async def stats(self) -> dict[str, Any]:
        async with self.session.get(f"{self.base}/_stats", timeout=aiohttp.ClientTimeout(total=10)) as r:
            return orjson.loads(await r.read())  # type: ignore[no-any-return]

    async def reset(self) -> None:
        async with self.session.post(f"{self.base}/_stats/reset", timeout=aiohttp.ClientTimeout(total=10)):
            pass

    async def wait_idle(self, within: float) -> bool:
        deadline = clock() + within
        while clock() < deadline:
            if (await self.stats())["active"] == 0:
                return True
            await asyncio.sleep(0.05)
        return False


# -- measurements -----------------------------------------------------------------------------------


@dataclass
class Latency:
    target: str
    concurrency: int
    ttft: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    requests: int = 0
    errors: int = 0


async def ttft_sequential(targets: list[Target], n: int) -> dict[str, Latency]:
    """Concurrency 1: requests to each target in turn (interleaved, so drift hits all alike)."""
    counter = [0]
    conns: dict[str, Conn] = {}
    out = {t.label: Latency(t.label, 1) for t in targets}
    n_content = int(MODELS["pace1"].split("tokens=")[1].split("&")[0])
    try:
        for i in range(n):
            for target in targets:
                result = out[target.label]
                conn = conns.get(target.label)
                if conn is None or conn.lost:
                    conn = conns[target.label] = await connect(target.port, counter)
                done = conn.begin(
                    target.request("pace1", f"c1-{target.label}-{i}"), target.first_content, n_content
                )
                try:
                    ok = await asyncio.wait_for(done, 5)
                except TimeoutError:
                    ok = False
                    conn.close()
                result.requests += 1
                if ok and conn.ttft is not None:
                    result.ttft.append(conn.ttft)
                    result.gaps.extend(conn.gaps)
                else:
                    result.errors += 1
    finally:
        for conn in conns.values():
            conn.close()
    return out


async def ttft_concurrent(target: Target, concurrency: int, seconds: float) -> Latency:
    """``concurrency`` keep-alive connections looping the paced model for ``seconds``."""
    counter = [0]
    result = Latency(target.label, concurrency)
    n_content = int(MODELS["pace200"].split("tokens=")[1].split("&")[0])
    stop = asyncio.Event()
    conns: list[Conn] = []
    request_seconds = n_content / 50  # spread the first requests over one request's duration

    async def worker(w: int) -> None:
        await asyncio.sleep(request_seconds * w / concurrency)
        conn: Conn | None = None
        i = 0
        while not stop.is_set():
            if conn is None or conn.lost:
                try:
                    conn = await connect(target.port, counter)
                except (OSError, TimeoutError):
                    result.errors += 1
                    await asyncio.sleep(0.05)
                    continue
                conns.append(conn)
            i += 1
            done = conn.begin(
                target.request("pace200", f"c200-{target.label}-{w}-{i}"), target.first_content, n_content
            )
            try:
                ok = await asyncio.wait_for(done, 10)
            except TimeoutError:
                ok = False
                conn.close()
            result.requests += 1
            if ok and conn.ttft is not None:
                result.ttft.append(conn.ttft)
                result.gaps.extend(conn.gaps)
            else:
                result.errors += 1

    tasks = [asyncio.ensure_future(worker(w)) for w in range(concurrency)]
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.wait(tasks, timeout=15)
    for conn in conns:
        conn.close()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return result


@dataclass
class Throughput:
    target: str
    concurrency: int
    seconds: float
    events: int
    target_cpu: float  # CPU-seconds of the measured process (gateway, or sim for direct)
    sim_cpu: float
    load_cpu: float
    errors: int
    requests: int

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    @property
    def per_cpu_s(self) -> float:
        return self.events / self.target_cpu if self.target_cpu > 0 else math.nan


async def throughput(
    target: Target, sim: psutil.Process, concurrency: int, warmup: float, seconds: float
) -> Throughput:
    counter = [0]
    stop = asyncio.Event()
    conns: list[Conn] = []
    stats = {"errors": 0, "requests": 0}
    me = psutil.Process()

    async def worker(w: int) -> None:
        conn: Conn | None = None
        i = 0
        while not stop.is_set():
            if conn is None or conn.lost:
                try:
                    conn = await connect(target.port, counter)
                except (OSError, TimeoutError):
                    stats["errors"] += 1
                    await asyncio.sleep(0.05)
                    continue
                conns.append(conn)
            i += 1
            stats["requests"] += 1
            ok = await conn.begin(target.request("tput", f"tp-{target.label}-{concurrency}-{w}-{i}"))
            if not ok and not stop.is_set():
                stats["errors"] += 1

    tasks = [asyncio.ensure_future(worker(w)) for w in range(concurrency)]
    await asyncio.sleep(warmup)
    t0, e0 = clock(), counter[0]
    c0 = (cpu_seconds(target.proc), cpu_seconds(sim), cpu_seconds(me))
    await asyncio.sleep(seconds)
    t1, e1 = clock(), counter[0]
    c1 = (cpu_seconds(target.proc), cpu_seconds(sim), cpu_seconds(me))
    stop.set()
    for conn in conns:
        conn.close()
    await asyncio.wait(tasks, timeout=5)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return Throughput(
        target=target.label,
        concurrency=concurrency,
        seconds=t1 - t0,
        events=e1 - e0,
        target_cpu=c1[0] - c0[0],
        sim_cpu=c1[1] - c0[1],
        load_cpu=c1[2] - c0[2],
        errors=stats["errors"],
        requests=stats["requests"],
    )


@dataclass
class Memory:
    target: str
    streams: int
    opened: int
    rss_before: int
    rss_open: int
    rss_after: int
    sim_rss_delta: int
    open_seconds: float
    closed_clean: bool

    @property
    def kib_per_stream(self) -> float:
        return (self.rss_open - self.rss_before) / 1024 / max(self.opened, 1)


async def open_idle_streams(target: Target, n: int, tag: str, batch: int = 100) -> tuple[list[Conn], int]:
    """Open ``n`` streams to the stalled model; returns the connections and how many got a delta."""
    counter = [0]
    conns: list[Conn] = []
    waiters: list[asyncio.Future[bool]] = []
    for start in range(0, n, batch):
        size = min(batch, n - start)
        results = await asyncio.gather(
            *(connect(target.port, counter) for _ in range(size)), return_exceptions=True
        )
        for j, conn in enumerate(results):
            if isinstance(conn, BaseException):
                continue
            conns.append(conn)
            conn.begin(target.request("idle", f"mem-{tag}-{start + j}"))
            waiters.append(conn.wait_events(target.first_content))
    done, _ = await asyncio.wait(waiters, timeout=30) if waiters else (set(), set())
    ok = sum(1 for w in done if w.result())
    return conns, ok


async def memory(target: Target, sim_proc: psutil.Process, control: SimControl, n: int) -> Memory:
    # Warm-up: a few streams opened and closed, so lazily built things exist before "before".
    warm, _ = await open_idle_streams(target, 50, f"{target.label}-warm")
    await asyncio.sleep(0.2)
    for conn in warm:
        conn.close()
    await control.wait_idle(10)
    await asyncio.sleep(1.0)
    rss_before = target.proc.memory_info().rss
    sim_before = sim_proc.memory_info().rss
    t0 = clock()
    conns, opened = await open_idle_streams(target, n, target.label)
    open_seconds = clock() - t0
    await asyncio.sleep(1.0)
    rss_open = target.proc.memory_info().rss
    sim_open = sim_proc.memory_info().rss
    for conn in conns:
        conn.close()
    closed_clean = await control.wait_idle(15)
    await asyncio.sleep(1.0)
    rss_after = target.proc.memory_info().rss
    return Memory(
        target=target.label,
        streams=n,
        opened=opened,
        rss_before=rss_before,
        rss_open=rss_open,
        rss_after=rss_after,
        sim_rss_delta=sim_open - sim_before,
        open_seconds=open_seconds,
        closed_clean=closed_clean,
    )


ABORT_PHASES = {
    "waiting for upstream headers": "ab-headers",
    "before first token": "ab-first",
    "mid-stream, active": "ab-active",
    "mid-stream, stalled": "ab-stall",
}


@dataclass
class Abort:
    target: str
    phase: str
    latencies: list[float] = field(default_factory=list)
    not_ended: int = 0  # the upstream request was still open when we stopped looking
    invalid: int = 0  # the client never reached the state the phase needs


async def abort_latency(
    target: Target, control: SimControl, phase: str, samples: int, concurrency: int, wait_end: float
) -> Abort:
    key = ABORT_PHASES[phase]
    result = Abort(target.label, phase)
    closed: dict[str, float] = {}
    await control.reset()
    counter = [0]
    queue = list(range(samples))

    async def one(i: int) -> None:
        rid = f"ab-{target.label}-{key}-{i}"
        try:
            conn = await connect(target.port, counter)
        except (OSError, TimeoutError):
            result.invalid += 1
            return
        conn.begin(target.request(key, rid))
        if key in ("ab-headers", "ab-first"):
            await asyncio.sleep(0.1)  # nothing reaches the client through the gateway yet
            ok = not conn.lost
        else:
            content = 5 if key == "ab-active" else 3
            try:
                ok = await asyncio.wait_for(conn.wait_events(target.first_content + content - 1), 5)
            except TimeoutError:
                ok = False
            if key == "ab-stall":
                await asyncio.sleep(0.05)  # now the upstream is silent
        if ok:
            closed[rid] = conn.close()
        else:
            conn.close()
            result.invalid += 1

    async def worker() -> None:
        while queue:
            await one(queue.pop())

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    deadline = clock() + wait_end
    entries: dict[str, dict[str, Any]] = {}
    while True:
        entries = {e["request_id"]: e for e in (await control.stats())["requests"]}
        pending = [rid for rid in closed if entries.get(rid, {}).get("ended_at") is None]
        if not pending or clock() > deadline:
            break
        await asyncio.sleep(0.05)
    for rid, t_close in closed.items():
        entry = entries.get(rid)
        if entry is None or entry["started_at"] > t_close:
            result.invalid += 1
        elif entry["ended_at"] is None:
            result.not_ended += 1
        else:
            result.latencies.append(entry["ended_at"] - t_close)
    return result


async def probe_transports(gateways: dict[str, Target], probe_port: int) -> dict[str, str]:
    """Which HTTP client each gateway really uses upstream, from the request head it sends.

    aiohttp writes the header names it adds in lower case (``host:``); httpx/h11 writes ``Host:``.
    """
    heads: dict[str, bytes] = {}
    sse = (
        b'data: {"id":"p","object":"chat.completion.chunk","created":0,"model":"p","choices":'
        b'[{"index":0,"delta":{"content":"ok"},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
    )

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"x-request-id:"):
                    heads[line.split(b":", 1)[1].strip().decode()] = head
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n"
                b"content-length: %d\r\n\r\n%b" % (len(sse), sse)
            )
            await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", probe_port)
    found: dict[str, str] = {}
    try:
        async with aiohttp.ClientSession() as session:
            for label, target in gateways.items():
                rid = f"probe-{label}"
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.post(
                        f"http://127.0.0.1:{target.port}/chat",
                        json={"model": "probe", "messages": MESSAGES},
                        headers={"X-Request-ID": rid},
                        timeout=aiohttp.ClientTimeout(total=10),
                    ) as response:
                        await response.read()
                head = heads.get(rid, b"")
                if b"\r\nHost:" in head:
                    found[label] = "httpx"
                elif b"\r\nhost:" in head:
                    found[label] = "aiohttp"
                else:
                    found[label] = "unknown"
    finally:
        server.close()
        await server.wait_closed()
    return found


# -- the run ----------------------------------------------------------------------------------------


@dataclass
class Results:
    profile: Profile
    transports: dict[str, str] = field(default_factory=dict)
    c1: dict[str, Latency] = field(default_factory=dict)
    c200: dict[str, Latency] = field(default_factory=dict)
    tput: list[Throughput] = field(default_factory=list)
    mem: list[Memory] = field(default_factory=list)
    aborts: list[Abort] = field(default_factory=list)
    ledger_rows: int | None = None
    started: float = 0.0
    finished: float = 0.0
    notes: list[str] = field(default_factory=list)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


async def measure(targets: dict[str, Target], sim: Child, probe_port: int, results: Results) -> None:
    p = results.profile
    sim_proc = sim.proc
    async with aiohttp.ClientSession() as session:
        control = SimControl(session, sim.port)
        gateways = {
            k: v
            for k, v in targets.items()
            if k.startswith("gw-") and k.endswith(("aiohttp", "httpx", "ledger"))
        }
        results.transports = await probe_transports(gateways, probe_port)
        log(f"upstream transports in use: {results.transports}")

        c1_targets = [
            targets[k] for k in ("direct", "gw-aiohttp", "gw-aiohttp-chat", "tutorial") if k in targets
        ]
        log(f"TTFT, 1 stream: {p.c1_requests} requests x {len(c1_targets)} targets")
        await control.reset()
        results.c1 = await ttft_sequential(c1_targets, p.c1_requests)
        for label in [t.label for t in c1_targets]:
            await control.reset()
            log(f"TTFT, 200 streams: {label}")
            results.c200[label] = await ttft_concurrent(targets[label], 200, p.c200_seconds)
            await control.wait_idle(10)

        tput_labels = [
            "direct",
            "gw-aiohttp",
            "gw-aiohttp-chat",
            "gw-httpx",
            "gw-httpx-chat",
            "gw-ledger",
            "gw-ledger-chat",
            "tutorial",
        ]
        for label in tput_labels:
            if label not in targets:
                continue
            for concurrency in p.tput_concurrency:
                await control.reset()
                log(f"throughput: {label} x{concurrency}")
                run = await throughput(targets[label], sim_proc, concurrency, p.tput_warmup, p.tput_seconds)
                results.tput.append(run)
                log(f"  {run.rate:,.0f} chunks/s, {run.per_cpu_s:,.0f} chunks per CPU-s")
                if not await control.wait_idle(10):
                    results.notes.append(
                        f"throughput {label} x{concurrency}: upstream streams still open 10 s later"
                    )

        for label in p.mem_targets:
            if label not in targets:
                continue
            await control.reset()
            log(f"memory: {p.mem_streams} idle streams via {label}")
            m = await memory(targets[label], sim_proc, control, p.mem_streams)
            results.mem.append(m)
            log(f"  {m.kib_per_stream:.1f} KiB/stream ({m.opened}/{m.streams} opened)")

        for label in p.abort_targets:
            if label not in targets:
                continue
            for phase in ABORT_PHASES:
                log(f"abort: {label}, {phase}")
                wait_end = 3.0 if label != "tutorial" else 2.0
                a = await abort_latency(targets[label], control, phase, p.abort_samples, 5, wait_end)
                results.aborts.append(a)
                log(
                    f"  p50 {ms(pct(a.latencies, 0.5))} ms p99 {ms(pct(a.latencies, 0.99))} ms "
                    f"n={len(a.latencies)} not-ended={a.not_ended} invalid={a.invalid}"
                )
            await control.wait_idle(3)


def run(profile: Profile, output: Path) -> Results:
    results = Results(profile=profile)
    results.started = time.time()
    nofile = raise_nofile()
    os.sched_setaffinity(0, {LOAD_CORE})
    workdir = Path(tempfile.mkdtemp(prefix="tokenrelay-bench-"))
    children: list[Child] = []
    try:
        sim_port, probe_port = free_port(), free_port()
        sim = spawn(
            "sim",
            LOAD_CORE,
            [PYTHON, "-m", "tokenrelay", "sim", "--port", str(sim_port)],
            {},
            sim_port,
            workdir,
        )
        children.append(sim)
        config = workdir / "gateway.toml"
        config.write_text(gateway_config(sim_port, probe_port))
        base_env = {
            "TOKENRELAY_LOG_LEVEL": "WARNING",
            "TOKENRELAY_DRAIN_SECONDS": "1",
            "TOKENRELAY_LEDGER__ENABLED": "false",
        }
        ledger_db = workdir / "ledger.db"
        gateway_envs = {
            "gw-aiohttp": {"TOKENRELAY_UPSTREAM_HTTP_BACKEND": "aiohttp"},
            "gw-httpx": {"TOKENRELAY_UPSTREAM_HTTP_BACKEND": "httpx"},
            "gw-ledger": {
                "TOKENRELAY_UPSTREAM_HTTP_BACKEND": "aiohttp",
                "TOKENRELAY_LEDGER__ENABLED": "true",
                "TOKENRELAY_LEDGER__DATABASE_URL": f"sqlite+aiosqlite:///{ledger_db}",
            },
        }
        gateway_children: dict[str, Child] = {}
        for name, env in gateway_envs.items():
            port = free_port()
            argv = [PYTHON, "-m", "tokenrelay", "serve", "--port", str(port), "--config", str(config)]
            gateway_children[name] = spawn(name, GATEWAY_CORE, argv, {**base_env, **env}, port, workdir)
            children.append(gateway_children[name])
        tutorial_port = free_port()
        tutorial = spawn(
            "tutorial",
            GATEWAY_CORE,
            [
                PYTHON,
                "-m",
                "uvicorn",
                "--app-dir",
                str(ROOT / "bench"),
                "tutorial_app:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(tutorial_port),
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            {"TUTORIAL_UPSTREAM_URL": f"http://127.0.0.1:{sim_port}/v1"},
            tutorial_port,
            workdir,
        )
        children.append(tutorial)
        wait_ready(sim, "/_stats")
        for name, child in gateway_children.items():
            wait_ready(child, "/readyz" if name == "gw-ledger" else "/healthz", timeout=60)
        wait_ready(tutorial, "/openapi.json", timeout=60)
        log(
            f"started: sim :{sim_port}, gateways {[c.port for c in gateway_children.values()]}, "
            f"tutorial :{tutorial_port} (RLIMIT_NOFILE {nofile}, logs in {workdir})"
        )

        targets: dict[str, Target] = {
            "direct": Target("direct", sim_port, "direct", sim.proc, "simulator, direct")
        }
        for name, child in gateway_children.items():
            targets[name] = Target(name, child.port, "v1", child.proc)
            targets[f"{name}-chat"] = Target(f"{name}-chat", child.port, "chat", child.proc)
        targets["tutorial"] = Target("tutorial", tutorial_port, "tutorial", tutorial.proc)

        uvloop.run(measure(targets, sim, probe_port, results))

        for child in children:
            if child.popen.poll() is not None:
                results.notes.append(f"{child.name} exited during the run (code {child.popen.returncode})")
    finally:
        stop_children(children)
    if ledger_db.exists():
        with contextlib.closing(sqlite3.connect(ledger_db)) as db:
            results.ledger_rows = db.execute("select count(*) from usage_record").fetchone()[0]
    results.finished = time.time()
    output.write_text(render(results))
    log(f"wrote {output} ({results.finished - results.started:.0f} s)")
    return results


# -- the report ---------------------------------------------------------------------------------------


def machine() -> list[tuple[str, str]]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=False).stdout.strip()
    versions = []
    for package in (
        "uvicorn",
        "httptools",
        "uvloop",
        "fastapi",
        "starlette",
        "openai",
        "aiohttp",
        "httpx2",
        "orjson",
    ):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions.append(f"{package} {importlib.metadata.version(package)}")
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return [
        ("CPU", cpu),
        ("nproc", nproc or str(os.cpu_count())),
        ("Memory", f"{psutil.virtual_memory().total / 2**30:.1f} GiB"),
        ("Kernel", f"{platform.system()} {platform.release()}"),
        ("Python", platform.python_version()),
        ("Packages", ", ".join(versions)),
        ("Commit", commit or "unknown"),
        ("Date", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")),
    ]


def table(headers: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


LABELS = {
    "direct": "direct to simulator",
    "gw-aiohttp": "gateway `/v1/chat/completions`",
    "gw-aiohttp-chat": "gateway `/chat`",
    "gw-httpx": "gateway `/v1/chat/completions`",
    "gw-httpx-chat": "gateway `/chat`",
    "gw-ledger": "gateway `/v1/chat/completions`",
    "gw-ledger-chat": "gateway `/chat`",
    "tutorial": "tutorial app (`bench/tutorial_app.py`)",
}


def describe(label: str, transports: dict[str, str]) -> str:
    text = LABELS.get(label, label)
    gateway = label.removesuffix("-chat")
    if gateway in ("gw-aiohttp", "gw-httpx", "gw-ledger"):
        asked = "httpx" if gateway == "gw-httpx" else "aiohttp"
        actual = transports.get(gateway, "unknown")
        transport = asked if actual == asked else f"{asked} asked, **{actual} used**"
        ledger = "ledger on (SQLite)" if gateway == "gw-ledger" else "ledger off"
        text += f", {transport}, {ledger}"
    return text


def render(r: Results) -> str:
    p = r.profile
    out: list[str] = ["# Benchmarks", ""]
    out += [
        f"Produced by `bench/run.py` ({p.name} profile, {r.finished - r.started:.0f} s). "
        "Every number below is measured in the same run against a direct connection to the "
        "simulated upstream; nothing is copied from elsewhere. Loopback only; the gateway runs on "
        "core 0, the simulator and the load generator share core 1.",
        "",
    ]
    if p.name != "full":
        out += [
            "> **Quick run**: small samples; run `bench/run.py` without `--quick` for the numbers to quote.",
            "",
        ]

    # Headline verdicts.
    summary: list[list[str]] = []
    for conc, data in ((1, r.c1), (200, r.c200)):
        direct = data.get("direct")
        for label in ("gw-aiohttp", "gw-aiohttp-chat"):
            lat = data.get(label)
            if direct is None or lat is None or not lat.ttft or not direct.ttft:
                continue
            added = pct(lat.ttft, 0.5) - pct(direct.ttft, 0.5)
            summary.append(
                [
                    f"TTFT added at p50, {conc} stream{'s' if conc > 1 else ''}, {LABELS[label]}",
                    f"≤ {TARGET_TTFT_ADDED_MS:g} ms",
                    f"{added * 1000:+.3f} ms",
                    verdict(added * 1000 <= TARGET_TTFT_ADDED_MS),
                ]
            )
    for run in r.tput:
        if run.target in ("gw-aiohttp", "gw-aiohttp-chat", "gw-ledger", "gw-ledger-chat"):
            summary.append(
                [
                    f"Throughput, {describe(run.target, r.transports)}, {run.concurrency} streams",
                    f"≥ {TARGET_CHUNKS_S:,} chunks/s (stretch {STRETCH_CHUNKS_S:,})",
                    f"{run.rate:,.0f} chunks/s",
                    verdict(run.rate >= TARGET_CHUNKS_S)
                    + (" (stretch met)" if run.rate >= STRETCH_CHUNKS_S else ""),
                ]
            )
    for m in r.mem:
        if m.target.startswith("gw-"):
            summary.append(
                [
                    f"RSS per idle open stream at {m.streams:,} streams, {describe(m.target, r.transports)}",
                    f"≤ {TARGET_KIB_PER_STREAM:g} KiB",
                    f"{m.kib_per_stream:.1f} KiB",
                    verdict(m.opened == m.streams and m.kib_per_stream <= TARGET_KIB_PER_STREAM),
                ]
            )
    for label in ("gw-aiohttp", "gw-httpx"):
        rows = [a for a in r.aborts if a.target == label]
        if not rows:
            continue
        worst = max(rows, key=lambda a: pct(a.latencies, 0.99) if a.latencies else math.inf)
        all_ok = all(
            a.latencies and not a.not_ended and pct(a.latencies, 0.99) * 1000 <= TARGET_ABORT_P99_MS
            for a in rows
        )
        summary.append(
            [
                f"Abort latency p99, every phase, {describe(label, r.transports)}",
                f"≤ {TARGET_ABORT_P99_MS:g} ms",
                f"worst {ms(pct(worst.latencies, 0.99))} ms ({worst.phase})",
                verdict(all_ok),
            ]
        )
    out += ["## Targets", ""]
    out += table(["Measurement", "Target", "Result", "Verdict"], summary)
    out += [""]
    if r.transports and any(
        r.transports.get(k) != ("httpx" if k == "gw-httpx" else "aiohttp") for k in r.transports
    ):
        out += [
            "**Transport check failed**: a gateway started with `TOKENRELAY_UPSTREAM_HTTP_BACKEND` "
            f"did not use that transport upstream (probe: {r.transports}). The bench identifies the "
            "transport from the request head the gateway sends to a probe upstream "
            "(aiohttp writes `host:`, httpx/h11 writes `Host:`). Rows "
            "labelled *httpx* then measure the aiohttp transport.",
            "",
        ]

    out += ["## Machine", ""]
    out += table(["", ""], [[k, v] for k, v in machine()])
    out += [""]

    # 1. Latency.
    out += ["## 1. Time to first token and inter-chunk gaps", ""]
    out += [
        f"TTFT = from writing the request to receiving the first content delta; gaps = between consecutive "
        f"content deltas. Keep-alive connections. 1 stream: `sim?{MODELS['pace1']}`, {p.c1_requests} "
        f"sequential requests per target, the targets interleaved request by request. 200 streams: "
        f"`sim?{MODELS['pace200']}` (10,000 chunks/s in total), 200 connections looping for "
        f"{p.c200_seconds:g} s each. Times in ms; *added* = gateway minus direct at the same percentile.",
        "",
    ]
    rows = []
    for conc, data in ((1, r.c1), (200, r.c200)):
        direct = data.get("direct")
        for label, lat in data.items():
            d50 = pct(direct.ttft, 0.5) if direct else math.nan
            d99 = pct(direct.ttft, 0.99) if direct else math.nan
            t50, t99 = pct(lat.ttft, 0.5), pct(lat.ttft, 0.99)
            added = "" if label == "direct" else f"{ms(t50 - d50, 3)} / {ms(t99 - d99, 3)}"
            rows.append(
                [
                    str(conc),
                    describe(label, r.transports),
                    ms(t50, 3),
                    ms(t99, 3),
                    added,
                    ms(pct(lat.gaps, 0.5), 3),
                    ms(pct(lat.gaps, 0.99), 3),
                    f"{len(lat.ttft):,}",
                    str(lat.errors),
                ]
            )
    out += table(
        [
            "Streams",
            "Target",
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
    out += [""]

    # 2. Throughput.
    out += ["## 2. Throughput", ""]
    out += [
        f"`sim?{MODELS['tput']}` (the simulator writes as fast as it can, 64 events per write); N "
        f"connections loop requests; events (`\\n\\n`) counted at the client over {p.tput_seconds:g} s after "
        f"{p.tput_warmup:g} s of warm-up. *CPU-s* = user+system CPU of the process under test over the "
        "window (for the direct row: the simulator). Core 1 carries both the simulator and the load "
        "generator, so *sim + load* near 100 % means core 1, not the gateway, limited the row.",
        "",
    ]
    direct_rates = {t.concurrency: t.rate for t in r.tput if t.target == "direct"}
    rows = []
    for run in r.tput:
        base = direct_rates.get(run.concurrency)
        ratio = f"{run.rate / base:.2f}" if base and run.target != "direct" else ""
        rows.append(
            [
                describe(run.target, r.transports),
                str(run.concurrency),
                f"{run.rate:,.0f}",
                ratio,
                f"{100 * run.target_cpu / run.seconds:.0f} %",
                f"{run.per_cpu_s:,.0f}",
                f"{100 * run.sim_cpu / run.seconds:.0f} % + {100 * run.load_cpu / run.seconds:.0f} %",
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
            "Errors",
        ],
        rows,
    )
    if r.ledger_rows is not None:
        out += ["", f"The ledger-enabled gateway wrote {r.ledger_rows:,} rows to SQLite during the run."]
    out += [""]

    # 3. Memory.
    out += ["## 3. Resident memory per idle open stream", ""]
    out += [
        f"`sim?{MODELS['idle']}` through `/v1/chat/completions`. RSS (psutil) of the process under "
        f"test after a warm-up of 50 streams (opened, closed), then with {p.mem_streams:,} streams "
        "open, each having received its first delta. For the direct row the process is the "
        "simulator itself (its cost per stream, for scale). *After close*: RSS 1 s after all "
        "streams were closed.",
        "",
    ]
    rows = [
        [
            describe(m.target, r.transports),
            f"{m.opened:,} / {m.streams:,}",
            f"{m.rss_before / 2**20:.1f}",
            f"{m.rss_open / 2**20:.1f}",
            f"**{m.kib_per_stream:.1f}**",
            f"{m.rss_after / 2**20:.1f}",
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
            "Sim KiB per stream",
            "Open time (s)",
            "Upstream all closed",
        ],
        rows,
    )
    out += [""]

    # 4. Abort.
    out += ["## 4. Abort latency", ""]
    out += [
        "The client shuts its socket down (FIN) at *t*; latency = the simulator's `ended_at` for that "
        f"request id - *t* (both `time.monotonic()`). {p.abort_samples} samples per phase, 5 at a time. "
        "Through the gateway this is: gateway notices the client left → cancels the upstream request → "
        "simulator notices. The direct row is the simulator noticing a client of its own (the floor). "
        "*Not ended*: the upstream request was still open when we stopped waiting "
        "(3 s; 2 s for the tutorial).",
        "",
    ]
    rows = []
    for a in r.aborts:
        rows.append(
            [
                describe(a.target, r.transports),
                a.phase,
                ms(pct(a.latencies, 0.5), 3),
                ms(pct(a.latencies, 0.99), 3),
                ms(max(a.latencies) if a.latencies else math.nan, 3),
                str(len(a.latencies)),
                str(a.not_ended) if not a.not_ended else f"**{a.not_ended}**",
                str(a.invalid),
            ]
        )
    out += table(
        ["Target", "Phase", "p50 (ms)", "p99 (ms)", "max (ms)", "Samples", "Not ended", "Invalid"], rows
    )
    out += [""]

    if r.notes:
        out += ["## Notes from the run", ""] + [f"- {n}" for n in r.notes] + [""]

    out += ["## Reproduce", ""]
    out += [
        "```sh",
        "python dev.py            # or: python -m venv .venv && .venv/bin/pip install -e '.[dev]'",
        ".venv/bin/python bench/run.py           # full run, ~5 min; overwrites BENCHMARKS.md",
        ".venv/bin/python bench/run.py --quick   # ~1 min, smaller samples",
        "```",
        "",
        "Needs `taskset` and at least 2 cores; binds only 127.0.0.1. Processes: `tokenrelay sim` (core 1), "
        "three `tokenrelay serve` gateways (core 0; aiohttp transport without ledger, httpx transport "
        "without ledger, aiohttp with a SQLite ledger), and `uvicorn bench/tutorial_app.py` (core 0); the "
        "load generator runs in `bench/run.py` itself on core 1. Only one of them is under load at a time.",
        "",
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small samples, about a minute")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md", help="report path")
    args = parser.parse_args(argv)
    if (os.cpu_count() or 1) < 2:
        print("needs at least 2 cores (gateway on core 0, simulator and load on core 1)", file=sys.stderr)
        return 2
    run(QUICK if args.quick else FULL, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
