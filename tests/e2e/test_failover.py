"""Failover until the first token, over real TCP: two simulator processes as deployments.

The first deployment (priority 0) fails in one way or another; the second (priority 1) answers.
Each test checks what the client got, the one ledger row (deployment, attempts) and that the
failed attempt's upstream connection was closed.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.helpers import (
    Gateway,
    Sim,
    TcpProxy,
    chat_body,
    closed_port,
    delta_text,
    launch_gateway,
    new_request_id,
    open_raw_stream,
    parse_events,
    post_chat,
    start_sim,
)
from tokenrelay.sim.behaviour import FillerWords

TEXT = "".join(FillerWords(20))
ATTEMPT_TIMEOUT = 0.5


def deployment(model: str, name: str, base_url: str, options: str, priority: int, **extra: object) -> str:
    lines = [
        f'[[models."{model}".deployments]]',
        f'name = "{name}"',
        f'base_url = "{base_url}"',
        f'upstream_model = "sim?{options}"',
        f"priority = {priority}",
    ]
    lines += [f"{key} = {value!r}".replace("'", '"') for key, value in extra.items()]
    return "\n".join(lines) + "\n"


def two_step_model(model: str, first_url: str, first: str, second_url: str, second: str = "tokens=20") -> str:
    """A model whose first deployment ("a") fails as ``first`` and whose fallback ("b") answers."""
    return (
        f'[models."{model}"]\nattempt_first_token_timeout_seconds = {ATTEMPT_TIMEOUT}\n'
        + deployment(model, "a", first_url, first, 0)
        + deployment(model, "b", second_url, second, 1)
    )


FIRST_FAULTS = {
    "status500": "tokens=20&status=500",
    "status429": "tokens=20&status=429&retry_after=3",
    "stalled": "tokens=20&ttft=30",
    "error-before-content": "tokens=20&error_after=0",
    "drop-before-content": "tokens=20&drop_after=0",
    "reset-before-content": "tokens=20&drop_after=0&drop=reset",
    # Valid JSON in the wrong shape: not an UpstreamError inside the parser, still a failover.
    "malformed": "tokens=20&malformed=1",
}


@pytest.fixture(scope="module")
def second_sim() -> Iterator[Sim]:
    started = start_sim()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def failover_gateway(
    sim: Sim, second_sim: Sim, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    a, b = sim.base_url, second_sim.base_url
    refused = f"http://127.0.0.1:{closed_port()}/v1"
    parts = ['default_model = "refused"\n']
    parts.append(two_step_model("refused", refused, "tokens=20", b))
    for name, options in FIRST_FAULTS.items():
        parts.append(two_step_model(name, a, options, b))
    # Anthropic's "overloaded": the first deployment speaks the Messages API.
    parts.append(
        f'[models."anthropic529"]\nattempt_first_token_timeout_seconds = {ATTEMPT_TIMEOUT}\n'
        + deployment("anthropic529", "a", sim.url, "tokens=20&status=529", 0, provider="anthropic")
        + deployment("anthropic529", "b", b, "tokens=20", 1)
    )
    # Content, then a failure: the error event, never a second attempt.
    parts.append(two_step_model("fails-after-content", a, "tokens=20&error_after=3", b))
    parts.append(two_step_model("rejected", a, "tokens=20&status=400", b))
    parts.append(two_step_model("both-429", a, "status=429&retry_after=9", b, "status=429&retry_after=4"))
    # Three deployments, all failing in different ways.
    parts.append(
        '[models."all-down"]\nattempt_first_token_timeout_seconds = 0.5\n'
        + deployment("all-down", "a", a, "status=503", 0)
        + deployment("all-down", "b", refused, "tokens=5", 1)
        + deployment("all-down", "c", b, "error_after=0", 2)
    )
    # Attempt 2 stalls; the client leaves during it; attempt 3 would have answered.
    parts.append(
        '[models."leave-during-2"]\nattempt_first_token_timeout_seconds = 5\n'
        + deployment("leave-during-2", "a", refused, "tokens=5", 0)
        + deployment("leave-during-2", "b", a, "tokens=20&ttft=30", 1)
        + deployment("leave-during-2", "c", b, "tokens=20", 2)
    )
    # The overall first-token time-out ends during attempt 2: no attempt 3 is started.
    parts.append(
        '[models."deadline"]\nfirst_token_timeout_seconds = 0.8\nattempt_first_token_timeout_seconds = 0.5\n'
        + deployment("deadline", "a", a, "tokens=20&ttft=30", 0)
        + deployment("deadline", "b", a, "tokens=20&ttft=30", 1)
        + deployment("deadline", "c", b, "tokens=20", 2)
    )
    # An answer with no content at all is an answer, not a failure.
    parts.append(two_step_model("empty-answer", a, "tokens=0", b))
    tmp = tmp_path_factory.mktemp("failover")
    gw = launch_gateway(
        tmp,
        config="\n".join(parts),
        database_url=f"sqlite+aiosqlite:///{tmp / 'ledger.db'}",
        env={"TOKENRELAY_KEEPALIVE_SECONDS": "0.2"},
    )
    yield gw
    gw.stop()


async def _one_row(gw: Gateway, rid: str) -> dict[str, Any]:
    rows = await gw.ledger_rows(rid)
    assert len(rows) == 1, rows
    return rows[0]


@pytest.mark.parametrize("fault", ["refused", "anthropic529", *FIRST_FAULTS])
async def test_first_deployment_fails_before_content_the_second_answers(
    failover_gateway: Gateway, sim: Sim, second_sim: Sim, fault: str
) -> None:
    rid = new_request_id()
    response = await post_chat(failover_gateway.url, fault, rid)
    assert response.status_code == 200, response.text
    events = parse_events(response.content)
    assert delta_text(events) == TEXT
    assert events[-1] == {"type": "done", "finish_reason": "stop"}
    assert not [e for e in events if e.get("type") == "error"]
    row = await _one_row(failover_gateway, rid)
    assert (row["status"], row["deployment"], row["attempts"]) == ("completed", "b", 2)
    assert row["completion_tokens"] == 20
    assert (await second_sim.wait_ended(rid))["end"] == "completed"
    if fault != "refused":
        # The failed attempt's connection is closed (the stalled one by us, at its time-out).
        first = await sim.wait_ended(rid)
        if fault != "malformed":  # that one streams its whole (unreadable) answer at once
            assert first["chunks_sent"] == 0
    log_line = next(
        line for line in failover_gateway.log_text().splitlines() if rid in line and "stream_end" in line
    )
    assert '"attempts":["a:' in log_line.replace(" ", "") and '"b:ok"' in log_line.replace(" ", "")


async def test_failover_on_the_openai_route_with_the_sdk(failover_gateway: Gateway) -> None:
    """The pass-through route: the first attempt's role chunk never reaches the client twice."""
    client = openai.AsyncOpenAI(base_url=f"{failover_gateway.url}/v1", api_key="x", max_retries=0)
    rid = new_request_id()
    stream = await client.chat.completions.create(
        model="error-before-content",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        extra_headers={"X-Request-ID": rid},
    )
    roles, text, finish = [], "", None
    async for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.role:
                roles.append(choice.delta.role)
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    await client.close()
    assert text == TEXT and finish == "stop"
    assert roles == ["assistant"]
    row = await _one_row(failover_gateway, rid)
    assert (row["deployment"], row["attempts"]) == ("b", 2)


