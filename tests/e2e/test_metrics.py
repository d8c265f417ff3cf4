"""``/metrics`` after a known workload: exactly those counts, with one worker and with two."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import Gateway, Sim, closed_port, new_request_id, open_raw_stream, wait_until
from tests.helpers import chat_body as body
from tokenrelay.observability.summary import quantile

COMPLETED, BEFORE_FIRST_TOKEN, MID_STREAM = 4, 2, 3
FAILURES = {
    "error500": "server_error",
    "ratelimit": "rate_limited",
    "drop": "mid_stream_drop",
    "refused": "connection",
}


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of ``/metrics``: (name, labels) → value."""
    response = httpx.get(f"{url}/metrics", timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def total(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """The sum of ``name`` over the samples whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


async def run_workload(gw: Gateway, sim: Sim) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        for _ in range(COMPLETED):
            response = await client.post(f"{gw.url}/chat", content=body("fast"))
            assert b'"type":"done"' in response.content
        for model in FAILURES:
            await client.post(f"{gw.url}/chat", content=body(model))
    for _ in range(BEFORE_FIRST_TOKEN):
        rid = new_request_id()
        stream = await open_raw_stream(gw.url, "/chat", body("stall-first"), rid)
        await sim.wait_request(rid)
        await asyncio.sleep(0.3)  # a keep-alive or two go out meanwhile
        stream.close()
        await sim.wait_ended(rid)
    for _ in range(MID_STREAM):
        rid = new_request_id()
        stream = await open_raw_stream(gw.url, "/chat", body("stall"), rid)
        await stream.read_until(b'"type":"delta"', count=3)
        stream.close()
        await sim.wait_ended(rid)


def settled(
    gw: Gateway, streams: int, timeout: float = 10
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """A scrape once every stream of the workload is counted (the ledger writer reports them)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(gw.url)
        if total(samples, "tokenrelay_streams_total") >= streams or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_known_workload_gives_exact_counts(start_gateway: Any, sim: Sim, workers: int) -> None:
    gw: Gateway = start_gateway(
        env={"TOKENRELAY_WORKERS": str(workers), "TOKENRELAY_KEEPALIVE_SECONDS": "0.1"}
    )
    await run_workload(gw, sim)
    streams = COMPLETED + len(FAILURES) + BEFORE_FIRST_TOKEN + MID_STREAM
    s = await asyncio.to_thread(settled, gw, streams)

    assert total(s, "tokenrelay_streams_total") == streams
    assert total(s, "tokenrelay_streams_total", model="fast", status="completed") == COMPLETED
    assert (
        total(s, "tokenrelay_streams_total", status="client_disconnected") == BEFORE_FIRST_TOKEN + MID_STREAM
    )
    assert total(s, "tokenrelay_streams_total", status="upstream_error") == len(FAILURES)
    assert total(s, "tokenrelay_client_disconnects_total", phase="before_first_token") == BEFORE_FIRST_TOKEN
    assert total(s, "tokenrelay_client_disconnects_total", phase="mid_stream") == MID_STREAM
    for model, failure in FAILURES.items():
        assert total(s, "tokenrelay_upstream_errors_total", model=model, **{"class": failure}) == 1, failure
    assert total(s, "tokenrelay_upstream_errors_total") == len(FAILURES)
    assert total(s, "tokenrelay_streams_in_flight") == 0

    # Time to first token: every completed stream, the mid-stream leavers, the dropped one.
    assert total(s, "tokenrelay_time_to_first_token_seconds_count", model="fast") == COMPLETED
    assert total(s, "tokenrelay_time_to_first_token_seconds_count", model="stall") == MID_STREAM
    assert total(s, "tokenrelay_stream_duration_seconds_count") == streams
    assert (
        total(s, "tokenrelay_tokens_total", model="fast", kind="completion", source="upstream")
        == 20 * COMPLETED
    )
    assert total(s, "tokenrelay_tokens_total", model="fast", kind="prompt") > 0
    # Every client that left had its upstream closed, and it took less than 100 ms.
    assert total(s, "tokenrelay_abort_latency_seconds_count") == BEFORE_FIRST_TOKEN + MID_STREAM
    assert total(s, "tokenrelay_abort_latency_seconds_bucket", le="0.1") == BEFORE_FIRST_TOKEN + MID_STREAM
    assert total(s, "tokenrelay_keepalive_pings_total") >= BEFORE_FIRST_TOKEN
    assert total(s, "tokenrelay_ledger_spooled_rows") == 0
    assert total(s, "tokenrelay_ledger_write_failures_total") == 0


async def test_spooled_rows_show_while_the_database_is_away(start_gateway: Any) -> None:
    gw: Gateway = start_gateway(database_url=f"postgresql+asyncpg://postgres@127.0.0.1:{closed_port()}/none")
    async with httpx.AsyncClient(timeout=10) as client:
        for _ in range(3):
            await client.post(f"{gw.url}/chat", content=body("fast"))
    await wait_until(lambda: total(scrape(gw.url), "tokenrelay_ledger_spooled_rows") >= 3)
    assert total(scrape(gw.url), "tokenrelay_ledger_spooled_rows") == 3


def test_metrics_can_be_turned_off(start_gateway: Any) -> None:
    admin_key = "metrics-off-admin-" + "k" * 30
    gw: Gateway = start_gateway(
        env={
            "TOKENRELAY_METRICS_ENABLED": "false",
            "TOKENRELAY_AUTH__ENABLED": "true",
            "TOKENRELAY_AUTH__ADMIN_KEY": admin_key,
        }
    )
    headers = {"Authorization": f"Bearer {admin_key}"}
    response = httpx.get(f"{gw.url}/metrics", headers=headers, timeout=5)
    assert response.status_code == 404 and response.json()["error"]["message"].startswith(
        "metrics are turned off"
    )
    # The admin console's live view is read from the metrics: a typed 404, in the API's shape.
    summary = httpx.get(f"{gw.url}/v1/admin/summary", headers=headers, timeout=5)
    assert summary.status_code == 404
    assert summary.json()["error"]["code"] == "metrics_disabled"
    assert httpx.get(f"{gw.url}/v1/admin/summary", timeout=5).status_code == 401


async def test_tokenrelay_top_shows_the_live_rates(gateway: Gateway) -> None:
    async def traffic() -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            for _ in range(12):
                await client.post(f"{gateway.url}/chat", content=body("paced"))

    load = asyncio.create_task(traffic())
    await asyncio.sleep(0.3)
    top = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "tokenrelay", "top", "--once", "--interval", "1.5", "--url", gateway.url],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "COLUMNS": "160"},
    )
    out, err = await asyncio.wait_for(top.communicate(), 30)
    await load
    text = out.decode()
    assert top.returncode == 0, err.decode()
    row = next(line for line in text.splitlines() if "paced" in line)
    cells = [c.strip() for c in row.split("│") if c.strip()]
    model, _in_flight, streams_per_s, tokens_per_s, ttft_p50 = cells[:5]
    assert model == "paced" and float(streams_per_s) > 0 and float(tokens_per_s) > 0
    assert 0 < float(ttft_p50) < 1000
    assert "rows spooled" in text


def test_quantiles_interpolate_within_buckets() -> None:
    buckets = {0.05: 0.0, 0.1: 50.0, 0.25: 100.0, float("inf"): 100.0}
    assert quantile(0.5, buckets) == pytest.approx(0.1)
    assert quantile(0.75, buckets) == pytest.approx(0.175)
    assert quantile(0.5, {0.05: 0.0, float("inf"): 0.0}) is None
