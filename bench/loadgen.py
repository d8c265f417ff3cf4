"""The load generator: a raw asyncio protocol, and what it talks to.

A ``Conn`` writes a prepared HTTP/1.1 request and counts SSE events by counting ``b"\\n\\n"`` in
what it reads, with ``time.monotonic()`` timestamps (system-wide, comparable with the simulator's).
Nothing parses the events: at hundreds of thousands of chunks a second the load generator shares a
core with the simulator, and every microsecond it spends is one the simulator does not get.

The first content event, for TTFT, is found by its index (OpenAI: the role-only chunk comes first,
then content) or, for Anthropic's Messages stream, where the event index of the first text is
not fixed (``message_start``, the simulator's ``ping``, ``content_block_start``, a keep-alive
``ping`` in front), by a marker: the body is searched for ``"text_delta"`` until it shows up
(a few hundred bytes per request), and the event holding it is the first content.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import psutil

from workload import MESSAGES, MODELS

clock = time.monotonic


class Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection running one streamed request at a time."""

    def __init__(self, counter: list[int]) -> None:
        self.loop = asyncio.get_running_loop()
        self.counter = counter  # shared event counter (throughput)
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.done: asyncio.Future[bool] | None = None
        self.waiter: asyncio.Future[bool] | None = None
        self.wait_n = 0
        self._reset(0, 0)

    def _reset(self, first_content: int, n_content: int, marker: bytes | None = None) -> None:
        self.hbuf = b""
        self.headers = False
        self.status = 0
        self.clen: int | None = None
        self.body = 0
        self.events = 0
        self.last_nl = False
        self.tail = b""
        self.first_content = first_content  # event index (1-based) of the first content delta
        self.gap_end = first_content + n_content - 1  # last content event index
        self.n_content = n_content
        self.marker = marker  # found in the body: its event is the first content (first_content 0)
        self.scan = b""  # the body so far, while looking for the marker
        self.ttft: float | None = None
        self.gaps: list[float] = []
        self.last_t = 0.0
        self.sent_at = 0.0

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's are not asyncio.Transport

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: ARG002
        self.lost = True
        for fut in (self.done, self.waiter):
            if fut is not None and not fut.done():
                fut.set_result(False)

    def data_received(self, data: bytes) -> None:
        now = clock()
        if not self.headers:
            data = self.hbuf + data
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self.hbuf = data
                return
            head = data[:end].lower()
            data = data[end + 4 :]
            self.headers = True
            self.status = int(head[9:12])
            if b"transfer-encoding: chunked" not in head:
                self.clen = 0
                for line in head.split(b"\r\n"):
                    if line.startswith(b"content-length:"):
                        self.clen = int(line[15:])
                if self.clen == 0:
                    self._finish(False)
            if not data:
                return
        if self.clen is not None:  # a non-streamed (error) answer
            self.body += len(data)
            if self.body >= self.clen:
                self._finish(False)
            return
        n = data.count(b"\n\n")
        if self.last_nl and data[0] == 10:
            n += 1
        self.last_nl = data[-1] == 10
        if self.marker is not None:
            self._find_marker(data)
        if n:
            prev = self.events
            self.events = prev + n
            self.counter[0] += n
            if self.first_content and prev < self.gap_end:
                for index in range(prev + 1, min(self.events, self.gap_end) + 1):
                    if index == self.first_content:
                        self.ttft = now - self.sent_at
                        self.last_t = now
                    elif index > self.first_content:
                        self.gaps.append(now - self.last_t)
                        self.last_t = now
            if self.waiter is not None and self.events >= self.wait_n and not self.waiter.done():
                self.waiter.set_result(True)
        tail = data[-7:] if len(data) >= 7 else (self.tail + data)[-7:]
        self.tail = tail
        if tail == b"\r\n0\r\n\r\n":
            self._finish(self.status == 200)

    def _find_marker(self, data: bytes) -> None:
        """The first content's event index: the event the marker is in (counted as above)."""
        self.scan += data
        assert self.marker is not None
        at = self.scan.find(self.marker)
        if at >= 0:
            self.first_content = self.scan.count(b"\n\n", 0, at) + 1
            self.gap_end = self.first_content + self.n_content - 1
            self.marker = None
            self.scan = b""

    def _finish(self, ok: bool) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(ok)

    # API
    def begin(
        self, payload: bytes, first_content: int = 0, n_content: int = 0, marker: bytes | None = None
    ) -> asyncio.Future[bool]:
        """Send one request; the future is True when its stream completed with status 200.

        TTFT and gaps are taken for ``n_content`` content events from event ``first_content``, or,
        with a ``marker``, from the event it is found in."""
        assert self.transport is not None
        self._reset(first_content, n_content, marker)
        self.waiter = None
        self.done = self.loop.create_future()
        if self.lost:
            self.done.set_result(False)
            return self.done
        self.sent_at = clock()
        self.transport.write(payload)
        return self.done

    def wait_events(self, n: int) -> asyncio.Future[bool]:
        """A future that is True once ``n`` events of the current response have arrived."""
        self.wait_n = n
        self.waiter = self.loop.create_future()
        if self.events >= n:
            self.waiter.set_result(True)
        elif self.lost:
            self.waiter.set_result(False)
        return self.waiter

    def close(self) -> float:
        """Close the socket now (FIN); returns the monotonic time just before."""
        t = clock()
        if self.transport is not None and not self.lost:
            # uvloop's transport socket has no shutdown(); a duplicate descriptor shuts the socket
            # down at once, before the transport's own close runs on a later loop iteration.
            with contextlib.suppress(OSError, AttributeError, ValueError):
                fd = self.transport.get_extra_info("socket").fileno()
                with socket.socket(fileno=os.dup(fd)) as sock:
                    sock.shutdown(socket.SHUT_RDWR)
            self.transport.close()
        return t