async def test_a_failure_after_content_is_an_error_event_and_never_a_second_attempt(
    failover_gateway: Gateway, second_sim: Sim
) -> None:
    rid = new_request_id()
    response = await post_chat(failover_gateway.url, "fails-after-content", rid)
    events = parse_events(response.content)
    assert delta_text(events) == "".join(FillerWords(3))
    assert events[-1]["type"] == "error"
    assert "done" not in [e.get("type") for e in events]
    row = await _one_row(failover_gateway, rid)
    assert (row["status"], row["deployment"], row["attempts"]) == ("upstream_error", "a", 1)
    await asyncio.sleep(0.2)
    assert second_sim.request(rid) is None


async def test_the_clients_own_fault_is_not_retried(failover_gateway: Gateway, second_sim: Sim) -> None:
    rid = new_request_id()
    response = await post_chat(failover_gateway.url, "rejected", rid)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "upstream_rejected"
    row = await _one_row(failover_gateway, rid)
    assert row["attempts"] == 1
    assert second_sim.request(rid) is None


async def test_every_deployment_rate_limited_gives_the_client_a_429_with_retry_after(
    failover_gateway: Gateway,
) -> None:
    response = await post_chat(failover_gateway.url, "both-429", new_request_id())
    assert response.status_code == 429
    assert response.headers["retry-after"] == "4"  # the soonest of the two
    assert response.json()["error"]["code"] == "upstream_rate_limited"


