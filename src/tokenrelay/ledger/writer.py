"""Writing usage rows after streams end, where no request's cancellation can reach.

Invariants (each one is a test):

* ``submit`` never blocks and never awaits: the relay calls it from its ``finally`` even while
  its task is being cancelled, so handing over a record cannot be interrupted.
* Rows are written by the writer's own task, never the request's; the store (``store.py``)
  writes each batch in a fresh session inside ``session.begin()``, which commits or rolls back
  on every path: no connection is ever left idle in transaction by a cancelled request.
* Each batch write is its own task, referenced by the writer and awaited through
  ``asyncio.shield``: a cancelled writer (hard shutdown) still lets the batch finish its
  commit before the cancellation goes on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from sqlalchemy import Insert
from sqlalchemy.dialects import postgresql, sqlite

from tokenrelay.ledger.models import UsageRecord
from tokenrelay.ledger.tokens import TokenCounter
from tokenrelay.record import StreamRecord

log = logging.getLogger(__name__)


def to_row(record: StreamRecord) -> dict[str, Any]:
    """The ``usage_record`` row for a finished stream with its usage filled in."""
    assert record.status is not None and record.finished_at is not None
    return {
        "stream_id": record.stream_id,
        "request_id": record.request_id,
        "api_key_id": record.api_key_id,
        "model": record.model,
        "upstream_model": record.upstream_model,
        "status": str(record.status),
        "error_code": record.error_code,
        "disconnect_phase": str(record.disconnect_phase) if record.disconnect_phase else None,
        "finish_reason": record.finish_reason,
        "prompt_tokens": record.prompt_tokens or 0,
        "completion_tokens": record.completion_tokens or 0,
        "usage_source": str(record.usage_source),
        "chunk_count": record.chunk_count,
        "ttft_ms": record.ttft_ms,
        "duration_ms": record.duration_ms or 0.0,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "cost_usd": record.cost_usd,
        "deployment": record.deployment,
        "attempts": record.attempts,
        "cache_read_tokens": record.cache_read_tokens,
        "cache_creation_tokens": record.cache_creation_tokens,
    }


def insert_ignoring_duplicates(dialect: str) -> Insert:
    """``INSERT ... ON CONFLICT (stream_id) DO NOTHING`` for SQLite and PostgreSQL."""
    if dialect == "postgresql":
        return postgresql.insert(UsageRecord).on_conflict_do_nothing(index_elements=["stream_id"])
    return sqlite.insert(UsageRecord).on_conflict_do_nothing(index_elements=["stream_id"])


class RowStore(Protocol):
    """Where finished rows go (``store.LedgerStore``)."""

    async def store(self, rows: list[dict[str, Any]]) -> None:
        """Keep the rows; never raises."""


class LedgerWriter:
    """Takes finished streams, estimates missing usage, reports them, and writes them in batches.

    With ``store=None`` (ledger disabled) it still estimates and calls ``on_finished``.
    """

    def __init__(
        self,
        *,
        store: RowStore | None,
        counter: TokenCounter,
        batch_max_rows: int,
        batch_max_seconds: float,
        on_finished: Callable[[StreamRecord], None] = lambda _record: None,
        on_usage: Callable[[list[StreamRecord]], Awaitable[None]] | None = None,
    ) -> None:
        self._store = store
        self._counter = counter
        self._on_finished = on_finished
        # Spending per API key (budgets): told of every batch once its usage is known.
        self.on_usage = on_usage
        # Told of every batch once its rows are stored (database or spool): the cluster then
        # drops the streams' leases (cluster/leases.py).
        self.on_stored: Callable[[list[StreamRecord]], Awaitable[None]] | None = None
        self._batch_max_rows = batch_max_rows
        self._batch_max_seconds = batch_max_seconds
        self._queue: asyncio.Queue[StreamRecord | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._batch_task: asyncio.Task[None] | None = None
        self.batches_failed = 0

    def submit(self, record: StreamRecord) -> None:
        """Hand over a finished stream's record. Never blocks, never awaits."""
        self._queue.put_nowait(record)

    @property
    def pending(self) -> int:
        """Records submitted and not yet written."""
        return self._queue.qsize()

    async def start(self) -> None:
        """Start the writer task."""
        self._task = asyncio.create_task(self._run(), name="ledger-writer")

    async def close(self) -> None:
        """Write everything submitted so far, then stop."""
        if self._task is None:
            return
        # The sentinel goes behind every record already submitted: all of them are written.
        self._queue.put_nowait(None)
        await self._task
        self._task = None

    async def _run(self) -> None:
        closing = False
        while not closing:
            first = await self._queue.get()
            if first is None:
                return
            batch = [first]
            if self._queue.qsize() < self._batch_max_rows - 1:
                # One sleep per batch, not a timed wait per record: rows arriving meanwhile join.
                await asyncio.sleep(self._batch_max_seconds)
            while len(batch) < self._batch_max_rows and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    closing = True
                    break
                batch.append(item)
            await self._write_shielded(batch)

    async def _write_shielded(self, batch: list[StreamRecord]) -> None:
        self._batch_task = asyncio.create_task(self._write(batch), name="ledger-batch")
        try:
            await asyncio.shield(self._batch_task)
        except asyncio.CancelledError:
            # Let the commit (or rollback) finish before the writer stops; then stop.
            await asyncio.wait({self._batch_task})
            raise
        finally:
            self._batch_task = None

    def _estimate_all(self, records: list[StreamRecord]) -> None:
        for record in records:
            self._counter.estimate(record)

    async def _write(self, batch: list[StreamRecord]) -> None:
        try:
            unestimated = [record for record in batch if record.usage_source is None]
            if unestimated:
                await asyncio.to_thread(self._estimate_all, unestimated)
            for record in batch:
                self._on_finished(record)
            if self.on_usage is not None:
                try:
                    await self.on_usage(batch)
                except Exception:
                    log.exception("counting spending failed")
            if self._store is not None:
                await self._store.store([to_row(record) for record in batch])
            if self.on_stored is not None:
                try:
                    await self.on_stored(batch)
                except Exception as exc:
                    # The leases stay; a survivor's sweep would only find rows already written.
                    log.warning("dropping stream leases failed", extra={"error": repr(exc)})
        except Exception:
            # A bug in our own code (the store never raises): keep the writer alive, say what was hit.
            self.batches_failed += 1
            log.exception(
                "ledger batch failed", extra={"request_ids": [record.request_id for record in batch]}
            )
