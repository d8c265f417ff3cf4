"""The ledger loses nothing: database outages, crashes, refused rows, and a broken spool.

PostgreSQL is reached through a TCP proxy the test cuts and restores, so an outage is real
(refused connections, dropped sessions) without stopping the shared server.
"""

from __future__ import annotations

import asyncio
import fcntl
import signal
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.helpers import Gateway, TcpProxy, chat_body, new_request_id, parse_events, via_proxy, wait_until

FAST_RETRY = {
    "TOKENRELAY_LEDGER__RETRY_INITIAL_SECONDS": "0.1",
    "TOKENRELAY_LEDGER__RETRY_MAX_SECONDS": "0.5",
    "TOKENRELAY_LEDGER__WRITE_TIMEOUT_SECONDS": "2",
    "TOKENRELAY_LEDGER__CONNECT_TIMEOUT_SECONDS": "1",
}


async def run_streams(gateway: Gateway, count: int, model: str = "fast") -> list[str]:
    """``count`` streams that must all complete normally; returns their request ids."""
    rids = [new_request_id() for _ in range(count)]
    async with httpx.AsyncClient(timeout=20) as client:

        async def one(rid: str) -> None:
            response = await client.post(
                f"{gateway.url}/chat", content=chat_body(model), headers={"X-Request-ID": rid}
            )
            assert response.status_code == 200
            assert parse_events(response.content)[-1]["type"] == "done"

        await asyncio.gather(*(one(rid) for rid in rids))
    return rids


def spooled_lines(spool_dir: Path) -> int:
    return sum(len(p.read_bytes().splitlines()) for p in spool_dir.glob("spool-*.jsonl"))


async def wait_for(predicate: Any, timeout: float = 15.0) -> None:
    await wait_until(predicate, timeout=timeout, interval=0.05)


async def assert_one_row_each(gateway: Gateway, rids: list[str], status: str = "completed") -> None:
    for rid in rids:
        rows = await gateway.ledger_rows(rid, timeout=15, settle=0)
        assert [r["status"] for r in rows] == [status], rid


async def test_outage_spools_rows_and_replays_them_when_the_database_returns(
    start_gateway: Any, pg_database_url: str, pg_proxy: TcpProxy, tmp_path: Path
) -> None:
    spool_dir = tmp_path / "spool"
    gw: Gateway = start_gateway(
        env={**FAST_RETRY, "TOKENRELAY_LEDGER__SPOOL_DIR": str(spool_dir)},
        database_url=via_proxy(pg_database_url, pg_proxy),
    )
    gw.database_url = pg_database_url  # the test reads the ledger directly
    before = await run_streams(gw, 5)
    await assert_one_row_each(gw, before)

    pg_proxy.cut()
    during = await run_streams(gw, 30)  # every stream completes while the database is away
    await wait_for(lambda: spooled_lines(spool_dir) >= 30)
    ready = httpx.get(f"{gw.url}/readyz")
    assert ready.status_code == 200, "a gateway that spools still serves"
    assert ready.json()["status"] == "degraded" and ready.json()["ledger"]["state"] == "degraded"

    pg_proxy.restore()
    after = await run_streams(gw, 5)
    await assert_one_row_each(gw, before + during + after)
    await wait_for(lambda: spooled_lines(spool_dir) == 0)
    await wait_for(lambda: httpx.get(f"{gw.url}/readyz").json()["status"] == "ready")
    assert "ledger database back; spool replayed" in gw.log_text()


async def test_kill_9_with_rows_spooled_loses_and_duplicates_nothing(
    start_gateway: Any, pg_database_url: str, pg_proxy: TcpProxy, tmp_path: Path
) -> None:
    spool_dir = tmp_path / "spool"
    env = {**FAST_RETRY, "TOKENRELAY_LEDGER__SPOOL_DIR": str(spool_dir)}
    pg_proxy.cut()  # down from the start: the gateway must still start and serve
    first: Gateway = start_gateway(env=env, database_url=via_proxy(pg_database_url, pg_proxy))
    rids = await run_streams(first, 20)
    await wait_for(lambda: spooled_lines(spool_dir) >= 20)
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(10)

    pg_proxy.restore()
    second: Gateway = start_gateway(env=env, database_url=via_proxy(pg_database_url, pg_proxy))
    second.database_url = pg_database_url
    await assert_one_row_each(second, rids)
    await wait_for(lambda: spooled_lines(spool_dir) == 0)
    # Replaying the same rows again (as after a crash mid-replay) adds nothing.
    assert "spool segment replayed" in second.log_text()


