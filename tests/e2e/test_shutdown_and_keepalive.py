"""SIGTERM drains streams gracefully; silent streams get keep-alive pings."""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from typing import Any

from tests.helpers import Gateway, Sim, new_request_id, open_raw_stream, parse_events
from tests.helpers import chat_body as body


async def test_sigterm_drains_then_ends_remaining_streams_with_shutdown_error(
    start_gateway: Any, sim: Sim
) -> None:
    gw: Gateway = start_gateway(env={"TOKENRELAY_DRAIN_SECONDS": "1.0"})
    endless_rid, short_rid, late_rid = new_request_id(), new_request_id(), new_request_id()
    endless = await open_raw_stream(gw.url, "/chat", body("slow"), endless_rid)
    await endless.read_until(b'"type":"delta"')
    short = await open_raw_stream(gw.url, "/chat", body("paced"), short_rid)  # ~0.4 s: ends within the drain
    await short.read_until(b'"type":"delta"')

    # A request whose body is still arriving when the signal comes: it must get a 503.
    late_body = body("fast")
    host_port = gw.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host_port[0], int(host_port[1]))
    writer.write(
        f"POST /chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(late_body)}\r\nX-Request-ID: {late_rid}\r\n\r\n".encode()
        + late_body[:5]
    )
    await writer.drain()
    await asyncio.sleep(0.2)

    signalled_at = time.monotonic()
    gw.process.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.3)
    writer.write(late_body[5:])
    await writer.drain()
    late_response = await asyncio.wait_for(reader.read(), 5)  # "connection: close": read to EOF
    assert late_response.startswith(b"HTTP/1.1 503"), late_response[:200]
    assert b'"code":"shutting_down"' in late_response
    writer.close()

    short_events = parse_events(await short.read_to_end())
    short.close()
    assert short_events[-1]["type"] == "done", "a stream that finishes within the drain completes normally"

    endless_events = parse_events(await endless.read_to_end(timeout=10))
    endless.close()
    ended_after = time.monotonic() - signalled_at
    assert endless_events[-1]["type"] == "error" and endless_events[-1]["code"] == "shutdown"
    assert 0.9 <= ended_after < 5, f"the remaining stream ended {ended_after:.2f}s after SIGTERM"

    assert await asyncio.to_thread(gw.process.wait, 20) == 0, gw.log_text()[-3000:]
    upstream = await sim.wait_ended(endless_rid)
    assert upstream["end"] == "client_closed"
    assert sim.stats()["active"] == 0 or (await sim.wait_ended(short_rid))["end"] == "completed"

    statuses = {
        rid: [r["status"] for r in await gw.ledger_rows(rid, timeout=1)] for rid in (endless_rid, short_rid)
    }
    assert statuses == {endless_rid: ["shutdown"], short_rid: ["completed"]}
    assert await gw.ledger_rows(late_rid, timeout=0.2) == []


KEEPALIVE_SECONDS = 0.1


async def test_silent_stream_gets_one_keepalive_per_interval(start_gateway: Any) -> None:
    """A ping about every ``keepalive_seconds`` of silence: not a burst, not a trickle."""
    gw: Gateway = start_gateway(env={"TOKENRELAY_KEEPALIVE_SECONDS": str(KEEPALIVE_SECONDS)})
    for model in ("stall", "stall-first"):
        stream = await open_raw_stream(gw.url, "/chat", body(model), new_request_id())
        await stream.read_until(b": ping\n\n")
        assert stream.received.startswith(b"HTTP/1.1 200")
        arrivals: list[float] = []
        async with asyncio.timeout(5):
            while len(arrivals) < 12:
                data = await stream.reader.read(65536)
                assert data and b"data:" not in data, "nothing but pings while the upstream is silent"
                arrivals += [time.monotonic()] * data.count(b": ping\n\n")
        stream.close()
        gaps = sorted(b - a for a, b in itertools.pairwise(arrivals))
        median = gaps[len(gaps) // 2]
        assert 0.8 * KEEPALIVE_SECONDS <= median <= 1.5 * KEEPALIVE_SECONDS, gaps
        assert gaps[0] >= 0.5 * KEEPALIVE_SECONDS, f"pings in a burst: {gaps}"


async def test_busy_stream_gets_no_pings(start_gateway: Any) -> None:
    gw: Gateway = start_gateway(env={"TOKENRELAY_KEEPALIVE_SECONDS": "0.2"})
    stream = await open_raw_stream(gw.url, "/chat", body("paced"), new_request_id())
    raw = await stream.read_until(b'"type":"done"')
    stream.close()
    assert b": ping" not in raw