async def test_all_deployments_down_is_a_502_naming_every_attempt(failover_gateway: Gateway) -> None:
    rid = new_request_id()
    response = await post_chat(failover_gateway.url, "all-down", rid)
    assert response.status_code == 502
    message = response.json()["error"]["message"]
    assert re.search(r"3 attempts failed before the first token", message), message
    for name, failure in (("a", "server_error"), ("b", "connection"), ("c", "mid_stream_error")):
        assert f"{name}: {failure}" in message, message
    row = await _one_row(failover_gateway, rid)
    assert (row["status"], row["attempts"], row["deployment"]) == ("upstream_error", 3, "c")


async def test_a_client_leaving_during_attempt_2_aborts_it_and_there_is_no_attempt_3(
    failover_gateway: Gateway, sim: Sim, second_sim: Sim
) -> None:
    rid = new_request_id()
    stream = await open_raw_stream(failover_gateway.url, "/chat", chat_body("leave-during-2"), rid)
    await sim.wait_request(rid)  # attempt 2 (deployment b, on the first simulator) is open
    await asyncio.sleep(0.2)
    closed_at = stream.close()
    ended = await sim.wait_ended(rid, timeout=2)
    assert ended["end"] == "client_closed"
    assert ended["ended_at"] - closed_at < 0.1, f"upstream closed {ended['ended_at'] - closed_at:.3f}s later"
    row = await _one_row(failover_gateway, rid)
    assert (row["status"], row["attempts"], row["deployment"]) == ("client_disconnected", 2, "b")
    await asyncio.sleep(0.3)
    assert second_sim.request(rid) is None


async def test_no_attempt_starts_once_the_overall_first_token_timeout_is_over(
    failover_gateway: Gateway, second_sim: Sim
) -> None:
    """Regression: the second attempt used to get whatever was left of the overall time-out as
    its own (almost nothing), be marked failed for it, and a third attempt was started after
    the client had been told the stream timed out."""
    rid = new_request_id()
    response = await post_chat(failover_gateway.url, "deadline", rid)
    events = parse_events(response.content)  # a keep-alive started the response: an error event
    assert events[-1]["type"] == "error" and events[-1]["code"] == "upstream_timeout", events
    row = await _one_row(failover_gateway, rid)
    assert (row["status"], row["attempts"], row["deployment"]) == ("timeout", 2, "b")
    assert 0.75 < row["duration_ms"] / 1000 < 1.5
    log_line = next(
        line for line in failover_gateway.log_text().splitlines() if rid in line and "stream_end" in line
    )
    assert '"a:timeout"' in log_line and '"b:timeout"' in log_line, log_line
    await asyncio.sleep(0.3)
    assert second_sim.request(rid) is None


