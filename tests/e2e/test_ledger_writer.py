"""The ledger writer against real databases: batching, idempotency, and cancellation."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tokenrelay.config import LedgerSettings
from tokenrelay.ledger.db import create_engine, prepare_schema
from tokenrelay.ledger.spool import Spool
from tokenrelay.ledger.store import LedgerStore
from tokenrelay.ledger.tokens import TokenCounter
from tokenrelay.ledger.writer import LedgerWriter
from tokenrelay.observability.metrics import NoMetrics
from tokenrelay.record import StreamRecord, StreamStatus


@pytest.fixture(params=["sqlite", "postgres"])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
    else:
        url = request.getfixturevalue("pg_database_url")
    engine = create_engine(LedgerSettings(database_url=url))
    await prepare_schema(engine, migrate_if_empty=True)
    async with engine.begin() as connection:
        await connection.execute(text("DELETE FROM usage_record"))
    yield engine
    await engine.dispose()


def finished_record(request_id: str) -> StreamRecord:
    now = datetime.now(UTC)
    return StreamRecord(
        stream_id=uuid.uuid4().hex,
        request_id=request_id,
        model="m",
        upstream_model="u",
        messages=[{"role": "user", "content": "hello"}],
        tokenizer_encoding="cl100k_base",
        started_at=now,
        started_mono=0.0,
        finished_at=now,
        finished_mono=0.5,
        status=StreamStatus.COMPLETED,
        completion_parts=["hi"],
    )


async def make_writer(engine: AsyncEngine, spool_dir: Path, **overrides: float) -> LedgerWriter:
    counter = TokenCounter()
    await counter.load([])
    settings = LedgerSettings(database_url=str(engine.url), spool_dir=spool_dir)
    store = LedgerStore(
        engine=engine, spool=Spool(spool_dir, min_free_bytes=0), settings=settings, events=NoMetrics()
    )
    await store.start()
    writer = LedgerWriter(
        store=store,
        counter=counter,
        batch_max_rows=int(overrides.get("rows", 200)),
        batch_max_seconds=overrides.get("seconds", 0.05),
    )
    await writer.start()
    stores[writer] = store
    return writer


stores: dict[LedgerWriter, LedgerStore] = {}


async def close(writer: LedgerWriter) -> LedgerStore:
    await writer.close()
    store = stores.pop(writer)
    await store.close()
    return store


async def count(engine: AsyncEngine, where: str = "1=1") -> int:
    async with engine.connect() as connection:
        return int(
            (await connection.execute(text(f"SELECT count(*) FROM usage_record WHERE {where}"))).scalar_one()
        )


async def test_close_writes_everything_submitted_in_batches(engine: AsyncEngine, tmp_path: Path) -> None:
    writer = await make_writer(engine, tmp_path, rows=50, seconds=1.0)
    for i in range(175):
        writer.submit(finished_record(f"r{i}"))
    store = await close(writer)
    assert await count(engine) == 175
    assert store.rows_written == 175 and store.rows_spooled == 0 and writer.batches_failed == 0


async def test_replayed_record_is_written_once(engine: AsyncEngine, tmp_path: Path) -> None:
    writer = await make_writer(engine, tmp_path)
    record = finished_record("dup")
    writer.submit(record)
    writer.submit(record)
    await close(writer)
    writer = await make_writer(engine, tmp_path)
    writer.submit(record)
    await close(writer)
    assert await count(engine, "request_id = 'dup'") == 1


async def test_cancelled_writer_still_commits_the_batch_in_flight(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    writer = await make_writer(engine, tmp_path, seconds=0.01)
    writer.submit(finished_record("in-flight"))
    # Let the writer take the batch and start writing, then cancel it mid-write.
    async with asyncio.timeout(5):
        while writer._batch_task is None:
            await asyncio.sleep(0)  # one loop turn at a time, so the batch is caught in flight
    assert writer._batch_task is not None, "the batch never started"
    assert writer._task is not None
    writer._task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await writer._task
    await stores.pop(writer).close()
    assert await count(engine, "request_id = 'in-flight'") == 1
    if engine.dialect.name == "postgresql":
        async with engine.connect() as connection:
            stuck = await connection.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND state = 'idle in transaction' AND pid <> pg_backend_pid()"
                )
            )
            assert stuck.scalar_one() == 0


async def test_two_replicas_writing_the_same_streams_at_once_leave_one_row_each(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """The replica_lost race: a survivor's reaper and the (only paused) owner both write a row
    for the same streams at the same moment, each through its own engine and writer."""
    other_engine = create_engine(LedgerSettings(database_url=str(engine.url)))
    owner = await make_writer(engine, tmp_path / "spool-owner", seconds=0.01)
    reaper = await make_writer(other_engine, tmp_path / "spool-reaper", seconds=0.01)
    try:
        for _round in range(5):
            records = [finished_record(f"race-{uuid.uuid4().hex}") for _ in range(40)]
            for record in records:
                twin = finished_record(record.request_id)
                twin.stream_id = record.stream_id
                twin.status = StreamStatus.REPLICA_LOST
                owner.submit(record)
                reaper.submit(twin)
            await asyncio.sleep(0.05)
        await asyncio.gather(close(owner), close(reaper))
        assert await count(engine, "request_id LIKE 'race-%'") == 200
        async with engine.connect() as connection:
            duplicated = (
                await connection.execute(
                    text(
                        "SELECT count(*) FROM (SELECT stream_id FROM usage_record"
                        " GROUP BY stream_id HAVING count(*) > 1) d"
                    )
                )
            ).scalar_one()
        assert duplicated == 0
    finally:
        await other_engine.dispose()
