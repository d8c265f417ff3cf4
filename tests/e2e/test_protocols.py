"""The two wire protocols, end to end over TCP: /chat events and OpenAI compatibility."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.helpers import Gateway, Sim, new_request_id, parse_events

TRICKY_TEXT = (
    'Line one\nline "two" with \\backslash\\ and \ttab\r\n'
    "ünïcödé — 日本語 🚀👩‍👩‍👧 </script>\n\ndata: fake\n\n"
)


async def test_chat_events_round_trip_text_exactly(gateway: Gateway) -> None:
    rid = new_request_id()
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(
            f"{gateway.url}/chat",
            json={"model": "echo", "messages": [{"role": "user", "content": TRICKY_TEXT}]},
            headers={"X-Request-ID": rid},
        )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    assert response.headers["x-request-id"] == rid

    ids = [int(line[4:]) for line in response.text.split("\n") if line.startswith("id: ")]
    assert ids == list(range(1, len(ids) + 1))
    events = parse_events(response.content)
    deltas = [e for e in events if e["type"] == "delta"]
    assert len(deltas) > 10, "the answer should arrive in many deltas"
    assert "".join(e["text"] for e in deltas) == TRICKY_TEXT
    usage, done = events[-2], events[-1]
    assert usage["type"] == "usage" and usage["source"] == "upstream"
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    assert done == {"type": "done", "finish_reason": "stop"}


async def test_chat_uses_the_default_model_when_none_is_given(gateway: Gateway) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(
            f"{gateway.url}/chat", json={"messages": [{"role": "user", "content": "hi"}]}
        )
    events = parse_events(response.content)
    assert [e["type"] for e in events[-2:]] == ["usage", "done"]
    assert len([e for e in events if e["type"] == "delta"]) == 20  # the "fast" model: 20 tokens


async def test_openai_sdk_streaming_with_usage(gateway: Gateway) -> None:
    client = openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key="unused")
    stream = await client.chat.completions.create(
        model="echo",
        messages=[{"role": "user", "content": TRICKY_TEXT}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage, finish, models = "", None, None, set()
    async for chunk in stream:
        models.add(chunk.model)
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    await client.close()
    assert text == TRICKY_TEXT
    assert finish == "stop"
    assert models == {"echo"}, "chunks carry the public model name, not the upstream's"
    assert usage is not None and usage.completion_tokens > 0


async def test_openai_sdk_streaming_without_usage_gets_no_usage_chunk(gateway: Gateway) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(
            f"{gateway.url}/v1/chat/completions",
            json={"model": "fast", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
        )
    assert response.text.rstrip().endswith("data: [DONE]")
    chunks = parse_events(response.content)
    assert chunks and all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert all("usage" not in c for c in chunks)


async def test_openai_sdk_non_streaming(gateway: Gateway) -> None:
    client = openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key="unused")
    completion = await client.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": TRICKY_TEXT}]
    )
    await client.close()
    assert completion.object == "chat.completion"
    assert completion.model == "echo"
    assert completion.choices[0].message.content == TRICKY_TEXT
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens > 0


async def test_include_usage_is_honoured_even_when_the_upstream_sends_none(gateway: Gateway) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(
            f"{gateway.url}/v1/chat/completions",
            json={
                "model": "nousage-echo",
                "stream": True,
                "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": "count these words please"}],
            },
        )
    chunks = parse_events(response.content)
    usage_chunks = [c for c in chunks if c.get("usage")]
    assert len(usage_chunks) == 1 and usage_chunks[0]["choices"] == []
    assert usage_chunks[0]["usage"]["completion_tokens"] == 4  # tiktoken cl100k: "count these words please"


def test_models_health_and_ready(gateway: Gateway) -> None:
    models = httpx.get(f"{gateway.url}/v1/models").json()
    assert models["object"] == "list"
    assert {"fast", "echo", "stall"} <= {m["id"] for m in models["data"]}
    assert httpx.get(f"{gateway.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{gateway.url}/readyz")
    assert ready.status_code == 200
    body = ready.json()
    deployments = body.pop("deployments")
    assert body == {
        "status": "ready",
        "draining": False,
        "ledger": {"state": "ok", "spooled_rows": 0, "spool_error": None},
    }
    # Every model's deployments, as this process sees them.
    assert deployments["fast"] == {
        "default": {
            "provider": "openai",
            "state": "healthy",
            "in_flight": 0,
            "consecutive_failures": 0,
            "ewma_ttft_ms": deployments["fast"]["default"]["ewma_ttft_ms"],
            "cooldown_left_s": None,
            "ejections": 0,
        }
    }


@pytest.mark.parametrize("supplied", [None, "", "bad id with spaces", "x" * 200, "<script>"])
def test_request_id_is_generated_when_missing_or_not_sane(gateway: Gateway, supplied: str | None) -> None:
    headers = {"X-Request-ID": supplied} if supplied is not None else {}
    response = httpx.get(f"{gateway.url}/healthz", headers=headers)
    generated = response.headers["x-request-id"]
    assert generated != supplied and len(generated) == 32 and generated.isalnum()


def test_request_id_is_echoed_on_errors_too(gateway: Gateway) -> None:
    response = httpx.post(f"{gateway.url}/chat", content=b"{", headers={"X-Request-ID": "abc-123"})
    assert response.status_code == 400
    assert response.headers["x-request-id"] == "abc-123"


async def test_upstream_receives_the_request_id_and_include_usage(gateway: Gateway, sim: Sim) -> None:
    rid = new_request_id()
    async with httpx.AsyncClient(timeout=10) as client:
        await client.post(
            f"{gateway.url}/v1/chat/completions",
            json={"model": "fast", "messages": [{"role": "user", "content": "hi"}], "stream": True},
            headers={"X-Request-ID": rid},
        )
    entry = await sim.wait_ended(rid)
    assert entry["end"] == "completed" and entry["stream"] is True
    assert entry["model"] == "sim?tokens=20"
