"""Resumable streams on one gateway with the real Redis: ids, resume, followers, stop, grace.

Every test talks to a real ``tokenrelay serve`` over TCP and cuts real connections; the
upstream is the simulator, whose records say when the gateway closed its request.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import anthropic
import httpx
import openai
import pytest

import tokenrelay.client
from tests.helpers import Gateway, Sim, TcpProxy
from tests.resuming import SseReader, follow, ids_of, read_stream, text_of

PROMPT = " ".join(f"word{i}" for i in range(120))  # echoed back in 4-character pieces
PATHS = {
    "/chat": lambda model, content, **extra: {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        **extra,
    },
    "/v1/chat/completions": lambda model, content, **extra: {
        "model": model,
        "stream": True,
        "messages": [{"role": "user", "content": content}],
        **extra,
    },
    "/v1/messages": lambda model, content, **extra: {
        "model": model,
        "stream": True,
        "max_tokens": 1000,
        "messages": [{"role": "user", "content": content}],
        **extra,
    },
}


def cluster_env(redis_url: str, **overrides: str) -> dict[str, str]:
    env = {
        "TOKENRELAY_CLUSTER__REDIS_URL": redis_url,
        # A namespace per gateway group: tests sharing the one Redis never see each other.
        "TOKENRELAY_CLUSTER__NAMESPACE": f"test-{uuid.uuid4().hex[:12]}",
        "TOKENRELAY_CLUSTER__RESUME_GRACE_SECONDS": "5",
        "TOKENRELAY_KEEPALIVE_SECONDS": "1",
    }
    env.update({f"TOKENRELAY_CLUSTER__{name.upper()}": value for name, value in overrides.items()})
    return env


@pytest.fixture
def resumable_gateway(start_gateway: Any, redis_url: str) -> Gateway:
    gw: Gateway = start_gateway(env=cluster_env(redis_url))
    return gw


def body(path: str, model: str = "echo-paced", content: str = PROMPT, **extra: Any) -> dict[str, Any]:
    built: dict[str, Any] = PATHS[path](model, content, **extra)
    return built


async def test_a_resumable_stream_numbers_every_event_and_says_its_id(resumable_gateway: Gateway) -> None:
    gw = resumable_gateway
    async with httpx.AsyncClient(timeout=20) as client:
        for path in PATHS:
            plain = await read_stream_plain(client, gw.url, path, body(path))
            resumed = await read_stream(client, gw.url, path, body(path, resumable=True))
            assert resumed.first_status == 200
            assert len(resumed.stream_id) == 32 and int(resumed.stream_id, 16) >= 0
            assert ids_of(resumed.events) == list(range(1, len(resumed.events) + 1)), path
            assert text_of(resumed.events) == text_of(plain.events) == PROMPT, path
            # A plain stream is as before: no ids on OpenAI's and Anthropic's events.
            if path != "/chat":
                assert all(event.id is None for event in plain.events), path


async def read_stream_plain(client: httpx.AsyncClient, url: str, path: str, sent: dict[str, Any]) -> Any:
    reader = SseReader()
    async with client.stream("POST", f"{url}{path}", json=sent) as response:
        assert response.status_code == 200
        assert "x-stream-id" not in response.headers
        async for data in response.aiter_raw():
            reader.feed(data)
    return reader


@pytest.mark.parametrize("path", list(PATHS))
async def test_a_cut_stream_resumes_with_no_gap_and_no_repeat(resumable_gateway: Gateway, path: str) -> None:
    gw = resumable_gateway
    async with httpx.AsyncClient(timeout=20) as client:
        for cut_after in (1, 7, 40):
            resumed = await read_stream(client, gw.url, path, body(path, resumable=True), cut_after=cut_after)
            assert ids_of(resumed.events) == list(range(1, len(resumed.events) + 1)), (path, cut_after)
            assert text_of(resumed.events) == PROMPT, (path, cut_after)
            last = resumed.events[-1].json() if resumed.events[-1].data != b"[DONE]" else {"done": True}
            assert last.get("type") in ("done", "message_stop") or last.get("done"), last


async def test_the_header_and_the_sdks_work_with_resumable_streams(resumable_gateway: Gateway) -> None:
    gw = resumable_gateway
    # X-Resumable instead of a body field; the SDKs ignore the ids and read the answer as usual.
    async with openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0) as sdk:
        raw = await sdk.chat.completions.with_raw_response.create(
            model="echo-paced",
            messages=[{"role": "user", "content": PROMPT}],
            stream=True,
            extra_headers={"X-Resumable": "1"},
        )
        assert len(raw.headers["x-stream-id"]) == 32
        chunks = raw.parse()
        text = "".join([chunk.choices[0].delta.content or "" async for chunk in chunks if chunk.choices])
    assert text == PROMPT
    async with (
        anthropic.AsyncAnthropic(base_url=gw.url, api_key="unused", max_retries=0) as claude,
        claude.messages.stream(
            model="echo-paced",
            max_tokens=1000,
            messages=[{"role": "user", "content": PROMPT}],
            extra_body={"resumable": True},
        ) as stream,
    ):
        message = await stream.get_final_message()
    assert message.content[0].type == "text" and message.content[0].text == PROMPT


async def test_several_followers_each_get_every_event(resumable_gateway: Gateway) -> None:
    gw = resumable_gateway
    async with httpx.AsyncClient(timeout=20) as client:
        first = await read_stream(client, gw.url, "/chat", body("/chat", resumable=True), cut_after=2)
        assert text_of(first.events) == PROMPT
        # Two more clients, from the start and from the middle, after the stream has ended.
        whole, half = SseReader(), SseReader()
        half.last_id = 20
        statuses = await asyncio.gather(
            follow(client, gw.url, first.stream_id, whole), follow(client, gw.url, first.stream_id, half)
        )
        assert list(statuses) == [200, 200]
        assert [e.data for e in whole.events] == [e.data for e in first.events]
        assert [e.data for e in half.events] == [e.data for e in first.events[20:]]


async def test_followers_attached_while_it_runs_get_it_live(resumable_gateway: Gateway) -> None:
    gw = resumable_gateway
    async with httpx.AsyncClient(timeout=30) as client:
        async with client.stream(
            "POST", f"{gw.url}/chat", json=body("/chat", "slow", "x", resumable=True)
        ) as r:
            stream_id = r.headers["x-stream-id"]
            readers = [SseReader(), SseReader()]
            followers = [asyncio.ensure_future(follow(client, gw.url, stream_id, rd)) for rd in readers]
            async for _data in r.aiter_raw():
                if len(readers[1].events) > 20:
                    break
            response = await client.post(f"{gw.url}/v1/streams/{stream_id}/stop")
            assert response.status_code == 202
        assert list(await asyncio.gather(*followers)) == [200, 200]
        for reader in readers:
            done = reader.events[-1].json()
            assert done == {"type": "done", "finish_reason": "stopped"}
            assert ids_of(reader.events) == list(range(1, len(reader.events) + 1))


async def test_stop_with_no_client_attached_closes_the_upstream_within_100_ms(
    resumable_gateway: Gateway, sim: Sim
) -> None:
    gw = resumable_gateway
    rid = f"test-{uuid.uuid4().hex}"
    async with httpx.AsyncClient(timeout=30) as client:
        headers = {"x-request-id": rid}
        reader = SseReader()
        async with client.stream(
            "POST", f"{gw.url}/chat", json=body("/chat", "slow", "x", resumable=True), headers=headers
        ) as r:
            stream_id = r.headers["x-stream-id"]
            async for data in r.aiter_raw():
                reader.feed(data)
                if len(reader.events) >= 5:
                    break  # the connection drops: nobody is attached when Stop comes
        await asyncio.sleep(0.5)  # the client is gone; generation goes on (grace: 5 s)
        assert (await sim.wait_request(rid))["ended_at"] is None
        asked = time.monotonic()
        response = await client.post(f"{gw.url}/v1/streams/{stream_id}/stop")
        assert response.status_code == 202, response.text
        ended = await sim.wait_ended(rid, timeout=2)
        assert ended["ended_at"] - asked < 0.1, (
            f"upstream closed {ended['ended_at'] - asked:.3f} s after Stop"
        )
        # A follower now gets the rest and a done that says stopped.
        status = await follow(client, gw.url, stream_id, reader)
        assert status == 200
        assert reader.events[-1].json() == {"type": "done", "finish_reason": "stopped"}
        assert ids_of(reader.events) == list(range(1, len(reader.events) + 1))
    rows = await gw.ledger_rows(rid)
    assert len(rows) == 1 and rows[0]["status"] == "stopped" and rows[0]["finish_reason"] == "stopped"
    assert rows[0]["completion_tokens"] >= 5
    # Stopping again says it is over.
    again = httpx.post(f"{gw.url}/v1/streams/{stream_id}/stop", timeout=5)
    assert again.status_code == 200 and again.json()["stopped"] is False, again.text


async def test_nobody_back_within_the_grace_period_aborts_the_upstream(
    start_gateway: Any, redis_url: str, sim: Sim
) -> None:
    gw: Gateway = start_gateway(env=cluster_env(redis_url, resume_grace_seconds="1"))
    rid = f"test-{uuid.uuid4().hex}"
    async with httpx.AsyncClient(timeout=30) as client:
        reader = SseReader()
        sent = body("/chat", "slow", "x", resumable=True)
        async with client.stream("POST", f"{gw.url}/chat", json=sent, headers={"x-request-id": rid}) as r:
            stream_id = r.headers["x-stream-id"]
            async for data in r.aiter_raw():
                reader.feed(data)
                if len(reader.events) >= 3:
                    break
        gone = time.monotonic()
        ended = await sim.wait_ended(rid, timeout=5)
        assert 0.9 < ended["ended_at"] - gone < 2.0, ended["ended_at"] - gone
        status = await follow(client, gw.url, stream_id, reader)
        assert status == 200
        assert reader.events[-1].json()["code"] == "client_disconnected"
    rows = await gw.ledger_rows(rid)
    assert len(rows) == 1 and rows[0]["status"] == "client_disconnected"


async def test_a_client_back_within_the_grace_keeps_the_stream_going(
    start_gateway: Any, redis_url: str, sim: Sim
) -> None:
    gw: Gateway = start_gateway(env=cluster_env(redis_url, resume_grace_seconds="1"))
    rid = f"test-{uuid.uuid4().hex}"
    async with httpx.AsyncClient(timeout=30) as client:
        reader = SseReader()
        sent = body("/chat", "slow", "x", resumable=True)  # 2,000 tokens at 50/s
        async with client.stream("POST", f"{gw.url}/chat", json=sent, headers={"x-request-id": rid}) as r:
            stream_id = r.headers["x-stream-id"]
            async for data in r.aiter_raw():
                reader.feed(data)
                if len(reader.events) >= 3:
                    break
        # Back after 0.5 s, away again, back again: each time within the 1 s grace.
        for _ in range(3):
            await asyncio.sleep(0.5)
            async with client.stream(
                "GET", f"{gw.url}/v1/streams/{stream_id}", headers={"last-event-id": str(reader.last_id)}
            ) as followed:
                started = time.monotonic()
                async for data in followed.aiter_raw():
                    reader.feed(data)
                    if time.monotonic() - started > 0.7:
                        break
        assert (await sim.wait_request(rid))["ended_at"] is None, "still generating"
        await client.post(f"{gw.url}/v1/streams/{stream_id}/stop")
    assert ids_of(reader.events) == list(range(1, len(reader.events) + 1))


async def test_bad_resume_requests_get_clear_errors(resumable_gateway: Gateway, start_gateway: Any) -> None:
    gw = resumable_gateway
    async with httpx.AsyncClient(timeout=10) as client:
        unknown = await client.get(f"{gw.url}/v1/streams/{uuid.uuid4().hex}")
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "stream_not_found"
        stop_unknown = await client.post(f"{gw.url}/v1/streams/{uuid.uuid4().hex}/stop")
        assert stop_unknown.status_code == 404
        for odd in ("x", "A" * 32, f"{uuid.uuid4().hex}:meta", "%2e%2e"):
            strange = await client.get(f"{gw.url}/v1/streams/{odd}")
            assert strange.status_code == 404 and strange.json()["error"]["code"] == "stream_not_found", odd
        done = await read_stream(client, gw.url, "/chat", body("/chat", "fast", "x", resumable=True))
        bad = await client.get(f"{gw.url}/v1/streams/{done.stream_id}", headers={"last-event-id": "abc"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "last_event_id"
        query = await client.get(f"{gw.url}/v1/streams/{done.stream_id}?last_event_id=3")
        assert query.status_code == 200 and b"id: 4\n" in query.content and b"id: 3\n" not in query.content
        not_streamed = await client.post(
            f"{gw.url}/v1/chat/completions",
            json={"model": "fast", "messages": [{"role": "user", "content": "x"}], "resumable": True},
        )
        assert not_streamed.status_code == 400 and not_streamed.json()["error"]["param"] == "resumable"
        wrong_type = await client.post(f"{gw.url}/chat", json=body("/chat", "fast", "x", resumable="yes"))
        assert wrong_type.status_code == 400
    # A gateway with no Redis says so instead of pretending.
    alone: Gateway = start_gateway()
    response = httpx.post(f"{alone.url}/chat", json=body("/chat", "fast", "x", resumable=True), timeout=10)
    assert response.status_code == 400 and "cluster.redis_url" in response.json()["error"]["message"]


async def test_redis_away_plain_streams_go_on_resumable_ones_are_refused_at_once(
    start_gateway: Any, redis_proxy: TcpProxy
) -> None:
    url = f"redis://127.0.0.1:{redis_proxy.port}/0"
    gw: Gateway = start_gateway(env=cluster_env(url))
    fallback: Gateway = start_gateway(env=cluster_env(url, resumable_fallback="true"))
    assert gw.readyz()["cluster"]["state"] == "ok"
    redis_proxy.cut()
    async with httpx.AsyncClient(timeout=10) as client:
        for _ in range(3):
            started = time.monotonic()
            plain = await client.post(f"{gw.url}/chat", json=body("/chat", "fast", "x"))
            assert plain.status_code == 200 and b'"type":"done"' in plain.content
            refused = await client.post(f"{gw.url}/chat", json=body("/chat", "fast", "x", resumable=True))
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "resumable_unavailable"
            assert time.monotonic() - started < 1.5  # never a hang (the first one finds out)
        served = await client.post(f"{fallback.url}/chat", json=body("/chat", "fast", "x", resumable=True))
        assert served.status_code == 200 and "x-stream-id" not in served.headers
    ready = gw.readyz()
    assert ready["cluster"]["state"] == "unavailable" and ready["status"] == "degraded"
    redis_proxy.restore()
    deadline = time.monotonic() + 5
    while gw.readyz()["cluster"]["state"] != "ok":
        assert time.monotonic() < deadline, "the cluster never came back"
        await asyncio.sleep(0.2)
    async with httpx.AsyncClient(timeout=10) as client:
        back = await read_stream(client, gw.url, "/chat", body("/chat", "fast", "x", resumable=True))
        assert back.first_status == 200 and back.stream_id


@pytest.mark.parametrize("path", list(PATHS))
async def test_stop_ends_each_protocol_its_own_way(resumable_gateway: Gateway, path: str) -> None:
    gw = resumable_gateway
    rid = f"test-{uuid.uuid4().hex}"
    reader = SseReader()
    async with httpx.AsyncClient(timeout=30) as client:
        sent = body(path, "slow", "x", resumable=True)
        async with client.stream("POST", f"{gw.url}{path}", json=sent, headers={"x-request-id": rid}) as r:
            stream_id = r.headers["x-stream-id"]
            stop: asyncio.Task[httpx.Response] | None = None
            async for data in r.aiter_raw():
                reader.feed(data)
                if len(reader.events) >= 5 and stop is None:
                    stop = asyncio.ensure_future(client.post(f"{gw.url}/v1/streams/{stream_id}/stop"))
            assert stop is not None and (await stop).status_code == 202
    # The client still attached reads the end of its own protocol, then the stream closes.
    tail = [event.data for event in reader.events[-3:]]
    if path == "/chat":
        assert reader.events[-1].json() == {"type": "done", "finish_reason": "stopped"}
    elif path == "/v1/chat/completions":
        assert tail[-1] == b"[DONE]"
        assert reader.events[-2].json()["choices"][0]["finish_reason"] == "stopped"
    else:
        assert reader.events[-1].event == "message_stop"
        assert reader.events[-2].json()["delta"]["stop_reason"] == "end_turn"
    assert ids_of(reader.events) == list(range(1, len(reader.events) + 1))
    rows = await gw.ledger_rows(rid)
    assert [row["status"] for row in rows] == ["stopped"]


async def test_the_python_client_resumes_by_itself_after_a_dropped_connection(
    resumable_gateway: Gateway,
) -> None:
    port = int(resumable_gateway.url.rsplit(":", 1)[1])
    proxy = TcpProxy(port).start()
    try:
        url = f"http://127.0.0.1:{proxy.port}"
        async with tokenrelay.client.AsyncClient(url) as client:
            texts: list[str] = []
            async with client.stream_chat(
                [{"role": "user", "content": PROMPT}], model="echo-paced", resumable=True
            ) as stream:
                assert stream.stream_id is not None
                async for event in stream:
                    if isinstance(event, tokenrelay.client.Delta):
                        texts.append(event.text)
                        if len(texts) == 10:
                            proxy.cut()  # the network goes away mid-answer ...
                            asyncio.get_running_loop().call_later(0.6, proxy.restore)  # ... and back
            assert "".join(texts) == PROMPT == stream.result.text
            assert stream.resumes >= 1 and stream.result.finish_reason == "stop"
    finally:
        proxy.close()


def test_the_blocking_client_stops_a_resumable_stream(resumable_gateway: Gateway) -> None:
    with tokenrelay.client.Client(resumable_gateway.url) as sync_client:
        question = [{"role": "user", "content": "x"}]
        events: list[tokenrelay.client.ChatEvent] = []
        with sync_client.stream_chat(question, model="slow", resumable=True) as s:
            for event in s:
                events.append(event)
                if len(events) == 3 and s.stream_id is not None:
                    assert sync_client.stop(s.stream_id) is True
        assert isinstance(events[-1], tokenrelay.client.Done) and events[-1].finish_reason == "stopped"
        assert len(events) < 100  # stopped, not the 2,000 tokens
        # Once the end is recorded (within milliseconds), Stop says there is nothing to stop.
        deadline = time.monotonic() + 2
        while sync_client.stop(s.stream_id or ""):
            assert time.monotonic() < deadline, "the stream's end was never recorded"
            time.sleep(0.02)


async def test_an_error_a_follower_makes_up_takes_no_id_from_the_stream(
    start_gateway: Any, redis_proxy: TcpProxy
) -> None:
    """Regression: a follower that lost Redis said ``id: n+1`` for its own error, the id the
    owner then gave the next real event; a client resuming after it lost that event."""
    gw: Gateway = start_gateway(env=cluster_env(f"redis://127.0.0.1:{redis_proxy.port}/0"))
    async with httpx.AsyncClient(timeout=30) as client:
        sent = body("/chat", "slow", "x", resumable=True)
        async with client.stream("POST", f"{gw.url}/chat", json=sent) as owner:
            stream_id = owner.headers["x-stream-id"]
            follower = SseReader()
            following = asyncio.ensure_future(follow(client, gw.url, stream_id, follower))
            own = SseReader()
            async for data in owner.aiter_raw():
                own.feed(data)
                if len(follower.events) >= 5 and not following.done():
                    redis_proxy.cut()
                    assert await asyncio.wait_for(following, 10) == 200
                if following.done() and len(own.events) > len(follower.events) + 5:
                    break
    lost = follower.events[-1]
    assert lost.json()["code"] == "resumable_unavailable" and lost.id is None
    real = {event.id: event.data for event in own.events}
    assert all(real[event.id] == event.data for event in follower.events if event.id is not None)
