"""Per-key budgets: tokens and USD spent, from the ledger, kept current as streams finish.

A key's spending starts as the sum of its ledger rows (read once per key), then grows as the
ledger writer reports finished streams. In memory it is one process's view; with
``auth.redis_url`` it lives in Redis (``tokenrelay:spent:<key>:tokens`` / ``:usd``, seeded from
the ledger with ``SET NX``) and every replica adds to it. Redis down: budgets fail closed by
default (``auth.budget_on_redis_error``).

Before a stream starts, a key at or over either budget is refused (429 ``budget_exceeded``).
What is left becomes the stream's completion allowance (prompt tokens estimated with
tiktoken; prices from the model), enforced while it streams.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from tokenrelay.auth.keys import ApiKey
from tokenrelay.errors import BudgetExceeded
from tokenrelay.ledger.models import UsageRecord
from tokenrelay.record import StreamRecord

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger(__name__)


class Spending(Protocol):
    async def spent(self, key_id: str) -> tuple[int, float]:
        """(tokens, USD) spent by the key so far."""

    async def add(self, records: list[StreamRecord]) -> None:
        """Count finished streams (with their usage) against their keys."""


async def ledger_totals(engine: AsyncEngine, key_id: str) -> tuple[int, float]:
    """What the ledger has recorded for ``key_id``."""
    query = select(
        func.coalesce(func.sum(UsageRecord.prompt_tokens + UsageRecord.completion_tokens), 0),
        func.coalesce(func.sum(UsageRecord.cost_usd), 0.0),
    ).where(UsageRecord.api_key_id == key_id)
    async with engine.connect() as connection:
        tokens, usd = (await connection.execute(query)).one()
    return int(tokens or 0), float(usd or 0.0)


def _by_key(records: list[StreamRecord]) -> dict[str, tuple[int, float]]:
    totals: dict[str, tuple[int, float]] = {}
    for record in records:
        if record.api_key_id is None:
            continue
        tokens, usd = totals.get(record.api_key_id, (0, 0.0))
        totals[record.api_key_id] = (
            tokens + (record.prompt_tokens or 0) + (record.completion_tokens or 0),
            usd + (record.cost_usd or 0.0),
        )
    return totals


class MemorySpending:
    """One process's running totals, seeded from the ledger."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._totals: dict[str, tuple[int, float]] = {}

    async def spent(self, key_id: str) -> tuple[int, float]:
        if key_id not in self._totals:
            self._totals[key_id] = await ledger_totals(self._engine, key_id)
        return self._totals[key_id]

    async def add(self, records: list[StreamRecord]) -> None:
        for key_id, (tokens, usd) in _by_key(records).items():
            if key_id in self._totals:  # otherwise the ledger has them when the key is first read
                old_tokens, old_usd = self._totals[key_id]
                self._totals[key_id] = (old_tokens + tokens, old_usd + usd)


class RedisSpending:
    """Totals shared by every replica through Redis (the client is the app's, shared)."""

    def __init__(self, client: Redis, engine: AsyncEngine, *, fail_open: bool) -> None:
        self._redis = client
        self._engine = engine
        self._fail_open = fail_open
        self.error: str | None = None

    async def spent(self, key_id: str) -> tuple[int, float]:
        from redis.exceptions import RedisError

        names = (f"tokenrelay:spent:{key_id}:tokens", f"tokenrelay:spent:{key_id}:usd")
        try:
            tokens, usd = await self._redis.mget(names)
            if tokens is None or usd is None:
                seeded = await ledger_totals(self._engine, key_id)
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.set(names[0], seeded[0], nx=True)
                    pipe.set(names[1], seeded[1], nx=True)
                    pipe.mget(names)
                    *_, (tokens, usd) = await pipe.execute()
            self.error = None
            return int(tokens), float(usd)
        except RedisError as exc:
            self._failed(exc)
            if self._fail_open:
                return 0, 0.0
            raise BudgetExceeded("budgets cannot be checked right now", retry_after_seconds=5) from exc

    async def add(self, records: list[StreamRecord]) -> None:
        from redis.exceptions import RedisError

        totals = _by_key(records)
        if not totals:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key_id, (tokens, usd) in totals.items():
                    # Only keys already seeded: an unseeded key is seeded from the ledger later.
                    pipe.eval(
                        _ADD_IF_SEEDED,
                        2,
                        f"tokenrelay:spent:{key_id}:tokens",
                        f"tokenrelay:spent:{key_id}:usd",
                        tokens,
                        usd,
                    )
                await pipe.execute()
        except RedisError as exc:
            self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        if self.error is None:
            log.error(
                "redis unavailable for budgets", extra={"error": repr(exc), "fail_open": self._fail_open}
            )
        self.error = repr(exc)


_ADD_IF_SEEDED = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('INCRBY', KEYS[1], ARGV[1]) end
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('INCRBYFLOAT', KEYS[2], ARGV[2]) end
return 1
"""


def completion_allowance(
    key: ApiKey, spent: tuple[int, float], prompt_tokens: int, prices: tuple[float, float] | None
) -> int | None:
    """Completion tokens the key may still spend on a stream (None: no budget), or raise 429."""
    allowance: float | None = None
    tokens, usd = spent
    if key.budget_tokens is not None:
        if tokens >= key.budget_tokens:
            raise BudgetExceeded(f"this API key has used its budget of {key.budget_tokens} tokens")
        allowance = key.budget_tokens - tokens - prompt_tokens
    if key.budget_usd is not None:
        if usd >= key.budget_usd:
            raise BudgetExceeded(f"this API key has used its budget of ${key.budget_usd:g}")
        if prices is not None:
            prompt_price, completion_price = prices
            left = key.budget_usd - usd - prompt_tokens * prompt_price / 1e6
            by_cost = left / (completion_price / 1e6) if completion_price > 0 else float("inf")
            allowance = by_cost if allowance is None else min(allowance, by_cost)
    if allowance is None:
        return None
    if allowance < 1:
        raise BudgetExceeded("this API key's budget does not cover this request")
    return int(allowance) if allowance != float("inf") else None


def spending_health(spending: Any) -> dict[str, Any]:
    """For ``/readyz``."""
    error = getattr(spending, "error", None)
    return {
        "backend": "redis" if isinstance(spending, RedisSpending) else "memory",
        "state": "ok" if error is None else "unavailable",
    }
