"""Replicas sharing one Redis: resumable streams, stop from anywhere, rows for dead replicas.

``Cluster`` is this replica's side of it (built by the app when a Redis URL is configured):
a heartbeat and lease entries (``leases.py``), the writer of resumable streams' logs
(``streamlog.py``), followers (``follow.py``), the stop channel, and the reaper
(``reaper.py``). Redis being away never blocks a plain stream: the cluster marks itself
unavailable on the first failure (plain streams then skip their lease, resumable requests are
refused at once) and its heartbeat finds out when Redis is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

from tokenrelay.cluster.follow import follow
from tokenrelay.cluster.keys import Keys
from tokenrelay.cluster.leases import Leases
from tokenrelay.cluster.reaper import Reaper
from tokenrelay.cluster.streamlog import LogWriter, StreamLog
from tokenrelay.config import Settings
from tokenrelay.errors import ResumableUnavailable, TokenRelayError
from tokenrelay.ledger.tokens import TokenCounter
from tokenrelay.ledger.writer import LedgerWriter
from tokenrelay.record import StreamRecord, StreamStatus

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger(__name__)

__all__ = ["Cluster", "Resume", "StreamLog"]


class Stoppable(Protocol):
    def request_stop(self, status: StreamStatus, error: TokenRelayError | None = None) -> None: ...


@dataclass(slots=True)
class Resume:
    """What a resumable stream's relay holds: its log, and the cluster it can wait on."""

    cluster: Cluster
    log: StreamLog


