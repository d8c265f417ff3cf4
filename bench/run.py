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
import shutil
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
    "pace1": "tokens=4&tps=200",  # 1 stream: TTFT + 3 gaps of 5 ms per request
    "pace200": "tokens=100&tps=50",  # 200 streams of 2 s: 100 new streams/s, 10,000 chunks/s in total
    "pace200l": "tokens=60&tps=20",  # lighter: 200 streams of 3 s, 67 new streams/s, 4,000 chunks/s
    "tput": "tokens=20000",  # as fast as possible (the simulator writes 64 events at a time)
    "short": "tokens=1",  # stream set-up and tear-down cost
    "idle": "tokens=50&stall_after=1&stall_seconds=60",  # one delta, then silence
    "ab-headers": "headers_delay=30",
    "ab-first": "stall_after=0&stall_seconds=30&tokens=50",
    # Not tokens=100000: the simulator builds the whole answer list up front, which blocks its
    # event loop ~10 ms per request and shows up as abort latency of the *previous* sample.
    "ab-active": "tokens=2000&tps=100",
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
    c200_targets: tuple[str, ...] = ("direct", "gw-aiohttp", "gw-aiohttp-chat", "tutorial")
    c200_light_targets: tuple[str, ...] = ("direct", "gw-aiohttp")
    tput_targets: tuple[str, ...] = (
        "direct",
        "gw-aiohttp",
        "gw-aiohttp-chat",
        "gw-httpx",
        "gw-httpx-chat",
        "gw-ledger",
        "gw-ledger-chat",
    )
    setup_concurrency: int = 32
    tutorial_everything: bool = True


