"""``GET /v1/usage``: tokens and cost from the ledger, grouped by model, day, hour, key or
deployment, and optionally split by a second dimension (``split_by``: a chart per model per day).

A key sees its own usage; the admin key sees everyone's (``key_id`` narrows it). With auth
off (loopback development) the whole ledger is visible.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from sqlalchemy.ext.asyncio import AsyncEngine

from tokenrelay.api.routes import caller_of
from tokenrelay.errors import InvalidRequest, PermissionDenied, ServiceUnavailable
from tokenrelay.ledger.queries import GroupBy, SplitBy, usage_report

usage_router = APIRouter()


def _moment(value: str | None, param: str) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(f"{param} must be an ISO 8601 date or date-time", param=param) from None
    # In UTC: SQLite compares the stored UTC wall time as text.
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)


@usage_router.get("/v1/usage", summary="Tokens and cost, grouped by model, day, hour, key or deployment")
async def usage(
    request: Request,
    since: str | None = Query(default=None, description="ISO 8601; streams started at or after"),
    until: str | None = Query(default=None, description="ISO 8601; streams started before"),
    group_by: GroupBy = "model",
    split_by: Annotated[SplitBy | None, Query(description="a second dimension within each group")] = None,
    key_id: str | None = Query(default=None, description="admin only: one key's usage"),
) -> dict[str, Any]:
    caller = await caller_of(request)
    engine: AsyncEngine | None = request.app.state.engine
    if engine is None:
        raise ServiceUnavailable("the ledger is disabled: there is no usage to report")
    if caller is not None and not caller.is_admin:
        if key_id is not None and key_id != caller.key_id:
            raise PermissionDenied("a key can only read its own usage", param="key_id")
        key_id = caller.key_id
    if split_by is not None and split_by == group_by:
        raise InvalidRequest("split_by must differ from group_by", param="split_by")
    start, end = _moment(since, "since"), _moment(until, "until")
    data = await usage_report(
        engine, group_by=group_by, split_by=split_by, since=start, until=end, key_id=key_id
    )
    totals: dict[str, Any] = {
        field: sum(item[field] for item in data)
        for field in ("streams", "prompt_tokens", "completion_tokens", "total_tokens")
    }
    totals["cost_usd"] = round(sum(float(item["cost_usd"]) for item in data), 6)
    return {
        "object": "usage",
        "group_by": group_by,
        **({"split_by": split_by} if split_by is not None else {}),
        "since": start.isoformat() if start else None,
        "until": end.isoformat() if end else None,
        "data": data,
        "totals": totals,
    }