class Cluster:
    """This replica's membership in the group sharing ``settings.cluster_redis_url()``."""

    def __init__(self, settings: Settings, *, ledger: LedgerWriter, counter: TokenCounter) -> None:
        import redis.asyncio as redis

        url = settings.cluster_redis_url()
        if url is None:
            raise ValueError("the cluster needs a Redis URL (cluster.redis_url or auth.redis_url)")
        config = settings.cluster
        self.settings = config
        self.keys = keys = Keys(config.namespace)
        self.replica_id = config.replica_id or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        # Quick commands fail fast; blocking reads (followers, the stop channel) wait longer.
        self.redis: Redis = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self.block_seconds = min(settings.keepalive_seconds, 5.0)
        self.blocking: Redis = redis.Redis.from_url(
            url, socket_timeout=self.block_seconds + 2.0, socket_connect_timeout=1.0
        )
        self.keepalive_seconds = settings.keepalive_seconds
        longest = max(m.total_timeout_seconds for m in settings.models.values())
        self._lifetime = int(longest + config.resume_retention_seconds)
        self.leases = Leases(
            self.redis,
            keys,
            replica_id=self.replica_id,
            orphan_after_seconds=config.orphan_after_seconds,
            meta_lifetime_seconds=self._lifetime,
        )
        self.logs = LogWriter(
            self.redis,
            keys=keys,
            max_entries=config.resume_max_entries,
            max_bytes=config.resume_max_bytes,
            retention_seconds=config.resume_retention_seconds,
            lifetime_seconds=longest,
            on_error=self.down,
        )
        self.reaper = Reaper(
            self.redis,
            keys,
            replica_id=self.replica_id,
            orphan_after_seconds=config.orphan_after_seconds,
            ledger=ledger,
            counter=counter,
        )
        self.available = False
        self.error: str | None = None
        self._local: dict[str, Stoppable] = {}
        self._tasks: list[asyncio.Task[None]] = []

    # -- life ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Say this replica is alive and start the heartbeat, the reaper and the stop listener."""
        await self._renew()
        self.leases.start()
        self.logs.start()
        orphan = self.settings.orphan_after_seconds
        self._tasks = [
            asyncio.create_task(
                self._every(orphan / 5, self._renew, when_down=1.0), name="cluster-heartbeat"
            ),
            asyncio.create_task(self._every(max(0.25, orphan / 4), self._sweep), name="cluster-reaper"),
            asyncio.create_task(self._listen_for_stops(), name="cluster-stops"),
        ]
        log.info("cluster joined", extra={"replica": self.replica_id, "state": self.health()["state"]})

    async def stop_tasks(self) -> None:
        """Stop the background work (before the ledger writer closes: the reaper submits rows)."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        await self.logs.aclose()
        await self.leases.aclose()

    async def aclose(self) -> None:
        """Leave the cluster (after the ledger writer has stored every row and forgotten its lease)."""
        await self.stop_tasks()
        with contextlib.suppress(Exception):
            if not await self.redis.hlen(self.leases.key):
                await self.leases.retire()  # nothing open: nobody needs to reap us
        await self.redis.aclose()
        await self.blocking.aclose()

    def down(self, exc: BaseException) -> None:
        """A Redis command failed: resumable streams are refused until the heartbeat succeeds."""
        if self.available or self.error is None:
            log.error("redis unavailable for the cluster", extra={"error": repr(exc)})
        self.available = False
        self.error = repr(exc)

    def health(self) -> dict[str, Any]:
        """For ``/readyz``."""
        return {
            "state": "ok" if self.available else "unavailable",
            "replica": self.replica_id,
            "error": self.error,
        }

    async def _renew(self) -> None:
        from redis.exceptions import RedisError

        try:
            await self.leases.renew()
        except (RedisError, OSError) as exc:
            self.down(exc)
            return
        if not self.available:
            self.available, self.error = True, None

    async def _sweep(self) -> None:
        from redis.exceptions import RedisError

        if not self.available:
            return
        try:
            await self.reaper.sweep()
        except (RedisError, OSError) as exc:
            self.down(exc)

    async def _every(
        self, seconds: float, job: Callable[[], Awaitable[None]], when_down: float | None = None
    ) -> None:
        """Run ``job`` every ``seconds`` (every ``when_down`` while Redis is away)."""
        while True:
            try:
                await job()
            except Exception:
                log.exception("cluster job failed")
            await asyncio.sleep(when_down if when_down is not None and not self.available else seconds)

    # -- a stream's owner ---------------------------------------------------------------------

    async def open(
        self, record: StreamRecord, *, protocol: str | None, key_id: str | None
    ) -> StreamLog | None:
        """Lease the stream (and, resumable, publish its meta) before anything is generated.

        Redis away: a plain stream goes on without a lease; a resumable one is refused (503).
        """
        from redis.exceptions import RedisError

        if not self.available:
            if protocol is not None:
                raise ResumableUnavailable("resumable streams need Redis, which is unavailable right now")
            return None
        try:
            await self.leases.open(record, protocol=protocol, key_id=key_id)
        except (RedisError, OSError) as exc:  # ConnectionError included
            self.down(exc)
            if protocol is not None:
                raise ResumableUnavailable(
                    "resumable streams need Redis, which is unavailable right now"
                ) from exc
            return None
        record.lease = self.leases.key
        if protocol is None:
            return None
        record.resumable = True
        return self.logs.log_for(record)

    def register(self, stream_id: str, stream: Stoppable) -> None:
        self._local[stream_id] = stream

    def unregister(self, stream_id: str) -> None:
        self._local.pop(stream_id, None)

    async def wait_abandoned(self, stream_id: str) -> None:
        """Returns once no client has followed the stream for ``resume_grace_seconds``."""
        from redis.exceptions import RedisError

        await asyncio.sleep(self.settings.resume_grace_seconds)
        while True:
            try:
                ttl_ms = await self.redis.pttl(self.keys.followers(stream_id))
            except (RedisError, OSError) as exc:
                self.down(exc)
                return  # nobody can follow without Redis
            if ttl_ms <= 0:
                return
            await asyncio.sleep(ttl_ms / 1000 + 0.05)

    # -- any replica --------------------------------------------------------------------------

    async def meta(self, stream_id: str) -> dict[str, str] | None:
        """A resumable stream's owner key, replica and protocol (None: unknown or expired)."""
        raw = cast(dict[bytes, bytes], await self.redis.hgetall(self.keys.stream_meta(stream_id)))
        if not raw:
            return None
        return {k.decode(): v.decode() for k, v in raw.items()}

    def follow(self, stream_id: str, meta: dict[str, str], last_id: int) -> AsyncGenerator[bytes, None]:
        """The stream's events after ``last_id`` (``follow.IDLE`` while it is silent)."""
        return follow(
            self.blocking,
            self.keys,
            stream_id=stream_id,
            owner=meta["replica"],
            protocol=meta["protocol"],
            last_id=last_id,
            block_seconds=self.block_seconds,
            announce_seconds=self.settings.resume_grace_seconds,
        )

    async def stop(self, stream_id: str) -> None:
        """Stop a stream wherever it runs: here at once, elsewhere through the stop channel."""
        if self._stop_here(stream_id):
            return
        await self.redis.publish(self.keys.stop_channel, stream_id)

    def _stop_here(self, stream_id: str) -> bool:
        stream = self._local.get(stream_id)
        if stream is None:
            return False
        stream.request_stop(StreamStatus.STOPPED)
        return True

    async def _listen_for_stops(self) -> None:
        from redis.exceptions import RedisError

        while True:
            pubsub = self.blocking.pubsub()
            try:
                await pubsub.subscribe(self.keys.stop_channel)
                while True:
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=self.block_seconds
                    )
                    if message is not None and message.get("type") == "message":
                        data = message["data"]
                        self._stop_here(data.decode() if isinstance(data, bytes) else str(data))
            except (RedisError, OSError) as exc:
                self.down(exc)
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