FULL = Profile(
    name="full",
    c1_requests=300,
    c200_seconds=10.0,
    tput_warmup=1.0,
    tput_seconds=4.0,
    tput_concurrency=(4, 32),
    mem_streams=1000,
    mem_targets=("direct", "gw-aiohttp", "gw-httpx", "tutorial"),
    abort_samples=50,
    abort_targets=("direct", "gw-aiohttp", "gw-httpx", "tutorial"),
)
QUICK = Profile(
    name="quick",
    c1_requests=30,
    c200_seconds=3.5,
    tput_warmup=0.3,
    tput_seconds=1.0,
    tput_concurrency=(32,),
    mem_streams=1000,
    mem_targets=("direct", "gw-aiohttp"),
    abort_samples=15,
    abort_targets=("direct", "gw-aiohttp"),
    c200_targets=("direct", "gw-aiohttp", "tutorial"),
    c200_light_targets=(),
    tput_targets=("direct", "gw-aiohttp", "gw-aiohttp-chat", "gw-httpx", "gw-ledger"),
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


async def wait_quiet(proc: psutil.Process, within: float = 15.0) -> tuple[float, float]:
    """Wait until ``proc`` uses < 5 % CPU over 0.2 s; returns (CPU-seconds used meanwhile, wall seconds)."""
    t0, c0 = clock(), cpu_seconds(proc)
    last = c0
    while clock() - t0 < within:
        await asyncio.sleep(0.2)
        now = cpu_seconds(proc)
        if now - last < 0.01:
            break
        last = now
    return cpu_seconds(proc) - c0, clock() - t0


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
            # uvloop's transport socket has no shutdown(); a duplicate descriptor shuts the socket
            # down at once, before the transport's own close runs on a later loop iteration.
            with contextlib.suppress(OSError, AttributeError, ValueError):
                fd = self.transport.get_extra_info("socket").fileno()
                with socket.socket(fileno=os.dup(fd)) as sock:
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

    async def wait_seen(self, request_id: str, what: str, within: float) -> bool:
        """Wait until the simulator's record of ``request_id`` has ``what`` set."""
        deadline = clock() + within
        while clock() < deadline:
            for entry in (await self.stats())["requests"]:
                if entry["request_id"] == request_id and entry[what] is not None:
                    return True
            await asyncio.sleep(0.002)
        return False

    async def wait_ended(self, within: float) -> bool:
        """True once every request the simulator saw since the last reset has ended.

        (Not ``active == 0``: the tutorial app leaks upstream requests that never end.)
        """
        deadline = clock() + within
        while True:
            if all(e["ended_at"] is not None for e in (await self.stats())["requests"]):
                return True
            if clock() > deadline:
                return False
            await asyncio.sleep(0.05)


# -- measurements -----------------------------------------------------------------------------------


@dataclass
class Latency:
    target: str
    concurrency: int
    ttft: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    requests: int = 0
    errors: int = 0
    # Steady-state window of the concurrent run: chunks delivered and CPU of the process under test.
    window: float = 0.0
    events: int = 0
    target_cpu: float = 0.0
    sim_cpu: float = 0.0


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


async def ttft_concurrent(
    target: Target, sim: psutil.Process, concurrency: int, seconds: float, key: str = "pace200"
) -> Latency:
    """``concurrency`` keep-alive connections looping the paced model for ``seconds``."""
    counter = [0]
    result = Latency(target.label, concurrency)
    n_content = int(MODELS[key].split("tokens=")[1].split("&")[0])
    stop = asyncio.Event()
    conns: list[Conn] = []
    request_seconds = n_content / float(MODELS[key].split("tps=")[1])  # one request's duration
    # The first requests are spread over one request's duration, then the window is measured.

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
                target.request(key, f"c200-{key}-{target.label}-{w}-{i}"), target.first_content, n_content
            )
            try:
                ok = await asyncio.wait_for(done, 10 + request_seconds)
            except TimeoutError:
                ok = False
                conn.close()
            result.requests += 1
            # Requests cut at the end of the run still count up to where they got.
            if conn.ttft is not None:
                result.ttft.append(conn.ttft)
                result.gaps.extend(conn.gaps)
            if not ok and not stop.is_set():
                result.errors += 1

    tasks = [asyncio.ensure_future(worker(w)) for w in range(concurrency)]
    await asyncio.sleep(request_seconds)  # all workers started
    t0, e0, c0, s0 = clock(), counter[0], cpu_seconds(target.proc), cpu_seconds(sim)
    await asyncio.sleep(max(seconds - request_seconds, 0.5))
    result.window, result.events = clock() - t0, counter[0] - e0
    result.target_cpu, result.sim_cpu = cpu_seconds(target.proc) - c0, cpu_seconds(sim) - s0
    stop.set()
    await asyncio.wait(tasks, timeout=request_seconds + 2)  # let running requests finish
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
    completed: int = 0  # streams completed inside the window
    key: str = "tput"
    after_cpu: float = 0.0  # CPU-seconds the process used after the window (streams we aborted)
    after_seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    @property
    def streams_per_s(self) -> float:
        return self.completed / self.seconds

    @property
    def cpu_ms_per_stream(self) -> float:
        return 1000 * self.target_cpu / self.completed if self.completed else math.nan

    @property
    def per_cpu_s(self) -> float:
        return self.events / self.target_cpu if self.target_cpu > 0 else math.nan


async def throughput(
    target: Target, sim: psutil.Process, concurrency: int, warmup: float, seconds: float, key: str = "tput"
) -> Throughput:
    """``concurrency`` keep-alive connections looping requests to ``key``; counted over a window."""
    counter = [0]
    stop = asyncio.Event()
    conns: list[Conn] = []
    stats = {"errors": 0, "requests": 0, "completed": 0}
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
            ok = await conn.begin(target.request(key, f"tp-{key}-{target.label}-{concurrency}-{w}-{i}"))
            if ok:
                stats["completed"] += 1
            elif not stop.is_set():
                stats["errors"] += 1

    tasks = [asyncio.ensure_future(worker(w)) for w in range(concurrency)]
    await asyncio.sleep(warmup)
    t0, e0, n0 = clock(), counter[0], stats["completed"]
    c0 = (cpu_seconds(target.proc), cpu_seconds(sim), cpu_seconds(me))
    await asyncio.sleep(seconds)
    t1, e1, n1 = clock(), counter[0], stats["completed"]
    c1 = (cpu_seconds(target.proc), cpu_seconds(sim), cpu_seconds(me))
    stop.set()
    for conn in conns:
        conn.close()
    await asyncio.wait(tasks, timeout=5)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    _, after_seconds = await wait_quiet(target.proc)
    after_cpu = cpu_seconds(target.proc) - c1[0]  # from the end of the window until quiet
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
        completed=n1 - n0,
        key=key,
        after_cpu=after_cpu,
        after_seconds=after_seconds,
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
    opened2: int = 0
    rss_open2: int = 0

    @property
    def kib_per_stream(self) -> float:
        return (self.rss_open - self.rss_before) / 1024 / max(self.opened, 1)

    @property
    def kib_per_stream_warm(self) -> float:
        return (self.rss_open2 - self.rss_after) / 1024 / max(self.opened2, 1)


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


