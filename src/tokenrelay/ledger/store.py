"""Putting rows in the database, or in the spool while the database is away.

Invariants (each one is a test):

* A batch goes to the database in one transaction (``session.begin()``: commit or rollback on
  every path) with insert-or-ignore on ``stream_id``, under ``write_timeout_seconds``.
* If the database cannot be reached, the batch is appended to the spool (fsynced) and every
  later batch goes straight there: no batch waits on a dead database twice, so the writer keeps
  up and streams never notice.
* A background replayer, owned by the store, retries on its own schedule (exponential backoff)
  for as long as rows are pending, traffic or not; it empties the spool into the database and
  only then sends new batches to the database again. Segments another live process holds
  (its open segment, or an old replica's shutdown flush) are looked at again until they are
  gone; while any row waits, ``/readyz`` says ``degraded``.
* A row the database refuses for what it contains (data or integrity error) is isolated by
  retrying the batch row by row, logged with its request id and kept in the dead-letter file;
  the other rows of its batch are written.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from sqlalchemy import Insert
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from tokenrelay.config import LedgerSettings
from tokenrelay.ledger.db import prepare_schema
from tokenrelay.ledger.spool import ClaimedSegment, Spool, SpoolUnavailable
from tokenrelay.ledger.writer import insert_ignoring_duplicates

log = logging.getLogger(__name__)

_SPOOL_CHECK_INTERVAL_SECONDS = 30.0


# SQLSTATE classes 22 (data exception) and 23 (integrity constraint violation).
_ROW_REJECTED_SQLSTATE_CLASSES = ("22", "23")


def rejects_the_row(exc: BaseException) -> bool:
    """The database refused the data itself (a bug upstream of the ledger), not an outage."""
    if isinstance(exc, sa_exc.DataError | sa_exc.IntegrityError):
        return True
    # SQLAlchemy's asyncpg adapter raises a plain DBAPIError for data exceptions; the SQLSTATE tells.
    sqlstate = getattr(getattr(exc, "orig", None), "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate[:2] in _ROW_REJECTED_SQLSTATE_CLASSES


class LedgerEvents(Protocol):
    """Who hears about the spool and lost rows (the metrics)."""

    def spooled_rows(self, rows: int) -> None: ...

    def rows_lost(self, rows: int) -> None: ...

    def row_dead_lettered(self) -> None: ...


class LedgerStore:
    """The database with the spool as its fallback, and the replayer between them."""

    def __init__(
        self, *, engine: AsyncEngine, spool: Spool, settings: LedgerSettings, events: LedgerEvents
    ) -> None:
        self._events = events
        self._engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._insert: Insert = insert_ignoring_duplicates(engine.dialect.name)
        self._spool = spool
        self._settings = settings
        self._schema_ready = False
        self._db_available = False
        self._replay_needed = asyncio.Event()
        self._replayer: asyncio.Task[None] | None = None
        self.spool_error: str | None = None
        self._pending_spooled_rows = 0
        self.rows_written = 0
        self.rows_spooled = 0
        self.rows_dead_lettered = 0
        self.write_failures = 0

    # -- life -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Check the spool, try the database, and start the replayer (which also replays a crash's spool)."""
        await self._check_spool()
        self.pending_spooled_rows = await asyncio.to_thread(self._spool.pending_rows)
        try:
            await self._ensure_schema()
            self._db_available = self.pending_spooled_rows == 0
        except Exception as exc:
            if isinstance(exc, RuntimeError):
                raise  # an outdated schema is a deployment error, not an outage
            log.error("ledger database unreachable at start-up; spooling", extra={"error": repr(exc)})
        if self.pending_spooled_rows:
            log.info("spooled rows found; replaying", extra={"rows": self.pending_spooled_rows})
            self._replay_needed.set()
        self._replayer = asyncio.create_task(self._replay_loop(), name="ledger-replayer")

    async def close(self) -> None:
        """Stop the replayer; give the spool one last bounded chance to reach the database."""
        if self._replayer is not None:
            self._replayer.cancel()
            await asyncio.gather(self._replayer, return_exceptions=True)
            self._replayer = None
        error = None
        if self.pending_spooled_rows:
            try:
                async with asyncio.timeout(self._settings.shutdown_flush_seconds):
                    await self._replay()
            except Exception as exc:
                error = repr(exc)
        await asyncio.to_thread(self._spool.close)
        # Counted on disk after the last attempt: what a half-done replay wrote is not left.
        left = await asyncio.to_thread(self._spool.pending_rows)
        if left:
            log.warning("spooled rows left for the next start", extra={"rows": left, "error": error})

    @property
    def pending_spooled_rows(self) -> int:
        """Rows in the spool, waiting for the database."""
        return self._pending_spooled_rows

    @pending_spooled_rows.setter
    def pending_spooled_rows(self, rows: int) -> None:
        self._pending_spooled_rows = rows
        self._events.spooled_rows(rows)

    def health(self) -> dict[str, Any]:
        """What /readyz reports about the ledger."""
        if self.spool_error is not None:
            state = "failed"
        elif not self._db_available or self.pending_spooled_rows:
            state = "degraded"
        else:
            state = "ok"
        return {"state": state, "spooled_rows": self.pending_spooled_rows, "spool_error": self.spool_error}

    # -- storing --------------------------------------------------------------------------

    async def store(self, rows: list[dict[str, Any]]) -> None:
        """Write rows to the database, or spool them; never raises."""
        if self._db_available:
            try:
                await self._insert_batch(rows)
                return
            except Exception as exc:
                if not rejects_the_row(exc):
                    self._lost_database(exc)
                    await self._spool_rows(rows)
                    return
                rows = await self._insert_row_by_row(rows)
                if not rows:
                    return
        await self._spool_rows(rows)

    async def _insert_batch(self, rows: list[dict[str, Any]]) -> None:
        async with (
            asyncio.timeout(self._settings.write_timeout_seconds),
            self._sessions() as session,
            session.begin(),
        ):
            await session.execute(self._insert, rows)
        self.rows_written += len(rows)

    async def _insert_row_by_row(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Isolate refused rows; returns the rows not written because the database went away."""
        for index, row in enumerate(rows):
            try:
                await self._insert_batch([row])
            except Exception as exc:
                if not rejects_the_row(exc):
                    self._lost_database(exc)
                    return rows[index:]
                self.rows_dead_lettered += 1
                self._events.row_dead_lettered()
                log.error(
                    "ledger row refused by the database; kept in the dead-letter file",
                    extra={
                        "request_id": row.get("request_id"),
                        "stream_id": row.get("stream_id"),
                        "error": str(getattr(exc, "orig", exc))[:500],
                    },
                )
                await asyncio.to_thread(self._spool.dead_letter, row, str(getattr(exc, "orig", exc))[:2000])
        return []

    async def _spool_rows(self, rows: list[dict[str, Any]]) -> None:
        try:
            await asyncio.to_thread(self._spool.append, rows)
        except OSError as exc:
            # Nowhere left to keep them: say so loudly, with every request id.
            self.write_failures += len(rows)
            self._events.rows_lost(len(rows))
            self.spool_error = f"spool append failed: {exc}"
            log.error(
                "ledger rows lost: database unreachable and spool unwritable",
                extra={"request_ids": [row.get("request_id") for row in rows], "error": repr(exc)},
            )
            return
        self.rows_spooled += len(rows)
        self.pending_spooled_rows += len(rows)
        self._replay_needed.set()

    def _lost_database(self, exc: BaseException) -> None:
        if self._db_available:
            log.error("ledger database unreachable; spooling rows", extra={"error": repr(exc)})
        self._db_available = False
        self._replay_needed.set()

    # -- replaying ------------------------------------------------------------------------

    async def _replay_loop(self) -> None:
        delay = self._settings.retry_initial_seconds
        while True:
            if not self.pending_spooled_rows and self._db_available:
                # Nothing waits: sleep until a batch is spooled, checking the spool now and then.
                try:
                    async with asyncio.timeout(_SPOOL_CHECK_INTERVAL_SECONDS):
                        await self._replay_needed.wait()
                except TimeoutError:
                    await self._check_spool()
                    self.pending_spooled_rows = await asyncio.to_thread(self._spool.pending_rows)
                    continue
            self._replay_needed.clear()  # a batch spooled from here on sets it again
            try:
                left = await self._replay()
            except Exception as exc:
                log.info("ledger database still unreachable", extra={"retry_in_s": delay, "error": repr(exc)})
            else:
                if not left or self._replay_needed.is_set():  # done, or our own new rows come next
                    delay = self._settings.retry_initial_seconds
                    continue
                log.info("spooled rows held by another process; looking again", extra={"rows": left})
            # Retry on our own schedule, traffic or not; a newly spooled batch does not cut it short
            # (the database is what we wait for, not the batch).
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._settings.retry_max_seconds)

    async def _replay(self) -> int:
        """Move every spooled row we can claim into the database, then take new batches directly
        again; returns the rows still waiting in segments other processes hold."""
        await self._ensure_schema()
        # New batches keep going to the spool until it is empty, so nothing overtakes a replay
        # that fails half-way; rotating makes our own open segment replayable.
        await asyncio.to_thread(self._spool.rotate)
        for path in await asyncio.to_thread(self._spool.segments):
            claimed = await asyncio.to_thread(self._spool.claim, path)
            if claimed is None:
                continue  # another live process is writing or replaying it
            await self._replay_segment(claimed)
        self.pending_spooled_rows = await asyncio.to_thread(self._spool.pending_rows)
        # Decided without an await in between, so no batch can be spooled after the check and
        # then be overtaken.
        if self._spool.current_rows:
            self._replay_needed.set()
            return self.pending_spooled_rows
        if not self._db_available:
            log.info("ledger database back; spool replayed")
        self._db_available = True
        return self.pending_spooled_rows

    async def _replay_segment(self, claimed: ClaimedSegment) -> None:
        try:
            batch_size = self._settings.batch_max_rows
            for start in range(0, len(claimed.rows), batch_size):
                chunk = claimed.rows[start : start + batch_size]
                try:
                    await self._insert_batch(chunk)
                except Exception as exc:
                    if not rejects_the_row(exc):
                        raise
                    if await self._insert_row_by_row(chunk):
                        raise ConnectionError("database lost during replay") from exc
        except BaseException:
            await asyncio.to_thread(claimed.release)
            raise
        await asyncio.to_thread(claimed.done)
        log.info("spool segment replayed", extra={"segment": claimed.path.name, "rows": len(claimed.rows)})

    async def _ensure_schema(self) -> None:
        if not self._schema_ready:
            async with asyncio.timeout(self._settings.write_timeout_seconds * 4):
                await prepare_schema(self._engine, migrate_if_empty=self._settings.migrate_on_start)
            self._schema_ready = True

    async def _check_spool(self) -> None:
        try:
            await asyncio.to_thread(self._spool.check)
        except SpoolUnavailable as exc:
            if self.spool_error != str(exc):
                log.error("ledger spool unavailable", extra={"error": str(exc)})
            self.spool_error = str(exc)
        else:
            self.spool_error = None
