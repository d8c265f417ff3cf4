"""The relay's exit paths, in process: a fake ASGI client, but a real simulator, ledger and Redis.

The ASGI ``receive``/``send`` pair is the test's own, so it can cancel the stream's task at an
exact point or make stream set-up fail; everything behind the relay is real: the simulated
upstream over TCP, the ledger writer on SQLite, Redis behind a loopback proxy.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as redis
from sqlalchemy import text

from tests.helpers import REDIS_URL, Sim, TcpProxy, new_request_id, wait_until
from tokenrelay.auth.keys import ApiKey
from tokenrelay.config import LedgerSettings, ModelConfig, Settings
from tokenrelay.ledger.db import create_engine
from tokenrelay.ledger.spool import Spool
from tokenrelay.ledger.store import LedgerStore
from tokenrelay.ledger.tokens import TokenCounter
from tokenrelay.ledger.writer import LedgerWriter
from tokenrelay.limits import RateLimiter, RedisRateLimiter
from tokenrelay.observability.metrics import Metrics, NoMetrics
from tokenrelay.observability.tracing import NoTracing
from tokenrelay.protocols import ChatEvents
from tokenrelay.record import StreamRecord
from tokenrelay.relay import DrainCoordinator, RelayedStream, RelayRuntime
from tokenrelay.routing import ModelRouter, Routing
from tokenrelay.upstreams import Upstreams


class FakeClient:
    """The client side of ASGI: records what is sent; ``leave()`` makes ``receive`` report it."""

    def __init__(self) -> None:
        self.messages: list[MutableMapping[str, Any]] = []
        self.started = asyncio.Event()
        self.ended = asyncio.Event()
        self._gone = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        await self._gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: MutableMapping[str, Any]) -> None:
        self.messages.append(message)
        self.started.set()
        if message.get("more_body") is False:
            self.ended.set()

    def leave(self) -> None:
        self._gone.set()

    @property
    def status(self) -> int:
        return int(self.messages[0]["status"])


@dataclass
class Gateway:
    """The parts of a running gateway a stream needs, built as the app builds them."""

    runtime: RelayRuntime
    router: ModelRouter
    model: ModelConfig
    database_url: str

    def stream(self, key: ApiKey | None = None) -> RelayedStream:
        record = StreamRecord(
            stream_id=new_request_id().removeprefix("test-"),
            request_id=new_request_id(),
            model="fast",
            upstream_model="sim?tokens=5",
            messages=[{"role": "user", "content": "hi"}],
            tokenizer_encoding="cl100k_base",
            started_at=datetime.now(UTC),
            started_mono=asyncio.get_running_loop().time(),
            api_key_id=key.id if key is not None else None,
        )
        return RelayedStream(
            runtime=self.runtime,
            record=record,
            key=key,
            model=self.model,
            body={"messages": record.messages},
            router=self.router,
            encoder=ChatEvents(),
        )

    async def rows(self, request_id: str) -> list[dict[str, Any]]:
        engine = create_engine(LedgerSettings(database_url=self.database_url))
        try:
            async with engine.connect() as connection:
                result = await connection.execute(
                    text("SELECT * FROM usage_record WHERE request_id = :rid"), {"rid": request_id}
                )
                return [dict(row._mapping) for row in result]
        finally:
            await engine.dispose()


@pytest.fixture
async def gateway_parts(sim: Sim, tmp_path: Path) -> AsyncIterator[Any]:
    """``await gateway_parts(limiter=..., metrics=..., tracing=...)``: a Gateway, torn down after."""
    closers: list[Any] = []

    async def build(limiter: RateLimiter | None = None, metrics: Any = None, tracing: Any = None) -> Gateway:
        database_url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
        ledger = LedgerSettings(database_url=database_url, spool_dir=tmp_path / "spool")
        engine = create_engine(ledger)
        store = LedgerStore(
            engine=engine,
            spool=Spool(ledger.spool_dir, min_free_bytes=0),
            settings=ledger,
            events=NoMetrics(),
        )
        await store.start()
        counter = TokenCounter()
        await counter.load([])
        writer = LedgerWriter(store=store, counter=counter, batch_max_rows=50, batch_max_seconds=0.01)
        await writer.start()
        upstreams = Upstreams(max_connections=10)
        model = ModelConfig(base_url=sim.base_url, upstream_model="sim?tokens=5")
        settings = Settings(models={"fast": model}, keepalive_seconds=5)
        routing = Routing(settings, upstreams)
        runtime = RelayRuntime(
            settings=settings,
            ledger=writer,
            counter=counter,
            drain=DrainCoordinator(5),
            metrics=metrics or NoMetrics(),
            tracing=tracing or NoTracing(),
            routing=routing,
            limiter=limiter,
        )
        closers.extend([writer.close, store.close, engine.dispose, upstreams.aclose])
        return Gateway(runtime, routing.router("fast"), model, database_url)

    yield build
    for close in closers:
        await close()


def limited_key() -> ApiKey:
    return ApiKey(
        id=f"key_{new_request_id()[-12:]}",
        name="limited",
        prefix="trk_00000000",
        secret_sha256="0" * 64,
        created_at=datetime.now(UTC),
        max_concurrent=5,
    )


async def test_a_stream_cancelled_while_its_slot_is_released_keeps_its_row(
    gateway_parts: Any, redis_proxy: TcpProxy
) -> None:
    """Regression (lifecycle v2, defect 2): the relay awaited the Redis release before handing
    its record to the ledger; a cancellation landing in that await lost the row."""
    client = redis.Redis.from_url(redis_proxy.url_for(REDIS_URL, 6379), socket_timeout=5)
    try:
        gateway: Gateway = await gateway_parts(
            limiter=RedisRateLimiter(client, fail_open=False, longest_stream_seconds=60)
        )
        stream, fake = gateway.stream(limited_key()), FakeClient()
        task = asyncio.ensure_future(stream(scope(), fake.receive, fake.send))
        await fake.started.wait()  # admitted: its slot is taken
        redis_proxy.reply_delay = 2.0  # the release's reply will keep it waiting
        sent = redis_proxy.requests
        await wait_until(lambda: redis_proxy.requests > sent, timeout=5, what="the release is on its way")
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert fake.ended.is_set(), "the stream itself had completed"
    finally:
        redis_proxy.reply_delay = 0
        await client.aclose()
    rows = await wait_until(lambda: gateway.rows(stream._record.request_id), timeout=5, what="the row")
    assert [row["status"] for row in rows] == ["completed"]


class FailingTracing(NoTracing):
    def stream_span(self, *_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("the tracing back end fell over")


async def test_a_failure_while_a_stream_is_set_up_is_released_and_recorded(gateway_parts: Any) -> None:
    """Regression (lifecycle v2, defect 5): drain registration, the in-flight gauge, the span and
    the watcher were set up before the ``try`` whose ``finally`` undoes them; a failure there
    left a registered stream and a stuck gauge, with no row."""
    metrics = Metrics()
    gateway: Gateway = await gateway_parts(metrics=metrics, tracing=FailingTracing())
    stream, fake = gateway.stream(), FakeClient()
    await asyncio.wait_for(stream(scope(), fake.receive, fake.send), 5)

    assert fake.status == 500
    assert orjson.loads(fake.messages[1]["body"])["error"]["code"] == "internal_error"
    assert gateway.runtime.drain.active == 0
    in_flight = metrics.registry.get_sample_value("tokenrelay_streams_in_flight", {"model": "fast"})
    assert in_flight == 0
    rows = await wait_until(lambda: gateway.rows(stream._record.request_id), timeout=5, what="the row")
    assert [(row["status"], row["error_code"]) for row in rows] == [("upstream_error", "internal_error")]


def scope() -> dict[str, Any]:
    return {"type": "http", "headers": [], "extensions": {}}


async def test_a_finished_stream_leaves_no_reference_cycle_for_the_garbage_collector(
    gateway_parts: Any,
) -> None:
    """A stream's objects are freed by reference counting when it ends, whatever its end.

    Regression (found measuring lifecycle v2): the watchdog held the stream's callbacks while the
    stream held the watchdog, and the stream its watcher task, whose coroutine held the stream:
    17 objects per stream waited for the cyclic collector, whose pauses showed as a latency tail
    (TTFT p99 at 1 stream x1.7 against the relay before it)."""
    gateway: Gateway = await gateway_parts()
    gc.collect()
    gc.disable()
    try:
        for _ in range(5):
            stream, fake = gateway.stream(), FakeClient()
            await asyncio.wait_for(stream(scope(), fake.receive, fake.send), 5)  # completed
            stream, fake = gateway.stream(), FakeClient()
            task = asyncio.ensure_future(stream(scope(), fake.receive, fake.send))
            await fake.started.wait()
            fake.leave()  # client gone
            await asyncio.wait_for(task, 5)
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        left = sorted({type(o).__name__ for o in gc.garbage if type(o).__module__.startswith("tokenrelay")})
        assert left == [], f"freed only by the cyclic collector: {left}"
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
