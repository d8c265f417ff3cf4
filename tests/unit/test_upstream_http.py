"""The OpenAI upstream's reader against a raw TCP server: nothing lost to a dropped connection.

The server writes a whole (unfinished) response and closes -- with a FIN or a reset -- before
the client reads a byte of the body, which is the case aiohttp's public reads cannot handle:
the connection's failure is stored while the bytes are still buffered. Regression for
lifecycle v2, defect 1 (the end-to-end test is ``tests/e2e/test_upstream_drop.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import orjson
import pytest

from tests.helpers import wait_until
from tokenrelay.config import DeploymentConfig
from tokenrelay.errors import UpstreamProtocolError, UpstreamUnavailable
from tokenrelay.upstreams import OpenAIStream, OpenAIUpstream

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def sse(payload: dict[str, object] | bytes) -> bytes:
    data = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return b"data: " + data + b"\n\n"


def content(text: str) -> bytes:
    return sse(
        {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}}]}
    )


def chunked(body: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(body), body)


Serve = Callable[[bytes, str], AsyncIterator[int]]


@contextlib.asynccontextmanager
async def serving(response: bytes, ending: str) -> AsyncIterator[tuple[int, asyncio.Event]]:
    """A server answering any request with ``response`` in one write, then FIN, RST, or nothing
    (``hold``); yields its port and an event set once it has closed. Everything is closed after."""
    closed = asyncio.Event()
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await reader.readuntil(b"\r\n\r\n")
        writer.write(response)
        await writer.drain()
        if ending == "reset":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        if ending in ("fin", "reset"):
            writer.close()
            closed.set()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], closed
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def answered(response: bytes, ending: str) -> AsyncIterator[tuple[OpenAIStream, asyncio.Event]]:
    """An OpenAI stream opened against a server answering ``response`` (see ``serving``)."""
    async with serving(response, ending) as (port, closed):
        upstream = OpenAIUpstream(base_url=f"http://127.0.0.1:{port}/v1", api_key=None, max_connections=4)
        try:
            stream = await upstream.open_stream(
                body={"messages": []},
                upstream_model="m",
                config=DeploymentConfig(base_url="x"),
                request_id="r",
            )
            try:
                yield stream, closed
            finally:
                await stream.aclose()
        finally:
            await upstream.aclose()


@dataclass
class Seen:
    """What one event carried (events are reused: the iterator hands out one Chunk)."""

    text: str | None
    finish_reason: str | None


async def read_all(stream: OpenAIStream) -> tuple[list[Seen], UpstreamProtocolError | None]:
    seen: list[Seen] = []
    try:
        while not stream.ended:
            for event in await stream.read():
                seen.append(Seen(event.text, event.finish_reason))
    except UpstreamProtocolError as exc:
        return seen, exc
    return seen, None


@pytest.mark.parametrize("ending", ["fin", "reset"])
async def test_bytes_buffered_when_the_connection_dropped_are_read_before_the_error(ending: str) -> None:
    words = [f" w{i}" for i in range(50)]
    body = sse({"choices": [{"index": 0, "delta": {"role": "assistant"}}]}) + b"".join(map(content, words))
    async with answered(HEAD + chunked(body), ending) as (stream, closed):
        await closed.wait()
        reader = stream._body._content  # the precondition, checked rather than hoped for:
        await wait_until(lambda: reader.exception() is not None, timeout=5, what="the drop is stored")
        assert not reader.at_eof(), "the body's bytes are still buffered behind the stored error"

        events, error = await read_all(stream)

        assert "".join(e.text or "" for e in events) == "".join(words)
        assert isinstance(error, UpstreamProtocolError) and error.failure == "mid_stream_drop"
        assert "dropped" in error.message


async def test_a_complete_answer_ends_at_done_and_a_finish_without_done_ends_too() -> None:
    finish = sse({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    usage = sse({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}})
    for tail in (finish + usage + sse(b"[DONE]") + b"0\r\n\r\n", finish):
        async with answered(HEAD + chunked(content("hi") + tail), "fin") as (stream, _):
            events, error = await read_all(stream)
        assert error is None and stream.ended
        assert [e.text for e in events][:1] == ["hi"]
        assert any(e.finish_reason == "stop" for e in events)


async def test_what_came_before_a_broken_chunk_or_an_in_band_error_is_read_first() -> None:
    body = content("a") + content("b") + b"data: {not json\n\n" + content("never")
    async with answered(HEAD + chunked(body), "hold") as (stream, _):
        events, error = await read_all(stream)
    assert [e.text for e in events] == ["a", "b"]
    assert isinstance(error, UpstreamProtocolError) and "not JSON" in error.message

    body = content("a") + sse({"error": {"message": "overloaded"}}) + content("never")
    async with answered(HEAD + chunked(body), "hold") as (stream, _):
        events, error = await read_all(stream)
    assert [e.text for e in events] == ["a"], "nothing after the in-band error"
    assert isinstance(error, UpstreamProtocolError) and error.failure == "mid_stream_error"
    assert error.message == "upstream error mid-stream: overloaded"


async def test_the_proxy_from_the_environment_is_used_and_no_proxy_honoured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HTTP(S)_PROXY and NO_PROXY, as every HTTP client honours them (looked up once per URL)."""
    seen: list[bytes] = []

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n"))
        await reader.readuntil(b"\r\n\r\n")
        writer.write(HEAD + chunked(content("via the proxy") + sse(b"[DONE]")) + b"0\r\n\r\n")
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(proxy, "127.0.0.1", 0)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    monkeypatch.setenv("NO_PROXY", "localhost")
    upstream = OpenAIUpstream(base_url="http://upstream.invalid/v1", api_key=None, max_connections=4)
    try:
        stream = await upstream.open_stream(
            body={"messages": []}, upstream_model="m", config=DeploymentConfig(base_url="x"), request_id="r"
        )
        events, error = await read_all(stream)
        await stream.aclose()
    finally:
        await upstream.aclose()
        server.close()
        await server.wait_closed()
    assert seen == [b"POST http://upstream.invalid/v1/chat/completions HTTP/1.1\r\n"]
    assert error is None and [e.text for e in events] == ["via the proxy"]

    monkeypatch.setenv("NO_PROXY", "upstream.invalid")
    bypassed = OpenAIUpstream(base_url="http://upstream.invalid/v1", api_key=None, max_connections=4)
    try:
        with pytest.raises(UpstreamUnavailable):  # straight to a host that does not exist
            await bypassed.open_stream(
                body={"messages": []},
                upstream_model="m",
                config=DeploymentConfig(base_url="x"),
                request_id="r",
            )
    finally:
        await bypassed.aclose()
    assert len(seen) == 1
