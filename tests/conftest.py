"""Shared test harness: real servers in subprocesses, talking over loopback TCP.

* ``sim``: the simulated upstream (``tokenrelay sim``), one per session.
* ``gateway``: ``tokenrelay serve`` on SQLite with the model table below, one per session.
* ``pg_gateway``: the same on PostgreSQL (127.0.0.1:5432/test).
* ``start_gateway``: a private gateway for tests that stop it or need other settings.

Tests tag requests with their own ``X-Request-ID`` so they can find their stream in the
simulator's ``/_stats`` and in the ledger, whatever else the shared server is doing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

PG_ADMIN_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def closed_port() -> int:
    """A loopback port nothing listens on (connections are refused)."""
    return free_port()


def wait_http(url: str, timeout: float = 20.0, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before answering {url}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


@dataclass
class Sim:
    url: str
    process: subprocess.Popen[bytes]

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def stats(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.url}/_stats", timeout=5).json())

    def request(self, request_id: str) -> dict[str, Any] | None:
        for entry in self.stats()["requests"]:
            if entry["request_id"] == request_id:
                return dict(entry)
        return None

    async def wait_ended(self, request_id: str, timeout: float = 5.0) -> dict[str, Any]:
        """The simulator's record of ``request_id`` once its connection has ended."""
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=5) as client:
            while time.monotonic() < deadline:
                for entry in (await client.get(f"{self.url}/_stats")).json()["requests"]:
                    if entry["request_id"] == request_id and entry["ended_at"] is not None:
                        return dict(entry)
                await asyncio.sleep(0.01)
        raise AssertionError(f"the upstream request {request_id} was still open after {timeout}s")


@pytest.fixture(scope="session")
def sim() -> Iterator[Sim]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tokenrelay", "sim", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/_stats", process=process)
        yield Sim(url=url, process=process)
    finally:
        process.terminate()
        process.wait(10)


def model_table(sim_base_url: str) -> str:
    """TOML for the models the tests use, each one a behaviour of the simulator."""
    behaviours = {
        "fast": "tokens=20",
        "paced": "tokens=20&tps=50",
        "echo": "echo=1",
        "slow": "tokens=2000&tps=50",
        "stall": "tokens=50&stall_after=3&stall_seconds=30",
        "stall-first": "tokens=50&stall_after=0&stall_seconds=30",
        "headers-slow": "headers_delay=30",
        "ratelimit": "status=429&retry_after=7",
        "error500": "status=500",
        "rejected": "status=400",
        "drop": "tokens=50&drop_after=5&tps=200",
        "drop-first": "tokens=50&drop_after=0",
        "midstream-error": "tokens=50&error_after=5",
        "nousage": "tokens=20&usage=0",
        "nousage-echo": "echo=1&usage=0",
        # A row the database refuses: upstream_model is longer than its 200-character column.
        "toolong": "tokens=3&pad=" + "x" * 250,
    }
    lines = ['default_model = "fast"', ""]
    for name, options in behaviours.items():
        lines += [
            f'[models."{name}"]',
            f'base_url = "{sim_base_url}"',
            f'upstream_model = "sim?{options}"',
            "",
        ]
    lines += [
        # A priced model: rows carry their cost, USD budgets apply.
        '[models."priced"]',
        f'base_url = "{sim_base_url}"',
        'upstream_model = "sim?tokens=20"',
        "input_price_per_million = 1000.0",
        "output_price_per_million = 2000.0",
        "",
        '[models."first-token-timeout"]',
        f'base_url = "{sim_base_url}"',
        'upstream_model = "sim?ttft=5"',
        "first_token_timeout_seconds = 0.3",
        "",
        '[models."idle-timeout"]',
        f'base_url = "{sim_base_url}"',
        'upstream_model = "sim?tokens=50&stall_after=3&stall_seconds=30"',
        "idle_timeout_seconds = 0.3",
        "",
        '[models."refused"]',
        f'base_url = "http://127.0.0.1:{closed_port()}/v1"',
        "",
    ]
    return "\n".join(lines)


@dataclass
class Gateway:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    database_url: str

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)

    async def ledger_rows(
        self, request_id: str, *, timeout: float = 5.0, settle: float = 0.3
    ) -> list[dict[str, Any]]:
        """The ledger rows of ``request_id``: read once one exists (or ``timeout`` passed), then
        read again ``settle`` seconds later, so that a duplicate written late is counted too."""
        engine = create_async_engine(self.database_url)

        async def read() -> list[dict[str, Any]]:
            async with engine.connect() as connection:
                result = await connection.execute(
                    text("SELECT * FROM usage_record WHERE request_id = :rid"), {"rid": request_id}
                )
                return [dict(row._mapping) for row in result]

        try:
            deadline = time.monotonic() + timeout
            while not await read() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await asyncio.sleep(settle)
            return await read()
        finally:
            await engine.dispose()


def _launch_gateway(
    tmp: Path, *, config: str, database_url: str, env: dict[str, str] | None = None
) -> Gateway:
    port = free_port()
    config_path = tmp / f"gateway-{port}.toml"
    config_path.write_text(config)
    log_path = tmp / f"gateway-{port}.log"
    full_env = {
        **os.environ,
        "TOKENRELAY_LEDGER__DATABASE_URL": database_url,
        "TOKENRELAY_LEDGER__BATCH_MAX_SECONDS": "0.05",
        "TOKENRELAY_LEDGER__SPOOL_DIR": str(tmp / f"spool-{port}"),
        **(env or {}),
    }
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "tokenrelay", "serve", "--port", str(port), "--config", str(config_path)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=full_env,
            # A group of its own: with --workers N, killing the group kills the workers too.
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/healthz", process=process)
    except RuntimeError as exc:
        process.kill()
        raise RuntimeError(f"{exc}\n--- gateway log ---\n{log_path.read_text()}") from exc
    return Gateway(url=url, process=process, log_path=log_path, database_url=database_url)


