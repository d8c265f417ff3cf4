"""Logging set-up: one JSON object per line (or readable console lines), and the stream-end line."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

from tokenrelay.record import StreamRecord

# Attributes every LogRecord has; anything else was passed in ``extra`` and is logged as a field.
_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}

stream_log = logging.getLogger("tokenrelay.stream")


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", ...extra fields, "exc"}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS:
                payload[key] = value
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(payload, default=str).decode()


class ConsoleFormatter(logging.Formatter):
    """``time level logger: msg key=value ...`` for people at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={v}" for k, v in vars(record).items() if k not in _STANDARD_ATTRS)
        line = (
            f"{self.formatTime(record)} {record.levelname:<7} {record.name}: {record.getMessage()} {fields}"
        )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line.rstrip()


def configure_logging(*, level: str, fmt: str, access_log: bool = False) -> None:
    """Route tokenrelay's and uvicorn's logs through one handler on stderr.

    uvicorn's access log is off unless ``access_log``; when on, its lines carry the path
    without the query string: clients put keys there (``?api_key=...``), and no secret may
    reach a log, whatever a client does with it.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else ConsoleFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    access = logging.getLogger("uvicorn.access")
    access.filters[:] = []
    if access_log:
        access.addFilter(_without_query_string)
    else:
        # No handler and no propagation: uvicorn sees no handler and skips the line entirely.
        access.propagate = False
    # httpx logs every request at INFO (the local model's token counts, once per stream).
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _without_query_string(record: logging.LogRecord) -> bool:
    """uvicorn's access line is ``(client, method, path?query, version, status)``: drop the query."""
    args = record.args
    if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
        record.args = (*args[:2], args[2].split("?", 1)[0] + "?…", *args[3:])
    return True


def log_stream_end(record: StreamRecord) -> None:
    """The one structured line per stream: outcome, timings, counts. No content, no keys."""
    if not stream_log.isEnabledFor(logging.INFO):
        return
    stream_log.info(
        "stream_end",
        extra={
            "request_id": record.request_id,
            "model": record.model,
            "upstream_model": record.upstream_model,
            "deployment": record.deployment,
            # Every attempt as deployment:outcome ("ok", or its failure class): failovers show here.
            "attempts": [f"{name}:{outcome}" for name, outcome in record.attempt_log],
            "status": str(record.status),
            "ttft_ms": None if record.ttft_ms is None else round(record.ttft_ms, 2),
            "duration_ms": None if record.duration_ms is None else round(record.duration_ms, 2),
            "prompt_tokens": record.prompt_tokens,
            "completion_tokens": record.completion_tokens,
            "usage_source": None if record.usage_source is None else str(record.usage_source),
            "chunks": record.chunk_count,
            "finish_reason": record.finish_reason,
            "disconnect_phase": None if record.disconnect_phase is None else str(record.disconnect_phase),
            "error_code": record.error_code,
            "error_class": record.error_class,
            # The same class as tokenrelay_upstream_errors_total{class=...}.
            "upstream_failure": record.upstream_failure,
        },
    )
