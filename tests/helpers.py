"""What the tests share: real servers in subprocesses, clients, and loopback fault proxies.

* :class:`Sim` / :func:`start_sim`: the simulated upstream (``tokenrelay sim``).
* :class:`Gateway` / :func:`launch_gateway`: ``tokenrelay serve`` with the model table below.
* :func:`chat_body`, :func:`post_chat`: the one way tests build and send a chat request.
* :func:`wait_until`: the one poll loop (other processes have no event to wait on).
* :class:`RawStream`: a request on a plain socket, so a test controls when it closes.
* :class:`TcpProxy`: a loopback proxy a test can cut, restore or slow down (PostgreSQL, Redis).

Tests tag requests with their own ``X-Request-ID`` so they can find their stream in the
simulator's ``/_stats`` and in the ledger, whatever else a shared server is doing. The
fixtures in ``conftest.py`` are built from these; tests import them from here.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

PG_ADMIN_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/0"


# -- ports and waiting -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def closed_port() -> int:
    """A loopback port nothing listens on (connections are refused)."""
    return free_port()


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def postgres_available() -> bool:
    return port_open(5432)


def redis_available() -> bool:
    return port_open(6379)


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


async def wait_until(
    predicate: Callable[[], Any] | Callable[[], Awaitable[Any]],
    *,
    timeout: float = 10.0,
    interval: float = 0.02,
    what: str = "the condition",
) -> Any:
    """Poll ``predicate`` (sync or async) until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout}s")
        await asyncio.sleep(interval)


# -- the simulated upstream ----------------------------------------------------------------


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

    async def wait_request(self, request_id: str, timeout: float = 5.0) -> dict[str, Any]:
        """The simulator's record of ``request_id`` once it has the request."""
        found: dict[str, Any] = await wait_until(
            lambda: self.request(request_id), timeout=timeout, what=f"upstream request {request_id}"
        )
        return found

    async def wait_ended(self, request_id: str, timeout: float = 5.0) -> dict[str, Any]:
        """The simulator's record of ``request_id`` once its connection has ended."""

        async def ended() -> dict[str, Any] | None:
            async with httpx.AsyncClient(timeout=5) as client:
                for entry in (await client.get(f"{self.url}/_stats")).json()["requests"]:
                    if entry["request_id"] == request_id and entry["ended_at"] is not None:
                        return dict(entry)
            return None

        try:
            found: dict[str, Any] = await wait_until(ended, timeout=timeout, interval=0.01)
        except AssertionError:
            raise AssertionError(
                f"the upstream request {request_id} was still open after {timeout}s"
            ) from None
        return found

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def start_sim() -> Sim:
    """A simulator process on a free port (stop it with ``stop()``)."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tokenrelay", "sim", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/_stats", process=process)
    except RuntimeError:
        process.kill()
        raise
    return Sim(url=url, process=process)


def model_table(sim_base_url: str) -> str:
    """TOML for the models the tests use, each one a behaviour of the simulator."""
    behaviours = {
        "fast": "tokens=20",
        "paced": "tokens=20&tps=50",
        "echo": "echo=1",
        # The prompt echoed back, paced: a resumable stream cut and resumed mid-answer.
        "echo-paced": "echo=1&tps=200",
        # Long answers at 2,000 tokens a second: the page's rendering under load.
        "markdown": "echo=1&piece=5&tps=2000",
        "long-line": "tokens=20000&tps=2000",
        "slow": "tokens=2000&tps=50",
        # Far more than the kernel's socket buffers hold (a slow client's test needs that).
        "huge": "tokens=200000",
        "stall": "tokens=50&stall_after=3&stall_seconds=30",
        "stall-first": "tokens=50&stall_after=0&stall_seconds=30",
        "headers-slow": "headers_delay=30",
        "ratelimit": "status=429&retry_after=7",
        "error500": "status=500",
        "rejected": "status=400",
        "drop": "tokens=50&drop_after=5&tps=200",
        "drop-first": "tokens=50&drop_after=0",
        # 50 of 100 tokens, then the connection is gone: as fast as possible, or paced; FIN or RST.
        "drop50": "tokens=100&drop_after=50&burst=1",
        "drop50-reset": "tokens=100&drop_after=50&drop=reset&burst=1",
        "drop50-paced": "tokens=100&drop_after=50&tps=200",
        "drop50-paced-reset": "tokens=100&drop_after=50&tps=200&drop=reset",
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
        # The same simulator spoken to in Anthropic's Messages API.
        '[models."claude-echo"]',
        'provider = "anthropic"',
        f'base_url = "{sim_base_url.removesuffix("/v1")}"',
        'upstream_model = "sim?echo=1"',
        "",
    ]
    return "\n".join(lines)


# -- the gateway -------------------------------------------------------------------------


@dataclass
class Gateway:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    database_url: str
    spool_dir: Path

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = 15, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)

    def readyz(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.url}/readyz", timeout=5).json())

    async def ledger_rows(
        self, request_id: str, *, timeout: float = 5.0, settle: float = 0.3
    ) -> list[dict[str, Any]]:
        """The ledger rows of ``request_id``: read once one exists (or ``timeout`` passed), then
        read again ``settle`` seconds later, so that a duplicate written late is counted too."""
        return await ledger_rows(self.database_url, request_id, timeout=timeout, settle=settle)


async def ledger_rows(
    database_url: str, request_id: str, *, timeout: float = 5.0, settle: float = 0.3
) -> list[dict[str, Any]]:
    """The rows of ``request_id`` in the ledger at ``database_url`` (see ``Gateway.ledger_rows``)."""
    engine = create_async_engine(database_url)

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


def launch_gateway(
    tmp: Path,
    *,
    config: str,
    database_url: str,
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
) -> Gateway:
    """``tokenrelay serve`` on a free port with ``config``; its log in ``tmp``."""
    port = free_port()
    config_path = tmp / f"gateway-{port}.toml"
    config_path.write_text(config)
    log_path = tmp / f"gateway-{port}.log"
    spool_dir = tmp / f"spool-{port}"
    full_env = {
        **os.environ,
        "TOKENRELAY_LEDGER__DATABASE_URL": database_url,
        "TOKENRELAY_LEDGER__BATCH_MAX_SECONDS": "0.05",
        "TOKENRELAY_LEDGER__SPOOL_DIR": str(spool_dir),
        **(env or {}),
    }
    command = [sys.executable, "-m", "tokenrelay", "serve", "--port", str(port), "--config", str(config_path)]
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [*command, *args],
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
    return Gateway(
        url=url, process=process, log_path=log_path, database_url=database_url, spool_dir=spool_dir
    )


# -- requests ------------------------------------------------------------------------------


def new_request_id() -> str:
    return f"test-{uuid.uuid4().hex}"


def chat_body(model: str | None = "fast", content: str = "hello", **extra: Any) -> bytes:
    """A chat request body (both routes take it; add ``stream=True`` for the OpenAI one).

    Extra fields that are None are left out."""
    body: dict[str, Any] = {"messages": [{"role": "user", "content": content}]}
    body.update((name, value) for name, value in extra.items() if value is not None)
    if model is not None:
        body["model"] = model
    return orjson.dumps(body)


async def post_chat(
    url: str,
    model: str | None = "fast",
    rid: str | None = None,
    *,
    path: str = "/chat",
    content: str = "hello",
    headers: dict[str, str] | None = None,
    timeout: float = 15.0,
    **extra: Any,
) -> httpx.Response:
    """POST a chat request and read the whole response (the stream, for streaming routes)."""
    sent = {"content-type": "application/json", **(headers or {})}
    if rid is not None:
        sent["x-request-id"] = rid
    async with httpx.AsyncClient(timeout=timeout) as client:
        return await client.post(f"{url}{path}", content=chat_body(model, content, **extra), headers=sent)


def parse_events(raw: bytes) -> list[dict[str, Any]]:
    """The JSON ``data`` of each SSE event in a response body (HTTP chunking removed by httpx)."""
    events = []
    for block in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        data = [line[6:] for line in block.split(b"\n") if line.startswith(b"data: ")]
        if data and data[0] != b"[DONE]":
            events.append(orjson.loads(b"\n".join(data)))
    return events


def delta_text(events: list[dict[str, Any]]) -> str:
    """The text of the ``delta`` events (``/chat``) or the chunks' content (OpenAI)."""
    parts = []
    for event in events:
        if event.get("type") == "delta":
            parts.append(event["text"])
        for choice in event.get("choices") or ():
            parts.append((choice.get("delta") or {}).get("content") or "")
    return "".join(parts)


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
    receive_buffer: int | None = None,
) -> RawStream:
    """Send a POST on a fresh socket; ``receive_buffer`` shrinks its kernel receive buffer."""
    url = httpx.URL(base_url)
    sock = socket.socket()
    if receive_buffer is not None:
        # Before connecting: the window scale is agreed in the handshake.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (url.host, url.port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=2**20)
    auth = f"Authorization: {authorization}\r\n" if authorization else ""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {url.host}:{url.port}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nX-Request-ID: {request_id}\r\n{auth}\r\n"
    )
    writer.write(head.encode() + body)
    await writer.drain()
    return RawStream(reader, writer)