async def connect(port: int, counter: list[int]) -> Conn:
    loop = asyncio.get_running_loop()
    _, conn = await asyncio.wait_for(
        loop.create_connection(lambda: Conn(counter), "127.0.0.1", port), timeout=5
    )
    return conn


# -- what we talk to ------------------------------------------------------------------------------


# Anthropic's Messages API requires max_tokens; the simulator ignores it, so any value above the
# longest answer asked for (``tput``: 20,000 tokens) keeps it from mattering.
MESSAGES_MAX_TOKENS = 32_000
TEXT_DELTA = b'"text_delta"'  # in the first (and every) Anthropic content event carrying text


@dataclass
class Target:
    """One way to reach the simulator: directly, through a gateway endpoint, or the tutorial app."""

    label: str
    port: int
    # "direct" | "v1" | "chat" | "tutorial" | "messages" (a gateway's /v1/messages) |
    # "direct-messages" (the simulator's /v1/messages)
    style: str
    proc: psutil.Process  # the process whose CPU / RSS is measured (the simulator for "direct")
    description: str = ""
    sent: int = 0  # requests built for this target (every stream the load generator started)
    # Gateway styles: the public model is prefix + key (a model of the gateway's TOML written
    # for this target, e.g. "refused/pace1": the same simulator options, other deployments).
    prefix: str = ""

    @property
    def path(self) -> str:
        if self.style == "chat":
            return "/chat"
        if self.style in ("messages", "direct-messages"):
            return "/v1/messages"
        return "/v1/chat/completions"

    @property
    def first_content(self) -> int:
        """Index of the first content event: /chat has no role-only event in front; Anthropic's
        stream is searched for its first text instead (``marker``)."""
        if self.marker is not None:
            return 0
        return 1 if self.style == "chat" else 2

    @property
    def marker(self) -> bytes | None:
        return TEXT_DELTA if self.style in ("messages", "direct-messages") else None

    def _body(self, key: str) -> bytes:
        if self.style in ("direct", "tutorial"):
            body: dict[str, Any] = {"model": "sim?" + MODELS[key], "stream": True, "messages": MESSAGES}
            if self.style == "direct":
                body["stream_options"] = {"include_usage": True}  # as the gateway asks upstream
        elif self.style == "direct-messages":
            body = {
                "model": "sim?" + MODELS[key],
                "max_tokens": MESSAGES_MAX_TOKENS,
                "stream": True,
                "messages": MESSAGES,
            }
        elif self.style == "messages":
            body = {
                "model": self.prefix + key,
                "max_tokens": MESSAGES_MAX_TOKENS,
                "stream": True,
                "messages": MESSAGES,
            }
        elif self.style == "v1":
            body = {"model": self.prefix + key, "stream": True, "messages": MESSAGES}
        else:
            body = {"model": self.prefix + key, "messages": MESSAGES}
        return orjson.dumps(body)

    def request(self, key: str, rid: str) -> bytes:
        self.sent += 1
        body = self._body(key)
        return (
            f"POST {self.path} HTTP/1.1\r\nhost: 127.0.0.1:{self.port}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"x-request-id: {rid}\r\n\r\n"
        ).encode() + body


# -- the sim's control plane ----------------------------------------------------------------------


class SimControl:
    def __init__(self, session: aiohttp.ClientSession, port: int) -> None:
        self.session = session
        self.base = f"http://127.0.0.1:{port}"
        # The read of /_stats in flight, shared by every waiter: 50 clients each polling the
        # simulator every 2 ms kept it too busy to notice closed connections promptly, which
        # showed as abort latency that was the harness's own.
        self._polling: asyncio.Future[dict[str, Any]] | None = None

    async def stats(self) -> dict[str, Any]:
        async with self.session.get(f"{self.base}/_stats", timeout=aiohttp.ClientTimeout(total=10)) as r:
            return orjson.loads(await r.read())  # type: ignore[no-any-return]

    async def reset(self) -> None:
        async with self.session.post(f"{self.base}/_stats/reset", timeout=aiohttp.ClientTimeout(total=10)):
            pass

    async def shared_stats(self) -> dict[str, Any]:
        """``stats()``, but one read at a time however many callers ask at once."""
        if self._polling is None or self._polling.done():
            self._polling = asyncio.ensure_future(self.stats())
        return await asyncio.shield(self._polling)

    async def wait_seen(self, request_id: str, what: str, within: float) -> bool:
        """Wait until the simulator's record of ``request_id`` has ``what`` set."""
        deadline = clock() + within
        while clock() < deadline:
            for entry in (await self.shared_stats())["requests"]:
                if entry["request_id"] == request_id and entry[what] is not None:
                    return True
            await asyncio.sleep(0.002)
        return False

    async def wait_ended(self, within: float) -> bool:
        """True once every request the simulator saw since the last reset has ended.

        (Not ``active == 0``: the tutorial app leaks upstream requests that never end.)
        """
        deadline = clock() + within
        while True:
            if all(e["ended_at"] is not None for e in (await self.stats())["requests"]):
                return True
            if clock() > deadline:
                return False
            await asyncio.sleep(0.05)
