"""``tokenrelay chat``: run as a real process against a real gateway."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

from tests.helpers import Gateway, Sim, new_request_id


def run_chat(
    gateway: Gateway, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tokenrelay", "chat", "--url", gateway.url, *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )


def test_prints_the_answer_then_usage(gateway: Gateway) -> None:
    done = run_chat(gateway, "--model", "echo", "what is 2 + 2?")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "what is 2 + 2?\n"
    assert "prompt +" in done.stderr and "completion tokens (upstream)" in done.stderr
    assert "first token" in done.stderr


def test_an_anthropic_provider_model_answers_the_same(gateway: Gateway) -> None:
    done = run_chat(gateway, "--model", "claude-echo", "what is 2 + 2?")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "what is 2 + 2?\n"
    assert "completion tokens (upstream)" in done.stderr


def test_prompt_from_stdin(gateway: Gateway) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tokenrelay", "chat", "--url", gateway.url, "--model", "echo", "--no-usage"],
        input="piped question",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "piped question\n", "")


def test_errors_are_one_readable_line_and_exit_1(gateway: Gateway) -> None:
    limited = run_chat(gateway, "--model", "ratelimit", "hi")
    assert limited.returncode == 1
    assert "upstream_rate_limited, HTTP 429" in limited.stderr
    assert "retry after 7 s" in limited.stderr
    assert "Traceback" not in limited.stderr

    broken = run_chat(gateway, "--model", "midstream-error", "hi")
    assert broken.returncode == 1
    assert broken.stdout, "the text before the error was shown"
    assert "(upstream_protocol_error)" in broken.stderr and "Traceback" not in broken.stderr


async def test_ctrl_c_stops_the_answer_and_the_upstream(gateway: Gateway, sim: Sim) -> None:
    rid = new_request_id()
    process = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "tokenrelay", "chat", "--url", gateway.url, "--model", "slow"],
        *["--request-id", rid, "tell me a long story"],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    # Tokens reach the terminal while the answer is still being generated.
    shown = b""
    async with asyncio.timeout(15):
        while len(shown.split()) < 5:
            shown += await process.stdout.read(4096)
    assert process.returncode is None

    process.send_signal(signal.SIGINT)
    async with asyncio.timeout(10):
        stderr = (await process.stderr.read()).decode()
        code = await process.wait()
    assert code == 130, stderr
    assert "[stopped]" in stderr and "Traceback" not in stderr
    upstream = await sim.wait_ended(rid, timeout=5)
    assert upstream["end"] == "client_closed"
    rows = await gateway.ledger_rows(rid)
    assert [r["status"] for r in rows] == ["client_disconnected"]
