"""Three real replicas behind Debian's nginx, sharing the real PostgreSQL and Redis.

What the scale-out promises, tested the hard way: resumable streams cut at random and resumed
through the load balancer (usually on another replica), a replica SIGKILLed mid-traffic, Stop
sent to one replica for a stream generating on another.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.e2e.conftest import StartNginx
from tests.helpers import Gateway, Sim, launch_gateway, model_table, redis_available
from tests.resuming import SseReader, follow, ids_of, read_stream, text_of

ADMIN_KEY = "admin-" + "r" * 40
ORPHAN_AFTER = 3.0


@dataclass
class Fleet:
    replicas: list[Gateway]
    nginx: str
    database_url: str
    keys: dict[str, str]

    def auth(self, key: str = "load") -> dict[str, str]:
        return {"authorization": f"Bearer {self.keys[key]}"}


def create_key(database_url: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "tokenrelay", "keys", "create", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TOKENRELAY_LEDGER__DATABASE_URL": database_url},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture
def fleet(sim: Sim, pg_database_url: str, tmp_path: Path, start_nginx: StartNginx) -> Iterator[Fleet]:
    if not redis_available():
        if os.environ.get("TOKENRELAY_TEST_REDIS") == "required":
            pytest.fail("Redis is required")
        pytest.skip("Redis is not running")
    env = {
        "TOKENRELAY_AUTH__ENABLED": "true",
        "TOKENRELAY_AUTH__ADMIN_KEY": ADMIN_KEY,
        "TOKENRELAY_AUTH__REDIS_URL": "redis://127.0.0.1:6379/0",
        "TOKENRELAY_CLUSTER__NAMESPACE": f"test-{uuid.uuid4().hex[:12]}",
        "TOKENRELAY_CLUSTER__ORPHAN_AFTER_SECONDS": str(ORPHAN_AFTER),
        "TOKENRELAY_CLUSTER__RESUME_GRACE_SECONDS": "10",
        "TOKENRELAY_KEEPALIVE_SECONDS": "1",
    }
    replicas: list[Gateway] = []
    try:
        for _ in range(3):
            replicas.append(
                launch_gateway(
                    tmp_path,
                    config=model_table(sim.base_url),
                    database_url=pg_database_url,
                    env=env,
                )
            )
        keys = {
            "load": create_key(pg_database_url, "--name", f"load-{uuid.uuid4().hex[:6]}"),
            "rpm": create_key(pg_database_url, "--name", f"rpm-{uuid.uuid4().hex[:6]}", "--rpm", "10"),
            "limited": create_key(
                pg_database_url,
                "--name",
                f"limited-{uuid.uuid4().hex[:6]}",
                "--max-concurrent",
                "3",
                "--rpm",
                "40",
            ),
        }
        yield Fleet(replicas, start_nginx([gw.url for gw in replicas]), pg_database_url, keys)
    finally:
        for gw in replicas:
            if gw.process.poll() is None:
                os.killpg(gw.process.pid, signal.SIGKILL)
                gw.process.wait(10)


async def rows_by_request(database_url: str, request_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            result = await connection.execute(
                text("SELECT * FROM usage_record WHERE request_id = ANY(:ids)"), {"ids": request_ids}
            )
            found: dict[str, list[dict[str, Any]]] = {rid: [] for rid in request_ids}
            for row in result:
                found[row.request_id].append(dict(row._mapping))
            return found
    finally:
        await engine.dispose()


async def wait_rows(
    database_url: str, request_ids: list[str], timeout: float
) -> dict[str, list[dict[str, Any]]]:
    """Every request's rows once each has one (or ``timeout`` passed), re-read after a pause."""
    deadline = time.monotonic() + timeout
    while True:
        rows = await rows_by_request(database_url, request_ids)
        if all(rows.values()) or time.monotonic() > deadline:
            await asyncio.sleep(0.5)
            return await rows_by_request(database_url, request_ids)
        await asyncio.sleep(0.1)