async def test_sigterm_during_outage_leaves_rows_in_the_spool_for_the_next_start(
    start_gateway: Any, pg_database_url: str, pg_proxy: TcpProxy, tmp_path: Path
) -> None:
    spool_dir = tmp_path / "spool"
    env = {
        **FAST_RETRY,
        "TOKENRELAY_LEDGER__SPOOL_DIR": str(spool_dir),
        "TOKENRELAY_LEDGER__SHUTDOWN_FLUSH_SECONDS": "1",
    }
    first: Gateway = start_gateway(env=env, database_url=via_proxy(pg_database_url, pg_proxy))
    pg_proxy.cut()
    rids = await run_streams(first, 10)
    assert await asyncio.to_thread(first.stop) == 0
    assert spooled_lines(spool_dir) == 10, "graceful shutdown keeps what it could not write"
    left = [orjson.loads(line) for line in first.log_text().splitlines() if "left for the next start" in line]
    assert [line["rows"] for line in left] == [10], "the shutdown line counts what is really left"

    pg_proxy.restore()
    second: Gateway = start_gateway(env=env, database_url=via_proxy(pg_database_url, pg_proxy))
    second.database_url = pg_database_url
    await assert_one_row_each(second, rids)
    assert await asyncio.to_thread(second.stop) == 0
    assert spooled_lines(spool_dir) == 0


async def test_sigterm_flushes_the_spool_when_the_database_is_back(
    start_gateway: Any, pg_database_url: str, pg_proxy: TcpProxy, tmp_path: Path
) -> None:
    spool_dir = tmp_path / "spool"
    env = {
        **FAST_RETRY,
        "TOKENRELAY_LEDGER__SPOOL_DIR": str(spool_dir),
        # The replayer would wait a minute; only the shutdown flush can write the rows in time.
        "TOKENRELAY_LEDGER__RETRY_INITIAL_SECONDS": "60",
        "TOKENRELAY_LEDGER__RETRY_MAX_SECONDS": "60",
    }
    gw: Gateway = start_gateway(env=env, database_url=via_proxy(pg_database_url, pg_proxy))
    gw.database_url = pg_database_url
    pg_proxy.cut()
    rids = await run_streams(gw, 5)
    await wait_for(lambda: spooled_lines(spool_dir) >= 5)
    await asyncio.sleep(0.5)  # let the first replay attempt fail and back off for a minute
    pg_proxy.restore()
    assert await asyncio.to_thread(gw.stop) == 0
    assert spooled_lines(spool_dir) == 0
    await assert_one_row_each(gw, rids)


async def test_a_row_the_database_refuses_is_dead_lettered_and_blocks_nothing(
    pg_gateway: Gateway,
) -> None:
    bad, good = new_request_id(), new_request_id()
    async with httpx.AsyncClient(timeout=15) as client:
        responses = await asyncio.gather(
            client.post(
                f"{pg_gateway.url}/chat",
                json={"model": "toolong", "messages": [{"role": "user", "content": "x"}]},
                headers={"X-Request-ID": bad},
            ),
            client.post(
                f"{pg_gateway.url}/chat",
                json={"model": "fast", "messages": [{"role": "user", "content": "x"}]},
                headers={"X-Request-ID": good},
            ),
        )
    assert [r.status_code for r in responses] == [200, 200]
    assert [r["status"] for r in await pg_gateway.ledger_rows(good)] == ["completed"]
    assert await pg_gateway.ledger_rows(bad, timeout=1) == []
    spool_dir = next(Path(pg_gateway.log_path.parent).glob("spool-*"))
    dead = [orjson.loads(line) for line in (spool_dir / "dead-letter.jsonl").read_bytes().splitlines()]
    assert [d["row"]["request_id"] for d in dead] == [bad]
    assert "too long" in dead[0]["reason"]
    refused = [line for line in pg_gateway.log_text().splitlines() if bad in line and "refused" in line]
    assert len(refused) == 1


