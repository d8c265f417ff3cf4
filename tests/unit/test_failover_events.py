"""The events an attempt yields before its first output are kept as copies (upstreams reuse
one ``Chunk``): every field, including ones added after the copy was written."""

from __future__ import annotations

from tokenrelay.events import Chunk, ToolCallDelta, Usage
from tokenrelay.relay.failover import copy_event


def test_a_copy_carries_every_field_and_is_its_own_object() -> None:
    """Regression: the copy listed the first six fields by hand, and an Anthropic thinking
    signature or redacted-thinking block arriving before the first output was lost."""
    original = Chunk()
    values = {
        "text": "t",
        "reasoning": "r",
        "tool_calls": [ToolCallDelta(index=0, id="call_1")],
        "finish_reason": "stop",
        "usage": Usage(1, 2),
        "native": {"id": "x"},
        "signature": "sig",
        "redacted_thinking": "opaque",
    }
    assert set(values) == set(Chunk.__slots__), "a new Chunk field: add it here"
    for name, value in values.items():
        setattr(original, name, value)
    copy = copy_event(original)
    assert copy is not original
    for name, value in values.items():
        assert getattr(copy, name) == value, name
    original.text = "changed"
    assert copy.text == "t"