async def test_keepalives_flow_while_attempts_run(failover_gateway: Gateway) -> None:
    """The stalled first attempt takes 0.5 s; with 0.2 s keep-alives the client hears pings."""
    rid = new_request_id()
    stream = await open_raw_stream(failover_gateway.url, "/chat", chat_body("stalled"), rid)
    started = time.monotonic()
    await stream.read_until(b": ping", count=2)
    assert time.monotonic() - started < ATTEMPT_TIMEOUT + 0.3
    body = await stream.read_until(b'"type":"done"')
    stream.close()
    assert TEXT.split()[-1].encode() in body and b'"type":"done"' in body


async def test_an_empty_answer_is_served_by_the_first_deployment(
    failover_gateway: Gateway, second_sim: Sim
) -> None:
    rid = new_request_id()
    response = await post_chat(failover_gateway.url, "empty-answer", rid)
    events = parse_events(response.content)
    assert delta_text(events) == "" and events[-1] == {"type": "done", "finish_reason": "stop"}
    row = await _one_row(failover_gateway, rid)
    assert (row["deployment"], row["attempts"]) == ("a", 1)
    assert second_sim.request(rid) is None


async def test_attempts_and_failovers_are_counted_per_deployment(failover_gateway: Gateway) -> None:
    await post_chat(failover_gateway.url, "status500", new_request_id())
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{failover_gateway.url}/metrics")).text
    assert re.search(
        r'tokenrelay_upstream_attempts_total\{deployment="a",model="status500",'
        r'outcome="server_error"\} [1-9]',
        text,
    ), text
    assert re.search(
        r'tokenrelay_upstream_attempts_total\{deployment="b",model="status500",outcome="ok"\} [1-9]', text
    )
    assert re.search(r'tokenrelay_failovers_total\{deployment="a",model="status500"\} [1-9]', text)
    assert 'tokenrelay_deployment_state{deployment="b",model="status500",state="healthy"} 1.0' in text


# -- selection and ejection --------------------------------------------------------------------


async def test_the_fast_deployment_gets_most_streams(sim: Sim, second_sim: Sim, tmp_path: Path) -> None:
    """A deployment 300 ms slower to its first token gets few streams once both were measured."""
    config = (
        'default_model = "m"\n[models."m"]\n'
        + deployment("m", "slow", sim.base_url, "tokens=5&ttft=0.3", 0)
        + deployment("m", "fast", second_sim.base_url, "tokens=5", 0)
    )
    gw = launch_gateway(tmp_path, config=config, database_url=f"sqlite+aiosqlite:///{tmp_path / 'l.db'}")
    try:
        for _ in range(4):  # warm-up: both measured
            await post_chat(gw.url, "m", new_request_id())
        rids = [new_request_id() for _ in range(200)]
        semaphore = asyncio.Semaphore(8)

        async def one(rid: str) -> None:
            async with semaphore:
                response = await post_chat(gw.url, "m", rid)
                assert response.status_code == 200

        await asyncio.gather(*(one(rid) for rid in rids))
        served = [(await gw.ledger_rows(rid, settle=0))[0]["deployment"] for rid in rids]
    finally:
        gw.stop()
    fast_share = served.count("fast") / len(served)
    assert fast_share >= 0.8, f"the fast deployment served {fast_share:.0%}"


