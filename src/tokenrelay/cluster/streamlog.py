"""A resumable stream's events in a Redis Stream, written in batches off the hot path.

Each stream has a ``StreamLog`` (the encoder's ``EventSink``): ``add`` appends stamped events
to a local buffer and marks the log dirty; it never awaits. One ``LogWriter`` task per replica
writes every dirty log in one round trip: a single script call (``_APPEND``) whose arguments
are all the logs' new entries, at most one round trip per ``WRITE_INTERVAL_SECONDS``. So the
cost per chunk does not grow with the number of Redis commands: one reply per round trip, not
one per stream (``wire.py`` says why it does not go through redis-py's command path).

An entry is ``d`` (events' bytes), ``f``/``l`` (first and last event id in it), ``n`` (content
chunks so far: a replica_lost row's estimate); the last one also has ``e`` (and ``x=overflow``
if the byte cap ended it). Entry ids are derived from event ids -- ``<l>-0`` for an entry with
events, ``<l>-1`` for an end without new events -- so a follower resuming after event ``n``
reads from ``<n>-0`` on: it never reads (or parses) what it already has.

Bounds: ``XADD MAXLEN ~`` entries and a byte cap per stream (past it the log ends with
``x=overflow`` and followers are told; the live client is not affected); keys expire
``resume_retention_seconds`` after the end (and cannot outlive the longest stream otherwise).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from tokenrelay.cluster.keys import Keys
from tokenrelay.cluster.wire import ScriptConnection
from tokenrelay.record import StreamRecord

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger(__name__)

# Followers see new events at most this much later than the stream's own client; in exchange
# many streams' reads share one round trip (see the module docstring).
WRITE_INTERVAL_SECONDS = 0.02

_DATA, _END, _OVERFLOW, _FIRST = 1, 2, 4, 8

# KEYS: the stream logs; ARGV: maxlen, lifetime, retention, then per key two: the events'
# bytes, and "<first id> <last id> <content chunks> <flags>" (flags: _DATA | _END | _OVERFLOW
# | _FIRST). Two arguments per entry, not five: packing arguments is most of the client's cost.
# The meta hash is the log's key + ":meta" (keys.Keys).
_APPEND = """
local maxlen, lifetime, retention = ARGV[1], ARGV[2], ARGV[3]
for i, key in ipairs(KEYS) do
  local at = 2 + i * 2
  local first, last, chunks, flags = string.match(ARGV[at + 1], '(%d+) (%d+) (%d+) (%d+)')
  flags = tonumber(flags)
  local fields = {'n', chunks, 'l', last}
  local id = last .. '-1'
  if flags % 2 == 1 then
    id = last .. '-0'
    table.insert(fields, 'f'); table.insert(fields, first)
    table.insert(fields, 'd'); table.insert(fields, ARGV[at])
  end
  local ended = math.floor(flags / 2) % 2 == 1
  if ended then
    table.insert(fields, 'e'); table.insert(fields, '1')
    if math.floor(flags / 4) % 2 == 1 then
      table.insert(fields, 'x'); table.insert(fields, 'overflow')
    end
  end
  redis.call('XADD', key, 'MAXLEN', '~', maxlen, id, unpack(fields))
  if math.floor(flags / 8) % 2 == 1 then
    redis.call('EXPIRE', key, lifetime)
  end
  if ended then
    local meta = key .. ':meta'
    redis.call('HSET', meta, 'ended', '1')
    redis.call('EXPIRE', key, retention)
    redis.call('EXPIRE', meta, retention)
  end
