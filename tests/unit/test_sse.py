"""The upstream SSE decoder, whatever the network does to the bytes."""

from __future__ import annotations

import orjson
import pytest

from tokenrelay.sse import SSEDecoder

RECORDED = (
    b'data: {"choices":[{"delta":{"content":"caf\xc3\xa9"}}]}\n\n'
    b": keep-alive comment\n\n"
    b'event: message\nid: 7\ndata: {"choices":[{"delta":{"content":"\\n\\n"}}]}\n\n'
    b'data: {"a":\ndata: 1}\n\n'
    b"retry: 100\n\n"
    b"data: [DONE]\n\n"
)
EXPECTED = [
    b'{"choices":[{"delta":{"content":"caf\xc3\xa9"}}]}',
    b'{"choices":[{"delta":{"content":"\\n\\n"}}]}',
    b'{"a":\n1}',
    b"[DONE]",
]


def decode_in_pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    decoder = SSEDecoder()
    payloads: list[bytes] = []
    previous = 0
    for cut in [*cuts, len(data)]:
        payloads += decoder.feed(data[previous:cut])
        previous = cut
    return payloads


def test_whole_stream_at_once() -> None:
    assert decode_in_pieces(RECORDED, []) == EXPECTED


@pytest.mark.parametrize("line_ending", [b"\n", b"\r\n", b"\r"])
def test_split_at_every_byte_offset(line_ending: bytes) -> None:
    """Regression (lifecycle v2, defect 7): bare CR line endings (allowed by the SSE spec, and
    accepted by the JS client) were not understood."""
    data = RECORDED.replace(b"\n", line_ending)
    for cut in range(len(data) + 1):
        assert decode_in_pieces(data, [cut]) == EXPECTED, f"split at byte {cut}"


def test_one_byte_at_a_time() -> None:
    data = RECORDED.replace(b"\n", b"\r\n")
    assert decode_in_pieces(data, list(range(1, len(data)))) == EXPECTED


def test_data_without_space_after_colon() -> None:
    assert SSEDecoder().feed(b"data:{}\n\n") == [b"{}"]


def test_incomplete_event_is_kept_until_completed() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b'data: {"x": 1}\n') == []
    assert [orjson.loads(p) for p in decoder.feed(b"\n")] == [{"x": 1}]


def test_an_event_that_never_ends_is_refused() -> None:
    from tokenrelay.sse import MAX_EVENT_BYTES

    decoder = SSEDecoder()
    decoder.feed(b"data: " + b"x" * (MAX_EVENT_BYTES - 10))
    with pytest.raises(ValueError, match="exceeded"):
        decoder.feed(b"x" * 100)


def test_mixed_line_endings_one_byte_at_a_time() -> None:
    data = b'data: {"a":1}\r\rdata: {"b":2}\r\n\r\ndata: {"c":3}\n\rdata: [DONE]\r\r'
    expected = [b'{"a":1}', b'{"b":2}', b'{"c":3}', b"[DONE]"]
    assert decode_in_pieces(data, []) == expected
    assert decode_in_pieces(data, list(range(1, len(data)))) == expected


def test_a_final_bare_cr_ends_the_event_at_once() -> None:
    """A trailing CR is a line end now, not held back waiting for a LF that may never come."""
    decoder = SSEDecoder()
    assert decoder.feed(b"data: [DONE]\r\r") == [b"[DONE]"]
    assert decoder.feed(b"\ndata: x\n\n") == [b"x"], "the LF of a split CRLF is not an empty line"
