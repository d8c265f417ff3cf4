"""The pieces of a resumable stream that need no network: ids, the copy to the log, replay cuts."""

from __future__ import annotations

import pytest

from tests.helpers import parse_events
from tests.resuming import SseReader
from tokenrelay.client import Delta
from tokenrelay.client._protocol import _EventReader
from tokenrelay.cluster.follow import events_after
from tokenrelay.errors import UpstreamUnavailable
from tokenrelay.events import Chunk
from tokenrelay.protocols import AnthropicEvents, ChatEvents, OpenAIChunks, OpenAICompletion
from tokenrelay.protocols.resumable import ResumableEvents, error_event, protocol_of, stamp


class Sink:
    def __init__(self) -> None:
        self.data = b""
        self.last_ids: list[int] = []
        self.ended = 0

    def add(self, data: bytes, last_id: int) -> None:
        self.data += data
        self.last_ids.append(last_id)

    def end(self) -> None:
        self.ended += 1


def test_stamp_numbers_each_event_and_keeps_its_bytes() -> None:
    out = bytearray(b"before")
    last = stamp(b"data: 1\n\nevent: x\ndata: 2\n\n", 41, out)
    assert last == 43
    assert bytes(out) == b"beforeid: 42\ndata: 1\n\nid: 43\nevent: x\ndata: 2\n\n"
    assert stamp(b"", 7, bytearray()) == 7


def test_events_after_cuts_exactly_after_the_given_id() -> None:
    data = bytearray()
    stamp(b'data: {"a": "id: 9"}\n\ndata: b\n\ndata: c\n\n', 4, data)
    assert events_after(bytes(data), 4) == bytes(data)
    assert events_after(bytes(data), 5) == b"id: 6\ndata: b\n\nid: 7\ndata: c\n\n"
    assert events_after(bytes(data), 7) == b""


@pytest.mark.parametrize(
    "inner",
    [ChatEvents(), OpenAIChunks(public_model="m", include_usage=True), AnthropicEvents(public_model="m")],
)
def test_every_event_gets_the_next_id_and_the_log_gets_the_same_bytes(inner: object) -> None:
    sink = Sink()
    encoder = ResumableEvents(inner, sink, stream_id="ab" * 16)  # type: ignore[arg-type]
    assert (b"x-stream-id", b"ab" * 16) in encoder.headers
    out = bytearray()
    for text in ("Hel", "lo", "!"):
        encoder.encode(Chunk(text), out)
    error = UpstreamUnavailable("gone")
    final = encoder.error_response(error)
    tail = encoder.encode_error(error)
    out += tail
    ids = [int(line[4:]) for line in bytes(out).split(b"\n") if line.startswith(b"id: ")]
    assert ids == list(range(1, len(ids) + 1)) and len(ids) >= 4
    assert sink.data == bytes(out), "the log holds exactly what the client was sent"
    assert sink.ended == 1 and final[0] == 502
    assert encoder.encode_error(error) == tail, "a stream ends once, whichever error form is asked"
    assert parse_events(bytes(out)), "still well-formed SSE"


def test_only_streamed_protocols_can_be_resumed() -> None:
    assert protocol_of(ChatEvents()) == "chat"
    assert protocol_of(OpenAICompletion(public_model="m")) is None
    with pytest.raises(ValueError, match="cannot be resumed"):
        ResumableEvents(OpenAICompletion(public_model="m"), Sink(), stream_id="x")
    for protocol in ("chat", "openai", "anthropic"):
        assert error_event(protocol, UpstreamUnavailable("x")).endswith(b"\n\n")


def test_the_python_client_drops_an_event_cut_short_when_it_resumes() -> None:
    """Regression: the bytes of an event the dropped connection cut in half were kept and
    glued to the resumed stream's first event (found by the 200-stream test behind nginx)."""
    reader = _EventReader(None, 0.0)
    first = reader.feed(b'id: 1\ndata: {"type":"delta","text":"a"}\n\nid: 2\ndata: {"ty')
    assert first == [Delta("a")] and reader.events_seen == 1
    reader.restart()  # what a resume does before reading the new connection
    resumed = reader.feed(b'id: 2\ndata: {"type":"delta","text":"b"}\n\n')
    assert resumed == [Delta("b")] and reader.events_seen == 2


def test_the_resuming_test_client_drops_an_event_cut_short_too() -> None:
    reader = SseReader()
    reader.feed(b'id: 1\ndata: {"type":"delta","text":"a"}\n\nid: 2\nda')
    reader.buffer = b""  # as tests.resuming.follow does on a new connection
    reader.feed(b'id: 2\ndata: {"type":"delta","text":"b"}\n\n')
    assert [event.id for event in reader.events] == [1, 2]