end
return #KEYS
"""


class StreamLog:
    """One resumable stream's events on their way to Redis (the owner's side)."""

    __slots__ = (
        "_writer",
        "bytes_added",
        "end_written",
        "ended",
        "first_pending",
        "last_id",
        "overflowed",
        "pending",
        "record",
        "stream_id",
        "written_once",
    )

    def __init__(self, writer: LogWriter, record: StreamRecord) -> None:
        self._writer = writer
        self.record = record
        self.stream_id = record.stream_id
        self.pending = bytearray()
        self.first_pending = 1
        self.last_id = 0
        self.bytes_added = 0
        self.ended = False
        self.end_written = False
        self.overflowed = False
        self.written_once = False

    def add(self, data: bytes, last_id: int) -> None:
        if self.ended:
            return
        self.bytes_added += len(data)
        if self.bytes_added > self._writer.max_bytes:
            # Past the cap: followers are told the rest cannot be replayed; the owner's own
            # client is unaffected.
            self.overflowed = True
            self.end()
            return
        if not self.pending:
            self.first_pending = self.last_id + 1
        self.pending += data
        self.last_id = last_id
        self._writer.mark(self)

    def end(self) -> None:
        if not self.ended:
            self.ended = True
            self._writer.mark(self)

    def entry(self, keys: list[bytes], args: list[bytes]) -> None:
        """Add this log's pending entry to a script call (the writer's task, once per round trip)."""
        flags = 0
        data = b""
        if self.pending:
            flags, data = _DATA, bytes(self.pending)
            self.pending.clear()
        if self.ended and not self.end_written:
            flags |= _END | (_OVERFLOW if self.overflowed else 0)
            self.end_written = True
        if not flags:
            return
        if not self.written_once:
            self.written_once = True
            flags |= _FIRST
        keys.append(self._writer.keys.stream_log(self.stream_id).encode())
        args.append(data)
        args.append(b"%d %d %d %d" % (self.first_pending, self.last_id, self.record.content_chunks, flags))


class LogWriter:
    """The replica's one writer of stream logs: every dirty log, one script call per round trip."""

    def __init__(
        self,
        redis: Redis,
        *,
        keys: Keys,
        max_entries: int,
        max_bytes: int,
        retention_seconds: float,
        lifetime_seconds: float,
        on_error: Callable[[BaseException], None],
    ) -> None:
        self.keys = keys
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.retention_seconds = max(1, int(retention_seconds))
        # A key is never kept longer than the longest stream plus the retention.
        self.lifetime_seconds = max(1, int(lifetime_seconds + retention_seconds))
        self._append = ScriptConnection(redis, _APPEND)
        self._on_error = on_error
        self._dirty: dict[StreamLog, None] = {}
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()  # set whenever a round trip leaves nothing dirty
        self._task: asyncio.Task[None] | None = None

    def log_for(self, record: StreamRecord) -> StreamLog:
        return StreamLog(self, record)

    def mark(self, stream_log: StreamLog) -> None:
        if stream_log not in self._dirty:
            self._dirty[stream_log] = None
            self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="stream-log-writer")

    async def aclose(self) -> None:
        """Write what is pending (briefly), then stop."""
        task, self._task = self._task, None
        if task is None:
            return
        if self._dirty:
            # The last entries (the ends of streams that just finished) get a moment to land.
            self._idle.clear()
            self._wake.set()
            await asyncio.wait((asyncio.ensure_future(self._idle.wait()),), timeout=2.0)
        task.cancel()
        await asyncio.wait((task,))
        await self._append.aclose()

    async def _run(self) -> None:
        from redis.exceptions import RedisError

        started = 0.0
        while True:
            await self._wake.wait()
            wait = started + WRITE_INTERVAL_SECONDS - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)  # more streams' reads join this round trip
            self._wake.clear()
            started = time.monotonic()
            logs, self._dirty = list(self._dirty), {}
            keys: list[bytes] = []
            args = [b"%d" % n for n in (self.max_entries, self.lifetime_seconds, self.retention_seconds)]
            for stream_log in logs:
                stream_log.entry(keys, args)
            try:
                if keys:
                    await self._append.call(keys, args)
            except (RedisError, OSError) as exc:
                # Those events are not replayable; the live client already has them.
                self._on_error(exc)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("writing stream logs failed")
            if not self._dirty:
                self._idle.set()
