"""Reading the ledger: usage reports (by model, day, hour, key or deployment, optionally split
by a second dimension) and each key's spending and last use.

Time buckets are UTC on both databases: SQLite stores the writer's UTC wall time as text;
PostgreSQL's ``date()`` would follow the session's time zone, so it is converted to UTC first.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import ColumnElement, SQLColumnExpression, func, literal_column, select
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.elements import Label

from tokenrelay.ledger.models import UsageRecord

GroupBy = Literal["model", "day", "key", "hour", "deployment"]
SplitBy = Literal["model", "key", "deployment"]


def _dimension(name: GroupBy, dialect: str) -> SQLColumnExpression[Any]:
    """The SQL expression one group (or split) value comes from."""
    started = UsageRecord.started_at
    if name == "model":
        return UsageRecord.model
    if name == "key":
        return UsageRecord.api_key_id
    if name == "deployment":
        return UsageRecord.deployment
    if dialect == "postgresql":
        utc = func.timezone(literal_column("'UTC'"), started)
        if name == "day":
            return func.to_char(utc, literal_column("'YYYY-MM-DD'"))
        return func.to_char(utc, literal_column("'YYYY-MM-DD\"T\"HH24:00:00+00:00'"))
    # SQLite (and anything storing ISO text): the stored value is UTC wall time.
    if name == "day":
        return func.date(started)
    return func.strftime("%Y-%m-%dT%H:00:00+00:00", started)


async def usage_report(
    engine: AsyncEngine,
    *,
    group_by: GroupBy,
    split_by: SplitBy | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    key_id: str | None = None,
) -> list[dict[str, Any]]:
    """Streams, tokens and cost per group, for streams started in ``[since, until)``.

    Each item has ``group``; with ``split_by`` it also names both values (``{"day": ...,
    "model": ...}``), one item per (group, split) pair.
    """
    conditions: list[ColumnElement[bool]] = []
    if key_id is not None:
        conditions.append(UsageRecord.api_key_id == key_id)
    if since is not None:
        conditions.append(UsageRecord.started_at >= since)
    if until is not None:
        conditions.append(UsageRecord.started_at < until)
    dialect = engine.dialect.name
    columns: list[Label[Any]] = [_dimension(group_by, dialect).label("group")]
    if split_by is not None:
        columns.append(_dimension(split_by, dialect).label("split"))
    # Typed Any: the group column's type differs by group_by.
    query: Any = (
        select(
            *columns,
            func.count().label("streams"),
            func.coalesce(func.sum(UsageRecord.prompt_tokens), 0).label("prompt_tokens"),
            func.coalesce(func.sum(UsageRecord.completion_tokens), 0).label("completion_tokens"),
            func.coalesce(func.sum(UsageRecord.cost_usd), 0.0).label("cost_usd"),
        )
        .where(*conditions)
        .group_by(*(column.element for column in columns))
        .order_by(*(column.element for column in columns))
    )
    async with engine.connect() as connection:
        rows = (await connection.execute(query)).all()
    items = []
    for row in rows:
        group = None if row.group is None else str(row.group)
        item: dict[str, Any] = {"group": group}
        if split_by is not None:
            item[group_by] = group
            item[split_by] = None if row.split is None else str(row.split)
        item.update(
            streams=int(row.streams),
            prompt_tokens=int(row.prompt_tokens),
            completion_tokens=int(row.completion_tokens),
            total_tokens=int(row.prompt_tokens) + int(row.completion_tokens),
            cost_usd=round(float(row.cost_usd), 6),
        )
        items.append(item)
    return items


@dataclass(frozen=True, slots=True)
class KeyUsage:
    """What the ledger holds for one key, all time."""

    streams: int
    tokens: int
    cost_usd: float
    last_used_at: datetime | None


async def usage_by_key(engine: AsyncEngine, *, key_id: str | None = None) -> dict[str, KeyUsage]:
    """Streams, tokens, cost and the latest stream start of every key that has rows (or of
    ``key_id`` only).

    The last use comes from the rows the ledger writes anyway, so nothing is written on the
    request path to track it.
    """
    query = (
        select(
            UsageRecord.api_key_id,
            func.count().label("streams"),
            func.coalesce(func.sum(UsageRecord.prompt_tokens + UsageRecord.completion_tokens), 0).label(
                "tokens"
            ),
            func.coalesce(func.sum(UsageRecord.cost_usd), 0.0).label("cost_usd"),
            func.max(UsageRecord.started_at).label("last_used_at"),
        )
        .where(UsageRecord.api_key_id.is_not(None) if key_id is None else UsageRecord.api_key_id == key_id)
        .group_by(UsageRecord.api_key_id)
    )
    async with engine.connect() as connection:
        rows = (await connection.execute(query)).all()
    return {
        str(row.api_key_id): KeyUsage(
            streams=int(row.streams),
            tokens=int(row.tokens),
            cost_usd=round(float(row.cost_usd), 6),
            last_used_at=_aware(row.last_used_at),
        )
        for row in rows
    }


def _aware(moment: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; they were written in UTC.
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)