async def memory(
    target: Target, sim_proc: psutil.Process, control: SimControl, n: int, end_wait: float
) -> Memory:
    # Warm-up: a few streams opened and closed, so lazily built things exist before "before".
    warm, _ = await open_idle_streams(target, 50, f"{target.label}-warm")
    await asyncio.sleep(0.2)
    for conn in warm:
        conn.close()
    await control.wait_ended(end_wait)
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
    closed_clean = await control.wait_ended(end_wait)
    await asyncio.sleep(1.0)
    rss_after = target.proc.memory_info().rss
    # Second round on the grown heap: what the same streams cost once freed blocks are reused.
    conns, opened2 = await open_idle_streams(target, n, f"{target.label}-2")
    await asyncio.sleep(1.0)
    rss_open2 = target.proc.memory_info().rss
    for conn in conns:
        conn.close()
    closed_clean = await control.wait_ended(end_wait) and closed_clean
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
        opened2=opened2,
        rss_open2=rss_open2,
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
    concurrency: int
    latencies: list[float] = field(default_factory=list)
    not_ended: int = 0  # the upstream request was still open when we stopped looking
    invalid: int = 0  # the client never reached the state the phase needs


async def abort_latency(
    target: Target, control: SimControl, phase: str, samples: int, concurrency: int, wait_end: float
) -> Abort:
    key = ABORT_PHASES[phase]
    result = Abort(target.label, phase, concurrency)
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
            # Through the gateway nothing reaches the client yet: ask the simulator instead.
            seen = "started_at" if key == "ab-headers" else "headers_sent_at"
            ok = await control.wait_seen(rid, seen, 3.0)
            await asyncio.sleep(0.02)
            ok = ok and not conn.lost
        else:
            try:  # three content deltas: at 100/s for "active", then the stall for "stalled"
                ok = await asyncio.wait_for(conn.wait_events(target.first_content + 2), 5)
            except TimeoutError:
                ok = False
            if key == "ab-stall":
                await asyncio.sleep(0.03)  # now the upstream is silent
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
    c200l: dict[str, Latency] = field(default_factory=dict)
    tput: list[Throughput] = field(default_factory=list)
    setup: list[Throughput] = field(default_factory=list)
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
        gateways = {k: targets[k] for k in ("gw-aiohttp", "gw-httpx", "gw-ledger") if k in targets}
        results.transports = await probe_transports(gateways, probe_port)
        log(f"upstream transports in use: {results.transports}")

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

        async def mem(label: str) -> None:
            await control.reset()
            end_wait = 2.0 if label == "tutorial" else 15.0
            m = await memory(targets[label], sim_proc, control, p.mem_streams, end_wait)
            results.mem.append(m)
            log(
                f"memory: {label}: {m.kib_per_stream:.1f} KiB/stream, warm heap {m.kib_per_stream_warm:.1f} "
                f"({m.opened}/{m.streams} with a delta)"
            )
            if label == "tutorial":
                await settle(label, "memory tutorial")

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

        # 3. Memory first, on fresh processes (after the other tests the heap holds freed blocks
        # that new allocations reuse, which would hide part of the per-stream cost).
        for label in p.mem_targets:
            if label != "tutorial":
                await mem(label)

        # 1. Latency (the tutorial completes these streams normally, so it can run alongside).
        c1_targets = [targets[k] for k in ("direct", "gw-aiohttp", "gw-aiohttp-chat", "tutorial")]
        log(f"TTFT, 1 stream: {p.c1_requests} requests x {len(c1_targets)} targets")
        await control.reset()
        results.c1 = await ttft_sequential(c1_targets, p.c1_requests)
        for label in p.c200_targets:
            await control.reset()
            lat = await ttft_concurrent(targets[label], sim_proc, 200, p.c200_seconds)
            results.c200[label] = lat
            log(f"TTFT, 200 streams: {label}: p50 {ms(pct(lat.ttft, 0.5))} ms")
            await control.wait_ended(5)
        for label in p.c200_light_targets:
            await control.reset()
            lat = await ttft_concurrent(targets[label], sim_proc, 200, p.c200_seconds, "pace200l")
            results.c200l[label] = lat
            log(f"TTFT, 200 lighter streams: {label}: p50 {ms(pct(lat.ttft, 0.5))} ms")
            await control.wait_ended(5)

        # 2 and 4 for everything but the tutorial app: it leaks every upstream request its client
        # abandons (they never end), so it goes last.
        for label in p.tput_targets:
            for concurrency in p.tput_concurrency:
                await tput(label, concurrency, "tput")
        for label in ("direct", "gw-aiohttp", "gw-ledger"):
            await tput(label, p.setup_concurrency, "short")
        for label in p.abort_targets:
            if label != "tutorial":
                await aborts(label)
        if "gw-aiohttp" in p.abort_targets:
            await aborts("gw-aiohttp", 5)  # while other streams are being set up

        if p.tutorial_everything:
            for concurrency in p.tput_concurrency:
                await tput("tutorial", concurrency, "tput")
            await tput("tutorial", p.setup_concurrency, "short")
            if "tutorial" in p.mem_targets:
                await mem("tutorial")
            if "tutorial" in p.abort_targets:
                await aborts("tutorial")


