"""Upstream failures reach the client typed: HTTP errors before the first token, error events after."""

from __future__ import annotations

import openai
import pytest

from tests.helpers import Gateway, Sim, new_request_id, parse_events, post_chat


@pytest.mark.parametrize(
    ("model", "status", "code", "ledger_status"),
    [
        ("ratelimit", 429, "upstream_rate_limited", "upstream_error"),
        ("error500", 502, "upstream_unavailable", "upstream_error"),
        ("rejected", 400, "upstream_rejected", "upstream_error"),
        ("refused", 502, "upstream_unavailable", "upstream_error"),
        ("drop-first", 502, "upstream_protocol_error", "upstream_error"),
        ("first-token-timeout", 504, "upstream_timeout", "timeout"),
    ],
)
async def test_failure_before_first_token_is_an_http_error(
    gateway: Gateway, sim: Sim, model: str, status: int, code: str, ledger_status: str
) -> None:
    rid = new_request_id()
    response = await post_chat(gateway.url, model, rid)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == code and error["message"] and error["type"]
    assert "Traceback" not in response.text
    if status == 429:
        assert response.headers["retry-after"] == "7"

    rows = await gateway.ledger_rows(rid)
    assert [(r["status"], r["error_code"]) for r in rows] == [(ledger_status, code)]
    if model != "refused":
        upstream = await sim.wait_ended(rid)
        assert upstream["ended_at"] is not None


@pytest.mark.parametrize(
    ("model", "code", "ledger_status"),
    [
        ("drop", "upstream_protocol_error", "upstream_error"),
        ("midstream-error", "upstream_protocol_error", "upstream_error"),
        ("idle-timeout", "upstream_timeout", "timeout"),
    ],
)
async def test_failure_after_streaming_began_is_an_error_event(
    gateway: Gateway, sim: Sim, model: str, code: str, ledger_status: str
) -> None:
    rid = new_request_id()
    response = await post_chat(gateway.url, model, rid)
    assert response.status_code == 200
    events = parse_events(response.content)
    assert events[0]["type"] == "delta"
    assert events[-1]["type"] == "error" and events[-1]["code"] == code
    assert events[-1]["message"] and "Traceback" not in events[-1]["message"]
    assert not [e for e in events if e["type"] == "done"]

    rows = await gateway.ledger_rows(rid)
    assert len(rows) == 1
    assert (rows[0]["status"], rows[0]["error_code"]) == (ledger_status, code)
    assert rows[0]["usage_source"] == "estimated" and rows[0]["completion_tokens"] > 0
    upstream = await sim.wait_ended(rid)
    assert upstream["end"] in {"dropped", "error_event", "client_closed"}


async def test_openai_endpoint_mid_stream_failure_is_an_openai_error_chunk(gateway: Gateway) -> None:
    rid = new_request_id()
    response = await post_chat(gateway.url, "drop", rid, path="/v1/chat/completions", stream=True)
    chunks = parse_events(response.content)
    assert chunks[-1] == {
        "error": {
            "message": chunks[-1]["error"]["message"],
            "type": "upstream_error",
            "param": None,
            "code": "upstream_protocol_error",
        }
    }
    assert "data: [DONE]" not in response.text


async def test_openai_sdk_sees_its_own_error_classes(gateway: Gateway) -> None:
    client = openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model="ratelimit", messages=messages)  # type: ignore[arg-type]
    with pytest.raises(openai.InternalServerError) as bad_gateway:
        await client.chat.completions.create(model="error500", messages=messages, stream=True)  # type: ignore[arg-type]
    assert bad_gateway.value.status_code == 502
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="no-such-model", messages=messages)  # type: ignore[arg-type]
    stream = await client.chat.completions.create(
        model="drop",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
    )
    with pytest.raises(openai.APIError):
        async for _chunk in stream:
            pass
    await client.close()


async def test_gateway_never_retries_upstream_failures(gateway: Gateway, sim: Sim) -> None:
    """One client request is one upstream request: retrying is the client's decision."""
    for model in ("error500", "ratelimit"):
        rid = new_request_id()
        await post_chat(gateway.url, model, rid)
        calls = [r for r in sim.stats()["requests"] if r["request_id"] == rid]
        assert len(calls) == 1


async def test_upstream_failure_is_logged_once_with_request_id(gateway: Gateway) -> None:
    rid = new_request_id()
    await post_chat(gateway.url, "drop", rid)
    await gateway.ledger_rows(rid)
    lines = [line for line in gateway.log_text().splitlines() if rid in line]
    failures = [line for line in lines if '"upstream failed"' in line]
    assert len(failures) == 1
    assert "Traceback" not in "\n".join(lines)
    stream_end = [line for line in lines if '"stream_end"' in line]
    assert len(stream_end) == 1 and '"status":"upstream_error"' in stream_end[0]
    # The same failure class as the metrics' tokenrelay_upstream_errors_total{class=...}.
    assert '"upstream_failure":"mid_stream_drop"' in stream_end[0]