# -- faults ----------------------------------------------------------------------------------


class TcpProxy:
    """A loopback TCP proxy a test can cut (refuse and drop every connection), restore, or slow.

    It stands between the gateway and PostgreSQL or Redis to make an outage (or a slow server)
    without touching the shared server. It runs its own event loop in a thread, so it keeps
    forwarding while a test blocks. ``reply_delay`` holds back every reply from the server
    for that many seconds; ``requests`` and ``replies`` count what was passed on each way.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.reply_delay = 0.0
        self.requests = 0
        self.replies = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.BaseTransport] = set()

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

    def url_for(self, url: str, default_port: int) -> str:
        """``url`` with the server's port replaced by the proxy's."""
        return url.replace(f"127.0.0.1:{default_port}", f"127.0.0.1:{self.port}")

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
            transport.abort()  # type: ignore[attr-defined]
        self._transports.clear()

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_writer.transport.abort()
            return
        pair = (client_writer.transport, upstream_writer.transport)
        self._transports.update(pair)

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, replies: bool) -> None:
            try:
                while data := await reader.read(65536):
                    if replies and self.reply_delay:
                        await asyncio.sleep(self.reply_delay)
                    writer.write(data)
                    await writer.drain()
                    if replies:
                        self.replies += 1
                    else:
                        self.requests += 1
            except OSError:
                pass
            finally:
                writer.transport.abort()

        await asyncio.gather(
            pipe(client_reader, upstream_writer, False), pipe(upstream_reader, client_writer, True)
        )
        self._transports.difference_update(pair)


def via_proxy(database_url: str, proxy: TcpProxy) -> str:
    """The same database URL, reached through the proxy."""
    return proxy.url_for(database_url, 5432)
