"""The admin console (``/admin``) in a real browser, against a real gateway with keys on.

The gateway runs with an admin key, the ledger on SQLite or PostgreSQL (whose day and hour
buckets are computed differently) and the simulated upstream; a week
of usage rows for three keys and two models is written through the ledger's own store
(:class:`LedgerStore`) and the keys through its :class:`KeyStore`. ``tests/browser/admin.test.mjs``
then drives chromium through the console: totals against ``/v1/usage`` and the sums SQL
computes here, a key created (secret shown once, used, edited, revoked), the live view under a
known workload, keyboard tabs, axe-core in light and dark. This module checks what the browser
cannot see: the audit log, the ledger row of the new key's request, no secret in the log.

``TOKENRELAY_UPDATE_SCREENSHOTS=1`` writes the screenshots to ``docs/screenshots/`` (otherwise
to ``build/artifacts/``).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.e2e.test_web_page import ARTIFACT_DIR, BROWSER_TESTS, CHROMIUM, needs_browser, node_test
from tests.helpers import PG_ADMIN_URL, Gateway, Sim, closed_port, model_table, postgres_available
from tokenrelay.auth.keys import KeyStore
from tokenrelay.config import LedgerSettings
from tokenrelay.ledger.spool import Spool
from tokenrelay.ledger.store import LedgerStore

ROOT = Path(__file__).resolve().parents[2]
ADMIN_KEY = "admin-console-" + "k" * 40
KEY_CACHE_SECONDS = 1.0
# Integer prices per million tokens: every row's cost is a whole number of micro-dollars, so
# sums rounded to 6 places are the same however they are grouped.
PRICES = {"gpt-sim": (3, 12), "claude-sim": (1, 5)}
DEPLOYMENTS = {"gpt-sim": ("primary", "backup"), "claude-sim": ("anthropic-1",)}


def console_config(sim: Sim) -> str:
    """The tests' models, plus the two seeded ones: ``gpt-sim`` with a broken primary
    deployment (ejected after two failures) and a working backup, ``claude-sim`` over the
    Messages API."""
    gpt_in, gpt_out = PRICES["gpt-sim"]
    claude_in, claude_out = PRICES["claude-sim"]
    return (
        model_table(sim.base_url)
        + f"""
[models."gpt-sim"]
input_price_per_million = {gpt_in}
output_price_per_million = {gpt_out}
eject_after_failures = 2
cooldown_seconds = 600

[[models."gpt-sim".deployments]]
name = "primary"
base_url = "http://127.0.0.1:{closed_port()}/v1"
upstream_model = "sim?tokens=20"

[[models."gpt-sim".deployments]]
name = "backup"
base_url = "{sim.base_url}"
upstream_model = "sim?tokens=20"
priority = 1

