"""OpenTelemetry tracing: off by default, on with the standard ``OTEL_EXPORTER_OTLP_*`` variables.

One span per stream (``chat stream``), joined to the caller's trace when the request carries
``traceparent``, with events ``first_token``, ``client_disconnected`` and ``error``; the
upstream HTTP call is its child span (opentelemetry-instrumentation-aiohttp-client), which
also passes the trace on to the upstream. FastAPI's instrumentation is not used: it wraps
every ASGI ``send``, a cost paid per chunk; the stream span covers what it would show.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from tokenrelay.record import StreamRecord

TRACER_NAME = "tokenrelay"
_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def tracing_requested() -> bool:
    """Whether the environment asks for traces (an OTLP endpoint is set, tracing not disabled)."""
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    return any(os.environ.get(name) for name in _ENDPOINT_VARIABLES)


def otlp_tracer_provider() -> TracerProvider:
    """A provider exporting in batches over OTLP/HTTP, configured by the OTEL_* variables."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": "tokenrelay"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


class Tracing:
    """Creates the stream spans and instruments the upstream HTTP client while it lives."""

    enabled = True

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor

        self.provider = provider
        self._tracer = provider.get_tracer(TRACER_NAME)
        self._instrumentor = AioHttpClientInstrumentor()
        # Before the upstream sessions exist: the instrumentation hooks sessions made after it.
        self._instrumentor.instrument(tracer_provider=provider)

    def stream_span(
        self, record: StreamRecord, headers: Iterable[tuple[bytes, bytes]], protocol: str
    ) -> StreamSpan:
        """Start the span of one stream, as a child of the caller's trace if it sent one."""
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers}
        span = self._tracer.start_span(
            "chat stream",
            context=propagate.extract(carrier),
            kind=SpanKind.SERVER,
            attributes={
                "tokenrelay.model": record.model,
                "tokenrelay.upstream_model": record.upstream_model,
                "tokenrelay.request_id": record.request_id,
                "tokenrelay.stream_id": record.stream_id,
                "tokenrelay.protocol": protocol,
            },
        )
        return StreamSpan(span)

    def close(self) -> None:
        """Stop instrumenting; flush and shut down the provider."""
        self._instrumentor.uninstrument()
        self.provider.shutdown()


class StreamSpan:
    """The span of one stream. ``current()`` makes it the parent of the upstream call."""

    __slots__ = ("_span",)

    def __init__(self, span: Span) -> None:
        self._span = span

    def current(self) -> object:
        """Make this span current (tasks started now inherit it); pass the token to ``restore``."""
        return context.attach(trace.set_span_in_context(self._span))

    @staticmethod
    def restore(token: object) -> None:
        """Undo ``current``."""
        if token is not None:
            context.detach(token)  # type: ignore[arg-type]

    def first_token(self) -> None:
        """The first content token reached the client."""
        self._span.add_event("first_token")

    def client_disconnected(self, phase: str) -> None:
        """The client left."""
        self._span.add_event("client_disconnected", {"phase": phase})

    def error(self, code: str, message: str) -> None:
        """The stream failed."""
        self._span.add_event("error", {"code": code, "message": message})
        self._span.set_status(Status(StatusCode.ERROR, code))

    def end(self, record: StreamRecord) -> None:
        """Close the span with the stream's outcome."""
        attributes: dict[str, Any] = {
            "tokenrelay.status": str(record.status),
            "tokenrelay.chunks": record.chunk_count,
        }
        if record.ttft_ms is not None:
            attributes["tokenrelay.ttft_ms"] = record.ttft_ms
        self._span.set_attributes(attributes)
        self._span.end()


class NoSpan:
    """The span of a stream when tracing is off: the same calls, doing nothing."""

    __slots__ = ()

    def current(self) -> object:
        return None

    @staticmethod
    def restore(token: object) -> None:
        pass

    def first_token(self) -> None:
        pass

    def client_disconnected(self, phase: str) -> None:
        pass

    def error(self, code: str, message: str) -> None:
        pass

    def end(self, record: StreamRecord) -> None:
        pass


NO_SPAN = NoSpan()


class NoTracing:
    """Tracing turned off (no branch on the hot path)."""

    enabled = False

    def stream_span(
        self,
        record: StreamRecord,  # noqa: ARG002
        headers: Iterable[tuple[bytes, bytes]],  # noqa: ARG002
        protocol: str,  # noqa: ARG002
    ) -> NoSpan:
        return NO_SPAN

    def close(self) -> None:
        pass
