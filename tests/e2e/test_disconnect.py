"""A client that leaves is noticed at once, in every phase, and the upstream is closed.

The abort is measured from the upstream's side: the simulator records (``time.monotonic()``,
system-wide on Linux) when its client connection closed; the test records when it closed
its own socket.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest

from tests.helpers import Gateway, Sim, chat_body, new_request_id, open_raw_stream

ABORT_BUDGET_SECONDS = 0.1


@pytest.mark.parametrize(
    ("model", "read_marker", "phase"),
    [
        # Upstream still generating: tokens are flowing when the client leaves.
        ("slow", b'"type":"delta"', "mid_stream"),
        # Upstream stalled for 30 s after 3 tokens: nothing flows, polling would never notice.
        ("stall", b'"text":" from"', "mid_stream"),
        # Upstream stalled before its first token.
        ("stall-first", None, "before_first_token"),
        # Upstream has not even sent its response headers.
        ("headers-slow", None, "before_first_token"),
    ],
)
async def test_client_disconnect_closes_upstream_within_100ms(
    gateway: Gateway, sim: Sim, model: str, read_marker: bytes | None, phase: str
) -> None:
    rid = new_request_id()
    stream = await open_raw_stream(gateway.url, "/chat", chat_body(model), rid)
    if read_marker is not None:
        await stream.read_until(read_marker)
    else:
        # Wait until the upstream has the request, so we abort a live upstream call.
        await sim.wait_request(rid)
        await asyncio.sleep(0.1)
    closed_at = stream.close()

    upstream = await sim.wait_ended(rid, timeout=5)
    assert upstream["end"] == "client_closed", "the upstream call must be aborted, not left to finish"
    abort_seconds = upstream["ended_at"] - closed_at
    assert abort_seconds < ABORT_BUDGET_SECONDS, (
        f"upstream closed {abort_seconds * 1000:.1f} ms after the client"
    )

    rows = await gateway.ledger_rows(rid)
    assert len(rows) == 1
    assert rows[0]["status"] == "client_disconnected"
    assert rows[0]["disconnect_phase"] == phase
    assert rows[0]["usage_source"] == "estimated"
    assert rows[0]["prompt_tokens"] > 0


async def test_disconnect_on_openai_endpoint_aborts_too(gateway: Gateway, sim: Sim) -> None:
    rid = new_request_id()
    body = orjson.dumps({"model": "stall", "stream": True, "messages": [{"role": "user", "content": "x"}]})
    stream = await open_raw_stream(gateway.url, "/v1/chat/completions", body, rid)
    await stream.read_until(b'"content":" from"')
    closed_at = stream.close()
    upstream = await sim.wait_ended(rid)
    assert upstream["end"] == "client_closed"
    assert upstream["ended_at"] - closed_at < ABORT_BUDGET_SECONDS
    rows = await gateway.ledger_rows(rid)
    assert [r["status"] for r in rows] == ["client_disconnected"]
    assert rows[0]["completion_tokens"] == 3  # " tokens stream from" arrived before the stall... counted
