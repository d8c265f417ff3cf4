"""The ``/chat`` protocol without I/O: request bodies and headers, and events from raw bytes."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
import orjson

from tokenrelay.client._events import (
    ChatEvent,
    ChatResult,
    Delta,
    Done,
    StreamError,
    StreamInterrupted,
    Usage,
    _api_error,
)
from tokenrelay.sse import SSEDecoder

API_KEY_ENV = "TOKENRELAY_API_KEY"
URL_ENV = "TOKENRELAY_URL"
DEFAULT_URL = "http://127.0.0.1:8000"
# The gateway sends a keep-alive at least every 15 s by default, so a read that waits much
# longer than that means the connection is gone.
DEFAULT_TIMEOUT = httpx.Timeout(10.0, read=60.0)

Message = Mapping[str, Any]


# --- the protocol, without I/O --------------------------------------------------------------


class _EventReader:
    """Bytes of a ``/chat`` response in, events out; keeps what the result needs."""

    def __init__(self, request_id: str | None, started: float) -> None:
        self._decoder = SSEDecoder()
        self._request_id = request_id
        self._started = started
        self._parts: list[str] = []
        self._first_token_at: float | None = None
        self._usage: Usage | None = None
        self.result: ChatResult | None = None
        # Every /chat event carries id: 1, 2, 3, ...: the count received is the last id (what a
        # resumable stream's Last-Event-ID says).
        self.events_seen = 0

    def restart(self) -> None:
        """A new connection (a resumed stream): an event the old one cut short is dropped, as
        the SSE spec says; the resumed stream sends it again whole."""
        self._decoder = SSEDecoder()

    def feed(self, data: bytes) -> list[ChatEvent]:
        events: list[ChatEvent] = []
        for payload in self._decoder.feed(data):
            self.events_seen += 1
            try:
                event = orjson.loads(payload)
                kind = event["type"]
            except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
                raise StreamInterrupted(
                    f"unreadable event from the gateway: {payload[:100]!r}",
                    code="protocol_error",
                    request_id=self._request_id,
                ) from exc
            if kind == "delta":
                if self._first_token_at is None:
                    self._first_token_at = time.monotonic()
                self._parts.append(event["text"])
                events.append(Delta(event["text"]))
            elif kind == "usage":
                self._usage = Usage(
                    event["prompt_tokens"], event["completion_tokens"], event["total_tokens"], event["source"]
                )
                events.append(self._usage)
            elif kind == "done":
                now = time.monotonic()
                self.result = ChatResult(
                    text="".join(self._parts),
                    usage=self._usage,
                    finish_reason=event.get("finish_reason"),
                    request_id=self._request_id,
                    time_to_first_token=None
                    if self._first_token_at is None
                    else self._first_token_at - self._started,
                    duration=now - self._started,
                )
                events.append(Done(self.result.finish_reason))
            elif kind == "error":
                raise StreamError(
                    str(event.get("message", "the stream failed")),
                    code=str(event.get("code", "error")),
                    request_id=self._request_id,
                )
            # Other types are newer than this client: skipped, so old clients keep working.
        return events

    def check_finished(self) -> None:
        if self.result is None:
            raise StreamInterrupted(
                "the stream ended before the answer was complete",
                code="stream_interrupted",
                request_id=self._request_id,
            )


def _request_body(messages: Sequence[Message], model: str | None, params: Mapping[str, Any]) -> bytes:
    if not messages:
        raise ValueError("messages must not be empty")
    body: dict[str, Any] = {"messages": list(messages), **params}
    if model is not None:
        body["model"] = model
    return orjson.dumps(body)


# After a dropped connection a resumable stream is resumed after these delays (then every 2 s).
RESUME_DELAYS = (0.1, 0.25, 0.5, 1.0, 2.0)
DEFAULT_RESUME_SECONDS = 30.0


def _resume_headers(api_key: str | None, last_event_id: int) -> dict[str, str]:
    headers = {"accept": "text/event-stream", "last-event-id": str(last_event_id)}
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    return headers


def _headers(api_key: str | None, request_id: str | None) -> dict[str, str]:
    headers = {"content-type": "application/json", "accept": "text/event-stream"}
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    if request_id:
        headers["x-request-id"] = request_id
    return headers


def _resolve(base_url: str | None, api_key: str | None) -> tuple[str, str | None]:
    url = (base_url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
    return url, api_key if api_key is not None else os.environ.get(API_KEY_ENV)


def _model_ids(response: httpx.Response) -> list[str]:
    if response.status_code >= 400:
        raise _api_error(response.status_code, response.content, response.headers)
    return [str(model["id"]) for model in response.json()["data"]]
