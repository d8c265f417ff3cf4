"""``create_app(settings)``: the one place that wires the gateway together.

The lifespan builds everything in order (simulator, tokenizer, ledger DB, ledger writer,
upstream clients, drain coordinator) and tears it down in reverse. Nothing connects at import
time and no module-level global holds a connection.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from types import FrameType
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import Receive, Scope, Send

from tokenrelay.api.admin import admin_router
from tokenrelay.api.errors import install_error_handlers
from tokenrelay.api.middleware import BodyLimitMiddleware, RequestIdMiddleware, offer_server_extensions
from tokenrelay.api.routes import router, stream_routes
from tokenrelay.api.streams import stream_control_routes
from tokenrelay.api.usage import usage_router
from tokenrelay.auth.keys import Authenticator, KeyStore, secret_detector
from tokenrelay.catalog import load_settings, local_model_path
from tokenrelay.cluster import Cluster
from tokenrelay.config import BUILTIN_LOCAL_URL, BUILTIN_SIM_URL, Settings
from tokenrelay.ledger.db import create_engine
from tokenrelay.ledger.spool import Spool
from tokenrelay.ledger.store import LedgerStore
from tokenrelay.ledger.tokens import TokenCounter
from tokenrelay.ledger.writer import LedgerWriter
from tokenrelay.limits import MemoryRateLimiter, RateLimiter, RedisRateLimiter
from tokenrelay.limits.budgets import MemorySpending, RedisSpending, Spending
from tokenrelay.local.discovery import unavailable_reason
from tokenrelay.observability.logging import configure_logging, log_stream_end
from tokenrelay.observability.metrics import Metrics, NoMetrics
from tokenrelay.observability.summary import start_stream_rate
from tokenrelay.observability.tracing import NoTracing, Tracing, otlp_tracer_provider, tracing_requested
from tokenrelay.record import StreamRecord
from tokenrelay.relay import DrainCoordinator, RelayRuntime
from tokenrelay.routing import Routing
from tokenrelay.sim.embedded import EmbeddedSim
from tokenrelay.upstreams import Upstream, Upstreams
from tokenrelay.web import web_routes

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

    from tokenrelay.local.upstream import LocalUpstream

log = logging.getLogger(__name__)

_SignalHandler = Callable[[int, FrameType | None], Any] | int | None


def create_app(settings: Settings, *, tracer_provider: TracerProvider | None = None) -> FastAPI:
    """A gateway app for ``settings``; its resources live exactly as long as its lifespan.

    Tracing is on with ``tracer_provider``, or when the ``OTEL_EXPORTER_OTLP_*`` variables ask
    for it (the provider then exports over OTLP/HTTP).
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            url_overrides: dict[str, str] = {}
            if BUILTIN_SIM_URL in _base_urls(settings):
                sim = EmbeddedSim()
                url_overrides[BUILTIN_SIM_URL] = await asyncio.to_thread(sim.start)
                stack.callback(sim.stop)
                log.info("simulated upstream ready", extra={"base_url": url_overrides[BUILTIN_SIM_URL]})

            metrics = Metrics() if settings.metrics_enabled else NoMetrics()
            stack.callback(metrics.close)
            app.state.stream_rate = start_stream_rate(metrics, stack)

            tracing: Tracing | NoTracing = NoTracing()
            if tracer_provider is not None or tracing_requested():
                tracing = Tracing(tracer_provider or otlp_tracer_provider())
                stack.callback(tracing.close)

            counter = TokenCounter()
            await counter.load(m.tokenizer_encoding for m in settings.models.values())

            builtins: dict[str, Upstream] = {}
            local = await _start_local_model(settings, stack, counter)
            if local is not None:
                builtins[BUILTIN_LOCAL_URL] = local

            engine, store = None, None
            if settings.ledger.enabled:
                engine = create_engine(settings.ledger)
                stack.push_async_callback(engine.dispose)
                spool = Spool(settings.ledger.spool_dir, min_free_bytes=settings.ledger.spool_min_free_bytes)
                store = LedgerStore(engine=engine, spool=spool, settings=settings.ledger, events=metrics)
                await store.start()
                stack.push_async_callback(store.close)
            writer = LedgerWriter(
                store=store,
                counter=counter,
                batch_max_rows=settings.ledger.batch_max_rows,
                batch_max_seconds=settings.ledger.batch_max_seconds,
                on_finished=_log_and_count(metrics),
            )
            cluster = None
            if settings.cluster_redis_url():
                cluster = Cluster(settings, ledger=writer, counter=counter)
                # Closed after the writer's last rows (their leases go with them) ...
                stack.push_async_callback(cluster.aclose)
            await writer.start()
            stack.push_async_callback(writer.close)
            if cluster is not None:
                writer.on_stored = cluster.leases.forget
                await cluster.start()
                # ... and its reaper stopped before the writer's close (it submits rows).
                stack.push_async_callback(cluster.stop_tasks)

            upstreams = Upstreams(
                max_connections=settings.upstream_max_connections,
                url_overrides=url_overrides,
                builtins=builtins,
            )
            stack.push_async_callback(upstreams.aclose)
            routing = Routing(settings, upstreams, events=metrics)
            routing.start()

            drain = DrainCoordinator(settings.drain_seconds)
            stack.callback(drain.close)
            # Streams still running when the lifespan ends (server forced to stop) end now.
            stack.callback(drain.stop_all)
            stack.enter_context(_drain_on_signals(drain))

            auth, limiter, spending = None, None, None
            if settings.auth.enabled:
                auth, limiter, spending = await _start_auth(settings, engine, stack)
                writer.on_usage = spending.add

            app.state.runtime = RelayRuntime(
                settings=settings,
                ledger=writer,
                counter=counter,
                drain=drain,
                metrics=metrics,
                tracing=tracing,
                routing=routing,
                auth=auth,
                limiter=limiter,
                spending=spending,
                cluster=cluster,
            )
            app.state.metrics = metrics
            app.state.upstreams = upstreams
            app.state.local_model = local
            app.state.engine = engine
            app.state.ledger_store = store
            # Everything built so far lives as long as the app: move it out of the collector's
            # reach, so full collections stay short (a 100 ms pause was measured without this).
            gc.collect()
            gc.freeze()
            url = _public_url(settings)
            log.info(
                f"tokenrelay ready on {url}"
                + (" (the chat page)" if settings.web_page else "")
                + f"; default model {settings.default_model}",
                extra={"url": url, "models": list(settings.models), "default": settings.default_model},
            )
            yield

    if not settings.models:
        raise ValueError("no models configured (catalog.load_settings fills in the built-in ones)")
    app = TokenRelayApp(title="tokenrelay", version="0.1.0", lifespan=lifespan)
    install_error_handlers(app)
    app.router.routes.extend(stream_routes)
    app.router.routes.extend(stream_control_routes)
    app.include_router(router)
    app.include_router(usage_router)
    app.include_router(admin_router)
    if settings.web_page:
        app.router.routes.extend(web_routes())
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    admin_key = settings.auth.admin_key.get_secret_value() if settings.auth.admin_key else None
    app.add_middleware(RequestIdMiddleware, is_secret=secret_detector(admin_key))
    return app