@pytest.fixture(scope="session")
def gateway(sim: Sim, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("gateway")
    gw = _launch_gateway(
        tmp, config=model_table(sim.base_url), database_url=f"sqlite+aiosqlite:///{tmp / 'ledger.db'}"
    )
    yield gw
    gw.stop()


def postgres_available() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def pg_database_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped afterwards."""
    if not postgres_available():
        if os.environ.get("TOKENRELAY_TEST_POSTGRES") == "required":
            pytest.fail(
                "PostgreSQL is required (TOKENRELAY_TEST_POSTGRES=required) but 127.0.0.1:5432 is down"
            )
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
    name = f"tokenrelay_test_{uuid.uuid4().hex[:8]}"

    async def admin(statement: str) -> None:
        engine = create_async_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as connection:
                await connection.execute(text(statement))
        finally:
            await engine.dispose()

    def run(statement: str) -> None:
        # In a thread of its own: the fixture may be first requested from inside a running loop.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, admin(statement)).result()

    run(f'CREATE DATABASE "{name}"')
    yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_gateway(sim: Sim, pg_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("pg-gateway")
    gw = _launch_gateway(tmp, config=model_table(sim.base_url), database_url=pg_database_url)
    yield gw
    gw.stop()


@pytest.fixture
def start_gateway(sim: Sim, tmp_path: Path) -> Iterator[Any]:
    """Start a private gateway: ``start_gateway(env={...})``; stopped (killed if need be) at the end."""
    started: list[Gateway] = []

    def start(env: dict[str, str] | None = None, database_url: str | None = None) -> Gateway:
        gw = _launch_gateway(
            tmp_path,
            config=model_table(sim.base_url),
            database_url=database_url or f"sqlite+aiosqlite:///{tmp_path / f'ledger-{len(started)}.db'}",
            env=env,
        )
        started.append(gw)
        return gw

    yield start
    for gw in started:
        if gw.process.poll() is None:
            os.killpg(gw.process.pid, signal.SIGKILL)
            gw.process.wait(10)


def new_request_id() -> str:
    return f"test-{uuid.uuid4().hex}"


@dataclass
class RawStream:
    """A streaming request on a plain TCP socket, so a test controls exactly when it closes."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    received: bytes = b""

    async def read_until(self, marker: bytes, timeout: float = 10.0, count: int = 1) -> bytes:
        """Read until ``marker`` has been received ``count`` times (raw bytes, HTTP chunking included)."""
        async with asyncio.timeout(timeout):
            while self.received.count(marker) < count:
                data = await self.reader.read(65536)
                if not data:
                    raise AssertionError(f"connection closed before {marker!r}; got {self.received[-500:]!r}")
                self.received += data
        return self.received

    async def read_to_end(self, timeout: float = 10.0) -> bytes:
        async with asyncio.timeout(timeout):
            while data := await self.reader.read(65536):
                self.received += data
        return self.received

    def close(self) -> float:
        """Close the connection; returns the monotonic time it was closed at."""
        self.writer.close()
        return time.monotonic()


async def open_raw_stream(
    base_url: str,
    path: str,
    body: bytes,
    request_id: str,
    content_type: str = "application/json",
    authorization: str | None = None,
) -> RawStream:
    url = httpx.URL(base_url)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    auth = f"Authorization: {authorization}\r\n" if authorization else ""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {url.host}:{url.port}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nX-Request-ID: {request_id}\r\n{auth}\r\n"
    )
    writer.write(head.encode() + body)
    await writer.drain()
    return RawStream(reader, writer)


def parse_events(raw: bytes) -> list[dict[str, Any]]:
    """The JSON ``data`` of each SSE event in a response body (HTTP chunking removed by httpx)."""
    import orjson

    events = []
    for block in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        data = [line[6:] for line in block.split(b"\n") if line.startswith(b"data: ")]
        if data and data[0] != b"[DONE]":
            events.append(orjson.loads(b"\n".join(data)))
    return events


class TcpProxy:
    """A loopback TCP proxy a test can cut (refuse and drop every connection) and restore.

    It stands between the gateway and PostgreSQL to make a database outage without stopping the
    shared server. It runs its own event loop in a thread, so it keeps forwarding while a test
    blocks.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.Transport] = set()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def start(self) -> TcpProxy:
        self._thread.start()
        self.restore()
        return self

    def restore(self) -> None:
        self._call(self._listen())

    def cut(self) -> None:
        self._call(self._cut())

    def close(self) -> None:
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _shutdown(self) -> None:
        await self._cut()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for transport in list(self._transports):
            transport.abort()
        self._transports.clear()

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_writer.transport.abort()
            return
        pair = (client_writer.transport, upstream_writer.transport)
        self._transports.update(pair)  # type: ignore[arg-type]

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except OSError:
                pass
            finally:
                writer.transport.abort()

        await asyncio.gather(pipe(client_reader, upstream_writer), pipe(upstream_reader, client_writer))
        self._transports.difference_update(pair)


@pytest.fixture
def pg_proxy() -> Iterator[TcpProxy]:
    if not postgres_available():
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
    proxy = TcpProxy(5432).start()
    yield proxy
    proxy.close()


def via_proxy(database_url: str, proxy: TcpProxy) -> str:
    """The same database URL, reached through the proxy."""
    return database_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
