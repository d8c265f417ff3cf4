"""tokenrelay benchmark: gateway vs a direct connection to the simulated upstream, in one run.

    .venv/bin/python bench/run.py            # full run (~7 minutes), writes BENCHMARKS.md
    .venv/bin/python bench/run.py --quick    # smaller samples (~2 minutes)

Starts the simulator and five gateways (ledger off; off again, the A/A control; on SQLite; on
PostgreSQL; and one more, ledger off, that serves only the memory test) as subprocesses on free
loopback ports (gateways pinned to core 0 with ``taskset``; the simulator and this load
generator share core 1), measures, stops everything and writes the report. The load generator
is a raw asyncio protocol (uvloop): it writes a prepared HTTP/1.1 request and counts SSE events
by counting ``b"\\n\\n"`` in what it reads, with ``time.monotonic()`` timestamps (system-wide,
comparable with the simulator's). Two in-process micro-benchmarks run as subprocesses too:
``bench/ledger_rows.py`` (ledger rows per second) and ``bench/upstream_clients.py`` (the
upstream HTTP client). Every child imports ``tokenrelay`` from this checkout's ``src`` (its
``PYTHONPATH``), whatever the environment has installed; the run checks that it does.

PostgreSQL: a throw-away database is created for the run and dropped at the end (see
``bench/pgdb.py``; ``TOKENRELAY_BENCH_PG`` overrides the maintenance DSN). Without a reachable
server the PostgreSQL rows are left out and the report says so.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import importlib.metadata
import json
import math
import os
import pickle
import platform
import resource
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil
import uvloop

import pgdb

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
GATEWAY_CORE = 0
LOAD_CORE = 1  # the simulator and this process
# Children run this checkout's code, not whatever ``tokenrelay`` the environment has installed.
CHILD_ENV = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
clock = time.monotonic

# Simulator behaviours, by the public model name the gateways know them under.
MODELS = {
    "pace1": "tokens=4&tps=200",  # 1 stream: TTFT + 3 gaps of 5 ms per request
    "pace200": "tokens=100&tps=50",  # 200 streams of 2 s: 100 new streams/s, 10,000 chunks/s in total
    "pace200l": "tokens=60&tps=20",  # lighter: 200 streams of 3 s, 67 new streams/s, 4,000 chunks/s
    "tput": "tokens=20000",  # as fast as possible (the simulator writes 64 events at a time)
    "short": "tokens=1",  # stream set-up and tear-down cost
    "short20": "tokens=20",  # many short streams: the ledger's per-stream cost shows here
    "idle": "tokens=50&stall_after=1&stall_seconds=60",  # one delta, then silence
    "ab-headers": "headers_delay=30",
    "ab-first": "stall_after=0&stall_seconds=30&tokens=50",
    "ab-active": "tokens=2000&tps=100",
    "ab-stall": "tokens=50&stall_after=3&stall_seconds=30",
}
MESSAGES = [{"role": "user", "content": "hi"}]

TARGET_TTFT_ADDED_MS = 1.0
TARGET_CHUNKS_S = 25_000
STRETCH_CHUNKS_S = 50_000
TARGET_KIB_PER_STREAM = 20.0
TARGET_ABORT_P99_MS = 10.0
TARGET_LEDGER_RATIO = 0.95  # ledger on PostgreSQL within 5 % of the ledger disabled
# The previous BENCHMARKS.md (commit 179b979, upstream through the openai SDK): gateway CPU per
# stream in the set-up test (``sim?tokens=1``, 32 connections), for comparison.
PREVIOUS_CPU_MS_PER_STREAM = 2.37
# The ledger comparison; gw-off2 is a second, identical ledger-off process: the A/A control.
LEDGER_GATEWAYS = ("gw-off", "gw-off2", "gw-sqlite", "gw-pg")


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
    ledger_rounds: int  # long streams: alternating rounds of the ledger comparison (median reported)
    ledger_long_seconds: float  # window of a long-stream run in a round (after 0.5 s of warm-up)
    slice_cycles: int  # short streams: interleaved cycles, one slice per gateway each
    slice_seconds: float  # measured window of one slice
    ledger_rows: int  # rows per variant in bench/ledger_rows.py
    client_requests: int  # timed requests per variant in bench/upstream_clients.py
    client_rounds: int
    c1_targets: tuple[str, ...] = ("direct", "gw-off", "gw-off-chat", "gw-pg", "tutorial")
    c200_targets: tuple[str, ...] = ("direct", "gw-off", "gw-off-chat", "tutorial")
    c200_light_targets: tuple[str, ...] = ("direct", "gw-off")
    tput_targets: tuple[str, ...] = ("direct", "gw-off", "gw-off-chat")
    ledger_concurrency: int = 32
    setup_concurrency: int = 32
    wakeup_pings: int = 300
    tutorial_everything: bool = True


FULL = Profile(
    name="full",
    c1_requests=300,
    c200_seconds=10.0,
    tput_warmup=1.0,
    tput_seconds=4.0,
    tput_concurrency=(4, 32),
    mem_streams=1000,
    mem_targets=("direct", "gw-mem", "tutorial"),
    abort_samples=50,
    abort_targets=("direct", "gw-off", "tutorial"),
    ledger_rounds=5,
    ledger_long_seconds=2.0,
    slice_cycles=12,
    slice_seconds=1.0,
    ledger_rows=20_000,
    client_requests=360,
    client_rounds=6,
)
QUICK = Profile(
    name="quick",
    c1_requests=30,
    c200_seconds=3.5,
    tput_warmup=0.3,
    tput_seconds=1.0,
    tput_concurrency=(32,),
    mem_streams=1000,
    mem_targets=("direct", "gw-mem"),
    abort_samples=15,
    abort_targets=("direct", "gw-off"),
    ledger_rounds=2,
    ledger_long_seconds=1.0,
    slice_cycles=3,
    slice_seconds=0.5,
    ledger_rows=2_000,
    client_requests=60,
    client_rounds=3,
    c200_targets=("direct", "gw-off", "tutorial"),
    c200_light_targets=(),
    wakeup_pings=100,
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
    sent: int = 0  # requests built for this target (every stream the load generator started)

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
        self.sent += 1
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
            env={**os.environ, **CHILD_ENV, **env},
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


def gateway_config(sim_port: int) -> str:
    lines = ['default_model = "pace1"', ""]
    for name, options in MODELS.items():
        lines += [
            f'[models."{name}"]',
            f'base_url = "http://127.0.0.1:{sim_port}/v1"',
            f'upstream_model = "sim?{options}"',
            "",
        ]
    return "\n".join(lines)


def tokenrelay_origin() -> str:
    """Where a child process imports ``tokenrelay`` from (must be this checkout's ``src``)."""
    out = subprocess.run(
        [PYTHON, "-c", "import tokenrelay; print(tokenrelay.__file__)"],
        env={**os.environ, **CHILD_ENV},
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return out.stdout.strip()


# -- how long this VM takes to wake an idle process ------------------------------------------------

ECHO_SERVER = """
import socket, sys
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", int(sys.argv[1])))
server.listen(1)
conn, _ = server.accept()
conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while data := conn.recv(64):
    conn.sendall(data)
"""


@dataclass
class Wakeup:
    idle_ms: float  # how long the echo process slept before each ping
    rtts: list[float]


def wakeup_latency(workdir: Path, pings: int) -> tuple[list[Wakeup], list[float]]:
    """Loopback ping-pong with a process on the other core, after 0, 2 and 20 ms of idleness;
    and how late ``time.sleep(1 ms)`` wakes up. Blocking sockets: no event loop in between."""
    port = free_port()
    echo = spawn("echo", GATEWAY_CORE, [PYTHON, "-c", ECHO_SERVER, str(port)], {}, port, workdir)
    results: list[Wakeup] = []
    try:
        deadline = clock() + 10
        sock: socket.socket | None = None
        while sock is None and clock() < deadline:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=2)
            except OSError:
                time.sleep(0.05)
        if sock is None:
            return [], []
        with sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for idle in (0.0, 0.002, 0.020):
                rtts = []
                for _ in range(pings if idle < 0.01 else max(pings // 3, 10)):
                    if idle:
                        time.sleep(idle)
                    t0 = time.perf_counter()
                    sock.sendall(b"x")
                    sock.recv(64)
                    rtts.append(time.perf_counter() - t0)
                results.append(Wakeup(idle * 1000, rtts))
        oversleep = []
        for _ in range(pings):
            t0 = time.perf_counter()
            time.sleep(0.001)
            oversleep.append(time.perf_counter() - t0 - 0.001)
        return results, oversleep
    finally:
        stop_children([echo])


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
    round_no: int = 0  # ledger comparison: which alternating round
    pg_cpu: float | None = None  # CPU-seconds of the PostgreSQL server over the window
    steal: float = math.nan  # CPU-seconds stolen by the hypervisor (all cores) over the window

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


def steal_seconds() -> float:
    """CPU time the hypervisor gave to others while our vCPUs wanted it (all cores, /proc/stat)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    return math.nan


async def throughput(
    target: Target,
    sim: psutil.Process,
    concurrency: int,
    warmup: float,
    seconds: float,
    key: str = "tput",
    pg_cpu: pgdb.ServerCpu | None = None,
) -> Throughput:
    """``concurrency`` keep-alive connections looping requests to ``key``; counted over a window."""
    counter = [0]
    stop = asyncio.Event()
    conns: list[Conn] = []
    stats = {"errors": 0, "requests": 0, "completed": 0}
    me = psutil.Process()
    if pg_cpu:
        pg_cpu.refresh()

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
    x0, steal0 = pg_cpu() if pg_cpu else 0.0, steal_seconds()
    c0 = (cpu_seconds(target.proc), cpu_seconds(sim), cpu_seconds(me))
    await asyncio.sleep(seconds)
    t1, e1, n1 = clock(), counter[0], stats["completed"]
    c1 = (cpu_seconds(target.proc), cpu_seconds(sim), cpu_seconds(me))
    x1, steal1 = pg_cpu() if pg_cpu else 0.0, steal_seconds()
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
        pg_cpu=x1 - x0 if pg_cpu else None,
        steal=steal1 - steal0,
    )


async def interleaved_slices(
    targets: list[Target],
    sim: psutil.Process,
    concurrency: int,
    key: str,
    cycles: int,
    window: float,
    ramp: float = 0.15,
    pg_cpu: pgdb.ServerCpu | None = None,
) -> list[Throughput]:
    """Load one target at a time, in short slices, round-robin, ``cycles`` times.

    Each target has ``concurrency`` keep-alive connections of its own, opened once; only the
    current target's connections send requests (the others wait at a request boundary). A
    slice: the target's loops start, ``ramp`` seconds later the window of ``window`` seconds is
    measured, then its loops stop and their last requests finish before the next target's
    slice. Slices a few seconds apart see the same state of the machine, so the per-cycle ratio
    between two targets cancels most of its slow drift. Returns one Throughput per slice, its
    ``round_no`` the cycle (-1: the warm-up cycle).
    """
    gates = {t.label: asyncio.Event() for t in targets}
    counters = {t.label: [0] for t in targets}
    stats = {t.label: {"errors": 0, "requests": 0, "completed": 0, "busy": 0} for t in targets}
    idle = {t.label: asyncio.Event() for t in targets}
    stopping = False
    conns: list[Conn] = []
    me = psutil.Process()

    async def worker(target: Target, w: int) -> None:
        gate, counter, stat = gates[target.label], counters[target.label], stats[target.label]
        conn: Conn | None = None
        i = 0
        while True:
            await gate.wait()
            if stopping:
                return
            if conn is None or conn.lost:
                try:
                    conn = await connect(target.port, counter)
                except (OSError, TimeoutError):
                    stat["errors"] += 1
                    await asyncio.sleep(0.05)
                    continue
                conns.append(conn)
            i += 1
            stat["requests"] += 1
            stat["busy"] += 1
            try:
                ok = await conn.begin(target.request(key, f"sl-{key}-{target.label}-{w}-{i}"))
            finally:
                stat["busy"] -= 1
                if not stat["busy"]:
                    idle[target.label].set()
            if ok:
                stat["completed"] += 1
            elif not stopping:
                stat["errors"] += 1

    tasks = [asyncio.ensure_future(worker(t, w)) for t in targets for w in range(concurrency)]
    out: list[Throughput] = []
    try:
        for cycle in range(-1, cycles):
            shift = max(cycle, 0) % len(targets)
            for target in targets[shift:] + targets[:shift]:
                label = target.label
                if pg_cpu:
                    pg_cpu.refresh()
                errors0 = stats[label]["errors"]
                gates[label].set()
                await asyncio.sleep(ramp if cycle >= 0 else 0.5)
                t0, e0, n0 = clock(), counters[label][0], stats[label]["completed"]
                x0, steal0 = pg_cpu() if pg_cpu else 0.0, steal_seconds()
                c0 = (cpu_seconds(target.proc), cpu_seconds(sim), cpu_seconds(me))
                await asyncio.sleep(window if cycle >= 0 else 0.3)
                t1, e1, n1 = clock(), counters[label][0], stats[label]["completed"]
                c1 = (cpu_seconds(target.proc), cpu_seconds(sim), cpu_seconds(me))
                x1, steal1 = pg_cpu() if pg_cpu else 0.0, steal_seconds()
                gates[label].clear()
                if stats[label]["busy"]:  # let the slice's last requests finish
                    idle[label].clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(idle[label].wait(), 5)
                if cycle < 0:
                    continue
                out.append(
                    Throughput(
                        target=label,
                        concurrency=concurrency,
                        seconds=t1 - t0,
                        events=e1 - e0,
                        target_cpu=c1[0] - c0[0],
                        sim_cpu=c1[1] - c0[1],
                        load_cpu=c1[2] - c0[2],
                        errors=stats[label]["errors"] - errors0,
                        requests=0,
                        completed=n1 - n0,
                        key=key,
                        round_no=cycle,
                        pg_cpu=x1 - x0 if pg_cpu else None,
                        steal=steal1 - steal0,
                    )
                )
    finally:
        stopping = True
        for gate in gates.values():
            gate.set()
        for conn in conns:
            conn.close()
        await asyncio.wait(tasks, timeout=5)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return out


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


# -- the run ----------------------------------------------------------------------------------------


@dataclass
class Results:
    profile: Profile
    c1: dict[str, Latency] = field(default_factory=dict)
    c200: dict[str, Latency] = field(default_factory=dict)
    c200l: dict[str, Latency] = field(default_factory=dict)
    tput: list[Throughput] = field(default_factory=list)
    setup: list[Throughput] = field(default_factory=list)
    ledger: list[Throughput] = field(default_factory=list)  # the alternating ledger comparison
    mem: list[Memory] = field(default_factory=list)
    aborts: list[Abort] = field(default_factory=list)
    rows_in_db: dict[str, int] = field(default_factory=dict)  # ledger gateway -> rows after the run
    rows_in_spool: dict[str, int] = field(default_factory=dict)
    sent: dict[str, int] = field(default_factory=dict)  # gateway -> streams started through it
    rows_bench: dict[str, Any] | None = None  # bench/ledger_rows.py
    local_bench: dict[str, Any] | None = None  # bench/local_model.py
    metrics_bench: dict[str, Any] | None = None  # bench/metrics_overhead.py
    clients_bench: dict[str, Any] | None = None  # bench/upstream_clients.py
    wakeup: list[Wakeup] = field(default_factory=list)
    oversleep: list[float] = field(default_factory=list)
    tokenrelay_file: str = ""
    pg_problem: str | None = None  # why the PostgreSQL rows are missing, if they are
    started: float = 0.0
    finished: float = 0.0
    notes: list[str] = field(default_factory=list)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


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
            argv, env={**os.environ, **CHILD_ENV}, capture_output=True, text=True, timeout=300, cwd=ROOT
        )
    except subprocess.TimeoutExpired:
        results.notes.append(f"`bench/{script}` did not finish within 300 s")
        return None
    if proc.returncode != 0 or not out.exists():
        results.notes.append(
            f"`bench/{script}` failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}"
        )
        return None
    data: dict[str, Any] = json.loads(out.read_text())
    log(f"{script}:\n{proc.stdout.rstrip()}")
    return data


async def measure(targets: dict[str, Target], sim: Child, results: Results, workdir: Path) -> None:
    p = results.profile
    sim_proc = sim.proc
    pg_cpu = pgdb.ServerCpu() if "gw-pg" in targets else None
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

        # 3. Memory on fresh processes (after other tests the heap holds freed blocks that new
        # allocations reuse, which would hide part of the per-stream cost): gw-mem serves nothing else.
        for label in p.mem_targets:
            if label != "tutorial":
                await mem(label)

        # 5. The ledger's cost, early, while the four gateways share the same (empty) history.
        # Short streams: interleaved slices of about a second, many cycles. Long streams: the
        # gateways in alternating rounds, the order rotating.
        variants = [k for k in LEDGER_GATEWAYS if k in targets]
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
        c1_targets = [targets[k] for k in p.c1_targets if k in targets]
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
            await aborts("gw-off", 5)  # while other streams are being set up

        # 6 and 7: in-process micro-benchmarks (the gateways are idle meanwhile).
        await control.reset()
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
                await mem("tutorial")
            if "tutorial" in p.abort_targets:
                await aborts("tutorial")


def ledger_state(port: int) -> str:
    """The ledger state a gateway's /readyz reports (``ok``, ``degraded``, ``disabled``...)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
        return str(orjson.loads(response.read())["ledger"]["state"])


def spool_rows(directory: Path) -> int:
    total = 0
    for path in directory.glob("spool-*.jsonl"):
        with path.open("rb") as handle:
            total += sum(1 for _ in handle)
    return total


def run(profile: Profile, output: Path, keep_logs: bool = False, save: Path | None = None) -> Results:
    results = Results(profile=profile)
    results.started = time.time()
    nofile = raise_nofile()
    os.sched_setaffinity(0, {LOAD_CORE})
    results.tokenrelay_file = tokenrelay_origin()
    if not Path(results.tokenrelay_file).resolve().is_relative_to(ROOT / "src"):
        raise RuntimeError(
            f"children would import tokenrelay from {results.tokenrelay_file}, not {ROOT / 'src'}"
        )
    log(f"children import tokenrelay from {results.tokenrelay_file}")
    workdir = Path(tempfile.mkdtemp(prefix="tokenrelay-bench-"))
    children: list[Child] = []
    pg_name: str | None = None
    pg_url = ""
    ledger_db = workdir / "ledger.db"
    spools = {name: workdir / f"spool-{name}" for name in (*LEDGER_GATEWAYS, "gw-mem")}
    results.pg_problem = pgdb.reachable()
    if results.pg_problem:
        results.notes.append(f"PostgreSQL not reachable ({results.pg_problem}): no PostgreSQL rows")
    try:
        if results.pg_problem is None:
            pg_name, pg_url = asyncio.run(pgdb.create_database())
            log(f"PostgreSQL database {pg_name} created")
        results.wakeup, results.oversleep = wakeup_latency(workdir, profile.wakeup_pings)
        sim_port = free_port()
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
        config.write_text(gateway_config(sim_port))
        # A fixed hash seed: one less way for two identical gateway processes to differ.
        base_env = {"TOKENRELAY_LOG_LEVEL": "WARNING", "TOKENRELAY_DRAIN_SECONDS": "1", "PYTHONHASHSEED": "0"}
        gateway_envs = {
            "gw-off": {"TOKENRELAY_LEDGER__ENABLED": "false"},
            "gw-off2": {"TOKENRELAY_LEDGER__ENABLED": "false"},
            "gw-mem": {"TOKENRELAY_LEDGER__ENABLED": "false"},
            "gw-sqlite": {
                "TOKENRELAY_LEDGER__ENABLED": "true",
                "TOKENRELAY_LEDGER__DATABASE_URL": f"sqlite+aiosqlite:///{ledger_db}",
            },
        }
        if pg_url:
            gateway_envs["gw-pg"] = {
                "TOKENRELAY_LEDGER__ENABLED": "true",
                "TOKENRELAY_LEDGER__DATABASE_URL": pg_url,
            }
        gateway_children: dict[str, Child] = {}
        for name, env in gateway_envs.items():
            port = free_port()
            argv = [PYTHON, "-m", "tokenrelay", "serve", "--port", str(port), "--config", str(config)]
            # Every gateway gets a spool directory of its own in the scratch directory.
            env = {**base_env, **env, "TOKENRELAY_LEDGER__SPOOL_DIR": str(spools[name])}
            gateway_children[name] = spawn(name, GATEWAY_CORE, argv, env, port, workdir)
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
            wait_ready(child, "/readyz", timeout=60)
            state = ledger_state(child.port)
            if state != ("ok" if name in ("gw-sqlite", "gw-pg") else "disabled"):
                raise RuntimeError(f"{name}: ledger state {state!r}:\n{child.log.read_text()[-3000:]}")
        wait_ready(tutorial, "/openapi.json", timeout=60)
        log(
            f"started: sim :{sim_port}, gateways "
            f"{ {name: c.port for name, c in gateway_children.items()} }, "
            f"tutorial :{tutorial_port} (RLIMIT_NOFILE {nofile}, logs in {workdir})"
        )

        targets: dict[str, Target] = {
            "direct": Target("direct", sim_port, "direct", sim.proc, "simulator, direct")
        }
        for name, child in gateway_children.items():
            targets[name] = Target(name, child.port, "v1", child.proc)
            targets[f"{name}-chat"] = Target(f"{name}-chat", child.port, "chat", child.proc)
        targets["tutorial"] = Target("tutorial", tutorial_port, "tutorial", tutorial.proc)

        uvloop.run(measure(targets, sim, results, workdir))

        for child in children:
            if child.popen.poll() is not None:
                results.notes.append(f"{child.name} exited during the run (code {child.popen.returncode})")
        for name in gateway_children:
            results.sent[name] = targets[name].sent + targets[f"{name}-chat"].sent
    finally:
        stop_children(children)  # the gateways write their last batches as they stop
        try:
            if ledger_db.exists():
                with contextlib.closing(sqlite3.connect(ledger_db)) as db:
                    results.rows_in_db["gw-sqlite"] = db.execute(
                        "select count(*) from usage_record"
                    ).fetchone()[0]
            if pg_name:
                results.rows_in_db["gw-pg"] = asyncio.run(pgdb.count_rows(pg_url))
            for name, directory in spools.items():
                results.rows_in_spool[name] = spool_rows(directory)
        finally:
            if pg_name:
                asyncio.run(pgdb.drop_database(pg_name))
                log(f"PostgreSQL database {pg_name} dropped")
    if not keep_logs:
        shutil.rmtree(workdir, ignore_errors=True)  # on failure the logs stay for a look
    results.finished = time.time()
    if save is not None:
        save.write_bytes(pickle.dumps(results))  # for --render-from: the report again, no re-measuring
    output.write_text(render(results))
    log(f"wrote {output} ({results.finished - results.started:.0f} s)")
    return results


# -- the report ---------------------------------------------------------------------------------------


def machine(r: Results) -> list[tuple[str, str]]:
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
        "aiohttp",
        "orjson",
        "sqlalchemy",
        "asyncpg",
        "aiosqlite",
        "openai",
        "httpx2",
    ):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions.append(f"{package} {importlib.metadata.version(package)}")
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    postgres = "not reachable" if r.pg_problem else "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        version = subprocess.run(
            ["psql", pgdb.ADMIN_DSN, "-Atc", "SHOW server_version"],
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        ).stdout.strip()
        if version and not r.pg_problem:
            postgres = f"{version}, loopback, not pinned (its processes run on either core)"
    origin = Path(r.tokenrelay_file)
    with contextlib.suppress(ValueError):
        origin = origin.resolve().relative_to(ROOT)
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
        ("PostgreSQL", postgres),
        ("Packages", ", ".join(versions)),
        ("Commit", commit or "unknown"),
        ("tokenrelay imported from", f"`{origin}` (children's `PYTHONPATH`)"),
        ("Date", datetime.datetime.fromtimestamp(r.finished, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")),
    ]


def table(headers: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


LABELS = {
    "direct": "direct to simulator",
    "gw-off": "gateway `/v1/chat/completions`, ledger off",
    "gw-off-chat": "gateway `/chat`, ledger off",
    "gw-off2": "gateway `/v1/chat/completions`, ledger off (2nd process)",
    "gw-mem": "gateway `/v1/chat/completions`, ledger off (a process that serves only this test)",
    "gw-sqlite": "gateway `/v1/chat/completions`, ledger on (SQLite)",
    "gw-sqlite-chat": "gateway `/chat`, ledger on (SQLite)",
    "gw-pg": "gateway `/v1/chat/completions`, ledger on (PostgreSQL)",
    "gw-pg-chat": "gateway `/chat`, ledger on (PostgreSQL)",
    "tutorial": "tutorial app (`bench/tutorial_app.py`)",
}
LEDGER_NAMES = {
    "gw-off": "ledger off",
    "gw-off2": "ledger off, 2nd process (A/A control)",
    "gw-sqlite": "ledger on, SQLite",
    "gw-pg": "ledger on, PostgreSQL",
}


def describe(label: str) -> str:
    return LABELS.get(label, label)


def median(values: Iterable[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else math.nan


def spread(values: list[float]) -> float:
    """(max - min) / median: how far repeated runs of the same thing lie apart."""
    values = [v for v in values if not math.isnan(v)]
    return (max(values) - min(values)) / statistics.median(values) if len(values) > 1 else math.nan


def median_ci(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Distribution-free confidence interval of the median: (low, high, its coverage).

    The order statistics x(k), x(n-k+1) with the largest k whose coverage, 1 - 2 P(Binomial(n, 1/2)
    < k), is still >= ``level``; with few values that is (min, max) and a lower coverage.
    """
    v = sorted(x for x in values if not math.isnan(x))
    n = len(v)
    if not n:
        return math.nan, math.nan, 0.0

    def coverage(k: int) -> float:
        return 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2**n

    k = 1
    while k < (n + 1) // 2 and coverage(k + 1) >= level:
        k += 1
    return v[k - 1], v[n - k], coverage(k)


@dataclass
class LedgerRow:
    """One gateway in one workload of the ledger comparison: medians over the rounds."""

    label: str
    runs: list[Throughput]

    @property
    def rate(self) -> float:
        return median(t.rate for t in self.runs)

    @property
    def streams(self) -> float:
        return median(t.streams_per_s for t in self.runs)

    @property
    def cpu_ms(self) -> float:
        return median(t.cpu_ms_per_stream for t in self.runs)

    @property
    def per_cpu_s(self) -> float:
        return median(t.per_cpu_s for t in self.runs)

    @property
    def busy(self) -> float:
        return median(t.target_cpu / t.seconds for t in self.runs)

    @property
    def pg_busy(self) -> float:
        return median(t.pg_cpu / t.seconds for t in self.runs if t.pg_cpu is not None)

    @property
    def pg_ms(self) -> float:
        return median(
            1000 * t.pg_cpu / t.completed for t in self.runs if t.pg_cpu is not None and t.completed
        )

    @property
    def core1(self) -> str:
        sim = median(t.sim_cpu / t.seconds for t in self.runs)
        load = median(t.load_cpu / t.seconds for t in self.runs)
        return f"{100 * sim:.0f} % + {100 * load:.0f} %"

    @property
    def errors(self) -> int:
        return sum(t.errors for t in self.runs)


def ledger_rows(r: Results, key: str) -> dict[str, LedgerRow]:
    found = {}
    for label in LEDGER_GATEWAYS:
        runs = sorted((t for t in r.ledger if t.target == label and t.key == key), key=lambda t: t.round_no)
        if runs:
            found[label] = LedgerRow(label, runs)
    return found


def paired(r: Results, key: str, label: str, metric: Callable[[Throughput], float]) -> list[float]:
    """Per round: ``label``'s metric / the ledger-off gateway's in the same round."""
    off = {t.round_no: metric(t) for t in r.ledger if t.target == "gw-off" and t.key == key}
    return [
        metric(t) / off[t.round_no]
        for t in sorted(r.ledger, key=lambda t: t.round_no)
        if t.target == label and t.key == key and off.get(t.round_no)
    ]


def ledger_noise(r: Results) -> tuple[float, str]:
    """The largest spread between rounds of one gateway in one workload, and where it was."""
    worst, where = math.nan, ""
    for key, metric, unit in (("tput", "rate", "chunks/s"), ("short20", "streams", "streams/s")):
        for label, row in ledger_rows(r, key).items():
            values = [t.rate if metric == "rate" else t.streams_per_s for t in row.runs]
            s = spread(values)
            if not math.isnan(s) and (math.isnan(worst) or s > worst):
                worst, where = (
                    s,
                    f"{LEDGER_NAMES[label]}, {'long' if key == 'tput' else 'short'} streams, {unit}",
                )
    return worst, where


def ratio_cell(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.3f}"


def work(key: str, t: Throughput) -> float:
    """What a workload delivers: chunks/s for long streams, streams/s for short ones."""
    return t.rate if key == "tput" else t.streams_per_s


def efficiency(key: str, t: Throughput) -> float:
    """Work per gateway CPU-second: chunks per CPU-s, or streams per CPU-s (1 / CPU per stream)."""
    if key == "tput":
        return t.per_cpu_s
    return t.completed / t.target_cpu if t.target_cpu > 0 else math.nan


@dataclass
class Comparison:
    """One ledger gateway against the ledger-off one, in one workload."""

    key: str
    label: str
    rounds: list[float]  # work / the ledger-off gateway's work, round (or cycle) by round
    efficiency_rounds: list[float]  # the same for work per gateway CPU-second
    of_medians: float  # median work / the ledger-off gateway's median work

    @property
    def ratio(self) -> float:
        """The headline: the median of the round-by-round ratios (paired, so drift cancels)."""
        return median(self.rounds)

    @property
    def efficiency(self) -> float:
        return median(self.efficiency_rounds)

    @property
    def ci(self) -> tuple[float, float, float]:
        """Confidence interval of ``ratio`` (low, high, coverage)."""
        return median_ci(self.rounds)


def compare(r: Results, key: str, label: str) -> Comparison | None:
    rows = ledger_rows(r, key)
    if "gw-off" not in rows or label not in rows:
        return None
    off, other = rows["gw-off"], rows[label]
    return Comparison(
        key=key,
        label=label,
        rounds=paired(r, key, label, lambda t: work(key, t)),
        efficiency_rounds=paired(r, key, label, lambda t: efficiency(key, t)),
        of_medians=median(work(key, t) for t in other.runs) / median(work(key, t) for t in off.runs),
    )


def accounting(r: Results, key: str, store: str = "postgresql") -> tuple[float, float, float] | None:
    """(µs the ledger adds per stream, ledger-off gateway CPU ms per stream, expected work ratio).

    The added CPU comes from bench/ledger_rows.py's paced runs; the base from the ledger-off
    gateway's runs in section 5. A CPU-bound gateway's work ratio is then base / (base + added).
    """
    rows = {row["name"]: row for row in (r.rows_bench or {}).get("summary", [])}
    paced = rows.get(f"paced-{store}")
    off = ledger_rows(r, key).get("gw-off")
    if paced is None or paced["minus_off_us"] is None or off is None:
        return None
    added, base = paced["minus_off_us"], off.cpu_ms
    return added, base, base / (base + added / 1000)


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


def observe(r: Results) -> list[str]:
    """Derived facts worth a sentence, computed from this run's numbers."""
    found: list[str] = []
    paced = r.c200.get("gw-off")
    batched = [t for t in r.tput if t.target == "gw-off"]
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
    if "gw-off" in setup and "direct" in setup:
        gw, direct = setup["gw-off"], setup["direct"]
        short = ledger_rows(r, "short20").get("gw-off")
        found.append(
            f"Each stream costs the gateway {gw.cpu_ms_per_stream:.2f} ms of CPU to set up and tear down "
            f"(`sim?{MODELS['short']}`; the simulator: {direct.cpu_ms_per_stream:.2f} ms), capping it near "
            f"{1000 / gw.cpu_ms_per_stream:,.0f} new streams/s per core before any chunk is relayed. "
            f"The previous BENCHMARKS.md (upstream through the openai SDK) measured "
            f"{PREVIOUS_CPU_MS_PER_STREAM:.2f} ms in the same test: "
            f"{abs(PREVIOUS_CPU_MS_PER_STREAM - gw.cpu_ms_per_stream):.2f} ms "
            f"{'less' if gw.cpu_ms_per_stream < PREVIOUS_CPU_MS_PER_STREAM else 'more'} now."
            + (
                f" With 20 content chunks per stream (`sim?{MODELS['short20']}`) it is "
                f"{short.cpu_ms:.2f} ms (median of {len(short.runs)} slices, section 5)."
                if short
                else ""
            )
        )
    short = ledger_rows(r, "short20")
    if "gw-off" in short and "gw-pg" in short:
        off, pg = short["gw-off"], short["gw-pg"]
        cpu_rounds = paired(r, "short20", "gw-pg", lambda t: t.cpu_ms_per_stream)
        text = (
            f"Gateway CPU per short stream, ledger on PostgreSQL against off: {pg.cpu_ms:.3f} against "
            f"{off.cpu_ms:.3f} ms (medians over the slices; slice by slice the PostgreSQL gateway needs "
            f"x{median(cpu_rounds):.3f} the CPU, median); the PostgreSQL server spends {pg.pg_ms:.3f} ms "
            "per stream on top (on the machine, not on the gateway's core)."
        )
        acc = accounting(r, "short20")
        acc_sqlite = accounting(r, "short20", "sqlite")
        if acc:
            share = acc[0] / 1000 / acc[1]
            budget = (
                "over the 5 % budget"
                if share > 1 - TARGET_LEDGER_RATIO
                else "close to the 5 % budget"
                if share > 0.7 * (1 - TARGET_LEDGER_RATIO)
                else "well within the 5 % budget"
            )
            text += (
                " Measured in process instead (section 6), the PostgreSQL ledger adds "
                f"{acc[0]:.0f} µs of the gateway's CPU per stream ({100 * share:.1f} % of {acc[1]:.3f} ms)"
                + (f", SQLite {acc_sqlite[0]:.0f} µs (its driver thread included)" if acc_sqlite else "")
                + f": {budget} for streams this short, and a difference the A/B runs on this machine "
                "cannot resolve."
            )
        found.append(text)
    noise, where = ledger_noise(r)
    aa = [c for c in (compare(r, "tput", "gw-off2"), compare(r, "short20", "gw-off2")) if c]
    if not math.isnan(noise) or aa:
        text = "Noise: "
        if not math.isnan(noise):
            text += (
                f"runs of the same gateway under the same load lie up to {100 * noise:.0f} % apart "
                f"({where}). "
            )
        if aa:
            text += "Two identical ledger-off processes (the A/A control) come out at " + "; ".join(
                f"x{c.ratio:.3f} ({'long' if c.key == 'tput' else 'short'} streams, round by round "
                f"{min(c.rounds):.2f}-{max(c.rounds):.2f})"
                for c in aa
            )
            text += (
                ". A ledger difference smaller than the A/A gap cannot be told from chance. The previous "
                "run saw up to 42 % between two identical gateways, measured once each, minutes apart."
            )
        found.append(text)
    if r.wakeup:
        by_idle = {round(w.idle_ms): w for w in r.wakeup}
        busy, idle = by_idle.get(0), by_idle.get(20)
        c1_gw, c1_direct = r.c1.get("gw-off"), r.c1.get("direct")
        if busy and idle:
            text = (
                "Wake-up latency of this VM: a loopback ping-pong with a process on the other core takes "
                f"{ms(pct(busy.rtts, 0.5), 3)} ms (p50) back to back and {ms(pct(idle.rtts, 0.5), 3)} ms "
                f"(p99 {ms(pct(idle.rtts, 0.99), 3)} ms) when the peer has been idle for 20 ms; "
                f"`time.sleep(1 ms)` oversleeps by {ms(pct(r.oversleep, 0.5), 3)} ms (p50)."
            )
            if c1_gw and c1_direct and c1_gw.ttft and c1_direct.ttft:
                added = pct(c1_gw.ttft, 0.5) - pct(c1_direct.ttft, 0.5)
                text += (
                    f" The gateway's extra hop (two more loopback hops to a process idle between "
                    f"requests) thus accounts for well under {ms(2 * pct(idle.rtts, 0.5), 1)} ms of the "
                    f"{ms(added, 2)} ms it adds to the 1-stream TTFT: the rest is its own work per "
                    "stream (request parsing, opening the upstream request, the first chunk)."
                )
            found.append(text)
    clients = {row["variant"]: row for row in (r.clients_bench or {}).get("summary", [])}
    if {"sdk-create", "sdk-post", "aiohttp"} <= clients.keys():
        found.append(
            "Upstream client: opening a streamed request costs "
            f"{clients['sdk-create']['open_cpu_ms']:.2f} ms of CPU through the SDK's "
            f"`chat.completions.create`, {clients['sdk-post']['open_cpu_ms']:.2f} ms through its `post`, "
            f"and {clients['aiohttp']['open_cpu_ms']:.2f} ms with aiohttp directly. "
            + read_side_sentence(list(clients.values()))
        )
    after = [t for t in r.tput if t.target.startswith("gw-") and t.after_cpu > 0.2]
    if after:
        worst = max(after, key=lambda t: t.after_cpu)
        found.append(
            f"When the client closed {worst.concurrency} saturating streams at the end of a throughput "
            f"window, the gateway ({describe(worst.target)}) stayed busy for "
            f"{worst.after_seconds:.1f} s ({worst.after_cpu:.2f} CPU-s) although nobody was listening any "
            "more: under saturation it notices departed clients late and goes on relaying."
        )
    return found


def render_targets(r: Results) -> list[str]:
    summary: list[list[str]] = []
    loads = (("1 stream", r.c1), ("200 streams at 50 tok/s", r.c200), ("200 streams at 20 tok/s", r.c200l))
    for conc, data in loads:
        direct = data.get("direct")
        for label in ("gw-off", "gw-off-chat", "gw-pg"):
            lat = data.get(label)
            if direct is None or lat is None or not lat.ttft or not direct.ttft:
                continue
            added = pct(lat.ttft, 0.5) - pct(direct.ttft, 0.5)
            miss = added * 1000 - TARGET_TTFT_ADDED_MS
            summary.append(
                [
                    f"TTFT added at p50, {conc}, {describe(label)}",
                    f"≤ {TARGET_TTFT_ADDED_MS:g} ms",
                    f"{added * 1000:+.3f} ms",
                    verdict(miss <= 0) + ("" if miss <= 0 else f" by {miss:.2f} ms"),
                ]
            )

    def tput_row(what: str, rate: float) -> None:
        summary.append(
            [
                what,
                f"≥ {TARGET_CHUNKS_S:,} chunks/s (stretch {STRETCH_CHUNKS_S:,})",
                f"{rate:,.0f} chunks/s",
                verdict(rate >= TARGET_CHUNKS_S) + (" (stretch met)" if rate >= STRETCH_CHUNKS_S else ""),
            ]
        )

    for run in r.tput:
        if run.target in ("gw-off", "gw-off-chat"):
            tput_row(f"Throughput, {describe(run.target)}, {run.concurrency} streams", run.rate)
    long_rows = ledger_rows(r, "tput")
    for label in ("gw-sqlite", "gw-pg"):
        if label in long_rows:
            row = long_rows[label]
            tput_row(
                f"Throughput, {describe(label)}, {r.profile.ledger_concurrency} streams "
                f"(median of {len(row.runs)} rounds)",
                row.rate,
            )
    paced = r.c200.get("gw-off")
    if paced and paced.target_cpu:
        per_cpu_s = paced.events / paced.target_cpu
        summary.append(
            [
                "Same, but one event per upstream read (200 paced streams at 50 tok/s), "
                f"{describe('gw-off')}: chunks per gateway CPU-second (gateway at "
                f"{100 * paced.target_cpu / paced.window:.0f} % of its core)",
                f"≥ {TARGET_CHUNKS_S:,} chunks/s",
                f"{per_cpu_s:,.0f} chunks per CPU-s",
                verdict(per_cpu_s >= TARGET_CHUNKS_S) + " (not the issue's test; see Observations)",
            ]
        )
    for key, what in (
        ("tput", "long fast streams (`sim?tokens=20000`), chunks/s"),
        ("short20", "many short streams (`sim?tokens=20`), streams/s"),
    ):
        pg, aa = compare(r, key, "gw-pg"), compare(r, key, "gw-off2")
        if pg is None:
            continue
        design = (
            "alternating rounds" if key == "tput" else f"interleaved {r.profile.slice_seconds:g}-s slices"
        )
        lo, hi, cover = pg.ci
        result = [
            f"A/B: x{pg.ratio:.3f}, median of {len(pg.rounds)} {design}, "
            f"{100 * cover:.0f} % CI {lo:.2f}-{hi:.2f}"
        ]
        if aa:
            aa_lo, aa_hi, aa_cover = aa.ci
            result.append(f"A/A control x{aa.ratio:.3f} ({100 * aa_cover:.0f} % CI {aa_lo:.2f}-{aa_hi:.2f})")
        acc = accounting(r, key)
        if acc:
            added, base, expected = acc
            result.append(
                f"CPU accounting: +{added:.0f} µs per stream on {base:.3f} ms → **x{expected:.3f}**"
            )
        # The A/B decides when a confidence interval of at least 90 % lies on one side of the
        # target; otherwise the CPU accounting does, and the verdict says so.
        decided = cover >= 0.9 and (lo >= TARGET_LEDGER_RATIO or hi < TARGET_LEDGER_RATIO)
        if decided or acc is None:
            primary, how = pg.ratio, "by A/B"
            if not decided:
                how += " (inconclusive: its confidence interval straddles 0.95 or is too wide)"
        else:
            primary, how = acc[2], "by CPU accounting (the A/B's confidence interval straddles 0.95)"
            if cover < 0.9:
                how = f"by CPU accounting (too few A/B rounds for a 90 % interval: {len(pg.rounds)})"
        miss = TARGET_LEDGER_RATIO - primary
        text = verdict(primary >= TARGET_LEDGER_RATIO) + f" {how}"
        if miss > 0:
            text += f", by {100 * miss:.1f} points"
        summary.append(
            [
                f"Ledger on PostgreSQL vs ledger off, {what}, {r.profile.ledger_concurrency} connections "
                "per gateway",
                f"≥ {TARGET_LEDGER_RATIO:.2f} x ledger off",
                "; ".join(result),
                text,
            ]
        )
    for m in r.mem:
        if m.target.startswith("gw-"):
            summary.append(
                [
                    f"RSS per idle open stream at {m.streams:,} streams, {describe(m.target)}",
                    f"≤ {TARGET_KIB_PER_STREAM:g} KiB",
                    f"{m.kib_per_stream:.1f} KiB",
                    verdict(m.opened == m.streams and m.kib_per_stream <= TARGET_KIB_PER_STREAM)
                    + (
                        f" ({m.kib_per_stream / TARGET_KIB_PER_STREAM:.1f}x the target)"
                        if m.kib_per_stream > TARGET_KIB_PER_STREAM
                        else ""
                    ),
                ]
            )
    for label, concurrency in (("gw-off", 1), ("gw-off", 5)):
        rows_a = [a for a in r.aborts if a.target == label and a.concurrency == concurrency]
        if not rows_a:
            continue
        worst = max(rows_a, key=lambda a: pct(a.latencies, 0.99) if a.latencies else math.inf)
        all_ok = all(
            a.latencies and not a.not_ended and pct(a.latencies, 0.99) * 1000 <= TARGET_ABORT_P99_MS
            for a in rows_a
        )
        over = [
            a.phase for a in rows_a if not a.latencies or pct(a.latencies, 0.99) * 1000 > TARGET_ABORT_P99_MS
        ]
        summary.append(
            [
                f"Abort latency p99, every phase, {describe(label)}, "
                + ("sequential" if concurrency == 1 else f"{concurrency} at a time"),
                f"≤ {TARGET_ABORT_P99_MS:g} ms",
                f"worst {ms(pct(worst.latencies, 0.99))} ms ({worst.phase})",
                verdict(all_ok) + ("" if all_ok else f" ({len(over)} of {len(rows_a)} phases over)"),
            ]
        )
    if r.metrics_bench:
        for key, what in (
            ("chunks_per_s", "chunk throughput"),
            ("streams_per_s", "short streams per second"),
        ):
            ratio = r.metrics_bench[f"{key}_on_over_off"]
            summary.append(
                [
                    f"Metrics on vs off, {what}, ledger off (section 9)",
                    "gap < 3 %",
                    f"x{ratio:.3f} (medians of {r.metrics_bench['rounds']} alternating rounds)",
                    verdict(ratio > 0.97),
                ]
            )
    return ["## Targets", "", *table(["Measurement", "Target", "Result", "Verdict"], summary), ""]


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
        "(*Conc.* 1) and, for the gateway, 5 at a time (each new stream costs the gateway "
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


def render_ledger(r: Results) -> list[str]:
    p = r.profile
    long_rows, short_rows = ledger_rows(r, "tput"), ledger_rows(r, "short20")
    if not long_rows and not short_rows:
        return []
    out = ["## 5. Ledger cost on the hot path", ""]
    out += [
        "Four gateway processes, identical but for the ledger: off, off again (a second process: the "
        "A/A control, which shows how far two identical processes differ on this machine), SQLite (a file "
        "in the scratch directory) and PostgreSQL (a database created for this run). Each gets "
        f"{p.ledger_concurrency} keep-alive connections looping requests, alone on core 0. The simulator "
        "sends usage (the gateway always asks for it), so no tokenizer runs.",
        "",
        f"- *Long fast streams*: `sim?{MODELS['tput']}` (the relay's per-chunk work; a stream ends every "
        f"~60 ms). {p.ledger_rounds} alternating rounds; in each, every gateway gets a run of "
        f"{p.ledger_long_seconds:g} s after 0.5 s of warm-up, the gateways' order rotating from round to "
        "round.",
        f"- *Many short streams*: `sim?{MODELS['short20']}` as fast as the gateway goes (the per-stream "
        "work, where a row per stream weighs most). Interleaved slices: the connections to all four "
        "gateways stay open; one gateway at a time is loaded for a slice (0.15 s of ramp, then "
        f"{p.slice_seconds:g} s measured, then its last requests finish), round-robin, "
        f"{p.slice_cycles} cycles after a warm-up cycle, the order rotating: "
        f"{p.slice_cycles * p.slice_seconds:g} s measured per gateway. Slices of one cycle lie a few "
        "seconds apart, so the ratio between two gateways within a cycle cancels most of the machine's "
        "drift. *Chunks* = SSE events at the client (role, 20 content, finish, `[DONE]`).",
        "",
        "*x off* = the median over rounds (cycles) of this gateway's figure / the ledger-off gateway's "
        "in the same round; *per CPU-s* = work per gateway CPU-second (chunks, or streams = 1 / CPU per "
        "stream). *PostgreSQL server CPU*: all `postgres` processes (psutil), as a share of one core; "
        "*steal*: CPU time the hypervisor took from this VM's two vCPUs (`/proc/stat`), as a share of one "
        "core. Medians.",
        "",
    ]

    def pg_cell(row: LedgerRow) -> str:
        if math.isnan(row.pg_busy):
            return ""
        return f"{100 * row.pg_busy:.0f} % ({row.pg_ms:.3f} ms per stream)"

    def steal_cell(runs: list[Throughput]) -> str:
        steal = median(t.steal / t.seconds for t in runs)
        return "" if math.isnan(steal) else f"{100 * steal:.1f} %"

    for key, title in (("tput", "Long fast streams"), ("short20", "Many short streams")):
        rows_by = long_rows if key == "tput" else short_rows
        if not rows_by:
            continue
        unit = "Chunks/s" if key == "tput" else "Streams/s"
        out += [f"### {title}", ""]
        rows = []
        for label, row in rows_by.items():
            c = compare(r, key, label) if label != "gw-off" else None
            values = [work(key, t) for t in row.runs]
            e = median(efficiency(key, t) for t in row.runs)
            rows.append(
                [
                    LEDGER_NAMES[label],
                    f"{median(values):,.0f}",
                    f"**{c.ratio:.3f}**" if c else "",
                    ", ".join(f"{v:,.0f}" for v in values)
                    if key == "tput"
                    else f"{min(values):,.0f}-{max(values):,.0f}",
                    f"{row.rate:,.0f}" if key == "short20" else f"{row.streams:,.1f}",
                    f"{100 * row.busy:.0f} %",
                    f"{e:,.0f}" + (f" ({1000 / e:.3f} ms)" if key == "short20" and e else ""),
                    ratio_cell(c.efficiency) if c else "",
                    pg_cell(row),
                    steal_cell(row.runs),
                    row.core1,
                    str(row.errors),
                ]
            )
        out += table(
            [
                "Gateway",
                f"{unit} (median)",
                "x off",
                "Each round" if key == "tput" else "Range over the slices",
                "Chunks/s" if key == "short20" else "Streams/s",
                "Gateway CPU",
                "Per CPU-s" + (" (CPU per stream)" if key == "short20" else ""),
                "Per CPU-s x off",
                "PostgreSQL server CPU",
                "Steal",
                "Sim + load CPU (core 1)",
                "Errors",
            ],
            rows,
        )
        out += [""]
        for label in ("gw-off2", "gw-sqlite", "gw-pg"):
            c = compare(r, key, label)
            if c and c.rounds:
                out.append(
                    f"- {LEDGER_NAMES[label]} / ledger off, {unit.lower()}, "
                    f"{'round' if key == 'tput' else 'cycle'} by {'round' if key == 'tput' else 'cycle'}: "
                    + ", ".join(f"{x:.3f}" for x in c.rounds)
                    + f" (ratio of the medians: {c.of_medians:.3f})"
                )
        out += [""]
    rows_text = []
    for label in ("gw-sqlite", "gw-pg"):
        if label in r.rows_in_db:
            db = "SQLite" if label == "gw-sqlite" else "PostgreSQL"
            rows_text.append(
                f"the {db} gateway's database holds {r.rows_in_db[label]:,} rows for "
                f"{r.sent.get(label, 0):,} streams the load generator started through it "
                f"({r.rows_in_spool.get(label, 0):,} rows left in its spool)"
            )
    if rows_text:
        out += ["After the run " + "; ".join(rows_text) + ".", ""]
    return out


def render_rows_bench(r: Results) -> list[str]:
    data = r.rows_bench
    if not data:
        return []
    out = ["## 6. Ledger rows per second", ""]
    out += [
        "`bench/ledger_rows.py`, in process, no HTTP: the gateway's own `LedgerWriter` (batches of "
        f"{data['batch_max_rows']} rows or {data['batch_max_seconds']:g} s) over `LedgerStore` + `Spool`, as "
        "the app wires them. N finished `StreamRecord`s built first, then all submitted; rows/s = N / time "
        "from the first `submit` to `writer.close()` having written the last batch. *Upstream usage*: "
        "token counts known (the pure database path); *estimated*: `usage_source=None`, so the writer "
        f"counts the prompt (2 messages) and a {data['completion_words']}-word answer with tiktoken first. "
        "*Unreachable*: the URL points at a closed loopback port (`connect_timeout_seconds=1`): the store "
        "fails once in `start()`, after which every batch goes to the fsynced spool. *CPU per row*: the "
        "benchmark process (pinned to one core; all threads); *PostgreSQL CPU*: the server's processes. "
        "A fresh database per variant; rows counted afterwards where they went.",
        "",
    ]
    rows = []
    for row in data["summary"]:
        if row["paced_rate"]:
            continue
        where = (
            f"{row['rows_in_spool'][0]:,} in the spool"
            if row["database"].endswith("unreachable")
            else f"{row['rows_in_db'][0]:,} in the table, {row['rows_in_spool'][0]:,} in the spool"
        )
        server = row["server_cpu_us_per_row"]
        rows.append(
            [
                row["database"],
                "upstream" if row["usage"] == "upstream" else "estimated (tiktoken)",
                f"{row['rows']:,}",
                f"**{row['rows_per_s']:,.0f}**",
                f"{row['cpu_us_per_row']:.1f}",
                "" if server is None else f"{server:.1f}",
                f"{row['start_seconds']:.2f}",
                where,
                str(row["batches_failed"] + row["write_failures"]),
            ]
        )
    out += table(
        [
            "Database",
            "Usage",
            "Rows",
            "Rows/s",
            "CPU µs per row",
            "PostgreSQL CPU µs per row",
            "`store.start()` (s)",
            "Rows found afterwards",
            "Failures",
        ],
        rows,
    )
    paced = [row for row in data["summary"] if row["paced_rate"]]
    if paced:
        first = paced[0]
        out += ["", "### The ledger's CPU per stream in the gateway's process", ""]
        out += [
            f"The same writer fed {first['paced_rate']:,.0f} records/s for "
            f"{first['rows'] / first['paced_rate']:g} s (a few every 10 ms, as a busy gateway's streams "
            "end), so its batches have a gateway's sizes; without a store (what the ledger-off gateway "
            f"runs), with SQLite and with PostgreSQL, alternating; {first['rounds']} round(s), medians. The "
            "process's CPU per record includes the feeding loop, the same in every row; *minus no store* "
            "(the median of the round-by-round differences) is what the ledger adds to each stream in the "
            "gateway's process. Usage known (no tokenizer).",
            "",
        ]
        names = {"none": "no store (ledger off)", "sqlite": "SQLite", "postgresql": "PostgreSQL"}
        out += table(
            [
                "Store",
                "Records",
                "CPU µs per record (each round)",
                "Minus no store (µs)",
                "PostgreSQL server CPU µs per row",
                "Rows in the table afterwards",
            ],
            [
                [
                    names.get(row["database"], row["database"]),
                    f"{row['rows']:,} x {row['rounds']}",
                    f"{row['cpu_us_per_row']:.1f} "
                    f"({', '.join(f'{x:.1f}' for x in row['cpu_us_per_row_each'])})",
                    "" if row["minus_off_us"] is None else f"**{row['minus_off_us']:+.1f}**",
                    "" if row["server_cpu_us_per_row"] is None else f"{row['server_cpu_us_per_row']:.1f}",
                    "" if row["rows_in_db"][-1] is None else f"{row['rows_in_db'][-1]:,}",
                ]
                for row in paced
            ],
        )
    return [*out, ""]


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
    return out


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
    out += render_targets(r)
    out += ["## Machine", ""]
    out += table(["", ""], [[k, v] for k, v in machine(r)])
    out += ["", *render_wakeup(r)]
    out += render_latency(r)
    out += render_throughput(r)
    out += render_memory(r)
    out += render_aborts(r)
    out += render_ledger(r)
    out += render_rows_bench(r)
    out += render_clients(r)
    out += render_local(r)
    out += render_metrics_overhead(r)
    observations = observe(r)
    if observations:
        out += ["## Observations", ""] + [f"- {o}" for o in observations] + [""]
    if r.notes:
        out += ["## Notes from the run", ""] + [f"- {n}" for n in r.notes] + [""]
    out += ["## Reproduce", ""]
    out += [
        "```sh",
        "python dev.py            # or: python -m venv .venv && .venv/bin/pip install -e '.[dev]'",
        ".venv/bin/python bench/run.py           # full run, ~7 min; overwrites BENCHMARKS.md",
        ".venv/bin/python bench/run.py --quick   # ~2 min, smaller samples",
        ".venv/bin/python bench/ledger_rows.py       # section 6 alone",
        ".venv/bin/python bench/upstream_clients.py  # section 7 alone (starts its own simulator)",
        ".venv/bin/python bench/local_model.py       # section 8 alone (starts its own gateway)",
        ".venv/bin/python bench/metrics_overhead.py  # section 9 alone (its own simulator and gateways)",
        "```",
        "",
        "Needs `taskset` and at least 2 cores; binds only 127.0.0.1; PostgreSQL at "
        "`postgresql://postgres@127.0.0.1:5432/test` or `$TOKENRELAY_BENCH_PG` (a database is created "
        "and dropped per run). Processes: `tokenrelay sim` (core 1), five `tokenrelay serve` gateways "
        "(core 0; ledger off, off again as the A/A control, on SQLite, on PostgreSQL, and a ledger-off "
        "one for the memory test only; each with its own spool directory in a scratch directory; "
        "`PYTHONHASHSEED=0`; `TOKENRELAY_LOG_LEVEL=WARNING`, so the per-stream `stream_end` log line "
        "is not written), `uvicorn bench/tutorial_app.py` (core 0), the two micro-benchmarks "
        "(core 0); the "
        "load generator runs in `bench/run.py` itself on core 1. Only one of them is under load at a "
        "time. Children import `tokenrelay` from this checkout's `src/` (their `PYTHONPATH`).",
        "",
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small samples, about two minutes")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md", help="report path")
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs and ledger DB")
    parser.add_argument("--save-results", type=Path, help="also pickle the measurements here")
    parser.add_argument(
        "--render-from", type=Path, help="write the report from measurements saved by --save-results"
    )
    args = parser.parse_args(argv)
    if args.render_from:
        results: Results = pickle.loads(args.render_from.read_bytes())  # a file this script wrote
        args.output.write_text(render(results))
        return 0
    if (os.cpu_count() or 1) < 2:
        print("needs at least 2 cores (gateway on core 0, simulator and load on core 1)", file=sys.stderr)
        return 2
    run(QUICK if args.quick else FULL, args.output, args.keep_logs, args.save_results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