def run(profile: Profile, output: Path, keep_logs: bool = False) -> Results:
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
    if not keep_logs:
        shutil.rmtree(workdir, ignore_errors=True)  # on failure the logs stay for a look
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
    nproc = subprocess.run(["nproc", "--all"], capture_output=True, text=True, check=False).stdout.strip()
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
        (
            "nproc",
            f"{nproc or os.cpu_count()} (gateway pinned to core {GATEWAY_CORE}, "
            f"simulator + load to core {LOAD_CORE})",
        ),
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


def observe(r: Results) -> list[str]:
    """Derived facts worth a sentence, computed from this run's numbers."""
    found: list[str] = []
    paced = r.c200.get("gw-aiohttp")
    batched = [t for t in r.tput if t.target == "gw-aiohttp"]
    if paced and paced.events and batched:
        best = max(batched, key=lambda t: t.per_cpu_s)
        found.append(
            f"Per-chunk gateway CPU depends on how many events each upstream read carries: "
            f"{1e6 * paced.target_cpu / paced.events:.0f} µs per chunk with 200 paced streams "
            f"(about one event per read; the gateway at {100 * paced.target_cpu / paced.window:.0f} % "
            f"of its core for {paced.events / paced.window:,.0f} chunks/s) against "
            f"{1e6 / best.per_cpu_s:.1f} µs per chunk when the simulator batches 64 events per write "
            f"({best.concurrency} streams). Real upstreams send tokens a few at a time, so the paced "
            "figure is the one that sizes a deployment."
        )
    setup = {t.target: t for t in r.setup}
    if "gw-aiohttp" in setup and "direct" in setup:
        gw, direct = setup["gw-aiohttp"], setup["direct"]
        found.append(
            f"Each stream costs the gateway {gw.cpu_ms_per_stream:.2f} ms of CPU to set up and tear down "
            f"(the simulator: {direct.cpu_ms_per_stream:.2f} ms), capping it near "
            f"{1000 / gw.cpu_ms_per_stream:,.0f} new streams/s per core before any chunk is relayed."
        )
    if "gw-ledger" in setup and "gw-aiohttp" in setup:
        extra = setup["gw-ledger"].cpu_ms_per_stream - setup["gw-aiohttp"].cpu_ms_per_stream
        found.append(
            f"CPU per stream with the SQLite ledger minus without: {extra:+.2f} ms (separate processes; "
            "compare with the spread of the A/A pair below when there is one)."
        )
    if r.transports.get("gw-httpx") == "aiohttp":
        pairs = [
            (a.rate, b.rate)
            for a in r.tput
            for b in r.tput
            if a.concurrency == b.concurrency
            and (a.target, b.target) in (("gw-aiohttp", "gw-httpx"), ("gw-aiohttp-chat", "gw-httpx-chat"))
        ]
        if pairs:
            spread = max(abs(x - y) / min(x, y) for x, y in pairs)
            found.append(
                "The *httpx* gateway runs the same code and transport as the aiohttp one (see the "
                "transport check), so its throughput rows are an A/A control: they differ by up to "
                f"{100 * spread:.0f} %, which bounds what differences between gateway rows in this "
                "run can mean."
            )
    after = [t for t in r.tput if t.target.startswith("gw-") and t.after_cpu > 0.2]
    if after:
        worst = max(after, key=lambda t: t.after_cpu)
        found.append(
            f"When the client closed {worst.concurrency} saturating streams at the end of a throughput "
            f"window, the gateway ({describe(worst.target, r.transports)}) stayed busy for "
            f"{worst.after_seconds:.1f} s ({worst.after_cpu:.2f} CPU-s) although nobody was listening any "
            "more: under saturation it notices departed clients late and goes on relaying."
        )
    return found


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
    loads = (("1 stream", r.c1), ("200 streams at 50 tok/s", r.c200), ("200 streams at 20 tok/s", r.c200l))
    for conc, data in loads:
        direct = data.get("direct")
        for label in ("gw-aiohttp", "gw-aiohttp-chat"):
            lat = data.get(label)
            if direct is None or lat is None or not lat.ttft or not direct.ttft:
                continue
            added = pct(lat.ttft, 0.5) - pct(direct.ttft, 0.5)
            summary.append(
                [
                    f"TTFT added at p50, {conc}, {LABELS[label]}",
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
    paced = r.c200.get("gw-aiohttp")
    if paced and paced.target_cpu:
        per_cpu_s = paced.events / paced.target_cpu
        summary.append(
            [
                "Same, but one event per upstream read (200 paced streams at 50 tok/s), gateway "
                f"`/v1/chat/completions`: chunks per gateway CPU-second (gateway at "
                f"{100 * paced.target_cpu / paced.window:.0f} % of its core)",
                f"≥ {TARGET_CHUNKS_S:,} chunks/s",
                f"{per_cpu_s:,.0f} chunks per CPU-s",
                verdict(per_cpu_s >= TARGET_CHUNKS_S) + " (not the issue's test; see Observations)",
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
    for label, concurrency in (("gw-aiohttp", 1), ("gw-httpx", 1), ("gw-aiohttp", 5)):
        rows = [a for a in r.aborts if a.target == label and a.concurrency == concurrency]
        if not rows:
            continue
        worst = max(rows, key=lambda a: pct(a.latencies, 0.99) if a.latencies else math.inf)
        all_ok = all(
            a.latencies and not a.not_ended and pct(a.latencies, 0.99) * 1000 <= TARGET_ABORT_P99_MS
            for a in rows
        )
        summary.append(
            [
                f"Abort latency p99, every phase, {describe(label, r.transports)}, "
                + ("sequential" if concurrency == 1 else f"{concurrency} at a time"),
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
        f"`sim?{MODELS['pace200']}` (10,000 chunks/s and 100 new streams/s in total) and, lighter, "
        f"`sim?{MODELS['pace200l']}` (4,000 chunks/s, 67 new streams/s); 200 connections looping for "
        f"{p.c200_seconds:g} s per target, their first requests spread over one stream's duration. "
        "Times in ms; *added* = gateway minus direct at the same percentile.",
        "",
    ]
    rows = []
    for conc, data in loads:
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

    # 2. Throughput.
    out += ["## 2. Throughput", ""]
    out += [
        f"`sim?{MODELS['tput']}` (the simulator writes as fast as it can, 64 events per write); N "
        f"connections loop requests; events (`\\n\\n`) counted at the client over {p.tput_seconds:g} s after "
        f"{p.tput_warmup:g} s of warm-up. *CPU-s* = user+system CPU of the process under test over the "
        "window (for the direct row: the simulator). Core 1 carries both the simulator and the load "
        "generator, so *sim + load* near 100 % means core 1, not the gateway, limited the row. "
        "At the end of the window the client closes its streams mid-answer; *CPU after the window* is "
        "what the process under test then spent before going quiet (the next row waits for that).",
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
    if r.ledger_rows is not None:
        out += ["", f"The ledger-enabled gateway wrote {r.ledger_rows:,} rows to SQLite during the run."]
    out += [""]
    out += ["### Stream set-up rate", ""]
    out += [
        f"`sim?{MODELS['short']}` (one content chunk per stream), {p.setup_concurrency} keep-alive "
        f"connections looping requests for {p.tput_seconds:g} s: what each stream costs to open, relay, "
        "close and account, independent of its length.",
        "",
    ]
    direct_setup = next((t.streams_per_s for t in r.setup if t.target == "direct"), None)
    rows = [
        [
            describe(run.target, r.transports),
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
    out += [""]

    # 3. Memory.
    out += ["## 3. Resident memory per idle open stream", ""]
    out += [
        f"`sim?{MODELS['idle']}` through `/v1/chat/completions`, measured first, on fresh processes "
        "(the tutorial app's row last: it leaks the upstream requests of abandoned streams). RSS (psutil) "
        "of the process under test after a warm-up of 50 streams (opened, closed), then with "
        f"{p.mem_streams:,} streams "
        "open, each having received its first delta. For the direct row the process is the "
        "simulator itself (its cost per stream, for scale). *After close*: RSS 1 s after all "
        "streams were closed. *2nd round*: the same again on the grown heap (RSS with the streams "
        "open minus RSS after close): a lower bound, since freed blocks are reused. *Sim KiB per "
        "stream*: the simulator's growth during the first round.",
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
    out += [""]

    # 4. Abort.
    out += ["## 4. Abort latency", ""]
    out += [
        "The client shuts its socket down (FIN) at *t*; latency = the simulator's `ended_at` for that "
        f"request id - *t* (both `time.monotonic()`). {p.abort_samples} samples per phase, one at a time "
        "(*Conc.* 1) and, for the default gateway, 5 at a time (each new stream costs the gateway "
        "milliseconds of CPU, which delays the handling of another stream's disconnect). The client "
        "closes 20 ms after the simulator has the request (*headers*) or has sent its headers (*before "
        "first token*), after 3 content deltas at 100/s (*active*), or 30 ms into the stall after 3 "
        "deltas (*stalled*). "
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
                str(a.concurrency),
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
        ["Target", "Conc.", "Phase", "p50 (ms)", "p99 (ms)", "max (ms)", "Samples", "Not ended", "Invalid"],
        rows,
    )
    out += [""]

    observations = observe(r)
    if observations:
        out += ["## Observations", ""] + [f"- {o}" for o in observations] + [""]
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
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs and ledger DB")
    args = parser.parse_args(argv)
    if (os.cpu_count() or 1) < 2:
        print("needs at least 2 cores (gateway on core 0, simulator and load on core 1)", file=sys.stderr)
        return 2
    run(QUICK if args.quick else FULL, args.output, args.keep_logs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
