"""A resuming SSE client for the tests: read a stream, drop it, come back with Last-Event-ID.

What a real client on a flaky network does (the web page and EventSource do the same): keep
the id of the last event received; after a dropped connection, ``GET /v1/streams/{id}`` with
``Last-Event-ID`` and go on. ``text_of`` reads the answer's text out of any protocol's events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson


@dataclass
class SseEvent:
    id: int | None
    event: str | None
    data: bytes

    def json(self) -> dict[str, Any]:
        parsed: dict[str, Any] = orjson.loads(self.data)
        return parsed


@dataclass
class SseReader:
    """Incremental SSE parsing (comments skipped, the last id remembered)."""

    buffer: bytes = b""
    last_id: int = 0
    events: list[SseEvent] = field(default_factory=list)

    def feed(self, data: bytes) -> list[SseEvent]:
        self.buffer += data.replace(b"\r\n", b"\n")
        new: list[SseEvent] = []
        while b"\n\n" in self.buffer:
            block, self.buffer = self.buffer.split(b"\n\n", 1)
            event_id, name, data_lines = None, None, []
            for line in block.split(b"\n"):
                if line.startswith(b"id: "):
                    event_id = int(line[4:])
                elif line.startswith(b"event: "):
                    name = line[7:].decode()
                elif line.startswith(b"data: "):
                    data_lines.append(line[6:])
            if not data_lines:
                continue  # a comment (keep-alive)
            if event_id is not None:
                self.last_id = event_id
            new.append(SseEvent(event_id, name, b"\n".join(data_lines)))
        self.events.extend(new)
        return new


def text_of(events: list[SseEvent]) -> str:
    """The answer's text in ``/chat``, OpenAI or Anthropic events."""
    parts = []
    for event in events:
        if event.data == b"[DONE]":
            continue
        payload = event.json()
        if payload.get("type") == "delta":
            parts.append(payload["text"])
        elif payload.get("type") == "content_block_delta" and payload["delta"].get("type") == "text_delta":
            parts.append(payload["delta"]["text"])
        for choice in payload.get("choices") or ():
            parts.append((choice.get("delta") or {}).get("content") or "")
    return "".join(parts)


def ids_of(events: list[SseEvent]) -> list[int | None]:
    return [event.id for event in events]


@dataclass
class Resumed:
    stream_id: str
    events: list[SseEvent]
    first_status: int
    cut_after: int | None


async def read_stream(
    client: httpx.AsyncClient,
    url: str,
    path: str,
    body: dict[str, Any],
    *,
    headers: dict[str, str] | None = None,
    cut_after: int | None = None,
    resume_url: str | None = None,
    follow_headers: dict[str, str] | None = None,
) -> Resumed:
    """POST a resumable stream; cut the connection after ``cut_after`` events (if given), then
    resume at ``resume_url`` (default ``url``) until the stream ends. Returns every event."""
    reader = SseReader()
    stream_id = ""
    async with client.stream("POST", f"{url}{path}", json=body, headers=headers or {}) as response:
        status = response.status_code
        if status != 200:
            await response.aread()
            return Resumed("", [], status, cut_after)
        stream_id = response.headers["x-stream-id"]
        async for data in response.aiter_raw():
            reader.feed(data)
            if cut_after is not None and len(reader.events) >= cut_after:
                break  # leaving the block unread closes the connection: a dropped network
    if cut_after is not None and len(reader.events) >= cut_after:
        status = await follow(client, resume_url or url, stream_id, reader, headers=follow_headers)
        assert status == 200, f"resuming {stream_id} failed with HTTP {status}"
    return Resumed(stream_id, reader.events, status, cut_after)


async def follow(
    client: httpx.AsyncClient,
    url: str,
    stream_id: str,
    reader: SseReader,
    *,
    headers: dict[str, str] | None = None,
) -> int:
    """``GET /v1/streams/{id}`` from ``reader.last_id`` to the end; returns the HTTP status."""
    reader.buffer = b""  # an event the old connection cut short is dropped (the SSE spec)
    sent = {"last-event-id": str(reader.last_id), **(headers or {})}
    async with client.stream("GET", f"{url}/v1/streams/{stream_id}", headers=sent) as response:
        if response.status_code != 200:
            await response.aread()
            return response.status_code
        async for data in response.aiter_raw():
            reader.feed(data)
    return 200
