"""Rows for the streams of a replica that died: every survivor looks, one writes.

A sweep (every replica, every quarter of ``orphan_after_seconds``) lists the replicas that
ever held streams; one whose heartbeat expired while its lease hash still has entries died
mid-stream. The first survivor to take the replica's ``reaping`` lock writes one row per
entry -- status ``replica_lost``, prompt tokens counted from the stored prompt, completion
tokens from the content chunks its resumable log had reached (usage marked ``estimated``) --
frees the stream's concurrency slot, and ends a resumable stream's log with ``stream_lost``
so its followers stop waiting. The entry goes once the row is stored; the ledger's unique
stream id makes a second write (a sweep retried after a crash, a replica that was only paused)
change nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

from tokenrelay.cluster.keys import Keys
from tokenrelay.cluster.leases import record_from_entry
from tokenrelay.config import MODEL_TOKENIZER
from tokenrelay.errors import StreamLost
from tokenrelay.ledger.tokens import TokenCounter
from tokenrelay.ledger.writer import LedgerWriter
from tokenrelay.limits import running_key
from tokenrelay.protocols.resumable import error_event, stamp
from tokenrelay.record import StreamRecord, StreamStatus, UsageSource

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger(__name__)


class Reaper:
    """Finds dead replicas and writes their open streams' rows."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        replica_id: str,
        orphan_after_seconds: float,
        ledger: LedgerWriter,
        counter: TokenCounter,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._replica_id = replica_id
        self._lock_ms = max(5000, int(orphan_after_seconds * 4000))
        self._ledger = ledger
        self._counter = counter

    async def sweep(self) -> int:
        """One look at every replica; returns the rows handed to the ledger."""
        written = 0
        members = cast(set[bytes], await cast(Awaitable[Any], self._redis.smembers(self._keys.replicas)))
        for raw_id in members:
            replica_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
            if replica_id == self._replica_id or await self._redis.exists(self._keys.heartbeat(replica_id)):
                continue
            lease_key = self._keys.leases(replica_id)
            entries = cast(dict[bytes, bytes], await cast(Awaitable[Any], self._redis.hgetall(lease_key)))
            if not entries:
                # Nothing left open: forget the replica (unless it came back meanwhile).
                await self._redis.srem(self._keys.replicas, replica_id)
                continue
            if not await self._redis.set(
                self._keys.reaping(replica_id), self._replica_id, nx=True, px=self._lock_ms
            ):
                continue  # another survivor is on it
            log.warning(
                "replica lost; writing its open streams' rows",
                extra={"replica": replica_id, "streams": len(entries)},
            )
            for entry in entries.values():
                try:
                    await self._reap(entry, lease_key)
                    written += 1
                except Exception:
                    log.exception("could not reap a stream", extra={"replica": replica_id})
        return written

    async def _reap(self, entry: bytes, lease_key: str) -> None:
        record, protocol = record_from_entry(entry, lease_key, time.monotonic())
        content_chunks = 0
        if protocol is not None:
            content_chunks = await self._end_log(record.stream_id, protocol)
        record.prompt_tokens = await asyncio.to_thread(self._count_prompt, record)
        record.completion_tokens = content_chunks  # one content chunk is one token, near enough
        record.usage_source = UsageSource.ESTIMATED
        record.status = StreamStatus.REPLICA_LOST
        record.error_code = StreamLost.code
        record.error_class = StreamLost.__name__
        record.finished_mono = time.monotonic()
        record.finished_at = datetime.now(UTC)
        if record.api_key_id is not None:
            await self._redis.zrem(running_key(record.api_key_id), record.stream_id)
        self._ledger.submit(record)

    def _count_prompt(self, record: StreamRecord) -> int:
        encoding = record.tokenizer_encoding
        if encoding == MODEL_TOKENIZER:
            encoding = "cl100k_base"  # the model's own tokenizer lived with the dead replica
        return self._counter.count_prompt(record.messages, encoding)

    async def _end_log(self, stream_id: str, protocol: str) -> int:
        """End a resumable stream's log with ``stream_lost``; returns its content chunks."""
        log_key = self._keys.stream_log(stream_id)
        last = cast(list[tuple[bytes, dict[bytes, bytes]]], await self._redis.xrevrange(log_key, count=1))
        if not last:
            last_id, content_chunks, ended = 0, 0, False
        else:
            fields = last[0][1]
            ended = b"e" in fields
            content_chunks = int(fields.get(b"n", 0))
            last_id = int(fields.get(b"l", 0))  # every entry says the last event id so far
        if not ended:
            out = bytearray()
            top = stamp(
                error_event(protocol, StreamLost("the replica running this stream is gone")), last_id, out
            )
            pipe = self._redis.pipeline(transaction=False)
            entry = {"d": bytes(out), "f": top, "l": top, "n": content_chunks, "e": 1}
            pipe.xadd(log_key, entry, id=f"{top}-0")  # type: ignore[arg-type]  # ids as streamlog.py
            pipe.hset(self._keys.stream_meta(stream_id), "ended", 1)
            await pipe.execute()
        return content_chunks
