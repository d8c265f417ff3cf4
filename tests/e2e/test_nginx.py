"""tokenrelay behind real nginx, configured with ``deploy/nginx/tokenrelay.conf`` itself.

nginx keeps its default proxy buffering on (the gateway's ``X-Accel-Buffering: no`` turns it
off for streams alone), and each test compares with the gateway reached directly.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import orjson

from tests.e2e.conftest import StartNginx
from tests.helpers import Gateway, Sim, new_request_id, open_raw_stream


def delta_arrival_times(url: str, model: str = "paced") -> list[float]:
    """When each ``delta`` event reached the client, in seconds from the first."""
    arrivals: list[float] = []
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "hello"}]}
    with httpx.stream("POST", f"{url}/chat", json=body, timeout=10) as response:
        assert response.status_code == 200, response.read()
        for data in response.iter_bytes():
            now = time.monotonic()
            arrivals += [now] * data.count(b'"type":"delta"')
    return [t - arrivals[0] for t in arrivals]


def test_tokens_arrive_one_by_one_through_nginx(gateway: Gateway, start_nginx: StartNginx) -> None:
    # `paced`: 20 tokens at 50 per second, so about 0.38 s from the first to the last.
    direct = delta_arrival_times(gateway.url)
    proxied = delta_arrival_times(start_nginx(gateway.url))
    assert len(proxied) == len(direct) == 20
    assert proxied[-1] >= 0.25, f"through nginx all tokens came within {proxied[-1] * 1000:.0f} ms"
    assert len(set(proxied)) >= 10, f"through nginx the 20 tokens came in {len(set(proxied))} reads"
    assert proxied[-1] >= 0.66 * direct[-1], "nginx spreads the tokens like a direct connection does"


async def test_client_leaving_through_nginx_aborts_the_upstream(
    gateway: Gateway, sim: Sim, start_nginx: StartNginx
) -> None:
    proxy_url = start_nginx(gateway.url)
    rid = new_request_id()
    body = orjson.dumps({"model": "stall", "messages": [{"role": "user", "content": "hi"}]})
    stream = await open_raw_stream(proxy_url, "/chat", body, rid)
    # Three tokens, then the upstream is silent for 30 s: only the disconnect can end it.
    await stream.read_until(b'"type":"delta"', count=3)
    closed_at = stream.close()

    upstream = await sim.wait_ended(rid, timeout=5)
    assert upstream["end"] == "client_closed"
    assert upstream["ended_at"] - closed_at < 1.0
    rows = await gateway.ledger_rows(rid)
    assert [r["status"] for r in rows] == ["client_disconnected"]


async def test_keepalive_pings_outlast_the_proxy_read_timeout(
    gateway: Gateway, start_gateway: Any, start_nginx: StartNginx
) -> None:
    body = orjson.dumps({"model": "stall", "messages": [{"role": "user", "content": "hi"}]})
    pinging: Gateway = start_gateway(env={"TOKENRELAY_KEEPALIVE_SECONDS": "0.3"})

    kept = await open_raw_stream(start_nginx(pinging.url, read_timeout="1s"), "/chat", body, new_request_id())
    await kept.read_until(b": ping", count=6, timeout=5)  # 1.8 s and more of silence, connection open
    kept.close()

    # The control: with the default 15 s keep-alive, nginx gives up on the silent stream.
    cut = await open_raw_stream(start_nginx(gateway.url, read_timeout="1s"), "/chat", body, new_request_id())
    started = time.monotonic()
    await cut.read_to_end(timeout=5)
    cut.close()
    assert 0.9 < time.monotonic() - started < 4, "nginx closed the silent stream at its read timeout"
    assert b": ping" not in cut.received