async def test_200_resumable_streams_cut_at_random_resume_through_nginx_exactly(fleet: Fleet) -> None:
    rng = random.Random(13)
    request_ids = [f"test-fleet-{uuid.uuid4().hex}" for _ in range(200)]
    prompts = [" ".join(f"s{n}w{i}" for i in range(60)) for n in range(200)]
    limits = httpx.Limits(max_connections=500, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def one(n: int) -> Any:
            sent = {
                "model": "echo-paced",
                "resumable": True,
                "messages": [{"role": "user", "content": prompts[n]}],
            }
            headers = {**fleet.auth(), "x-request-id": request_ids[n]}
            return await read_stream(
                client,
                fleet.nginx,
                "/chat",
                sent,
                headers=headers,
                cut_after=rng.randint(1, 80),
                follow_headers=fleet.auth(),
            )

        results = await asyncio.gather(*(one(n) for n in range(200)))
    for n, result in enumerate(results):
        assert result.first_status == 200
        assert text_of(result.events) == prompts[n], f"stream {n} cut after {result.cut_after}"
        assert ids_of(result.events) == list(range(1, len(result.events) + 1)), n
        assert result.events[-1].json()["type"] == "done"
    rows = await wait_rows(fleet.database_url, request_ids, timeout=10)
    assert all(len(found) == 1 for found in rows.values()), {
        k: len(v) for k, v in rows.items() if len(v) != 1
    }
    assert {found[0]["status"] for found in rows.values()} == {"completed"}


async def test_a_replica_killed_mid_traffic_leaves_exactly_one_row_per_stream(fleet: Fleet, sim: Sim) -> None:
    victim, survivor, other = fleet.replicas
    slow = {"model": "slow", "messages": [{"role": "user", "content": "x"}]}
    plain_ids = [f"test-kill-plain-{uuid.uuid4().hex}" for _ in range(4)]
    resumable_ids = [f"test-kill-res-{uuid.uuid4().hex}" for _ in range(4)]
    limited_ids = [f"test-kill-lim-{uuid.uuid4().hex}" for _ in range(3)]
    safe_ids = [f"test-kill-safe-{uuid.uuid4().hex}" for _ in range(4)]
    async with httpx.AsyncClient(timeout=60) as client:
        plain_readers: list[asyncio.Task[Any]] = []

        async def plain(rid: str, key: str = "load") -> str:
            try:
                async with client.stream(
                    "POST", f"{victim.url}/chat", json=slow, headers={**fleet.auth(key), "x-request-id": rid}
                ) as response:
                    assert response.status_code == 200
                    async for _ in response.aiter_raw():
                        pass
            except httpx.TransportError as exc:
                return type(exc).__name__
            return "ended"

        for rid in plain_ids:
            plain_readers.append(asyncio.ensure_future(plain(rid)))
        for rid in limited_ids:
            plain_readers.append(asyncio.ensure_future(plain(rid, "limited")))
        followers: list[tuple[SseReader, asyncio.Task[int]]] = []
        for rid in resumable_ids:
            reader = SseReader()
            async with client.stream(
                "POST",
                f"{victim.url}/chat",
                json={**slow, "resumable": True},
                headers={**fleet.auth(), "x-request-id": rid},
            ) as response:
                stream_id = response.headers["x-stream-id"]
                async for data in response.aiter_raw():
                    reader.feed(data)
                    if len(reader.events) >= 3:
                        break
            # Followed on another replica from here on.
            followers.append(
                (
                    reader,
                    asyncio.ensure_future(
                        follow(client, survivor.url, stream_id, reader, headers=fleet.auth())
                    ),
                )
            )
        safe = [
            asyncio.ensure_future(
                client.post(
                    f"{gw.url}/chat",
                    json={"model": "paced", "messages": [{"role": "user", "content": "x"}]},
                    headers={**fleet.auth(), "x-request-id": rid},
                )
            )
            for gw, rid in zip([survivor, other, survivor, other], safe_ids, strict=True)
        ]
        for rid in plain_ids + resumable_ids + limited_ids:
            await sim.wait_request(rid)
        await asyncio.sleep(0.3)
        os.killpg(victim.process.pid, signal.SIGKILL)
        killed = time.monotonic()
        victim.process.wait(10)

        # The limited key's 3 slots were the dead replica's: still taken until its lease expires.
        refused = await client.post(
            f"{survivor.url}/chat",
            json={"model": "fast", "messages": [{"role": "user", "content": "x"}]},
            headers=fleet.auth("limited"),
        )
        assert refused.status_code == 429, refused.text

        outcomes = await asyncio.gather(*plain_readers)
        assert all(outcome != "ended" for outcome in outcomes), outcomes  # a connection error each
        statuses = await asyncio.wait_for(asyncio.gather(*(task for _, task in followers)), ORPHAN_AFTER + 5)
        assert statuses == [200] * 4
        for reader, _ in followers:
            lost = reader.events[-1].json()
            assert lost["type"] == "error" and lost["code"] == "stream_lost", lost
            # The reaper's stream_lost carries the next id; one a follower says itself, none.
            numbered = [i for i in ids_of(reader.events) if i is not None]
            assert numbered == list(range(1, len(numbered) + 1)) and len(numbered) >= len(reader.events) - 1
        lost_ids = plain_ids + resumable_ids + limited_ids
        rows = await wait_rows(
            fleet.database_url, lost_ids, timeout=ORPHAN_AFTER + 5 - (time.monotonic() - killed)
        )
        took = time.monotonic() - killed
        assert all(len(found) == 1 for found in rows.values()), {k: len(v) for k, v in rows.items()}
        assert took < ORPHAN_AFTER + 5, took
        for found in rows.values():
            assert found[0]["status"] == "replica_lost" and found[0]["usage_source"] == "estimated"
            assert found[0]["prompt_tokens"] > 0
        assert min(rows[rid][0]["completion_tokens"] for rid in resumable_ids) >= 3

        # The other replicas' streams were not touched.
        for response in await asyncio.gather(*safe):
            assert response.status_code == 200 and b'"finish_reason":"stop"' in response.content
        # The dead replica's slots are free again (its lease expired), and the limit still
        # holds across the two survivors: 3 streams at once, not 4.
        held: list[asyncio.Task[Any]] = []
        for gw in (survivor, other, survivor):
            held.append(
                asyncio.ensure_future(
                    client.post(
                        f"{gw.url}/chat",
                        json={"model": "paced", "messages": [{"role": "user", "content": "x"}]},
                        headers=fleet.auth("limited"),
                    )
                )
            )
        await asyncio.sleep(0.15)
        fourth = await client.post(
            f"{other.url}/chat",
            json={"model": "fast", "messages": [{"role": "user", "content": "x"}]},
            headers=fleet.auth("limited"),
        )
        assert fourth.status_code == 429 and fourth.json()["error"]["code"] == "rate_limit_exceeded"
        assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200, 200]
        # Requests per minute hold across the survivors too: 10 admitted in all, then 429.
        quick = {"model": "fast", "messages": [{"role": "user", "content": "x"}]}
        codes = [
            (await client.post(f"{gw.url}/chat", json=quick, headers=fleet.auth("rpm"))).status_code
            for gw in [survivor, other] * 6
        ]
        assert codes == [200] * 10 + [429, 429], codes
    rows_again = await rows_by_request(fleet.database_url, lost_ids + safe_ids)
    assert all(len(found) == 1 for found in rows_again.values())


