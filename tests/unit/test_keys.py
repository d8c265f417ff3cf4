"""Key checking: the same work whatever part of a wrong key matched."""

from __future__ import annotations

import contextlib
import hmac
import statistics
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from tokenrelay.auth.keys import KEY_FORMAT, ApiKey, Authenticator, digest, new_key
from tokenrelay.errors import AuthenticationFailed, BudgetExceeded, RateLimitExceeded
from tokenrelay.limits import MemoryRateLimiter
from tokenrelay.limits.budgets import completion_allowance


class _Store:
    """One known key, found by prefix like the database would."""

    def __init__(self, key: ApiKey) -> None:
        self.key = key

    async def by_prefix(self, prefix: str) -> ApiKey | None:
        return self.key if prefix == self.key.prefix else None


def limited_key(**limits: Any) -> ApiKey:
    """A key with ``limits`` (budgets, rpm, ...) and nothing else that matters."""
    return ApiKey(
        id="k", name="k", prefix="trk_00000000", secret_sha256="", created_at=datetime.now(UTC), **limits
    )


def _authenticator() -> tuple[Authenticator, str]:
    secret, prefix = new_key()
    key = ApiKey(
        id="key_1", name="k", prefix=prefix, secret_sha256=digest(secret), created_at=datetime.now(UTC)
    )
    return Authenticator(_Store(key), admin_key="admin-secret", cache_seconds=60), secret  # type: ignore[arg-type]


def test_new_keys_have_the_documented_shape() -> None:
    key, prefix = new_key()
    match = KEY_FORMAT.match(key)
    assert match is not None and match.group(1) == prefix
    assert len({new_key()[0] for _ in range(100)}) == 100


def _near_misses(secret: str) -> dict[str, str]:
    flip = "A" if secret[-1] != "A" else "B"
    return {
        "unknown prefix": "trk_00000000_" + "A" * 43,
        "right prefix, nothing else": secret[:13] + "B" * 43,
        "all but the last character": secret[:-1] + flip,
        "not a key at all": "x",
    }


async def test_every_comparison_is_constant_time_on_equal_length_digests(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    auth, secret = _authenticator()
    seen: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def recording(a: Any, b: Any) -> bool:
        seen.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)
    for candidate in _near_misses(secret).values():
        seen.clear()
        with pytest.raises(AuthenticationFailed):
            await auth.authenticate(f"Bearer {candidate}")
        # The admin digest, then the key's (or a dummy when no key has the prefix): always both
        # comparisons of 64 hex digits, never a comparison of the key text itself.
        assert seen in ([(64, 64), (64, 64)], [(64, 64)]), seen
    assert (await auth.authenticate(f"Bearer {secret}")).key_id == "key_1"
    assert (await auth.authenticate("Bearer admin-secret")).is_admin


async def test_wrong_keys_take_the_same_time_however_much_matched() -> None:
    """A loose statistical check on top of the structural one: medians of many attempts."""
    auth, secret = _authenticator()
    attempts = _near_misses(secret)
    del attempts["not a key at all"]  # not of the key format: it skips the (cached) lookup
    timings: dict[str, list[float]] = {name: [] for name in attempts}
    for _ in range(3000):
        for name, candidate in attempts.items():
            started = time.perf_counter()
            with contextlib.suppress(AuthenticationFailed):
                await auth.authenticate(f"Bearer {candidate}")
            timings[name].append(time.perf_counter() - started)
    medians = {name: statistics.median(values) for name, values in timings.items()}
    slowest, fastest = max(medians.values()), min(medians.values())
    assert slowest / fastest < 1.5, medians


def test_completion_allowance_from_token_and_usd_budgets() -> None:
    key = limited_key(budget_tokens=1000, budget_usd=0.01)
    # Tokens: 1000 - 400 spent - 100 prompt = 500. USD: $0.01 - $0.004 - 100 x $1/M = $0.0059 at $10/M: 590.
    assert completion_allowance(key, (400, 0.004), 100, (1.0, 10.0)) == 500
    dollars = limited_key(budget_usd=8.0)
    # $8 - $2 spent - 2 prompt tokens x $0.50 = $5 left, at $1 per completion token: 5 tokens.
    assert completion_allowance(dollars, (0, 2.0), 2, (500_000.0, 1_000_000.0)) == 5
    with pytest.raises(BudgetExceeded):
        completion_allowance(key, (1000, 0.0), 10, None)
    with pytest.raises(BudgetExceeded):
        completion_allowance(key, (0, 0.01), 10, (1.0, 10.0))
    assert completion_allowance(limited_key(), (10**9, 10**6), 100, (1.0, 1.0)) is None


async def test_requests_per_minute_is_a_sliding_window() -> None:
    clock = [1000.0]
    limiter = MemoryRateLimiter(clock=lambda: clock[0])
    key = limited_key(rpm=2)
    await limiter.admit(key, "a")
    clock[0] += 59.0
    await limiter.admit(key, "b")
    with pytest.raises(RateLimitExceeded) as refused:
        await limiter.admit(key, "c")
    assert refused.value.retry_after_seconds == 1  # the first request leaves the window in 1 s
    clock[0] += 1.0
    await limiter.admit(key, "c")  # 60 s after the first: it no longer counts
    with pytest.raises(RateLimitExceeded):
        await limiter.admit(key, "d")
