"""Replica leases: which streams each live replica has open, so a dead one's are not lost.

Every replica renews its heartbeat key (TTL ``orphan_after_seconds``) and records each stream
at admission in its lease hash (what a usage row needs: ids, model, key, prompt, prices). The
row's own writer removes the entry once the row is stored (in the database or the spool).
A replica whose heartbeat expired while entries remain died mid-stream: ``reaper.py`` writes
those rows. The ledger's unique ``stream_id`` makes a late second writer harmless.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from tokenrelay.cluster.keys import Keys
from tokenrelay.cluster.wire import GroupCommit
from tokenrelay.record import StreamRecord

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger(__name__)


def lease_entry(record: StreamRecord, protocol: str | None) -> bytes:
    """What another replica needs to write this stream's row if this one dies."""
    return orjson.dumps(
        {
            "stream_id": record.stream_id,
            "request_id": record.request_id,
            "model": record.model,
            "upstream_model": record.upstream_model,
            "tokenizer_encoding": record.tokenizer_encoding,
            "started_at": record.started_at.isoformat(),
            "api_key_id": record.api_key_id,
            "prices": record.prices,
            "messages": record.messages,
            "protocol": protocol,
        }
    )


def record_from_entry(entry: bytes, lease_key: str, now_mono: float) -> tuple[StreamRecord, str | None]:
    """A record for a stream whose replica died (its protocol, if it was resumable)."""
    fields: dict[str, Any] = orjson.loads(entry)
    started_at = datetime.fromisoformat(fields["started_at"])
    age = max(0.0, (datetime.now(UTC) - started_at).total_seconds())
    prices = fields.get("prices")
    record = StreamRecord(
        stream_id=fields["stream_id"],
        request_id=fields["request_id"],
        model=fields["model"],
        upstream_model=fields["upstream_model"],
        messages=fields["messages"],
        tokenizer_encoding=fields["tokenizer_encoding"],
        started_at=started_at,
        started_mono=now_mono - age,
        api_key_id=fields.get("api_key_id"),
        prices=(float(prices[0]), float(prices[1])) if prices else None,
        lease=lease_key,
    )
    record.resumable = fields.get("protocol") is not None
    return record, fields.get("protocol")


# KEYS: this replica's lease hash, once per stream; ARGV: replica id, meta lifetime, meta key
# prefix, then per stream: stream id, lease entry, protocol ("" if not resumable), key id, model.
_OPEN = """
local replica, lifetime, prefix = ARGV[1], ARGV[2], ARGV[3]
for i, key in ipairs(KEYS) do
  local at = 3 + (i - 1) * 5
  local stream_id, protocol = ARGV[at + 1], ARGV[at + 3]
  redis.call('HSET', key, stream_id, ARGV[at + 2])
  if protocol ~= '' then
    local meta = prefix .. stream_id .. ':meta'
    redis.call('HSET', meta, 'key', ARGV[at + 4], 'replica', replica, 'protocol', protocol,
               'model', ARGV[at + 5])
    redis.call('EXPIRE', meta, lifetime)
  end
end
return #KEYS
"""


class Leases:
    """This replica's heartbeat and its open-stream entries."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        replica_id: str,
        orphan_after_seconds: float,
        meta_lifetime_seconds: int,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self.replica_id = replica_id
        self.key = keys.leases(replica_id)
        self._ttl_ms = max(1000, int(orphan_after_seconds * 1000))
        # Every stream's lease (and a resumable one's meta): one round trip for all the streams
        # admitted while the previous one was on the wire.
        prefix = keys.stream_meta("").removesuffix(":meta")
        head = [replica_id.encode(), b"%d" % meta_lifetime_seconds, prefix.encode()]
        self._opens = GroupCommit(redis, _OPEN, head=head, name="cluster-leases")
        # Streams whose admission was cancelled while their lease was being written.
        self._abandoned: list[str] = []

    def start(self) -> None:
        self._opens.start()

    async def aclose(self) -> None:
        await self._opens.aclose()

    async def open(self, record: StreamRecord, *, protocol: str | None, key_id: str | None) -> None:
        """Lease the stream (and publish a resumable one's meta); raises if Redis is away."""
        args = [
            record.stream_id.encode(),
            lease_entry(record, protocol),
            (protocol or "").encode(),
            (key_id or "").encode(),
            record.model.encode(),
        ]
        try:
            await self._opens.submit(self.key.encode(), args)
        except asyncio.CancelledError:
            self._abandoned.append(record.stream_id)  # no row will come to drop it
            raise

    async def renew(self) -> None:
        """Say this replica is alive (raises if Redis is away)."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(self._keys.heartbeat(self.replica_id), 1, px=self._ttl_ms)
        pipe.sadd(self._keys.replicas, self.replica_id)
        abandoned, self._abandoned = self._abandoned, []
        if abandoned:
            pipe.hdel(self.key, *abandoned)
        await pipe.execute()

    async def retire(self) -> None:
        """A clean shutdown: no heartbeat, and no entries left to reap (rows were written)."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.delete(self._keys.heartbeat(self.replica_id))
        await pipe.execute()

    async def forget(self, records: list[StreamRecord]) -> None:
        """Their rows are stored: drop their entries (one round trip per lease hash)."""
        by_hash: dict[str, list[str]] = {}
        for record in records:
            if record.lease is not None:
                by_hash.setdefault(record.lease, []).append(record.stream_id)
        if not by_hash:
            return
        pipe = self._redis.pipeline(transaction=False)
        for lease_key, stream_ids in by_hash.items():
            pipe.hdel(lease_key, *stream_ids)
        await pipe.execute()
