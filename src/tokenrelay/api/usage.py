"""``GET /v1/usage``: tokens and cost from the ledger, grouped by model, day or key.

A key sees its own usage; the admin key sees everyone's (``key_id`` narrows it). With auth
off (loopback development) the whole ledger is visible.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from tokenrelay.api.routes import caller_of
from tokenrelay.errors import InvalidRequest, PermissionDenied, ServiceUnavailable
from tokenrelay.ledger.models import UsageRecord

usage_router = APIRouter()


def _moment(value: str | None, param: str) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(f"{param} must be an ISO 8601 date or date-time", param=param) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@usage_router.get("/v1/usage", summary="Tokens and cost, grouped by model, day or key")
async def usage(
    request: Request,
    since: str | None = Query(default=None, description="ISO 8601; streams started at or after"),
    until: str | None = Query(default=None, description="ISO 8601; streams started before"),
    group_by: Literal["model", "day", "key"] = "model",
    key_id: str | None = Query(default=None, description="admin only: one key's usage"),
) -> dict[str, Any]:
    caller = await caller_of(request)
    engine: AsyncEngine | None = request.app.state.engine
    if engine is None:
        raise ServiceUnavailable("the ledger is disabled: there is no usage to report")
    conditions: list[ColumnElement[bool]] = []
    if caller is not None and not caller.is_admin:
        if key_id is not None and key_id != caller.key_id:
            raise PermissionDenied("a key can only read its own usage", param="key_id")
        conditions.append(UsageRecord.api_key_id == caller.key_id)
    elif key_id is not None:
        conditions.append(UsageRecord.api_key_id == key_id)
    start, end = _moment(since, "since"), _moment(until, "until")
    if start is not None:
        conditions.append(UsageRecord.started_at >= start)
    if end is not None:
        conditions.append(UsageRecord.started_at < end)
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
    data: list[dict[str, Any]] = [
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
    totals: dict[str, Any] = {
        field: sum(item[field] for item in data)
        for field in ("streams", "prompt_tokens", "completion_tokens", "total_tokens")
    }
    totals["cost_usd"] = round(sum(float(item["cost_usd"]) for item in data), 6)
    return {
        "object": "usage",
        "group_by": group_by,
        "since": start.isoformat() if start else None,
        "until": end.isoformat() if end else None,
        "data": data,
        "totals": totals,
    }
