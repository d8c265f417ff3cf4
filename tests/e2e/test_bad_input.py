"""Bad requests get a 4xx with an OpenAI-shaped body naming the field; nothing else happens."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import orjson
import pytest

from tests.helpers import Gateway, Sim, new_request_id

OK_MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/chat", b"{not json", 400, None),
        ("/chat", b"[1, 2]", 400, None),
        ("/chat", orjson.dumps({"model": "fast"}), 400, "messages"),
        ("/chat", orjson.dumps({"messages": []}), 400, "messages"),
        ("/chat", orjson.dumps({"messages": "hello"}), 400, "messages"),
        ("/chat", orjson.dumps({"messages": [{"role": "wizard", "content": "x"}]}), 400, "messages.0.role"),
        ("/chat", orjson.dumps({"messages": [{"content": "x"}]}), 400, "messages.0.role"),
        ("/chat", orjson.dumps({"messages": [{"role": "user", "content": 5}]}), 400, "messages.0.content"),
        ("/chat", orjson.dumps({"messages": OK_MESSAGES, "temperature": "hot"}), 400, "temperature"),
        ("/chat", orjson.dumps({"messages": OK_MESSAGES, "surprise": 1}), 400, "surprise"),
        ("/chat", orjson.dumps({"model": "no-such-model", "messages": OK_MESSAGES}), 404, "model"),
        ("/v1/chat/completions", orjson.dumps({"messages": OK_MESSAGES}), 400, "model"),
        ("/v1/chat/completions", orjson.dumps({"model": "fast", "messages": OK_MESSAGES, "n": 2}), 400, "n"),
        (
            "/v1/chat/completions",
            orjson.dumps({"model": "fast", "messages": OK_MESSAGES, "stream": "yes"}),
            400,
            "stream",
        ),
        ("/v1/chat/completions", orjson.dumps({"model": "nope", "messages": OK_MESSAGES}), 404, "model"),
    ],
)
async def test_bad_request_is_refused_cleanly(
    gateway: Gateway, sim: Sim, path: str, body: bytes, status: int, param: str | None
) -> None:
    rid = new_request_id()
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(
            f"{gateway.url}{path}",
            content=body,
            headers={"X-Request-ID": rid, "Content-Type": "application/json"},
        )
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    if param:
        assert param.split(".")[0] in error["message"]
    assert error["type"] == "invalid_request_error"
    assert "Traceback" not in response.text
    assert sim.request(rid) is None, "no upstream call for a bad request"
    assert await gateway.ledger_rows(rid, timeout=0.3) == [], "no ledger row for a bad request"


async def test_body_over_the_limit_is_413(gateway: Gateway, sim: Sim) -> None:
    rid = new_request_id()
    huge = orjson.dumps({"messages": [{"role": "user", "content": "x" * (1024 * 1024 + 10)}]})
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(f"{gateway.url}/chat", content=huge, headers={"X-Request-ID": rid})
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "request_too_large"

        async def chunked() -> AsyncIterator[bytes]:
            for _ in range(20):
                yield b" " * 65536
            yield huge

        response = await client.post(f"{gateway.url}/chat", content=chunked(), headers={"X-Request-ID": rid})
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "request_too_large"
    assert sim.request(rid) is None
    assert await gateway.ledger_rows(rid, timeout=0.3) == []


async def test_gateway_still_serves_after_bad_input(gateway: Gateway) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        for _ in range(20):
            await client.post(f"{gateway.url}/chat", content=b"\xff\xfe garbage")
        response = await client.post(f"{gateway.url}/chat", json={"messages": OK_MESSAGES})
    assert response.status_code == 200
    assert gateway.process.poll() is None


def test_unknown_route_is_openai_shaped_404(gateway: Gateway) -> None:
    response = httpx.get(f"{gateway.url}/v1/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"]["message"]
