"""Following a resumable stream from any replica: replay what was missed, then live to the end.

One ``XREAD`` loop does both: from the start of the Redis Stream, entries already there come
back at once (the replay), later ones as they are written (live). Events with an id up to
the client's ``Last-Event-ID`` are skipped, so nothing is sent twice and nothing is missed.
While following, the client is announced (the stream's follow key, renewed), which keeps a
stream whose first client left from being aborted. A silent stream whose owner replica is
gone ends with a ``stream_lost`` error event rather than hanging.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any

from tokenrelay.cluster.keys import Keys
from tokenrelay.errors import StreamLost, TokenRelayError
from tokenrelay.protocols.resumable import error_event

if TYPE_CHECKING:
    from redis.asyncio import Redis

_EVENT_END = b"\n\n"
# What a follower yields when nothing happened for a while: the caller sends a keep-alive.
IDLE = b""


class ResumeGap(TokenRelayError):
    """Events the client needs were trimmed from the buffer (it came back too late)."""

    status_code = 410
    error_type = "api_error"
    code = "resume_gap"


class ResumeOverflow(TokenRelayError):
    """The stream outgrew the resume buffer: the rest can only be read live by its first client."""

    status_code = 410
    error_type = "api_error"
    code = "resume_buffer_full"


def events_after(data: bytes, last_id: int) -> bytes:
    """The events in ``data`` (each starting ``id: <n>``) with an id above ``last_id``."""
    start = 0
    while start < len(data):
        end = data.find(_EVENT_END, start)
        if end < 0:
            break
        newline = data.find(b"\n", start)
        event_id = int(data[start + 4 : newline])  # "id: <n>\n"
        if event_id > last_id:
            return data[start:]
        start = end + 2
    return b""


# Errors a follower says on its own carry no ``id:``: the stream's next id may still be written
# by its owner, and a client resuming after such an error must not skip that event.


async def follow(
    redis: Redis,
    keys: Keys,
    *,
    stream_id: str,
    owner: str,
    protocol: str,
    last_id: int,
    block_seconds: float,
    announce_seconds: float,
) -> AsyncGenerator[bytes, None]:
    """The stream's events after ``last_id``: ``IDLE`` when nothing came for ``block_seconds``."""
    log_key = keys.stream_log(stream_id)
    follow_key = keys.followers(stream_id)
    announce_ms = max(1000, int(announce_seconds * 1000))
    # Entry ids follow event ids (streamlog.py): the first entry not fully had is after <n>-0.
    cursor: bytes | str = f"{last_id}-0"
    announced_at = 0.0
    first = True
    while True:
        now = time.monotonic()
        if now - announced_at > announce_seconds / 3:
            await redis.set(follow_key, 1, px=announce_ms)
            announced_at = now
        reply: Any = await redis.xread({log_key: cursor}, count=500, block=int(block_seconds * 1000))
        if not reply:
            if not await redis.exists(keys.heartbeat(owner)):
                yield error_event(protocol, StreamLost("the replica running this stream is gone"))
                return
            yield IDLE
            continue
        entries: list[tuple[bytes, dict[bytes, bytes]]] = reply[0][1]
        out: list[bytes] = []  # one write per reply, however many entries it holds
        for entry_id, fields in entries:
            cursor = entry_id
            data = fields.get(b"d")
            if data is not None:
                if first and int(fields[b"f"]) > last_id + 1:
                    out.append(error_event(protocol, ResumeGap("the events after this id are gone")))
                    yield b"".join(out)
                    return
                top = int(fields[b"l"])
                if top > last_id:
                    out.append(data if int(fields[b"f"]) > last_id else events_after(data, last_id))
                    last_id = top
            first = False
            if b"e" in fields:
                if fields.get(b"x") == b"overflow":
                    out.append(error_event(protocol, ResumeOverflow("the stream outgrew the resume buffer")))
                yield b"".join(out)
                return
        if out:
            yield b"".join(out)
