"""API keys: ``trk_<8 hex>_<43 chars>``, shown once, stored as SHA-256, found by prefix.

The prefix (``trk_1a2b3c4d``) identifies a key in lists and logs; the rest is 256 random
bits. Keys are high-entropy random strings, so one SHA-256 is the right hash (a slow password
hash guards guessable secrets; these are not). Checking a key hashes the candidate and
compares digests with ``hmac.compare_digest`` — also against a dummy digest when no key has
that prefix — so the time taken says nothing about how much of a key was right.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from tokenrelay.errors import AuthenticationFailed
from tokenrelay.ledger.models import ApiKeyRow

KEY_FORMAT = re.compile(r"^(trk_[0-9a-f]{8})_[A-Za-z0-9_-]{43}$")
# A key anywhere in a string (a client that put it in the wrong header, say).
_KEY_INSIDE = re.compile(r"trk_[0-9a-f]{8}_[A-Za-z0-9_-]{16}")
_DUMMY_DIGEST = hashlib.sha256(b"no key has this prefix").hexdigest()
# What an admin may change on a key after creating it (never its secret, prefix or id).
UPDATABLE = frozenset(
    {"name", "budget_tokens", "budget_usd", "rpm", "max_concurrent", "models", "expires_at"}
)


def new_key() -> tuple[str, str]:
    """A fresh key and its prefix."""
    prefix = f"trk_{secrets.token_hex(4)}"
    return f"{prefix}_{secrets.token_urlsafe(32)}", prefix


def digest(key: str) -> str:
    """The stored form of a key."""
    return hashlib.sha256(key.encode()).hexdigest()


def secret_detector(admin_key: str | None) -> Callable[[str], bool]:
    """Whether a string holds an API key or is the admin key: such text is never logged or stored."""
    admin_digest = digest(admin_key) if admin_key else None

    def is_secret(value: str) -> bool:
        if _KEY_INSIDE.search(value):
            return True
        return admin_digest is not None and hmac.compare_digest(digest(value), admin_digest)

    return is_secret


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key's identity and limits (never the key itself)."""

    id: str
    name: str
    prefix: str
    secret_sha256: str
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    budget_tokens: int | None = None
    budget_usd: float | None = None
    rpm: int | None = None
    max_concurrent: int | None = None
    models: frozenset[str] | None = None

    def usable(self, now: datetime) -> bool:
        """Neither revoked nor expired."""
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    def state(self, now: datetime) -> str:
        """``active``, ``revoked`` or ``expired`` (revoked wins: it was someone's decision)."""
        if self.revoked_at is not None:
            return "revoked"
        return "active" if self.usable(now) else "expired"

    def allows(self, model: str) -> bool:
        """Whether the key may use ``model``."""
        return self.models is None or model in self.models

    @classmethod
    def from_row(cls, row: ApiKeyRow) -> ApiKey:
        return cls(
            id=row.id,
            name=row.name,
            prefix=row.prefix,
            secret_sha256=row.secret_sha256,
            created_at=_aware(row.created_at),
            expires_at=_aware(row.expires_at) if row.expires_at else None,
            revoked_at=_aware(row.revoked_at) if row.revoked_at else None,
            budget_tokens=row.budget_tokens,
            budget_usd=row.budget_usd,
            rpm=row.rpm,
            max_concurrent=row.max_concurrent,
            models=frozenset(row.models.split(",")) if row.models else None,
        )


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; they were written in UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class KeyStore:
    """Keys in the ledger database (table ``api_key``)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    async def create(
        self,
        *,
        name: str,
        budget_tokens: int | None = None,
        budget_usd: float | None = None,
        rpm: int | None = None,
        max_concurrent: int | None = None,
        models: list[str] | None = None,
        expires_at: datetime | None = None,
    ) -> tuple[ApiKey, str]:
        """Create a key; returns it with the secret, which is not kept anywhere."""
        key, prefix = new_key()
        row = ApiKeyRow(
            id=f"key_{secrets.token_hex(8)}",
            name=name,
            prefix=prefix,
            secret_sha256=digest(key),
            created_at=datetime.now(UTC),
            expires_at=expires_at,
            revoked_at=None,
            budget_tokens=budget_tokens,
            budget_usd=budget_usd,
            rpm=rpm,
            max_concurrent=max_concurrent,
            models=",".join(models) if models else None,
        )
        async with self._sessions() as session, session.begin():
            session.add(row)
        return ApiKey.from_row(row), key

    async def all(self) -> list[ApiKey]:
        """Every key, oldest first."""
        async with self._sessions() as session:
            rows = (await session.scalars(select(ApiKeyRow).order_by(ApiKeyRow.created_at))).all()
        return [ApiKey.from_row(row) for row in rows]

    async def newest_first(self) -> list[ApiKey]:
        """Every key, newest first (the admin API's list)."""
        async with self._sessions() as session:
            query = select(ApiKeyRow).order_by(ApiKeyRow.created_at.desc(), ApiKeyRow.id)
            rows = (await session.scalars(query)).all()
        return [ApiKey.from_row(row) for row in rows]

    async def get(self, key_id: str) -> ApiKey | None:
        """The key with this id, if any."""
        async with self._sessions() as session:
            row = await session.get(ApiKeyRow, key_id)
        return ApiKey.from_row(row) if row is not None else None

    async def update(self, key_id: str, changes: dict[str, Any]) -> ApiKey | None:
        """Set some of a key's name, limits, models and expiry (None clears a limit); None if
        there is no such key. ``models`` is a list of names, or None for every model."""
        unknown = set(changes) - UPDATABLE
        if unknown:
            raise ValueError(f"not updatable: {sorted(unknown)}")
        async with self._sessions() as session, session.begin():
            row = await session.get(ApiKeyRow, key_id, with_for_update=True)
            if row is None:
                return None
            for field, value in changes.items():
                if field == "models":
                    value = ",".join(value) if value else None
                setattr(row, field, value)
        return ApiKey.from_row(row)

    async def revoke_id(self, key_id: str) -> ApiKey | None:
        """Revoke the key with this id (a revoked key keeps its first revocation time); None if
        there is no such key."""
        async with self._sessions() as session, session.begin():
            row = await session.get(ApiKeyRow, key_id, with_for_update=True)
            if row is None:
                return None
            if row.revoked_at is None:
                row.revoked_at = datetime.now(UTC)
        return ApiKey.from_row(row)

    async def revoke(self, id_or_prefix: str) -> bool:
        """Revoke a key by id or prefix; False if there is no such key."""
        async with self._sessions() as session, session.begin():
            result = await session.execute(
                update(ApiKeyRow)
                .where((ApiKeyRow.id == id_or_prefix) | (ApiKeyRow.prefix == id_or_prefix))
                .where(ApiKeyRow.revoked_at.is_(None))
                .values(revoked_at=datetime.now(UTC))
            )
        return bool(getattr(result, "rowcount", 0))

    async def by_prefix(self, prefix: str) -> ApiKey | None:
        """The key with ``prefix``, if any."""
        async with self._sessions() as session:
            row = await session.scalar(select(ApiKeyRow).where(ApiKeyRow.prefix == prefix))
        return ApiKey.from_row(row) if row is not None else None


@dataclass(frozen=True, slots=True)
class Caller:
    """Who a request comes from: a key, or the admin."""

    key: ApiKey | None
    is_admin: bool = False

    @property
    def key_id(self) -> str | None:
        return self.key.id if self.key is not None else None


ADMIN = Caller(key=None, is_admin=True)


class Authenticator:
    """Turns an ``Authorization`` header into a :class:`Caller`, or refuses it (401).

    Keys are cached for ``cache_seconds``: a revocation reaches every replica within that time.
    """

    def __init__(self, store: KeyStore, *, admin_key: str | None, cache_seconds: float) -> None:
        self._store = store
        self._admin_digest = digest(admin_key) if admin_key else None
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}

    @property
    def store(self) -> KeyStore:
        """Where the keys live (the admin API changes them there)."""
        return self._store

    def forget(self, prefix: str) -> None:
        """Drop a cached lookup: a key changed here takes effect here at once (other replicas
        within ``cache_seconds``)."""
        self._cache.pop(prefix, None)

    async def authenticate(self, authorization: str | None) -> Caller:
        """The caller, or :class:`AuthenticationFailed` (the same for every kind of wrong key)."""
        scheme, _, candidate = (authorization or "").partition(" ")
        candidate = candidate.strip()
        if scheme.lower() != "bearer" or not candidate:
            raise AuthenticationFailed(
                "an API key is required: send `Authorization: Bearer <key>` (or `x-api-key: <key>`)"
            )
        candidate_digest = digest(candidate)
        if self._admin_digest is not None and hmac.compare_digest(candidate_digest, self._admin_digest):
            return ADMIN
        match = KEY_FORMAT.match(candidate)
        key = await self._lookup(match.group(1)) if match else None
        stored = key.secret_sha256 if key is not None else _DUMMY_DIGEST
        if (
            hmac.compare_digest(candidate_digest, stored)
            and key is not None
            and key.usable(datetime.now(UTC))
        ):
            return Caller(key=key)
        raise AuthenticationFailed("invalid API key")

    async def _lookup(self, prefix: str) -> ApiKey | None:
        now = time.monotonic()
        cached = self._cache.get(prefix)
        if cached is not None and now - cached[0] < self._cache_seconds:
            return cached[1]
        key = await self._store.by_prefix(prefix)
        if len(self._cache) > 10_000:
            self._cache.clear()  # bounded: random prefixes from a scanner must not grow it
        self._cache[prefix] = (now, key)
        return key