@pytest.mark.parametrize("problem", ["unwritable", "full"])
async def test_a_broken_spool_is_reported_at_start_up(
    start_gateway: Any, tmp_path: Path, problem: str
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    env = (
        {"TOKENRELAY_LEDGER__SPOOL_DIR": str(blocker / "spool")}
        if problem == "unwritable"
        else {
            "TOKENRELAY_LEDGER__SPOOL_DIR": str(tmp_path / "spool"),
            "TOKENRELAY_LEDGER__SPOOL_MIN_FREE_BYTES": str(10**18),
        }
    )
    gw: Gateway = start_gateway(env=env)
    ready = httpx.get(f"{gw.url}/readyz")
    assert ready.status_code == 503
    assert ready.json()["ledger"]["state"] == "failed" and ready.json()["ledger"]["spool_error"]
    assert "ledger spool unavailable" in gw.log_text()
    rids = await run_streams(gw, 2)  # the database is fine: streams and rows go on
    await assert_one_row_each(gw, rids)


async def test_rows_spooled_during_an_outage_arrive_after_it_with_no_more_traffic(
    start_gateway: Any, pg_database_url: str, pg_proxy: TcpProxy, tmp_path: Path
) -> None:
    """Regression (lifecycle v2, defect 9): the replayer cleared its flag before trying the
    database and, after a failure, waited on that cleared flag, so rows spooled during an
    outage stayed in the spool (and /readyz degraded) until another row was spooled."""
    spool_dir = tmp_path / "spool"
    gw: Gateway = start_gateway(
        env={**FAST_RETRY, "TOKENRELAY_LEDGER__SPOOL_DIR": str(spool_dir)},
        database_url=via_proxy(pg_database_url, pg_proxy),
    )
    gw.database_url = pg_database_url
    pg_proxy.cut()
    during = await run_streams(gw, 30)
    await wait_for(lambda: spooled_lines(spool_dir) >= 30)
    await asyncio.sleep(1.0)  # several replay attempts fail meanwhile
    pg_proxy.restore()
    # No traffic from here on: the replayer must retry on its own schedule.
    await assert_one_row_each(gw, during)
    await wait_for(lambda: spooled_lines(spool_dir) == 0)
    await wait_for(lambda: gw.readyz()["status"] == "ready")


# A row as the spool held it before routing (no deployment, attempts or cache columns): it must
# still replay, as one upstream tried once.
SPOOLED_ROW = {
    "api_key_id": None,
    "model": "fast",
    "upstream_model": "sim?tokens=20",
    "status": "completed",
    "error_code": None,
    "disconnect_phase": None,
    "finish_reason": "stop",
    "prompt_tokens": 9,
    "completion_tokens": 20,
    "usage_source": "upstream",
    "chunk_count": 22,
    "ttft_ms": 1.5,
    "duration_ms": 3.0,
    "started_at": "2026-11-30T10:00:00+00:00",
    "finished_at": "2026-11-30T10:00:01+00:00",
    "cost_usd": None,
}


async def test_a_segment_locked_at_start_up_is_replayed_once_its_lock_is_released(
    start_gateway: Any, pg_database_url: str, tmp_path: Path
) -> None:
    """Regression (lifecycle v2, defect 9): a spool segment still locked by another process when
    a gateway started (an old replica finishing its shutdown flush) was skipped and never
    tried again, while /readyz said ``ok`` with rows spooled."""
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    rids = [new_request_id() for _ in range(5)]
    segment = spool_dir / "spool-1-99999.jsonl"
    segment.write_bytes(
        b"".join(
            orjson.dumps({**SPOOLED_ROW, "stream_id": uuid.uuid4().hex, "request_id": rid}) + b"\n"
            for rid in rids
        )
    )
    with segment.open("rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)  # the "old replica" still holds it
        gw: Gateway = start_gateway(
            env={**FAST_RETRY, "TOKENRELAY_LEDGER__SPOOL_DIR": str(spool_dir)}, database_url=pg_database_url
        )
        ledger = gw.readyz()["ledger"]
        assert ledger["spooled_rows"] == 5 and ledger["state"] == "degraded", ledger
        assert await gw.ledger_rows(rids[0], timeout=1) == []
    # The lock is released (the old replica exited without writing them).
    await assert_one_row_each(gw, rids)
    (row,) = await gw.ledger_rows(rids[0], settle=0)
    assert (row["deployment"], row["attempts"], row["cache_read_tokens"]) == (None, 1, None)
    await wait_for(lambda: not segment.exists())
    await wait_for(lambda: gw.readyz()["status"] == "ready")
