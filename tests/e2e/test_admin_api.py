"""The admin API (``/v1/admin/*``) against a real gateway, on SQLite and on PostgreSQL.

Keys: created (the secret shown once, and it works for a chat request), listed, changed,
revoked (refused on another replica within ``key_cache_seconds``), each change one audit line
without the secret. Usage: hour, deployment and split reports over a seeded week equal the
database's own sums. Summary: a known workload is counted as it ran.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.helpers import (
    Gateway,
    closed_port,
    model_table,
    new_request_id,
    open_raw_stream,
    parse_events,
    post_chat,
    wait_until,
)
from tokenrelay.ledger.models import UsageRecord
from tokenrelay.ledger.writer import insert_ignoring_duplicates

ADMIN_KEY = "admin-" + "y" * 40
KEY_CACHE_SECONDS = 1.0
AUTH_ENV = {
    "TOKENRELAY_AUTH__ENABLED": "true",
    "TOKENRELAY_AUTH__ADMIN_KEY": ADMIN_KEY,
    "TOKENRELAY_AUTH__KEY_CACHE_SECONDS": str(KEY_CACHE_SECONDS),
}
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
KEY_FORMAT = re.compile(r"^trk_[0-9a-f]{8}_[A-Za-z0-9_-]{43}$")


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'admin.db'}"
    url: str = request.getfixturevalue("pg_database_url")
    return url


def admin(gw: Gateway, method: str, path: str, body: Any = None, raw: bytes | None = None) -> httpx.Response:
    content = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
    return httpx.request(method, f"{gw.url}{path}", content=content, headers=ADMIN, timeout=10)


def chat(gw: Gateway, key: str, model: str = "fast", rid: str | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}", "x-request-id": rid or new_request_id()}
    body = orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})
    return httpx.post(f"{gw.url}/chat", content=body, headers=headers, timeout=10)


def refused(response: httpx.Response, status: int, code: str, param: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error


def audit_lines(gw: Gateway) -> list[dict[str, Any]]:
    lines = [orjson.loads(line) for line in gw.log_text().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("logger") == "tokenrelay.audit"]


async def test_keys_are_created_shown_once_changed_revoked_and_audited(
    start_gateway: Any, database_url: str
) -> None:
    gw: Gateway = start_gateway(env=AUTH_ENV, database_url=database_url)
    created = admin(
        gw, "POST", "/v1/admin/keys", {"name": " ci bot ", "rpm": 100, "models": ["fast", "echo"]}
    )
    assert created.status_code == 201, created.text
    key = created.json()
    secret = key.pop("secret")
    assert KEY_FORMAT.match(secret) and secret.startswith(key["prefix"] + "_")
    assert key["name"] == "ci bot" and key["state"] == "active" and key["rpm"] == 100
    assert key["models"] == ["echo", "fast"] and key["budget_tokens"] is None
    assert (key["spent_tokens"], key["spent_usd"], key["last_used_at"]) == (0, 0.0, None)

    # The secret works for a chat request against the simulator, and is never shown again.
    rid = new_request_id()
    answer = chat(gw, secret, rid=rid)
    assert answer.status_code == 200 and parse_events(answer.content)[-1]["type"] == "done"
    (row,) = await gw.ledger_rows(rid)
    listing = admin(gw, "GET", "/v1/admin/keys")
    assert listing.status_code == 200 and secret not in listing.text and "secret" not in listing.text
    listed = next(k for k in listing.json()["data"] if k["id"] == key["id"])
    assert listed["spent_tokens"] == row["prompt_tokens"] + row["completion_tokens"] > 0
    assert datetime.fromisoformat(listed["last_used_at"]) == _utc(row["started_at"])

    # Changes: fields sent are set, an explicit null clears; they apply to the next request.
    changed = admin(
        gw, "PATCH", f"/v1/admin/keys/{key['id']}", {"models": ["echo"], "rpm": None, "name": "x"}
    )
    assert changed.status_code == 200, changed.text
    assert {k: changed.json()[k] for k in ("models", "rpm", "name")} == {
        "models": ["echo"],
        "rpm": None,
        "name": "x",
    }
    refused(chat(gw, secret, "fast"), 403, "model_not_allowed")
    assert chat(gw, secret, "echo").status_code == 200
    assert admin(gw, "PATCH", f"/v1/admin/keys/{key['id']}", {"models": None}).json()["models"] is None
    assert chat(gw, secret, "fast").status_code == 200
    unchanged = admin(gw, "PATCH", f"/v1/admin/keys/{key['id']}", {"name": "x"})
    assert unchanged.status_code == 200

    # Bad input: a 400 naming the field; nothing changes.
    path = f"/v1/admin/keys/{key['id']}"
    for body, param in [
        ({"rpm": "5"}, "rpm"),
        ({"rpm": 0}, "rpm"),
        ({"budget_usd": -1}, "budget_usd"),
        ({"budget_tokens": 2**40}, "budget_tokens"),
        ({"bogus": 1}, "bogus"),
        ({"name": None}, "name"),
        ({"name": "  "}, "name"),
        ({"models": []}, "models"),
        ({"models": ["no-such-model"]}, "models"),
        ({"expires_at": "tomorrow"}, "expires_at"),
        ({"max_concurrent": True}, "max_concurrent"),
    ]:
        refused(admin(gw, "PATCH", path, body), 400, "invalid_request_error", param)
    refused(admin(gw, "POST", "/v1/admin/keys", {}), 400, "invalid_request_error", "name")
    refused(admin(gw, "POST", "/v1/admin/keys", raw=b"not json"), 400, "invalid_request_error")
    refused(admin(gw, "POST", "/v1/admin/keys", raw=b"[1]"), 400, "invalid_request_error")
    refused(admin(gw, "PATCH", "/v1/admin/keys/key_nope", {"rpm": 1}), 404, "key_not_found")
    refused(admin(gw, "POST", "/v1/admin/keys/key_nope/revoke"), 404, "key_not_found")
    assert admin(gw, "GET", "/v1/admin/keys").json()["data"][0]["name"] == "x"

    # Revoke: the key is refused at once on this gateway; a second revoke changes nothing.
    revoked = admin(gw, "POST", f"/v1/admin/keys/{key['id']}/revoke")
    assert revoked.status_code == 200 and revoked.json()["state"] == "revoked"
    refused(chat(gw, secret), 401, "invalid_api_key")
    again = admin(gw, "POST", f"/v1/admin/keys/{key['id']}/revoke")
    assert again.status_code == 200 and again.json()["revoked_at"] == revoked.json()["revoked_at"]

    expired = admin(gw, "POST", "/v1/admin/keys", {"name": "old", "expires_at": "2020-01-01T00:00:00"})
    assert expired.status_code == 201 and expired.json()["state"] == "expired"
    assert expired.json()["expires_at"] == "2020-01-01T00:00:00+00:00"
    refused(chat(gw, expired.json()["secret"]), 401, "invalid_api_key")
    listing = admin(gw, "GET", "/v1/admin/keys").json()["data"]
    assert [k["id"] for k in listing] == [expired.json()["id"], key["id"]], "newest first"

    # One audit line per change (validation errors and no-op changes write none); no secret.
    lines = audit_lines(gw)
    assert [(line["event"], line["key_id"], line["fields"]) for line in lines] == [
        ("key_created", key["id"], ["models", "name", "rpm"]),
        ("key_updated", key["id"], ["name", "rpm", "models"]),
        ("key_updated", key["id"], ["models"]),
        ("key_revoked", key["id"], ["revoked_at"]),
        ("key_created", expired.json()["id"], ["expires_at", "name"]),
    ]
    for line in lines:
        assert line["actor"] == "admin" and line["prefix"].startswith("trk_") and line["level"] == "info"
        assert abs(datetime.fromisoformat(line["at"]) - datetime.now(UTC)) < timedelta(minutes=5)
    log = gw.log_text()
    for leaked in (secret, secret.split("_", 2)[2], expired.json()["secret"], ADMIN_KEY):
        assert leaked not in log


async def test_a_revoked_key_is_refused_by_every_replica_within_the_key_cache_time(
    start_gateway: Any, database_url: str
) -> None:
    first: Gateway = start_gateway(env=AUTH_ENV, database_url=database_url)
    second: Gateway = start_gateway(env=AUTH_ENV, database_url=database_url)
    key = admin(first, "POST", "/v1/admin/keys", {"name": "leaked"}).json()
    for gw in (first, second):  # both replicas now hold the key in their cache
        assert chat(gw, key["secret"]).status_code == 200
    revoked_at = time.monotonic()
    assert admin(first, "POST", f"/v1/admin/keys/{key['id']}/revoke").status_code == 200
    refused(chat(first, key["secret"]), 401, "invalid_api_key")

    def refused_by_second() -> bool:
        return chat(second, key["secret"]).status_code == 401

    await wait_until(refused_by_second, timeout=KEY_CACHE_SECONDS + 2, interval=0.05)
    assert time.monotonic() - revoked_at <= KEY_CACHE_SECONDS + 0.5


def _utc(moment: datetime | str) -> datetime:
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


WEEK_START = datetime(2025, 3, 3, tzinfo=UTC)
WEEK_END = WEEK_START + timedelta(days=7)
PRICES = {"fast": (0.0, 0.0), "priced": (1000.0, 2000.0)}


def _seed_rows(key_ids: list[str]) -> list[dict[str, Any]]:
    """A week of rows for three keys (and a few of the admin's), two models, two deployments."""
    rng = random.Random(15)
    rows = []
    for day in range(7):
        for key_id in [*key_ids, None]:
            for model, (input_price, output_price) in PRICES.items():
                for _ in range(rng.randint(0, 4 if key_id else 1)):
                    started = WEEK_START + timedelta(
                        days=day, hours=rng.randint(0, 23), seconds=rng.randint(0, 3599)
                    )
                    prompt, completion = rng.randint(5, 500), rng.randint(0, 2000)
                    rows.append(
                        {
                            "stream_id": uuid.uuid4().hex,
                            "request_id": new_request_id(),
                            "api_key_id": key_id,
                            "model": model,
                            "upstream_model": f"sim-{model}",
                            "status": rng.choice(["completed", "completed", "client_disconnected"]),
                            "prompt_tokens": prompt,
                            "completion_tokens": completion,
                            "usage_source": "upstream",
                            "chunk_count": completion,
                            "ttft_ms": 100.0,
                            "duration_ms": 1000.0,
                            "started_at": started,
                            "finished_at": started + timedelta(seconds=1),
                            "cost_usd": (prompt * input_price + completion * output_price) / 1e6,
                            "deployment": rng.choice(["eu-west", "us-east"]),
                            "attempts": 1,
                        }
                    )
    return rows


def _expected(rows: list[dict[str, Any]], *dimensions: str) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Sums per value of ``dimensions`` (day, hour, model, key, deployment), computed here."""
    value = {
        "day": lambda r: r["started_at"].strftime("%Y-%m-%d"),
        "hour": lambda r: r["started_at"].strftime("%Y-%m-%dT%H:00:00+00:00"),
        "model": lambda r: r["model"],
        "key": lambda r: r["api_key_id"],
        "deployment": lambda r: r["deployment"],
    }
    out: dict[tuple[Any, ...], dict[str, Any]] = defaultdict(
        lambda: {"streams": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0}
    )
    for row in rows:
        sums = out[tuple(value[d](row) for d in dimensions)]
        sums["streams"] += 1
        sums["prompt_tokens"] += row["prompt_tokens"]
        sums["completion_tokens"] += row["completion_tokens"]
        sums["cost_usd"] += row["cost_usd"]
    return dict(out)


def _reported(items: list[dict[str, Any]], *dimensions: str) -> dict[tuple[Any, ...], dict[str, Any]]:
    names = dimensions if len(dimensions) > 1 else ("group",)
    out = {}
    for item in items:
        assert item["total_tokens"] == item["prompt_tokens"] + item["completion_tokens"]
        out[tuple(item[name] for name in names)] = {
            field: item[field] for field in ("streams", "prompt_tokens", "completion_tokens", "cost_usd")
        }
    return out


def _same(
    reported: dict[tuple[Any, ...], dict[str, Any]], expected: dict[tuple[Any, ...], dict[str, Any]]
) -> None:
    assert reported.keys() == expected.keys()
    for group, sums in expected.items():
        got = reported[group]
        assert {k: got[k] for k in ("streams", "prompt_tokens", "completion_tokens")} == {
            k: sums[k] for k in ("streams", "prompt_tokens", "completion_tokens")
        }, group
        assert got["cost_usd"] == pytest.approx(sums["cost_usd"], abs=1e-5), group


async def test_usage_reports_over_a_seeded_week_equal_the_database(
    start_gateway: Any, database_url: str
) -> None:
    gw: Gateway = start_gateway(env=AUTH_ENV, database_url=database_url)
    keys = [admin(gw, "POST", "/v1/admin/keys", {"name": f"team {n}"}).json() for n in range(3)]
    rows = _seed_rows([k["id"] for k in keys])
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(insert_ignoring_duplicates(engine.dialect.name), rows)
        async with engine.connect() as connection:
            by_key = {
                row.api_key_id: row
                for row in await connection.execute(
                    text(
                        "SELECT api_key_id, count(*) AS streams,"
                        " sum(prompt_tokens + completion_tokens) AS tokens, sum(cost_usd) AS cost,"
                        " max(started_at) AS last FROM usage_record"
                        " WHERE api_key_id IN (:a, :b, :c) GROUP BY api_key_id"
                    ),
                    dict(zip("abc", (k["id"] for k in keys), strict=True)),
                )
            }
            week = (UsageRecord.started_at >= WEEK_START) & (UsageRecord.started_at < WEEK_END)
            in_week = (
                await connection.execute(
                    select(
                        func.count(),
                        func.sum(UsageRecord.prompt_tokens),
                        func.sum(UsageRecord.completion_tokens),
                        func.sum(UsageRecord.cost_usd),
                    ).where(week)
                )
            ).one()
    finally:
        await engine.dispose()

    def usage(key: str = ADMIN_KEY, **params: str) -> dict[str, Any]:
        params = {"since": WEEK_START.isoformat(), "until": WEEK_END.isoformat(), **params}
        response = httpx.get(
            f"{gw.url}/v1/usage", params=params, headers={"authorization": f"Bearer {key}"}, timeout=10
        )
        assert response.status_code == 200, response.text
        return dict(response.json())

    for group_by, split_by in [
        ("hour", None),
        ("day", None),
        ("deployment", None),
        ("model", None),
        ("key", None),
        ("day", "model"),
        ("hour", "key"),
        ("day", "deployment"),
        ("hour", "model"),
        ("model", "deployment"),
    ]:
        params = {"group_by": group_by, **({"split_by": split_by} if split_by else {})}
        report = usage(**params)
        dimensions = (group_by, split_by) if split_by else (group_by,)
        _same(_reported(report["data"], *dimensions), _expected(rows, *dimensions))
        streams, prompt, completion, cost = in_week
        assert report["totals"]["streams"] == streams == len(rows)
        assert (report["totals"]["prompt_tokens"], report["totals"]["completion_tokens"]) == (
            prompt,
            completion,
        )
        assert report["totals"]["cost_usd"] == pytest.approx(cost, abs=1e-5)
        buckets = [item["group"] for item in report["data"]]
        assert buckets == sorted(buckets, key=lambda b: (b is None, b)) or group_by == "key"
    hours = usage(group_by="hour")["data"]
    assert all(re.fullmatch(r"2025-03-\d\dT\d\d:00:00\+00:00", item["group"]) for item in hours)
    # The week's boundaries: a narrower window is a subset, expressed in another time zone.
    one_day = usage(since="2025-03-04T01:00:00+01:00", until="2025-03-05T00:00:00Z", group_by="day")
    assert [item["group"] for item in one_day["data"]] == ["2025-03-04"]
    assert one_day["totals"]["streams"] == sum(
        1 for r in rows if r["started_at"].date().isoformat() == "2025-03-04"
    )

    # The keys list: spending and last use per key equal the database's.
    listed = {k["id"]: k for k in admin(gw, "GET", "/v1/admin/keys").json()["data"]}
    for key in keys:
        sums = by_key[key["id"]]
        shown = listed[key["id"]]
        assert shown["spent_tokens"] == sums.tokens
        assert shown["spent_usd"] == pytest.approx(float(sums.cost), abs=1e-5)
        assert datetime.fromisoformat(shown["last_used_at"]) == _utc(sums.last)
        assert sums.streams == sum(1 for r in rows if r["api_key_id"] == key["id"])

    # A key sees only its own rows, whatever it splits by.
    own = usage(keys[0]["secret"], group_by="day", split_by="key")
    assert {item["key"] for item in own["data"]} == {keys[0]["id"]}
    _same(
        _reported(own["data"], "day", "key"),
        _expected([r for r in rows if r["api_key_id"] == keys[0]["id"]], "day", "key"),
    )
    bad = httpx.get(
        f"{gw.url}/v1/usage", params={"group_by": "day", "split_by": "day"}, headers=ADMIN, timeout=5
    )
    refused(bad, 400, "invalid_request_error")
    assert "split_by" in bad.json()["error"]["message"]
    bad = httpx.get(
        f"{gw.url}/v1/usage", params={"group_by": "model", "split_by": "model"}, headers=ADMIN, timeout=5
    )
    refused(bad, 400, "invalid_request_error", "split_by")


def _metric_total(body: str, name: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
        if sample.name == name
    )


# Two deployments: the preferred one refuses connections and is ejected at its first failure.
PAIR = """
[models."pair"]
eject_after_failures = 1
cooldown_seconds = 600

[[models."pair".deployments]]
name = "broken"
base_url = "http://127.0.0.1:{closed}/v1"

[[models."pair".deployments]]
name = "backup"
base_url = "{sim}"
upstream_model = "sim?tokens=5"
priority = 1
"""


async def test_the_summary_counts_a_known_workload(start_gateway: Any, sim: Any) -> None:
    config = model_table(sim.base_url) + PAIR.format(closed=closed_port(), sim=sim.base_url)
    gw: Gateway = start_gateway(env=AUTH_ENV, config=config)

    def summary() -> dict[str, Any]:
        response = admin(gw, "GET", "/v1/admin/summary")
        assert response.status_code == 200, response.text
        return dict(response.json())

    idle = summary()
    assert (idle["streams_total"], idle["streams_in_flight"], idle["ttft_ms"]) == (0, 0, None)
    assert idle["ledger"] == {
        "enabled": True,
        "state": "ok",
        "spooled_rows": 0,
        "write_failures": 0,
        "dead_lettered": 0,
    }

    # One stream held open: counted in flight, per model and per deployment.
    rid = new_request_id()
    slow = orjson.dumps({"model": "slow", "messages": [{"role": "user", "content": "long"}]})
    held = await open_raw_stream(gw.url, "/chat", slow, rid, authorization=f"Bearer {ADMIN_KEY}")
    await held.read_until(b'"type":"delta"')
    during = summary()
    assert during["streams_in_flight"] == 1
    assert next(m for m in during["models"] if m["model"] == "slow")["in_flight"] == 1
    assert {(d["model"], d["in_flight"]) for d in during["deployments"] if d["in_flight"]} == {("slow", 1)}
    held.close()
    await sim.wait_ended(rid)

    results = await asyncio.gather(
        *(post_chat(gw.url, "fast", headers=ADMIN) for _ in range(5)),
        *(post_chat(gw.url, "error500", headers=ADMIN) for _ in range(2)),
    )
    assert [r.status_code for r in results] == [200] * 5 + [502] * 2
    # Served by the backup after the broken deployment failed (and was ejected).
    assert (await post_chat(gw.url, "pair", headers=ADMIN)).status_code == 200

    after = await wait_until(lambda: (s := summary())["streams_total"] == 9 and s, what="9 streams counted")
    assert after["streams_in_flight"] == 0
    assert after["statuses"] == {"completed": 6, "upstream_error": 2, "client_disconnected": 1}
    assert after["errors"] == {"server_error": 2}
    assert after["disconnects"] == {"mid_stream": 1}
    models = {m["model"]: m for m in after["models"]}
    assert (models["fast"]["streams"], models["fast"]["errors"], models["fast"]["in_flight"]) == (5, 0, 0)
    assert (models["error500"]["streams"], models["error500"]["errors"]) == (2, 2)
    assert models["paced"]["streams"] == 0, "configured models are listed even when idle"
    assert models["fast"]["tokens"] > 5 * 20 and models["fast"]["ttft_ms"]["p50"] > 0
    assert 0 < after["ttft_ms"]["p50"] <= after["ttft_ms"]["p99"]
    assert after["streams_per_second"] > 0, "9 streams within the last ~10 s"
    deployments = {(d["model"], d["deployment"]): d["state"] for d in after["deployments"]}
    assert (deployments[("pair", "broken")], deployments[("pair", "backup")]) == ("ejected", "up")
    assert deployments[("fast", "default")] == "up"
    assert all(d["in_flight"] == 0 for d in after["deployments"])
    assert after["uptime_seconds"] > 0 and after["local_model"] is None and after["cluster"] is None
    assert datetime.fromisoformat(after["generated_at"]).tzinfo is not None

    # The same numbers as /metrics, which it is computed from.
    metrics = httpx.get(f"{gw.url}/metrics", timeout=5).text
    assert after["streams_total"] == _metric_total(metrics, "tokenrelay_streams_total") == 9
    tokens = _metric_total(metrics, "tokenrelay_tokens_total")
    assert sum(m["tokens"] for m in after["models"]) == tokens

    # The rate is over the last ~10 s: with no more streams it falls back to 0.
    await wait_until(
        lambda: summary()["streams_per_second"] == 0, timeout=20, interval=1, what="rate back to 0"
    )
