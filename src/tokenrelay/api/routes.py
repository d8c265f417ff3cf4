"""HTTP routes: who calls, what they ask, which model; the stream itself is the relay's.

Every route authenticates first, before it reads a body: a caller without a valid key learns
nothing about the API (not even which fields a body needs).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import APIRouter, Request
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tokenrelay.api.anthropic import messages_endpoint
from tokenrelay.api.errors import describe_validation_errors
from tokenrelay.api.schemas import ChatCompletionRequest, ChatRequest
from tokenrelay.auth.keys import Caller
from tokenrelay.config import ModelConfig
from tokenrelay.errors import (
    InvalidRequest,
    ModelNotAllowed,
    ModelNotFound,
    PermissionDenied,
    ResumableUnavailable,
    ServiceUnavailable,
)
from tokenrelay.ledger.db import is_reachable
from tokenrelay.ledger.store import LedgerStore
from tokenrelay.limits.budgets import spending_health
from tokenrelay.observability.metrics import CONTENT_TYPE, Metrics, NoMetrics
from tokenrelay.protocols import ChatEvents, Encoder, OpenAIChunks, OpenAICompletion
from tokenrelay.record import StreamRecord
from tokenrelay.relay import RelayedStream, RelayRuntime

if TYPE_CHECKING:
    from tokenrelay.local.upstream import LocalUpstream

router = APIRouter()

Body = TypeVar("Body", bound=BaseModel)


async def caller_of(request: Request) -> Caller | None:
    """Who is calling (401 if auth is on and the key is missing or wrong); None with auth off.

    The key comes as ``Authorization: Bearer <key>`` or, as Anthropic's SDKs send it,
    ``x-api-key: <key>``; a bearer header wins when both are there.
    """
    runtime: RelayRuntime = request.app.state.runtime
    if runtime.auth is None:
        return None
    authorization = request.headers.get("authorization")
    api_key = request.headers.get("x-api-key")
    if api_key is not None and not (authorization or "").lower().startswith("bearer "):
        authorization = f"Bearer {api_key}"
    return await runtime.auth.authenticate(authorization)


async def _parse(request: Request, schema: type[Body]) -> Body:
    try:
        return schema.model_validate_json(await request.body())
    except ValidationError as exc:
        message, param = describe_validation_errors(list(exc.errors()))
        raise InvalidRequest(message, param=param) from None


async def _admitted_caller(request: Request) -> Caller | None:
    runtime: RelayRuntime = request.app.state.runtime
    if runtime.drain.draining:
        raise ServiceUnavailable("the gateway is shutting down; retry on another instance")
    return await caller_of(request)


def _stream(
    request: Request,
    caller: Caller | None,
    model_name: str | None,
    body: dict[str, Any],
    encoder: Encoder,
    resumable: bool | None = None,
) -> RelayedStream:
    """The stream of one chat request (the relay admits and runs it when the response is sent)."""
    runtime: RelayRuntime = request.app.state.runtime
    if runtime.drain.draining:  # again: the drain may have begun while the body arrived
        raise ServiceUnavailable("the gateway is shutting down; retry on another instance")
    resolved = runtime.settings.model(model_name)
    if resolved is None:
        raise ModelNotFound(f"the model {model_name!r} does not exist", param="model")
    public_name, model = resolved
    router = runtime.routing.router(public_name)
    key = caller.key if caller is not None else None
    if key is not None and not key.allows(public_name):
        raise ModelNotAllowed(f"this API key may not use the model {public_name!r}", param="model")
    record = StreamRecord(
        stream_id=uuid.uuid4().hex,
        request_id=request.state.request_id,
        model=public_name,
        # The serving deployment's, once one is chosen (relay/failover.py).
        upstream_model=router.deployments[0].config.upstream_model or public_name,
        messages=body["messages"],
        tokenizer_encoding=model.tokenizer_encoding,
        started_at=datetime.now(UTC),
        started_mono=time.monotonic(),
        api_key_id=key.id if key is not None else None,
        prices=model.prices(),
    )
    return RelayedStream(
        runtime=runtime,
        record=record,
        key=key,
        model=model,
        body=body,
        router=router,
        encoder=encoder,
        resumable=_resumable(request, runtime, model, encoder, resumable),
    )


def _resumable(
    request: Request, runtime: RelayRuntime, model: ModelConfig, encoder: Encoder, requested: bool | None
) -> bool:
    """Whether this stream is resumable: the body's ``resumable``, else ``X-Resumable``, else the
    model's default, else the gateway's. Refused at once (503) while Redis is away, unless
    ``cluster.resumable_fallback`` serves it as a plain stream."""
    header = request.headers.get("x-resumable")
    if requested is None and header is not None:
        requested = header.strip().lower() in ("1", "true", "yes")
    settings = runtime.settings
    wanted = requested
    if wanted is None:
        wanted = model.resumable if model.resumable is not None else settings.cluster.resumable_default
    if not wanted:
        return False
    if not encoder.streaming:
        if requested:
            raise InvalidRequest("only a streamed answer can be resumable (stream: true)", param="resumable")
        return False
    cluster = runtime.cluster
    if cluster is None:
        if requested:
            raise InvalidRequest(
                "this gateway has no Redis for resumable streams (cluster.redis_url)", param="resumable"
            )
        return False
    if not cluster.available:
        if settings.cluster.resumable_fallback:
            return False
        raise ResumableUnavailable("resumable streams need Redis, which is unavailable right now")
    return True


async def chat(request: Request) -> Response:
    """``POST /chat``: a chat answer as typed events (delta, usage, done, error)."""
    caller = await _admitted_caller(request)
    payload = await _parse(request, ChatRequest)
    return _stream(request, caller, payload.model, payload.upstream_body(), ChatEvents(), payload.resumable)


async def chat_completions(request: Request) -> Response:
    """``POST /v1/chat/completions``: OpenAI-compatible chat completions, streamed or not."""
    caller = await _admitted_caller(request)
    payload = await _parse(request, ChatCompletionRequest)
    encoder: Encoder
    if payload.stream:
        include_usage = bool(payload.stream_options and payload.stream_options.include_usage)
        encoder = OpenAIChunks(public_model=payload.model, include_usage=include_usage)
    else:
        encoder = OpenAICompletion(public_model=payload.model)
    return _stream(request, caller, payload.model, payload.upstream_body(), encoder, payload.resumable)


# The two streaming endpoints are plain Starlette routes: FastAPI's dependency solving and
# per-request exit stacks cost about 4 KiB and measurable CPU per stream, and these endpoints
# need neither (their bodies are validated with the same pydantic models, errors shaped the same).
stream_routes = [
    Route("/chat", chat, methods=["POST"]),
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/messages", messages_endpoint(admit=_admitted_caller, stream=_stream), methods=["POST"]),
]


@router.get("/v1/models", summary="The models this gateway serves")
async def list_models(request: Request) -> dict[str, Any]:
    runtime: RelayRuntime = request.app.state.runtime
    caller = await caller_of(request)
    key = caller.key if caller is not None else None
    return {
        "object": "list",
        "data": [
            {
                "id": name,
                "object": "model",
                "created": 0,
                "owned_by": "tokenrelay",
                "description": cfg.description,
            }
            # The default model first: pickers (the web page's among them) preselect it.
            for name, cfg in sorted(
                runtime.settings.models.items(), key=lambda item: item[0] != runtime.settings.default_model
            )
            if key is None or key.allows(name)
        ],
    }


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """The Prometheus text format; 404 when ``metrics_enabled`` is off."""
    collected: Metrics | NoMetrics = request.app.state.metrics
    runtime: RelayRuntime = request.app.state.runtime
    if runtime.auth is not None and not runtime.settings.auth.metrics_public:
        caller = await caller_of(request)
        if caller is None or not caller.is_admin:
            raise PermissionDenied("/metrics needs the admin key (auth.metrics_public = false)")
    if not isinstance(collected, Metrics):
        raise HTTPException(404, "metrics are turned off (metrics_enabled = false)")
    if collected.multiprocess_dir is None:
        body = collected.exposition()
    else:
        body = await asyncio.to_thread(collected.exposition)  # reads every worker's files
    return Response(body, media_type=CONTENT_TYPE)


@router.get("/readyz", summary="Ready to serve: not draining, and usage rows have somewhere to go")
async def readyz(request: Request) -> Response:
    """200 ``ready`` or ``degraded`` (DB away, rows spooling: still serving); 503 otherwise."""
    runtime: RelayRuntime = request.app.state.runtime
    store: LedgerStore | None = request.app.state.ledger_store
    if store is None:
        ledger: dict[str, Any] = {"state": "disabled"}
    else:
        ledger = store.health()
        if ledger["state"] == "ok" and not await is_reachable(request.app.state.engine):
            ledger["state"] = "degraded"
    draining = runtime.drain.draining
    if draining or ledger["state"] == "failed":
        status, code = "not_ready", 503
    else:
        status, code = ("degraded", 200) if ledger["state"] == "degraded" else ("ready", 200)
    body: dict[str, Any] = {"status": status, "draining": draining, "ledger": ledger}
    if runtime.limiter is not None:
        # Informational: with Redis away, limits fail open or closed as configured.
        body["rate_limits"] = runtime.limiter.health()
    if runtime.spending is not None:
        body["budgets"] = spending_health(runtime.spending)
    if runtime.cluster is not None:
        # Plain streams go on without Redis; resumable ones are refused (or served plain).
        body["cluster"] = runtime.cluster.health()
        if status == "ready" and not runtime.cluster.available:
            body["status"] = "degraded"
    # Informational: each deployment as this process sees it (healthy, ejected, probing).
    body["deployments"] = runtime.routing.snapshot()
    local: LocalUpstream | None = request.app.state.local_model
    if local is not None:
        # Informational: the gateway serves its other models whatever state this one is in.
        body["local_model"] = local.health()
    return JSONResponse(body, status_code=code)
