"""The upstream stream is closed on every exit path; logs carry outcomes, never content."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from alembic import command

from tests.helpers import Gateway, Sim, chat_body, new_request_id, open_raw_stream, wait_until
from tokenrelay.ledger.db import alembic_config


async def test_no_upstream_stream_is_left_open_on_any_exit_path(gateway: Gateway, sim: Sim) -> None:
    ends: dict[str, str] = {}
    async with httpx.AsyncClient(timeout=15) as client:
        for model in ("fast", "drop", "idle-timeout", "midstream-error", "error500"):
            rid = new_request_id()
            await client.post(f"{gateway.url}/chat", content=chat_body(model), headers={"X-Request-ID": rid})
            ends[model] = (await sim.wait_ended(rid))["end"]
    rid = new_request_id()
    stream = await open_raw_stream(
        gateway.url,
        "/chat",
        chat_body("stall"),
        rid,
    )
    await stream.read_until(b'"type":"delta"')
    stream.close()
    ends["disconnect"] = (await sim.wait_ended(rid))["end"]

    assert ends == {
        "fast": "completed",
        "drop": "dropped",
        "idle-timeout": "client_closed",  # the gateway gave up and closed it
        "midstream-error": "error_event",
        "error500": "error_status",
        "disconnect": "client_closed",
    }
    await wait_until(lambda: sim.stats()["active"] == 0, timeout=2, what="no upstream stream left open")


@pytest.mark.parametrize("model", ["fast", "claude-echo"])  # an OpenAI upstream, an Anthropic one
async def test_a_completed_answers_upstream_connection_is_reused(
    gateway: Gateway, sim: Sim, model: str
) -> None:
    # A body read only to the protocol's last event ([DONE], message_stop) is not at its end
    # (the terminating chunk follows): closing it instead of pooling it made every next
    # request open a new connection, about 1 ms of a lone stream's time to first token.
    rids = [new_request_id() for _ in range(12)]
    async with httpx.AsyncClient(timeout=15) as client:
        for rid in rids:
            body = chat_body(model, stream=True)
            response = await client.post(
                f"{gateway.url}/v1/chat/completions", content=body, headers={"X-Request-ID": rid}
            )
            assert response.status_code == 200
            await sim.wait_ended(rid)
    ports = {sim.request(rid)["client_port"] for rid in rids}  # type: ignore[index]
    assert None not in ports
    assert len(ports) <= 2, f"{len(ports)} upstream connections for {len(rids)} sequential answers"


async def test_logs_never_contain_message_content(gateway: Gateway) -> None:
    secret = "SECRET-PROMPT-7f3a9c"
    rid = new_request_id()
    async with httpx.AsyncClient(timeout=15) as client:
        for model in ("echo", "drop", "error500"):
            await client.post(
                f"{gateway.url}/chat",
                json={"model": model, "messages": [{"role": "user", "content": secret}]},
                headers={"X-Request-ID": rid},
            )
    rows = await gateway.ledger_rows(rid)
    assert len(rows) == 3  # one request id reused by a client: still one row per stream
    log = gateway.log_text()
    assert rid in log
    assert secret not in log
    assert log.count(f'"request_id":"{rid}"') >= 3


def migrate(db: Path) -> None:
    """``tokenrelay migrate`` on the SQLite file ``db``, as a user runs it."""
    config = db.with_suffix(".toml")
    config.write_text(f'[ledger]\ndatabase_url = "sqlite+aiosqlite:///{db}"\n')
    result = subprocess.run(
        [sys.executable, "-m", "tokenrelay", "migrate", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_migrate_command_creates_the_schema(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    migrate(db)
    with sqlite3.connect(db) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        version = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    assert {"usage_record", "api_key", "alembic_version"} <= tables
    assert version == ("0003",)


def test_migrate_upgrades_a_ledger_from_the_first_schema(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    command.upgrade(alembic_config(f"sqlite+aiosqlite:///{db}"), "0001")
    with sqlite3.connect(db) as connection:
        connection.execute(
            "INSERT INTO usage_record (stream_id, request_id, model, upstream_model, status, prompt_tokens,"
            " completion_tokens, usage_source, chunk_count, duration_ms, started_at, finished_at)"
            " VALUES ('s1', 'r1', 'm', 'm', 'completed', 3, 4, 'upstream', 5, 1.0,"
            " '2026-01-01', '2026-01-01')"
        )
    migrate(db)
    with sqlite3.connect(db) as connection:
        row = connection.execute(
            "SELECT stream_id, prompt_tokens, cost_usd, deployment, attempts, cache_read_tokens"
            " FROM usage_record"
        ).fetchone()
        version = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    # A row from before routing: one upstream, tried once.
    assert row == ("s1", 3, None, None, 1, None) and version == ("0003",)


@pytest.mark.parametrize("args", [["serve", "--config", "/no/such/file.toml"], ["bogus"]])
def test_cli_refuses_bad_invocations(args: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tokenrelay", *args], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_serve_says_where_to_go_and_which_model_answers(gateway: Gateway) -> None:
    """Regression (lifecycle v2, defect 10): ``dev.py serve`` never said where the page was."""
    port = gateway.url.rsplit(":", 1)[1]
    ready = [line for line in gateway.log_text().splitlines() if "tokenrelay ready" in line]
    assert len(ready) == 1, ready
    assert f"tokenrelay ready on http://127.0.0.1:{port}/ (the chat page); default model fast" in ready[0]
