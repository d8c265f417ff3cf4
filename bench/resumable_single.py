"""bench/resumable.py, sections 1 and 2: one gateway (ledger off, cluster on), plain and resumable.

The CPU comparison runs the house load generator (``loadgen.Conn``) in alternating rounds; Redis
is read at the edges of each window (``INFO``, server-wide) and, after the rounds, key by key in
the run's namespace (each stream log's length and last event id: its XADDs and its events).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import orjson
import redis

from loadgen import Conn, Target, connect
from processes import Child, clock, cpu_seconds, log, steal_seconds, wait_quiet
from scenarios_load import ttft_sequential

PACED = "pace200"  # tokens=100&tps=50 (bench/workload.py): 2 s streams, one event per upstream read
EXTRA_MODELS = {
    "rs1000": "tokens=1000",  # as fast as the simulator writes (64 events at a time)
    "rs1000p": "tokens=1000&tps=200",  # paced: one event per upstream read
    "resume": "tokens=200&tps=200",  # section 3: 1 s streams
    "slow": "tokens=2000&tps=50",  # section 4: 40 s streams, still open when the replica dies
}
MEMORY_RUNS = (("v1", "rs1000p"), ("v1", "rs1000"), ("chat", "rs1000p"))


@dataclass(frozen=True)
class Plan:
    rounds: int  # alternating rounds of the CPU comparison
    window: float  # seconds measured per target and round (after 2 s of ramp)
    concurrency: int
    ttft_requests: int  # sequential requests per target
    memory_streams: int
    resumes: int  # of 200-token streams
    long_resumes: int  # of 1,000-token streams
    kill_streams: int


FULL = Plan(6, 4.0, 100, ttft_requests=100, memory_streams=50, resumes=200, long_resumes=40, kill_streams=20)
QUICK = Plan(2, 1.5, 100, ttft_requests=30, memory_streams=20, resumes=40, long_resumes=10, kill_streams=10)


@dataclass
class ResumableTarget(Target):
    """The same requests with ``"resumable": true`` in the body."""

    def _body(self, key: str) -> bytes:
        return orjson.dumps({**orjson.loads(super()._body(key)), "resumable": True})


@dataclass
class Window:
    label: str
    round_no: int
    seconds: float
    events: int
    cpu: float
    xadd: int  # INFO commandstats (the whole server)
    reads: int  # INFO stats total_reads_processed: client reads, about one per round trip
    errors: int
    steal: float


@dataclass
class Memory:
    label: str
    streams: int
    entries: int
    stream_bytes: int
    meta_bytes: int


def redis_counters(rds: redis.Redis) -> tuple[int, int]:
    xadd = rds.info("commandstats").get("cmdstat_xadd", {}).get("calls", 0)
    return int(xadd), int(rds.info("stats")["total_reads_processed"])


def stream_logs(rds: redis.Redis, namespace: str) -> list[bytes]:
    keys = rds.scan_iter(match=f"{namespace}:rs:*", count=1000)
    return [k for k in keys if not k.endswith((b":meta", b":follow"))]


def delete_keys(rds: redis.Redis, pattern: str) -> int:
    keys = list(rds.scan_iter(match=pattern, count=1000))
    for start in range(0, len(keys), 500):
        rds.delete(*keys[start : start + 500])
    return len(keys)


def open_leases(rds: redis.Redis, namespace: str) -> int:
    """Entries left in the namespace's lease hashes (streams the replicas still call open)."""
    return sum(int(rds.hlen(key)) for key in rds.scan_iter(match=f"{namespace}:open:*", count=1000))


def census(rds: redis.Redis, namespace: str) -> tuple[int, int, int]:
    """(streams, XADDs, events) of the namespace's stream logs: an entry is one XADD; the last
    event id is the stream's event count."""
    streams = entries = events = 0
    for key in stream_logs(rds, namespace):
        streams += 1
        entries += int(rds.xlen(key))
        last: list[tuple[bytes, dict[bytes, bytes]]] = rds.xrevrange(key, count=20)  # type: ignore[assignment]
        for _id, fields in last:
            if b"l" in fields:
                events += int(fields[b"l"])
                break
    return streams, entries, events