async def test_stop_sent_to_another_replica_closes_the_upstream_within_100_ms(fleet: Fleet, sim: Sim) -> None:
    owner, elsewhere = fleet.replicas[0], fleet.replicas[1]
    rid = f"test-stop-{uuid.uuid4().hex}"
    async with httpx.AsyncClient(timeout=30) as client:
        reader = SseReader()
        async with client.stream(
            "POST",
            f"{owner.url}/chat",
            json={"model": "slow", "resumable": True, "messages": [{"role": "user", "content": "x"}]},
            headers={**fleet.auth(), "x-request-id": rid},
        ) as response:
            stream_id = response.headers["x-stream-id"]
            async for data in response.aiter_raw():
                reader.feed(data)
                if len(reader.events) >= 3:
                    break
        await asyncio.sleep(0.3)  # nobody attached; generating on
        assert (await sim.wait_request(rid))["ended_at"] is None
        # Another key may neither follow nor stop it: the same 404 as an unknown id.
        other_key = {"authorization": f"Bearer {fleet.keys['limited']}"}
        for response in (
            await client.post(f"{elsewhere.url}/v1/streams/{stream_id}/stop", headers=other_key),
            await client.get(f"{elsewhere.url}/v1/streams/{stream_id}", headers=other_key),
            await client.get(f"{elsewhere.url}/v1/streams/{uuid.uuid4().hex}", headers=fleet.auth()),
        ):
            assert response.status_code == 404 and response.json()["error"]["code"] == "stream_not_found"
        assert (await client.get(f"{elsewhere.url}/v1/streams/{stream_id}")).status_code == 401
        asked = time.monotonic()
        stopped = await client.post(f"{elsewhere.url}/v1/streams/{stream_id}/stop", headers=fleet.auth())
        assert stopped.status_code == 202
        ended = await sim.wait_ended(rid, timeout=2)
        assert ended["ended_at"] - asked < 0.1, ended["ended_at"] - asked
        # The admin key may follow anyone's stream.
        admin = {"authorization": f"Bearer {ADMIN_KEY}"}
        assert await follow(client, fleet.replicas[2].url, stream_id, reader, headers=admin) == 200
        assert reader.events[-1].json() == {"type": "done", "finish_reason": "stopped"}
    rows = await wait_rows(fleet.database_url, [rid], timeout=5)
    assert [row["status"] for row in rows[rid]] == ["stopped"]
