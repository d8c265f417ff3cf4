"""Per-key rate limits: requests per minute and concurrent streams, in memory or in Redis.

In memory, the limits hold for one process. With ``auth.redis_url`` they hold for every
replica sharing that Redis: requests per minute count in a per-minute key (``INCR`` +
``EXPIRE``), concurrent streams are members of a sorted set scored by their start time, added
by a Lua script only while the set is below the limit (entries older than the longest stream
are dropped first, so a crashed replica's streams do not count for ever).

Redis down: requests per minute fail open (allowed, logged) or closed (refused), as
``auth.rate_limit_on_redis_error`` says; ``/readyz`` shows it.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import Any, Protocol

from tokenrelay.auth.keys import ApiKey
from tokenrelay.errors import RateLimitExceeded

log = logging.getLogger(__name__)


class RateLimiter(Protocol):
    async def admit(self, key: ApiKey, stream_id: str) -> None:
        """Count a new stream of ``key``, or raise :class:`RateLimitExceeded`."""

    async def release(self, key: ApiKey, stream_id: str) -> None:
        """The stream ended: it no longer counts as concurrent."""

    def health(self) -> dict[str, Any]:
        """For ``/readyz``."""

    async def aclose(self) -> None:
        """Close connections."""


def _minute_window(now: float) -> tuple[int, int]:
    """(this minute's number, seconds until the next one)."""
    minute = int(now // 60)
    return minute, max(1, int((minute + 1) * 60 - now))


class MemoryRateLimiter:
    """Limits for one process."""

    def __init__(self) -> None:
        self._minutes: dict[str, tuple[int, int]] = {}
        self._running: dict[str, set[str]] = defaultdict(set)

    async def admit(self, key: ApiKey, stream_id: str) -> None:
        if key.max_concurrent is not None and len(self._running[key.id]) >= key.max_concurrent:
            raise RateLimitExceeded(
                f"this key may run {key.max_concurrent} streams at once", retry_after_seconds=1
            )
        if key.rpm is not None:
            minute, retry_after = _minute_window(time.time())
            window, count = self._minutes.get(key.id, (minute, 0))
            count = count + 1 if window == minute else 1
            if count > key.rpm:
                raise RateLimitExceeded(
                    f"this key may make {key.rpm} requests per minute", retry_after_seconds=retry_after
                )
            self._minutes[key.id] = (minute, count)
        if key.max_concurrent is not None:
            self._running[key.id].add(stream_id)

    async def release(self, key: ApiKey, stream_id: str) -> None:
        running = self._running.get(key.id)
        if running is not None:
            running.discard(stream_id)
            if not running:
                del self._running[key.id]

    def health(self) -> dict[str, Any]:
        return {"backend": "memory", "state": "ok"}

    async def aclose(self) -> None:
        return None


# KEYS[1] = the key's running-set; ARGV = now, oldest start still counted, limit, stream id.
_ADMIT_CONCURRENT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4])
redis.call('EXPIRE', KEYS[1], 3600)
return 1
"""


class RedisRateLimiter:
    """Limits shared by every gateway using the same Redis."""

    def __init__(self, url: str, *, fail_open: bool, longest_stream_seconds: float) -> None:
        import redis.asyncio as redis

        self._redis = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self._fail_open = fail_open
        self._longest = longest_stream_seconds
        self._admit_concurrent = self._redis.register_script(_ADMIT_CONCURRENT)
        self.error: str | None = None

    async def admit(self, key: ApiKey, stream_id: str) -> None:
        from redis.exceptions import RedisError

        try:
            await self._check(key, stream_id)
        except RedisError as exc:
            self._failed(exc)
            if not self._fail_open:
                raise RateLimitExceeded(
                    "rate limits cannot be checked right now", retry_after_seconds=5
                ) from exc
            return
        self.error = None

    async def _check(self, key: ApiKey, stream_id: str) -> None:
        now = time.time()
        if key.rpm is not None:
            minute, retry_after = _minute_window(now)
            counter = f"tokenrelay:rpm:{key.id}:{minute}"
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.incr(counter)
                pipe.expire(counter, 120)
                count, _ = await pipe.execute()
            if int(count) > key.rpm:
                raise RateLimitExceeded(
                    f"this key may make {key.rpm} requests per minute", retry_after_seconds=retry_after
                )
        if key.max_concurrent is not None:
            admitted = await self._admit_concurrent(
                keys=[f"tokenrelay:running:{key.id}"],
                args=[now, now - self._longest, key.max_concurrent, stream_id],
            )
            if not int(admitted):
                raise RateLimitExceeded(
                    f"this key may run {key.max_concurrent} streams at once", retry_after_seconds=1
                )

    async def release(self, key: ApiKey, stream_id: str) -> None:
        from redis.exceptions import RedisError

        if key.max_concurrent is None:
            return
        try:
            await self._redis.zrem(f"tokenrelay:running:{key.id}", stream_id)
        except RedisError as exc:
            self._failed(exc)  # the entry ages out after the longest stream

    def _failed(self, exc: Exception) -> None:
        if self.error is None:
            log.error(
                "redis unavailable for rate limits",
                extra={"error": repr(exc), "fail_open": self._fail_open},
            )
        self.error = repr(exc)

    def health(self) -> dict[str, Any]:
        return {
            "backend": "redis",
            "state": "ok" if self.error is None else "unavailable",
            "error": self.error,
        }

    async def aclose(self) -> None:
        await self._redis.aclose()
