"""OpenTelemetry: one span per stream with its events, the upstream call as its child.

The gateway runs in this process (a real uvicorn server on a real port, in the test's event
loop) so that the SDK's in-memory exporter can collect its spans.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from tests.helpers import Sim, free_port, model_table, new_request_id, open_raw_stream, wait_until
from tests.helpers import chat_body as body
from tokenrelay.app import create_app
from tokenrelay.catalog import load_settings

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture
async def traced(sim: Sim, tmp_path: Path) -> AsyncIterator[tuple[str, InMemorySpanExporter]]:
    config = tmp_path / "traced.toml"
    config.write_text(model_table(sim.base_url) + "\n[ledger]\nenabled = false\n")
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = create_app(load_settings(config), tracer_provider=provider)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    yield f"http://127.0.0.1:{port}", exporter
    server.should_exit = True
    await serving


async def finished_spans(exporter: InMemorySpanExporter, request_id: str) -> list[ReadableSpan]:
    """The stream span of ``request_id`` and its children, once the stream span has ended."""

    def stream_span() -> list[ReadableSpan]:
        return [
            s
            for s in exporter.get_finished_spans()
            if (s.attributes or {}).get("tokenrelay.request_id") == request_id
        ]

    stream = await wait_until(stream_span, timeout=5, what=f"the span of {request_id}")
    spans = exporter.get_finished_spans()
    children = [s for s in spans if s.parent is not None and s.parent.span_id == stream[0].context.span_id]
    return [*stream, *children]


async def test_a_completed_stream_and_its_upstream_call(traced: tuple[str, InMemorySpanExporter]) -> None:
    url, exporter = traced
    rid = new_request_id()
    traceparent = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
    async with httpx.AsyncClient() as client:
        await client.post(
            f"{url}/chat", content=body("fast"), headers={"x-request-id": rid, "traceparent": traceparent}
        )
    stream, *children = await finished_spans(exporter, rid)
    assert stream.name == "chat stream" and stream.kind is SpanKind.SERVER
    assert format(stream.context.trace_id, "032x") == TRACE_ID, "joined the caller's trace"
    assert [e.name for e in stream.events] == ["first_token"]
    assert (stream.attributes or {})["tokenrelay.status"] == "completed"
    assert (stream.attributes or {})["tokenrelay.model"] == "fast"
    assert stream.status.status_code is StatusCode.UNSET
    (upstream,) = children
    assert upstream.kind is SpanKind.CLIENT and upstream.name.startswith("POST")
    assert (upstream.attributes or {}).get(
        "http.response.status_code", (upstream.attributes or {}).get("http.status_code")
    ) == 200


async def test_disconnect_and_error_are_span_events(traced: tuple[str, InMemorySpanExporter]) -> None:
    url, exporter = traced
    left = new_request_id()
    stream = await open_raw_stream(url, "/chat", body("stall"), left)
    await stream.read_until(b'"type":"delta"', count=3)
    stream.close()
    span, *_ = await finished_spans(exporter, left)
    assert [(e.name, dict(e.attributes or {})) for e in span.events] == [
        ("first_token", {}),
        ("client_disconnected", {"phase": "mid_stream"}),
    ]

    failed = new_request_id()
    async with httpx.AsyncClient() as client:
        await client.post(f"{url}/chat", content=body("error500"), headers={"x-request-id": failed})
    span, *_ = await finished_spans(exporter, failed)
    assert span.status.status_code is StatusCode.ERROR
    (event,) = span.events
    assert event.name == "error" and (event.attributes or {})["code"] == "upstream_unavailable"
