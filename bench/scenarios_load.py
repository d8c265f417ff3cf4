"""Load over a time window: TTFT at 1 and 200 streams, throughput, interleaved slices.

The concurrent ones read CPU (psutil) and events at the edges of a window that opens after a
warm-up and closes before the load stops, so connection set-up and the last requests' wind-down
stay out of the figures.
"""

from __future__ import annotations

import asyncio
import contextlib

import psutil

import pgdb
from loadgen import Conn, Target, clock, connect
from processes import cpu_seconds, steal_seconds, wait_quiet
from results import Latency, Throughput
from workload import MODELS


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
                    target.request("pace1", f"c1-{target.label}-{i}"),
                    target.first_content,
                    n_content,
                    target.marker,
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
                target.request(key, f"c200-{key}-{target.label}-{w}-{i}"),
                target.first_content,
                n_content,
                target.marker,
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