[models."claude-sim"]
provider = "anthropic"
base_url = "{sim.url}"
upstream_model = "sim?echo=1"
input_price_per_million = {claude_in}
output_price_per_million = {claude_out}
"""
    )


class _NoEvents:
    """The seeding store reports to no metrics."""

    def spooled_rows(self, rows: int) -> None:
        pass

    def rows_lost(self, rows: int) -> None:
        pass

    def row_dead_lettered(self) -> None:
        pass


def week_of_rows(key_ids: list[str], now: datetime) -> list[dict[str, Any]]:
    """About 500 finished streams spread over the last seven UTC days (today included), for
    three keys (and a few without a key: the admin's), two models and their deployments."""
    rng = random.Random(15)
    start = datetime(now.year, now.month, now.day, tzinfo=UTC) - timedelta(days=6)
    count = 504
    rows = []
    for i in range(count):
        started = start + (now - timedelta(minutes=5) - start) * (i + 0.5) / count
        model = ("gpt-sim", "claude-sim")[(i // 3) % 2]
        prompt, completion = rng.randint(50, 4000), rng.randint(20, 1500)
        price_in, price_out = PRICES[model]
        rows.append(
            {
                "stream_id": f"seed{i:028d}",
                "request_id": f"seed-{i}",
                "api_key_id": None if i % 25 == 0 else key_ids[i % 3],
                "model": model,
                "upstream_model": model,
                "status": "completed",
                "error_code": None,
                "disconnect_phase": None,
                "finish_reason": "stop",
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "usage_source": "upstream",
                "chunk_count": completion,
                "ttft_ms": rng.uniform(80, 900),
                "duration_ms": rng.uniform(500, 20000),
                "started_at": started,
                "finished_at": started + timedelta(seconds=5),
                "cost_usd": round((prompt * price_in + completion * price_out) / 1e6, 6),
                "deployment": DEPLOYMENTS[model][i % len(DEPLOYMENTS[model])],
                "attempts": 1,
                "cache_read_tokens": None,
                "cache_creation_tokens": None,
            }
        )
    return rows


async def seed(gw: Gateway, tmp_path: Path) -> tuple[dict[str, Any], str]:
    """Three keys and a week of rows through the ledger's own stores; returns what SQL sums
    on the database, and one key's secret (a valid key that is not the admin's)."""
    engine = create_async_engine(gw.database_url)
    try:
        keys = KeyStore(engine)
        created = [
            await keys.create(name="web-frontend", budget_tokens=1_500_000, rpm=600),
            await keys.create(name="batch-jobs", budget_tokens=400_000, budget_usd=5.0, max_concurrent=8),
            await keys.create(name="mobile-app", budget_usd=20.0, models=["gpt-sim", "fast"]),
        ]
        settings = LedgerSettings(database_url=gw.database_url, spool_dir=tmp_path / "seed-spool")
        store = LedgerStore(
            engine=engine,
            spool=Spool(settings.spool_dir, min_free_bytes=0),
            settings=settings,
            events=_NoEvents(),
        )
        await store.start()
        rows = week_of_rows([key.id for key, _ in created], datetime.now(UTC))
        await store.store(rows)
        await store.close()
        assert store.rows_written == len(rows) and store.rows_spooled == 0

        async with engine.connect() as connection:
            total = (
                await connection.execute(
                    text(
                        "SELECT count(*), sum(prompt_tokens), sum(completion_tokens), sum(cost_usd)"
                        " FROM usage_record"
                    )
                )
            ).one()
            per_key = (
                await connection.execute(
                    text(
                        "SELECT api_key_id, sum(prompt_tokens + completion_tokens) FROM usage_record"
                        " GROUP BY api_key_id"
                    )
                )
            ).all()
            per_model = (
                await connection.execute(
                    text(
                        "SELECT model, sum(prompt_tokens + completion_tokens) FROM usage_record"
                        " GROUP BY model"
                    )
                )
            ).all()
    finally:
        await engine.dispose()
    streams, prompt, completion, cost = total
    assert streams == len(rows)
    totals = {
        "streams": streams,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "cost_usd": round(cost, 6),
        "by_key": {key_id or "": int(tokens) for key_id, tokens in per_key},
        "by_model": {model: int(tokens) for model, tokens in per_model},
    }
    return totals, created[0][1]


async def _pg_admin(statement: str) -> None:
    engine = create_async_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(text(statement))
    finally:
        await engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty ledger database of its own: the page's totals are checked against all of it."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'console.db'}"
        return
    if not postgres_available():
        if os.environ.get("TOKENRELAY_TEST_POSTGRES") == "required":
            pytest.fail("PostgreSQL on 127.0.0.1:5432 is required but is not running")
        pytest.skip("PostgreSQL on 127.0.0.1:5432 is not running")
    name = f"tokenrelay_console_{uuid.uuid4().hex[:8]}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.mark.timeout(420)
def test_admin_console_in_chromium(start_gateway: Any, sim: Sim, ledger_url: str, tmp_path: Path) -> None:
    needs_browser()
    gw: Gateway = start_gateway(
        database_url=ledger_url,
        env={
            "TOKENRELAY_AUTH__ENABLED": "true",
            "TOKENRELAY_AUTH__ADMIN_KEY": ADMIN_KEY,
            "TOKENRELAY_AUTH__KEY_CACHE_SECONDS": str(KEY_CACHE_SECONDS),
        },
        config=console_config(sim),
    )
    db_totals, user_key = asyncio.run(seed(gw, tmp_path))
    results = tmp_path / "admin-results.jsonl"
    screenshots = (
        ROOT / "docs" / "screenshots"
        if os.environ.get("TOKENRELAY_UPDATE_SCREENSHOTS") == "1"
        else ARTIFACT_DIR
    )
    report = node_test(
        BROWSER_TESTS,
        {
            "TOKENRELAY_ADMIN_URL": gw.url,
            "TOKENRELAY_ADMIN_KEY": ADMIN_KEY,
            "TOKENRELAY_USER_KEY": user_key,
            "TOKENRELAY_DB_TOTALS": json.dumps(db_totals),
            "TOKENRELAY_KEY_CACHE_SECONDS": str(KEY_CACHE_SECONDS),
            "TOKENRELAY_RESULT_FILE": str(results),
            "SCREENSHOT_DIR": str(screenshots),
            "ARTIFACT_DIR": str(ARTIFACT_DIR),
            "CHROMIUM": CHROMIUM,
        },
        400,
        "admin.test.mjs",
    )
    # The file skips itself without TOKENRELAY_ADMIN_URL: make sure every test ran here.
    assert re.search(r"\bpass 7\b", report), report
    ran = {entry["test"]: entry for entry in map(json.loads, results.read_text().splitlines())}
    assert set(ran) == {"login", "usage", "keys", "live", "tabs", "a11y-light", "a11y-dark"}, ran
    for scheme in ("light", "dark"):
        assert (screenshots / f"admin-{scheme}.png").stat().st_size > 20_000

    # The key made in the browser: its request is in the ledger under its id; every change is
    # one audit line; neither its secret nor the admin key is in the log.
    made = ran["keys"]
    rows = asyncio.run(gw.ledger_rows(made["request_id"]))
    assert [row["api_key_id"] for row in rows] == [made["key_id"]]
    log = gw.log_text()
    audits = [
        entry
        for entry in (json.loads(line) for line in log.splitlines() if line.startswith("{"))
        if entry.get("key_id") == made["key_id"] and entry.get("actor") == "admin"
    ]
    assert [entry["event"] for entry in audits] == ["key_created", "key_updated", "key_revoked"], audits
    assert set(audits[1]["fields"]) == {"models", "max_concurrent"}, audits[1]
    assert made["secret"] not in log and ADMIN_KEY not in log and user_key not in log
