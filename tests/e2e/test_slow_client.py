"""A client that stops reading is its own failure, not the upstream's.

Regression (lifecycle v2, defect 4): a client that stopped reading blocked ``send``, reads
from the upstream stopped, and the idle time-out then ended the stream as ``timeout``
("upstream timed out waiting for the next chunk"), counted as an upstream failure. Now one
send blocked for ``client_write_timeout_seconds`` ends the stream as ``client_too_slow``:
upstream aborted, everything freed, and the gateway's memory stays flat meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psutil

from tests.helpers import Gateway, Sim, chat_body, new_request_id, open_raw_stream, post_chat

WRITE_TIMEOUT_SECONDS = 1.0
MIB = 1024 * 1024


async def test_a_client_that_stops_reading_is_ended_as_too_slow_with_memory_bounded(
    start_gateway: Any, sim: Sim
) -> None:
    gw: Gateway = start_gateway(
        env={
            "TOKENRELAY_CLIENT_WRITE_TIMEOUT_SECONDS": str(WRITE_TIMEOUT_SECONDS),
            # Long enough that only the slow-client policy can end the stream in time.
            "TOKENRELAY_KEEPALIVE_SECONDS": "0.2",
        }
    )
    for _ in range(3):  # warm up: first-use allocations are not the stream's
        assert (await post_chat(gw.url, "fast")).status_code == 200
    # Nor is the tokenizer (40 MiB, loaded the first time usage is estimated, as this stream's is).
    assert (await post_chat(gw.url, "nousage")).status_code == 200
    process = psutil.Process(gw.process.pid)
    rss_before = process.memory_info().rss

    rid = new_request_id()
    # A 4 KiB receive buffer that is never read again after the first delta: 200,000 tokens
    # (over 4 MB of events) cannot fit in the kernel's buffers on either side.
    stream = await open_raw_stream(gw.url, "/chat", chat_body("huge"), rid, receive_buffer=4096)
    await stream.read_until(b'"type":"delta"')
    stopped_reading_at = time.monotonic()

    peak = rss_before
    rows: list[dict[str, Any]] = []
    deadline = stopped_reading_at + WRITE_TIMEOUT_SECONDS + 10
    while not rows and time.monotonic() < deadline:
        peak = max(peak, process.memory_info().rss)
        rows = await gw.ledger_rows(rid, timeout=0.05, settle=0)
        await asyncio.sleep(0.05)
    ended_after = time.monotonic() - stopped_reading_at
    client_port = stream.writer.get_extra_info("sockname")[1]
    held = [c for c in process.net_connections() if c.raddr and c.raddr.port == client_port]
    stream.close()

    assert [r["status"] for r in rows] == ["client_too_slow"], rows
    assert ended_after < WRITE_TIMEOUT_SECONDS + 5
    row = (await gw.ledger_rows(rid))[0]
    assert row["error_code"] is None and row["completion_tokens"] > 0
    upstream = await sim.wait_ended(rid)
    assert upstream["end"] == "client_closed", "the upstream is aborted"
    assert upstream["chunks_sent"] < 200_000
    assert peak - rss_before < 5 * MIB, f"RSS grew {(peak - rss_before) / MIB:.1f} MiB"
    assert held == [], "the connection is cut, not left waiting for a client that does not read"
    log = gw.log_text()
    assert "upstream timed out" not in log and "without completing response" not in log
    stream_end = next(line for line in log.splitlines() if rid in line and "stream_end" in line)
    assert '"upstream_failure": null' in stream_end.replace('":null', '": null')
