"""Sections 12 and 13: failover's time to first token, and ``/v1/messages`` beside
``/v1/chat/completions``, against this checkout's ledger-off gateway.

Their targets exist only when the gateway has the features (``harness``); each is probed with
one request first, and one that does not answer a streamed 200 with a first content event is
left out with a note, so a gateway that lacks something skips it instead of failing the run.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable

import aiohttp
import psutil

from loadgen import SimControl, Target, connect
from results import Results, Throughput
from scenarios_load import throughput, ttft_sequential
from workload import MODELS

# Section 12: the failover targets beside the direct connection and the single-deployment model;
# section 13: the Messages API beside the chat completions of the same gateway.
FAILOVER_TARGETS = ("gw-off-refused", "gw-off-inband")
MESSAGES_TARGETS = ("gw-off-msg", "gw-off-msg-anth")
C1_ROUTES = ("direct", "direct-msg", "gw-off", *FAILOVER_TARGETS, *MESSAGES_TARGETS)
PROTOCOL_TARGETS = ("direct", "direct-msg", "gw-off", *MESSAGES_TARGETS)
_ATTEMPTS = re.compile(
    r'^tokenrelay_upstream_attempts_total\{deployment="([^"]*)",model="([^"]*)",outcome="([^"]*)"\} (\S+)$',
    re.MULTILINE,
)


async def probe(target: Target) -> str | None:
    """One request to ``target``: None if it streamed a 200 with a first content event, else why not."""
    counter = [0]
    try:
        conn = await connect(target.port, counter)
    except (OSError, TimeoutError) as exc:
        return f"cannot connect ({exc})"
    n_content = int(MODELS["pace1"].split("tokens=")[1].split("&")[0])
    try:
        done = conn.begin(
            target.request("pace1", f"probe-{target.label}"), target.first_content, n_content, target.marker
        )
        try:
            ok = await asyncio.wait_for(done, 10)
        except TimeoutError:
            return "no complete answer within 10 s"
        if not ok:
            return f"HTTP {conn.status or 'no answer'}"
        if conn.ttft is None:
            return "no content event found in the stream"
        return None
    finally:
        conn.close()


async def attempts(session: aiohttp.ClientSession, port: int) -> dict[tuple[str, str, str], float]:
    """The gateway's ``tokenrelay_upstream_attempts_total``: (model, deployment, outcome) -> count."""
    try:
        async with session.get(
            f"http://127.0.0.1:{port}/metrics", timeout=aiohttp.ClientTimeout(total=10)
        ) as r:
            text = await r.text()
    except (aiohttp.ClientError, TimeoutError):
        return {}
    return {(m, d, o): float(v) for d, m, o, v in _ATTEMPTS.findall(text)}


async def usable(targets: dict[str, Target], labels: tuple[str, ...], results: Results) -> list[str]:
    """The labels among ``labels`` that exist and answer (the rest noted)."""
    found = []
    for label in labels:
        if label not in targets:
            continue
        problem = await probe(targets[label])
        if problem is None:
            found.append(label)
        else:
            results.notes.append(f"{label} left out of sections 12-13: {problem}")
    return found


async def routes_ttft(
    targets: dict[str, Target], results: Results, session: aiohttp.ClientSession, control: SimControl
) -> None:
    """Sections 12 and 13, TTFT: one sequential interleaving of every target, 1 stream."""
    p = results.profile
    labels = await usable(targets, C1_ROUTES, results)
    if not any(label.startswith("gw-off-") for label in labels):
        return
    off = targets["gw-off"]
    before = await attempts(session, off.port)
    await control.reset()
    results.c1_routes = await ttft_sequential([targets[k] for k in labels], p.routes_c1_requests)
    after = await attempts(session, off.port)
    for label in FAILOVER_TARGETS:
        if label not in labels:
            continue
        model = targets[label].prefix + "pace1"
        counts = {
            f"{d}: {o}": n - before.get((m, d, o), 0.0)
            for (m, d, o), n in after.items()
            if m == model and n - before.get((m, d, o), 0.0) > 0
        }
        results.attempts[model] = counts


async def protocol_throughput(
    targets: dict[str, Target],
    sim: psutil.Process,
    results: Results,
    control: SimControl,
    settle: Callable[[str, str], Awaitable[None]],
    log: Callable[[str], None],
) -> None:
    """Section 13, throughput: the gateway's paths in alternating rounds, the order rotating; the
    direct connections (for scale only, no ratio is taken against them) in the first round only."""
    p = results.profile
    labels = [k for k in PROTOCOL_TARGETS if k in targets]
    if not any(k in targets for k in MESSAGES_TARGETS) or p.protocol_rounds <= 0:
        return
    concurrency = p.tput_concurrency[-1]
    for round_no in range(p.protocol_rounds):
        here = labels if round_no == 0 else [k for k in labels if not k.startswith("direct")]
        shift = round_no % len(here)
        for label in here[shift:] + here[:shift]:
            await control.reset()
            run: Throughput = await throughput(
                targets[label], sim, concurrency, p.protocol_warmup, p.protocol_seconds, "tput"
            )
            run.round_no = round_no
            results.protocol_tput.append(run)
            log(
                f"protocols, round {round_no + 1}: {label} x{concurrency}: {run.rate:,.0f} chunks/s, "
                f"{run.per_cpu_s:,.0f} chunks/CPU-s"
            )
            await settle(label, f"protocols {label} round {round_no + 1}")
