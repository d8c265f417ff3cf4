"""Reading the ledger: usage reports, grouped by model, day or key."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from tokenrelay.ledger.models import UsageRecord

GroupBy = Literal["model", "day", "key"]


async def usage_report(
    engine: AsyncEngine,
    *,
    group_by: GroupBy,
    since: datetime | None = None,
    until: datetime | None = None,
    key_id: str | None = None,
) -> list[dict[str, Any]]:
    """Streams, tokens and cost per group, for streams started in ``[since, until)``."""
    conditions: list[ColumnElement[bool]] = []
    if key_id is not None:
        conditions.append(UsageRecord.api_key_id == key_id)
    if since is not None:
        conditions.append(UsageRecord.started_at >= since)
    if until is not None:
        conditions.append(UsageRecord.started_at < until)
    group = {
        "model": UsageRecord.model,
        "day": func.date(UsageRecord.started_at),
        "key": UsageRecord.api_key_id,
    }[group_by]
    # Typed Any: the group column's type differs by group_by.
    query: Any = (
        select(
            group.label("group"),
            func.count().label("streams"),
            func.coalesce(func.sum(UsageRecord.prompt_tokens), 0).label("prompt_tokens"),
            func.coalesce(func.sum(UsageRecord.completion_tokens), 0).label("completion_tokens"),
            func.coalesce(func.sum(UsageRecord.cost_usd), 0.0).label("cost_usd"),
        )
        .where(*conditions)
        .group_by(group)
        .order_by(group)
    )
    async with engine.connect() as connection:
        rows = (await connection.execute(query)).all()
    return [
        {
            "group": None if row.group is None else str(row.group),
            "streams": int(row.streams),
            "prompt_tokens": int(row.prompt_tokens),
            "completion_tokens": int(row.completion_tokens),
            "total_tokens": int(row.prompt_tokens) + int(row.completion_tokens),
            "cost_usd": round(float(row.cost_usd), 6),
        }
        for row in rows
    ]