async def test_a_failing_deployment_is_ejected_probed_after_the_cooldown_and_back(
    sim: Sim, second_sim: Sim, tmp_path: Path
) -> None:
    proxy = TcpProxy(int(sim.url.rsplit(":", 1)[1])).start()
    config = (
        'default_model = "m"\n[models."m"]\neject_after_failures = 3\ncooldown_seconds = 1.0\n'
        + deployment("m", "flaky", proxy.url_for(sim.base_url, int(sim.url.rsplit(":", 1)[1])), "tokens=5", 0)
        + deployment("m", "steady", second_sim.base_url, "tokens=5", 1)
    )
    gw = launch_gateway(tmp_path, config=config, database_url=f"sqlite+aiosqlite:///{tmp_path / 'l.db'}")
    try:
        proxy.cut()
        for _ in range(3):  # three failures in a row: each one failed over to "steady"
            rid = new_request_id()
            assert (await post_chat(gw.url, "m", rid)).status_code == 200
            assert (await gw.ledger_rows(rid, settle=0))[0]["attempts"] == 2
        state = gw.readyz()["deployments"]["m"]["flaky"]
        assert state["state"] == "ejected" and state["consecutive_failures"] == 3
        rid = new_request_id()
        await post_chat(gw.url, "m", rid)  # ejected: not even tried
        row = (await gw.ledger_rows(rid, settle=0))[0]
        assert (row["deployment"], row["attempts"]) == ("steady", 1)
        proxy.restore()
        await asyncio.sleep(1.1)  # the cool-down is over: the next request is the probe
        rid = new_request_id()
        await post_chat(gw.url, "m", rid)
        row = (await gw.ledger_rows(rid, settle=0))[0]
        assert (row["deployment"], row["attempts"]) == ("flaky", 1)
        assert gw.readyz()["deployments"]["m"]["flaky"]["state"] == "healthy"
        rid = new_request_id()
        await post_chat(gw.url, "m", rid)
        assert (await gw.ledger_rows(rid, settle=0))[0]["deployment"] == "flaky"
    finally:
        gw.stop()
        proxy.close()


async def _served_by(gw: Gateway, model: str) -> tuple[str, int, str]:
    rid = new_request_id()
    await post_chat(gw.url, model, rid)
    row = (await gw.ledger_rows(rid, settle=0))[0]
    return row["deployment"], row["attempts"], row["status"]


async def test_a_deployment_that_breaks_off_every_answer_is_ejected(
    sim: Sim, second_sim: Sim, tmp_path: Path
) -> None:
    """Regression: the first output reset the failure count, so failures after it never added up."""
    config = (
        'default_model = "m"\n[models."m"]\neject_after_failures = 3\n'
        + deployment("m", "breaks", sim.base_url, "tokens=20&error_after=3", 0)
        + deployment("m", "steady", second_sim.base_url, "tokens=5", 1)
    )
    gw = launch_gateway(tmp_path, config=config, database_url=f"sqlite+aiosqlite:///{tmp_path / 'l.db'}")
    try:
        for _ in range(3):
            assert await _served_by(gw, "m") == ("breaks", 1, "upstream_error")
        assert gw.readyz()["deployments"]["m"]["breaks"]["state"] == "ejected"
        assert await _served_by(gw, "m") == ("steady", 1, "completed")
    finally:
        gw.stop()


async def test_a_probe_that_the_overall_timeout_ends_ejects_the_deployment_again(
    sim: Sim, second_sim: Sim, tmp_path: Path
) -> None:
    """Regression: a probe ended by the watchdog (the last attempt has no time-out of its own)
    was released before it was judged, so it did not count as the probe and the deployment
    came back without ever answering."""
    config = (
        'default_model = "m"\n[models."m"]\nmax_attempts = 1\nfirst_token_timeout_seconds = 0.4\n'
        "eject_after_failures = 1\ncooldown_seconds = 0.5\n"
        + deployment("m", "stalls", sim.base_url, "tokens=5&ttft=30", 0)
        + deployment("m", "steady", second_sim.base_url, "tokens=5", 1)
    )
    gw = launch_gateway(tmp_path, config=config, database_url=f"sqlite+aiosqlite:///{tmp_path / 'l.db'}")
    try:
        assert await _served_by(gw, "m") == ("stalls", 1, "timeout")
        assert await _served_by(gw, "m") == ("steady", 1, "completed")  # ejected
        await asyncio.sleep(0.6)
        assert await _served_by(gw, "m") == ("stalls", 1, "timeout")  # the probe
        state = gw.readyz()["deployments"]["m"]["stalls"]
        assert (state["state"], state["ejections"]) == ("ejected", 2), state
        assert await _served_by(gw, "m") == ("steady", 1, "completed")
    finally:
        gw.stop()
