"""``tokenrelay.client`` (sync and async) against a real gateway and simulated upstream."""

from __future__ import annotations

import asyncio
import http.server
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers import Gateway, Sim, closed_port, new_request_id
from tokenrelay.client import (
    AsyncClient,
    BadRequestError,
    ChatEvent,
    Client,
    Delta,
    Done,
    RateLimitError,
    StreamError,
    StreamInterrupted,
    UpstreamError,
    Usage,
)

HELLO = [{"role": "user", "content": "Hello, wörld 👋"}]


def test_sync_stream_yields_deltas_usage_done_and_a_result(gateway: Gateway) -> None:
    events: list[ChatEvent] = []
    with Client(gateway.url) as client, client.stream_chat(HELLO, model="echo") as stream:
        events.extend(stream)
    deltas = [e for e in events if isinstance(e, Delta)]
    assert len(deltas) > 1, "the echo model answers in several pieces"
    assert "".join(d.text for d in deltas) == "Hello, wörld 👋"
    assert isinstance(events[-2], Usage)
    assert events[-1] == Done("stop")
    result = stream.result
    assert result.text == "Hello, wörld 👋"
    assert result.usage is not None and result.usage.source == "upstream"
    assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens
    assert result.request_id == stream.request_id and result.request_id
    assert result.time_to_first_token is not None and 0 < result.time_to_first_token <= result.duration


async def test_async_chat_and_models(gateway: Gateway) -> None:
    async with AsyncClient(gateway.url) as client:
        result = await client.chat(HELLO, model="nousage-echo")
        models = await client.models()
    assert result.text == "Hello, wörld 👋"
    assert result.usage is not None and result.usage.source == "estimated"
    assert models[0] == "fast", "the default model comes first"
    assert {"echo", "slow", "ratelimit"} <= set(models)


def test_refusals_before_the_stream_are_typed_errors(gateway: Gateway) -> None:
    with Client(gateway.url) as client:
        with pytest.raises(BadRequestError) as not_found:
            client.chat(HELLO, model="no-such-model")
        assert (not_found.value.status, not_found.value.code) == (404, "model_not_found")
        assert not_found.value.request_id

        with pytest.raises(RateLimitError) as limited:
            client.chat(HELLO, model="ratelimit")
        assert (limited.value.status, limited.value.code, limited.value.retry_after) == (
            429,
            "upstream_rate_limited",
            7.0,
        )

        with pytest.raises(UpstreamError) as down:
            client.chat(HELLO, model="refused")
        assert (down.value.status, down.value.code) == (502, "upstream_unavailable")

        with pytest.raises(BadRequestError) as invalid:
            client.chat([{"role": "wizard", "content": "hi"}])
        assert invalid.value.status == 400 and invalid.value.param

        with pytest.raises(ValueError, match="messages"):
            client.chat([])


def test_error_event_mid_stream_raises_after_the_text_before_it(gateway: Gateway) -> None:
    texts: list[str] = []
    with Client(gateway.url) as client, pytest.raises(StreamError) as failure:  # noqa: SIM117
        with client.stream_chat(HELLO, model="midstream-error") as stream:
            texts.extend(e.text for e in stream if isinstance(e, Delta))
    assert len(texts) == 5, "the deltas before the error are delivered"
    assert failure.value.code == "upstream_protocol_error"
    with pytest.raises(StreamInterrupted):
        _ = stream.result


def test_unreachable_gateway_is_a_connection_error() -> None:
    with Client(f"http://127.0.0.1:{closed_port()}") as client, pytest.raises(StreamInterrupted) as failure:
        client.chat(HELLO)
    assert failure.value.code == "connection_failed"


def test_gateway_dying_mid_stream_is_an_interruption(start_gateway: Any) -> None:
    gw: Gateway = start_gateway()
    with Client(gw.url) as client, pytest.raises(StreamInterrupted) as failure:  # noqa: SIM117
        with client.stream_chat(HELLO, model="slow") as stream:
            for event in stream:
                if isinstance(event, Delta):
                    gw.process.kill()
    assert failure.value.code == "stream_interrupted"


async def test_leaving_the_stream_early_aborts_the_upstream(gateway: Gateway, sim: Sim) -> None:
    rid = new_request_id()
    async with AsyncClient(gateway.url) as client:
        async with client.stream_chat(HELLO, model="slow", request_id=rid) as stream:
            async for event in stream:
                if isinstance(event, Delta):
                    break
        upstream = await sim.wait_ended(rid, timeout=5)
    assert upstream["end"] == "client_closed"
    rows = await gateway.ledger_rows(rid)
    assert [r["status"] for r in rows] == ["client_disconnected"]


async def test_cancelling_the_task_aborts_the_upstream(gateway: Gateway, sim: Sim) -> None:
    rid = new_request_id()
    first_delta = asyncio.Event()

    async def consume() -> None:
        async with (
            AsyncClient(gateway.url) as client,
            client.stream_chat(HELLO, model="slow", request_id=rid) as stream,
        ):
            async for event in stream:
                if isinstance(event, Delta):
                    first_delta.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first_delta.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    upstream = await sim.wait_ended(rid, timeout=5)
    assert upstream["end"] == "client_closed"


class _Recorder(http.server.BaseHTTPRequestHandler):
    """A stand-in gateway that records the request and answers with fixed events."""

    seen: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        self.seen.append(
            {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body}
        )
        payload = (
            # CRLF endings, a comment, an unknown event type: all tolerated.
            b": hello\r\n\r\n"
            b'data: {"type":"future_event","x":1}\r\n\r\n'
            b'data: {"type":"delta","text":"ok"}\r\n\r\n'
            b'data: {"type":"done","finish_reason":"stop"}\r\n\r\n'
        )
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Recorder.seen.clear()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_key_and_url_from_the_environment(recorder: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENRELAY_API_KEY", "tr-secret-123")
    monkeypatch.setenv("TOKENRELAY_URL", recorder + "/")
    with Client() as client:
        result = client.chat(HELLO, model="m", temperature=0.5)
    assert result.text == "ok"
    (request,) = _Recorder.seen
    assert request["path"] == "/chat"
    assert request["headers"]["authorization"] == "Bearer tr-secret-123"
    assert b'"temperature":0.5' in request["body"] and b'"model":"m"' in request["body"]