class TokenRelayApp(FastAPI):
    """The gateway's ASGI app: FastAPI, plus the server's own send and abort offered to the relay.

    Here rather than in a middleware: Starlette's outermost middleware (its error handler)
    wraps ``send`` before any middleware of ours sees it.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            offer_server_extensions(scope, send)
        await super().__call__(scope, receive, send)


def _base_urls(settings: Settings) -> set[str]:
    """Every deployment's base URL."""
    return {d.base_url for m in settings.models.values() for d in m.resolved_deployments()}


def _public_url(settings: Settings) -> str:
    """Where a person on this machine finds the gateway."""
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    return f"http://{f'[{host}]' if ':' in host else host}:{settings.port}/"


async def _start_auth(
    settings: Settings, engine: AsyncEngine | None, stack: AsyncExitStack
) -> tuple[Authenticator, RateLimiter, Spending]:
    """Keys from the ledger database; limits and spending in memory, or in Redis if configured."""
    if engine is None:
        raise RuntimeError("auth.enabled needs the ledger database (it keeps the API keys)")
    admin = settings.auth.admin_key.get_secret_value() if settings.auth.admin_key else None
    auth = Authenticator(KeyStore(engine), admin_key=admin, cache_seconds=settings.auth.key_cache_seconds)
    limiter: RateLimiter
    spending: Spending
    if settings.auth.redis_url:
        import redis.asyncio as redis

        # One client (one connection pool) for limits and budgets alike.
        client = redis.Redis.from_url(settings.auth.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)
        stack.push_async_callback(client.aclose)
        longest = max(m.total_timeout_seconds for m in settings.models.values())
        limiter = RedisRateLimiter(
            client,
            fail_open=settings.auth.rate_limit_on_redis_error == "open",
            longest_stream_seconds=longest,
        )
        spending = RedisSpending(client, engine, fail_open=settings.auth.budget_on_redis_error == "open")
    else:
        limiter = MemoryRateLimiter()
        spending = MemorySpending(engine)
    log.info(
        "API keys required", extra={"rate_limits": limiter.health()["backend"], "admin_key": bool(admin)}
    )
    return auth, limiter, spending


