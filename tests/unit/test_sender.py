"""The sender is the one writer of a stream's ``send``: keep-alives never interleave or trail.

Regression (lifecycle v2, defect 3): the forwarder and the keep-alive task both called
``send``; a ping racing the final send raised inside the ping task and was swallowed. The
fake ``send`` here yields to the loop on every call (as a real one does when the socket's
buffer is full) and fails the test on any overlap or any message after the last one.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import MutableMapping
from typing import Any

import pytest
from starlette.types import Send

from tokenrelay.observability.metrics import NoMetrics
from tokenrelay.protocols.base import SSE_COMMENT_PING, SSE_HEADERS
from tokenrelay.relay.sender import Sender

ERROR_RESPONSE = (429, [(b"content-type", b"application/json")], b'{"error": {}}')


class FakeSend:
    """An ASGI ``send`` that yields ``yields`` times per call and checks the protocol."""

    def __init__(self, yields: int = 3) -> None:
        self.yields = yields
        self.messages: list[MutableMapping[str, Any]] = []
        self.in_flight = 0
        self.problems: list[str] = []

    async def __call__(self, message: MutableMapping[str, Any]) -> None:
        if self.in_flight:
            self.problems.append(f"overlapping send: {message}")
        if self.messages and self.messages[-1].get("more_body") is False:
            self.problems.append(f"sent after the last message: {message}")
        starts = [m for m in self.messages if m["type"] == "http.response.start"]
        if message["type"] == "http.response.start" and starts:
            self.problems.append("a second response start")
        if message["type"] == "http.response.body" and not starts:
            self.problems.append("a body before the response start")
        self.in_flight += 1
        try:
            for _ in range(self.yields):
                await asyncio.sleep(0)
        finally:
            self.in_flight -= 1
        self.messages.append(message)

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages if m["type"] == "http.response.body")


def make_sender(send: Send, streaming: bool = True, wire_send: Send | None = None) -> Sender:
    return Sender(
        send,
        headers=SSE_HEADERS,
        streaming=streaming,
        keepalive=SSE_COMMENT_PING,
        metrics=NoMetrics(),
        wire_send=wire_send,
    )


async def test_a_keepalive_due_while_the_final_bytes_go_out_never_follows_them() -> None:
    send = FakeSend()
    sender = make_sender(send)
    sender.release()
    sender.pending += b"data: 1\n\n"
    await sender.flush()
    final = asyncio.ensure_future(sender.finish(b"data: end\n\n"))
    for _ in range(10):  # the watchdog finds a keep-alive due at every step of the final send
        await asyncio.sleep(0)
        sender.keepalive()
    await final
    await sender.aclose()
    assert send.problems == []
    assert send.messages[-1]["more_body"] is False and send.body.endswith(b"data: end\n\n")
    assert SSE_COMMENT_PING not in send.body, "no keep-alive while data was being written"


async def test_the_final_send_waits_for_a_keepalive_already_on_the_wire() -> None:
    send = FakeSend()
    sender = make_sender(send)
    sender.release()
    sender.pending += b"data: 1\n\n"
    await sender.flush()
    sender.keepalive()
    assert sender.keepalive_in_flight
    await sender.finish(b"data: end\n\n")
    await sender.aclose()
    assert send.problems == []
    assert send.body == b"data: 1\n\n" + SSE_COMMENT_PING + b"data: end\n\n"


async def test_an_error_after_a_keepalive_started_the_response_is_an_event_not_a_second_response() -> None:
    """The keep-alive task was created but had not run when the error came: deciding between an
    HTTP error and an error event must wait for it."""
    send = FakeSend()
    sender = make_sender(send)
    sender.pending += b"data: role-only\n\n"  # held back: no output yet
    sender.keepalive()
    await sender.fail(ERROR_RESPONSE, b"data: error-event\n\n")
    await sender.aclose()
    assert send.problems == []
    assert send.messages[0]["status"] == 200
    assert send.body == b"data: role-only\n\n" + SSE_COMMENT_PING + b"data: error-event\n\n"


async def test_an_error_before_anything_was_sent_is_an_http_error() -> None:
    send = FakeSend()
    sender = make_sender(send)
    sender.pending += b"data: role-only\n\n"
    await sender.fail(ERROR_RESPONSE, b"data: error-event\n\n")
    sender.keepalive()
    await sender.aclose()
    assert send.problems == [] and not sender.keepalive_in_flight
    assert send.messages[0]["status"] == 429 and send.body == b'{"error": {}}'


async def test_held_bytes_wait_for_the_first_output_and_a_non_streamed_answer_goes_whole() -> None:
    send = FakeSend()
    sender = make_sender(send)
    sender.pending += b"held"
    await sender.flush()
    assert send.messages == []
    sender.release()
    await sender.flush()
    assert send.body == b"held"

    whole = FakeSend()
    sender = make_sender(whole, streaming=False)
    sender.release()
    sender.pending += b"ignored by a non-streamed protocol"
    await sender.flush()
    sender.keepalive()
    assert whole.messages == [] and not sender.keepalive_in_flight
    await sender.finish(b"{}")
    assert [m["type"] for m in whole.messages] == ["http.response.start", "http.response.body"]


async def test_writing_says_since_when_a_write_is_blocked() -> None:
    release = asyncio.Event()

    async def blocked_send(_message: MutableMapping[str, Any]) -> None:
        await release.wait()

    sender = make_sender(FakeSend())
    sender._send = blocked_send
    sender.release()
    sender.pending += b"x"
    writing = asyncio.ensure_future(sender.flush())
    await asyncio.sleep(0.01)
    assert sender.writing and sender.last_write_at < asyncio.get_running_loop().time() + 1
    sender.keepalive()
    assert not sender.keepalive_in_flight, "no keep-alive behind a blocked write"
    release.set()
    await writing
    assert not sender.writing


@pytest.mark.parametrize("seed", range(25))
async def test_random_interleavings_keep_one_writer_and_nothing_after_the_end(seed: int) -> None:
    rng = random.Random(seed)
    send = FakeSend(yields=rng.randint(0, 4))
    sender = make_sender(send)

    async def watchdog() -> None:
        while not sender.closed:
            sender.keepalive()
            await asyncio.sleep(0) if rng.random() < 0.7 else None

    ticking = asyncio.ensure_future(watchdog())
    if rng.random() < 0.5:
        sender.release()
    for index in range(rng.randint(0, 6)):
        sender.pending += b"data: %d\n\n" % index
        if rng.random() < 0.3:
            sender.release()
        await sender.flush()
        for _ in range(rng.randint(0, 3)):
            await asyncio.sleep(0)
    if rng.random() < 0.5:
        await sender.finish(b"data: end\n\n")
    else:
        await sender.fail(ERROR_RESPONSE, b"data: error\n\n")
    await asyncio.wait_for(ticking, 5)
    await sender.aclose()
    assert send.problems == []
    assert send.messages[-1]["more_body"] is False


async def test_chunks_go_to_the_servers_own_send_and_the_start_through_the_middleware() -> None:
    # The middleware around ``send`` (request id, Starlette's error handlers) must see the
    # response start, or an exception would make them start a second response; the chunks
    # after it bypass them (BENCHMARKS.md: their three wrappers cost about 6 % per chunk).
    wire = FakeSend(yields=0)
    wrapped_messages: list[MutableMapping[str, Any]] = []

    async def through_middleware(message: MutableMapping[str, Any]) -> None:
        wrapped_messages.append(message)
        await wire(message)

    sender = make_sender(through_middleware, wire_send=wire)
    sender.release()
    for text in (b"one", b"two", b"three"):
        sender.pending += text
        await sender.flush()
    await sender.finish(b"end")
    assert wire.problems == []
    assert wire.body == b"onetwothreeend"
    assert [m["type"] for m in wrapped_messages] == [
        "http.response.start",
        "http.response.body",
        "http.response.body",
    ]
    assert [m.get("body") for m in wrapped_messages[1:]] == [b"one", b"end"]


async def test_a_detached_sender_writes_nowhere_not_even_to_the_servers_own_send() -> None:
    wire = FakeSend(yields=0)
    sender = make_sender(wire, wire_send=wire)
    sender.release()
    sender.pending += b"one"
    await sender.flush()
    sender.detach()
    sender.pending += b"two"
    await sender.flush()
    assert wire.body == b"one"
