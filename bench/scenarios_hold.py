"""Streams held open, then dropped: memory per idle open stream, abort latency.

Both need the simulator's view of when each upstream request ended (``SimControl``): through a
gateway, a stream the client dropped is only over once the gateway has cancelled it upstream.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psutil

from loadgen import Conn, SimControl, Target, clock, connect
from results import Abort, Memory


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


# "50 clients leaving at once" (issue 14): the concurrency of the gateway's second abort run.
ABORT_AT_ONCE = 50

ABORT_PHASES = {
    "waiting for upstream headers": "ab-headers",
    "before first token": "ab-first",
    "mid-stream, active": "ab-active",
    "mid-stream, stalled": "ab-stall",
}


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
