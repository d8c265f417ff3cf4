"""Per-key rate limits: requests per minute and concurrent streams, in memory or in Redis.

Requests per minute are counted over the last 60 seconds (a sliding log: no burst of twice
the limit across a minute boundary). In memory, the limits hold for one process. With
``auth.redis_url`` they hold for every replica sharing that Redis: both limits are sorted sets
per key, changed only by Lua scripts that admit a request while the set is below the limit —
request times for the last minute; running streams by start time (entries older than the
longest stream are dropped first, so a crashed replica's streams do not count for ever).

Redis down: requests per minute fail open (allowed, logged) or closed (refused), as
``auth.rate_limit_on_redis_error`` says; ``/readyz`` shows it.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict, deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from tokenrelay.auth.keys import ApiKey
from tokenrelay.errors import RateLimitExceeded

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger(__name__)


class RateLimiter(Protocol):
    async def admit(self, key: ApiKey, stream_id: str) -> None:
        """Count a new stream of ``key``, or raise :class:`RateLimitExceeded`."""

    async def release(self, key: ApiKey, stream_id: str) -> None:
        """The stream ended: it no longer counts as concurrent."""

    def health(self) -> dict[str, Any]:
        """For ``/readyz``."""


WINDOW_SECONDS = 60.0


def running_key(key_id: str) -> str:
    """The Redis sorted set of a key's running streams (the reaper frees a dead replica's)."""
    return f"tokenrelay:running:{key_id}"


def _too_many(key: ApiKey, oldest: float, now: float) -> RateLimitExceeded:
    retry_after = max(1, math.ceil(oldest + WINDOW_SECONDS - now))
    return RateLimitExceeded(
        f"this key may make {key.rpm} requests per minute", retry_after_seconds=retry_after
    )


class MemoryRateLimiter:
    """Limits for one process."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._requests: dict[str, deque[float]] = defaultdict(deque)
        self._running: dict[str, set[str]] = defaultdict(set)

    async def admit(self, key: ApiKey, stream_id: str) -> None:
        if key.max_concurrent is not None and len(self._running[key.id]) >= key.max_concurrent:
            raise RateLimitExceeded(
                f"this key may run {key.max_concurrent} streams at once", retry_after_seconds=1
            )
        if key.rpm is not None:
            now = self._clock()
            recent = self._requests[key.id]
            while recent and recent[0] <= now - WINDOW_SECONDS:
                recent.popleft()
            if len(recent) >= key.rpm:
                raise _too_many(key, recent[0], now)
            recent.append(now)
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


# KEYS[1] = the key's request log; ARGV = now, window start, limit, request id.
# Returns -1 when admitted, else the oldest request time still in the window.
_ADMIT_REQUEST = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2]
end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4])
redis.call('EXPIRE', KEYS[1], 120)
return -1
"""

# KEYS[1] = the key's running-set; ARGV = now, oldest start still counted, limit, stream id.
_ADMIT_CONCURRENT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4])
redis.call('EXPIRE', KEYS[1], 3600)
return 1
"""


class RedisRateLimiter:
    """Limits shared by every gateway using the same Redis (the client is the app's, shared)."""

    def __init__(self, client: Redis, *, fail_open: bool, longest_stream_seconds: float) -> None:
        self._redis = client
        self._fail_open = fail_open
        self._longest = longest_stream_seconds
        self._admit_request = self._redis.register_script(_ADMIT_REQUEST)
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
            oldest = await self._admit_request(
                keys=[f"tokenrelay:requests:{key.id}"], args=[now, now - WINDOW_SECONDS, key.rpm, stream_id]
            )
            if float(oldest) >= 0:
                raise _too_many(key, float(oldest), now)
        if key.max_concurrent is not None:
            admitted = await self._admit_concurrent(
                keys=[running_key(key.id)],
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
            await self._redis.zrem(running_key(key.id), stream_id)
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
