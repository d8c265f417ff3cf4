"""``/v1/admin/*``: the operators' API (keys, the live summary); the admin key only.

Every route checks the caller before anything else (and reads no body before that): no key
or a wrong one is 401, a valid non-admin key 403. With auth off, or no admin key configured,
every route is 403 ``admin_key_required``: the console is never open to anyone.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy.ext.asyncio import AsyncEngine

from tokenrelay.api.admin_keys import KeyChanges, NewKey, audit, changed_fields, key_json, parse
from tokenrelay.api.routes import caller_of
from tokenrelay.auth.keys import ApiKey, Authenticator
from tokenrelay.errors import AdminKeyRequired, KeyNotFound, MetricsDisabled, PermissionDenied
from tokenrelay.ledger.queries import usage_by_key
from tokenrelay.observability.metrics import Metrics, NoMetrics
from tokenrelay.observability.summary import StreamRate, live_summary
from tokenrelay.relay import RelayRuntime

admin_router = APIRouter()


async def require_admin(request: Request) -> None:
    """Refuse anyone but the admin key (401 without a valid key, 403 with another)."""
    runtime: RelayRuntime = request.app.state.runtime
    admin_key = runtime.settings.auth.admin_key
    if runtime.auth is None or admin_key is None or not admin_key.get_secret_value():
        raise AdminKeyRequired(
            "the admin API needs auth.enabled = true and an admin key (TOKENRELAY_AUTH__ADMIN_KEY)"
        )
    caller = await caller_of(request)
    if caller is None or not caller.is_admin:
        raise PermissionDenied("this route needs the admin key")


@admin_router.get("/v1/admin/summary", summary="Live state: streams, latency, errors, deployments, ledger")
async def summary(request: Request) -> dict[str, Any]:
    """A small JSON view of the Prometheus metrics, for the admin page's live panel."""
    await require_admin(request)
    metrics: Metrics | NoMetrics = request.app.state.metrics
    rate: StreamRate | None = request.app.state.stream_rate
    if not isinstance(metrics, Metrics) or rate is None:
        raise MetricsDisabled("the live summary needs the metrics (metrics_enabled = true)")
    runtime: RelayRuntime = request.app.state.runtime
    store = request.app.state.ledger_store
    local = request.app.state.local_model

    def build() -> dict[str, Any]:
        return live_summary(
            metrics,
            rate,
            models=list(runtime.settings.models),
            ledger=None if store is None else store.health(),
            local_model=None if local is None else local.health(),
            cluster=None if runtime.cluster is None else runtime.cluster.health(),
        )

    if metrics.multiprocess_dir is None:
        return build()
    return await asyncio.to_thread(build)  # reads every worker's files


# -- keys ------------------------------------------------------------------------------------


def _auth(request: Request) -> Authenticator:
    runtime: RelayRuntime = request.app.state.runtime
    assert runtime.auth is not None  # require_admin checked it
    return runtime.auth


def _engine(request: Request) -> AsyncEngine:
    engine: AsyncEngine | None = request.app.state.engine
    assert engine is not None  # auth needs the ledger
    return engine


def _known_models(request: Request) -> list[str]:
    runtime: RelayRuntime = request.app.state.runtime
    return list(runtime.settings.models)


async def _one_key_json(request: Request, key: ApiKey) -> dict[str, Any]:
    usage = await usage_by_key(_engine(request), key_id=key.id)
    return key_json(key, usage.get(key.id), datetime.now(UTC))


@admin_router.get("/v1/admin/keys", summary="Every API key, newest first, with state and spending")
async def list_keys(request: Request) -> dict[str, Any]:
    await require_admin(request)
    keys = await _auth(request).store.newest_first()
    usage = await usage_by_key(_engine(request))
    now = datetime.now(UTC)
    return {"object": "list", "data": [key_json(key, usage.get(key.id), now) for key in keys]}


@admin_router.post("/v1/admin/keys", status_code=201, summary="Create a key (its secret is shown only here)")
async def create_key(request: Request) -> dict[str, Any]:
    await require_admin(request)
    body, fields = parse(await request.body(), NewKey, _known_models(request))
    key, secret = await _auth(request).store.create(
        name=body.name,
        budget_tokens=body.budget_tokens,
        budget_usd=body.budget_usd,
        rpm=body.rpm,
        max_concurrent=body.max_concurrent,
        models=fields.get("models"),
        expires_at=fields.get("expires_at"),
    )
    audit(
        "key_created",
        key,
        sorted(name for name, value in fields.items() if value is not None),
        request.state.request_id,
    )
    return {**key_json(key, None, datetime.now(UTC)), "secret": secret}


@admin_router.patch("/v1/admin/keys/{key_id}", summary="Change a key's name, limits, models or expiry")
async def update_key(request: Request, key_id: str) -> dict[str, Any]:
    await require_admin(request)
    _, fields = parse(await request.body(), KeyChanges, _known_models(request))
    auth = _auth(request)
    before = await auth.store.get(key_id)
    after = await auth.store.update(key_id, fields) if before is not None else None
    if before is None or after is None:
        raise KeyNotFound(f"no key with id {key_id!r}", param="key_id")
    auth.forget(after.prefix)
    changed = changed_fields(before, after)
    if changed:
        audit("key_updated", after, changed, request.state.request_id)
    return await _one_key_json(request, after)


@admin_router.post("/v1/admin/keys/{key_id}/revoke", summary="Revoke a key (idempotent)")
async def revoke_key(request: Request, key_id: str) -> dict[str, Any]:
    await require_admin(request)
    auth = _auth(request)
    before = await auth.store.get(key_id)
    after = await auth.store.revoke_id(key_id) if before is not None else None
    if before is None or after is None:
        raise KeyNotFound(f"no key with id {key_id!r}", param="key_id")
    auth.forget(after.prefix)
    if before.revoked_at is None:
        audit("key_revoked", after, ["revoked_at"], request.state.request_id)
    return await _one_key_json(request, after)