def _log_and_count(metrics: Metrics | NoMetrics) -> Callable[[StreamRecord], None]:
    """The per-stream log line and metrics, from the same finished record."""

    def finished(record: StreamRecord) -> None:
        log_stream_end(record)
        metrics.stream_finished(record)

    return finished


async def _start_local_model(
    settings: Settings, stack: AsyncExitStack, counter: TokenCounter
) -> LocalUpstream | None:
    """Supervise the local model's child process if a model uses it; count with its tokenizer."""
    local_models = [
        name
        for name, m in settings.models.items()
        if any(d.base_url == BUILTIN_LOCAL_URL for d in m.resolved_deployments())
    ]
    if not local_models:
        if settings.local_model.enabled is None and not any(
            url.startswith("http") for url in _base_urls(settings)
        ):
            reason = unavailable_reason(local_model_path(settings.local_model))
            log.info("no local model", extra={"reason": reason})
        return None
    # Imported only when a model uses it: httpx and its dependencies are megabytes of memory.
    from tokenrelay.local.supervisor import LocalModelServer
    from tokenrelay.local.upstream import LocalTokenizer, LocalUpstream

    path = local_model_path(settings.local_model)
    reason = unavailable_reason(path)
    if reason is not None or path is None:
        raise RuntimeError(f"model {local_models[0]!r} needs the local model, but {reason}")
    server = LocalModelServer(settings.local_model, path, alias=settings.local_model.name)
    stack.push_async_callback(server.aclose)
    upstream = LocalUpstream(
        server,
        concurrency=settings.local_model.concurrency,
        max_connections=settings.upstream_max_connections,
    )
    tokenizer = LocalTokenizer(server)
    stack.callback(tokenizer.close)
    counter.use_model_tokenizer(tokenizer.count)
    if settings.local_model.start == "startup":
        server.start()
    return upstream


class _drain_on_signals:
    """Start draining when the server is told to stop, before it waits for our streams.

    uvicorn installs its SIGTERM/SIGINT handlers before the lifespan starts and only waits for
    open connections after them; chaining ours in front lets running streams learn of the
    shutdown (drain, then a ``shutdown`` error event) instead of being waited on forever.
    Only the main thread can handle signals; elsewhere this does nothing.
    """

    def __init__(self, drain: DrainCoordinator) -> None:
        self._drain = drain
        self._previous: dict[int, _SignalHandler] = {}

    def __enter__(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()

        def handler(signum: int, frame: FrameType | None) -> None:
            loop.call_soon_threadsafe(self._drain.begin)
            previous = self._previous.get(signum)
            if callable(previous):
                previous(signum, frame)

        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, handler)

    def __exit__(self, *_exc: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)


def create_app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` and worker processes: settings from file and env."""
    settings = load_settings()
    configure_logging(level=settings.log_level, fmt=settings.log_format, access_log=settings.access_log)
    return create_app(settings)