async def paced_round(target: Target, plan: Plan, rds: redis.Redis, round_no: int) -> Window:
    """``plan.concurrency`` keep-alive connections looping the paced model; one measured window."""
    counter, errors = [0], [0]
    stop = asyncio.Event()
    conns: list[Conn] = []
    request_seconds = 2.0

    async def worker(w: int) -> None:
        await asyncio.sleep(request_seconds * w / plan.concurrency)
        conn: Conn | None = None
        i = 0
        while not stop.is_set():
            if conn is None or conn.lost:
                try:
                    conn = await connect(target.port, counter)
                except (OSError, TimeoutError):
                    errors[0] += 1
                    await asyncio.sleep(0.05)
                    continue
                conns.append(conn)
            i += 1
            done = conn.begin(target.request(PACED, f"rs-{target.label}-{round_no}-{w}-{i}"))
            try:
                ok = await asyncio.wait_for(done, 10 + request_seconds)
            except TimeoutError:
                ok = False
                conn.close()
            if not ok and not stop.is_set():
                errors[0] += 1

    tasks = [asyncio.ensure_future(worker(w)) for w in range(plan.concurrency)]
    try:
        await asyncio.sleep(request_seconds)
        r0, s0 = redis_counters(rds), steal_seconds()
        t0, e0, c0 = clock(), counter[0], cpu_seconds(target.proc)
        await asyncio.sleep(plan.window)
        t1, e1, c1 = clock(), counter[0], cpu_seconds(target.proc)
        r1, s1 = redis_counters(rds), steal_seconds()
        stop.set()
        await asyncio.wait(tasks, timeout=request_seconds + 3)  # the last requests finish
    finally:
        stop.set()
        for conn in conns:
            conn.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    xadd, reads = r1[0] - r0[0], r1[1] - r0[1]
    return Window(target.label, round_no, t1 - t0, e1 - e0, c1 - c0, xadd, reads, errors[0], s1 - s0)


async def memory_run(target: Target, key: str, n: int, rds: redis.Redis, namespace: str) -> Memory:
    """``n`` resumable streams of ``key`` at once; then the size of what they left in Redis."""
    delete_keys(rds, f"{namespace}:rs:*")
    counter = [0]
    conns = [await connect(target.port, counter) for _ in range(n)]
    try:
        done = [c.begin(target.request(key, f"mem-{target.label}-{key}-{i}")) for i, c in enumerate(conns)]
        ok = await asyncio.wait_for(asyncio.gather(*done), 60)
    finally:
        for conn in conns:
            conn.close()
    if not all(ok):
        raise RuntimeError(f"memory run {target.label} {key}: {ok.count(False)} of {n} streams failed")
    await asyncio.sleep(0.5)  # the log writer's last round trip
    out = Memory(f"`{target.path}`, `sim?{EXTRA_MODELS[key]}`", 0, 0, 0, 0)
    for k in rds.scan_iter(match=f"{namespace}:rs:*", count=1000):
        size = int(rds.memory_usage(k, samples=0) or 0)
        if k.endswith(b":meta"):
            out.meta_bytes += size
        elif not k.endswith(b":follow"):
            out.streams, out.stream_bytes, out.entries = (
                out.streams + 1,
                out.stream_bytes + size,
                out.entries + rds.xlen(k),
            )
    delete_keys(rds, f"{namespace}:rs:*")
    return out


@dataclass
class Single:
    windows: list[Window]
    census: tuple[int, int, int]
    leases_left: int  # after every stream of the rounds ended
    ttft: dict[str, list[float]]
    ttft_errors: dict[str, int]
    memory: list[Memory]


async def measure_single(plan: Plan, sim: Child, gw: Child, rds: redis.Redis, namespace: str) -> Single:
    targets: dict[str, Target] = {"direct": Target("direct", sim.port, "direct", sim.proc)}
    for style in ("v1", "chat"):
        targets[style] = Target(style, gw.port, style, gw.proc)
        targets[f"{style}-res"] = ResumableTarget(f"{style}-res", gw.port, style, gw.proc)
    windows: list[Window] = []
    for round_no in range(plan.rounds):
        for style in ("v1", "chat"):
            pair = [style, f"{style}-res"][:: -1 if round_no % 2 else 1]
            for label in pair:
                windows.append(await paced_round(targets[label], plan, rds, round_no))
                log(f"round {round_no} {label}: {windows[-1].events / windows[-1].cpu:,.0f} chunks/CPU-s")
                await wait_quiet(gw.proc)
    counted, leases_left = census(rds, namespace), open_leases(rds, namespace)
    delete_keys(rds, f"{namespace}:rs:*")
    labels = ["direct", "v1", "v1-res", "chat", "chat-res"]
    latency = await ttft_sequential([targets[label] for label in labels], plan.ttft_requests)
    log("TTFT done")
    memory = [
        await memory_run(targets[f"{style}-res"], key, plan.memory_streams, rds, namespace)
        for style, key in MEMORY_RUNS
    ]
    ttft = {k: v.ttft for k, v in latency.items()}
    return Single(windows, counted, leases_left, ttft, {k: v.errors for k, v in latency.items()}, memory)
