"""What the simulated upstream does for a request: its options, its answer, its counts.

Options come in the model name (``sim?tokens=50&tps=40``) or an ``X-Sim-Options`` header;
``server.py`` documents each one.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import parse_qsl

_FILLER_TEXT = (
    "tokens stream from the simulated upstream through tokenrelay so that every chunk can be seen "
    "as it is generated and nothing waits for the end of the answer"
)
FILLER = _FILLER_TEXT.split()


@dataclass(slots=True)
class SimOptions:
    tokens: int | None = None
    echo: bool = False
    piece: int = 3
    tps: float = 0.0
    headers_delay: float = 0.0
    ttft: float = 0.0
    stall_after: int | None = None
    stall_seconds: float = 30.0
    drop_after: int | None = None
    drop: str = "fin"
    burst: bool = False
    error_after: int | None = None
    status: int | None = None
    retry_after: str | None = None
    usage: bool = True

    @classmethod
    def parse(cls, text: str) -> SimOptions:
        options = cls()
        for key, value in parse_qsl(text, keep_blank_values=True):
            if key in ("echo", "usage", "burst"):
                setattr(options, key, value not in ("0", "false", ""))
            elif key in ("retry_after", "drop"):
                setattr(options, key, value)
            elif key in ("tokens", "piece", "stall_after", "drop_after", "error_after", "status"):
                setattr(options, key, int(value))
            elif key in ("tps", "headers_delay", "ttft", "stall_seconds"):
                setattr(options, key, float(value))
        return options


@dataclass(slots=True)
class RequestStats:
    request_id: str
    model: str
    stream: bool
    started_at: float
    headers_sent_at: float | None = None
    first_chunk_at: float | None = None
    chunks_sent: int = 0
    ended_at: float | None = None
    end: str | None = None


@dataclass
class SimState:
    requests: collections.deque[RequestStats] = field(
        default_factory=lambda: collections.deque(maxlen=20_000)
    )
    active: int = 0

    def snapshot(self) -> dict[str, Any]:
        return {"active": self.active, "requests": [asdict(r) for r in self.requests]}


def last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        content = message.get("content")
        if message.get("role") == "user" and isinstance(content, str):
            return content
    return ""


class FillerWords(Sequence[str]):
    """N filler words, made as they are streamed (a list of 100,000 would stall the loop)."""

    def __init__(self, count: int) -> None:
        self._count = count

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: Any) -> Any:
        raise NotImplementedError("iterate instead")

    def __iter__(self) -> Iterator[str]:
        words = itertools.islice(itertools.cycle(FILLER), self._count)
        return (word if i == 0 else " " + word for i, word in enumerate(words))


def answer(messages: list[dict[str, Any]], options: SimOptions) -> Sequence[str]:
    """The answer as the pieces that will be streamed, one per chunk."""
    if options.echo:
        text = last_user_text(messages)
        return [text[i : i + options.piece] for i in range(0, len(text), options.piece)]
    if options.tokens is not None:
        return FillerWords(options.tokens)
    said = last_user_text(messages)[:200]
    text = f"Hello from the simulated model. You said: {said!r}. " + " ".join(FILLER) + "."
    return [text[i : i + 4] for i in range(0, len(text), 4)]


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    return sum(len(str(m.get("content", "")).split()) + 3 for m in messages) + 3


def usage(request: dict[str, Any], completion_tokens: int) -> dict[str, int]:
    prompt = prompt_tokens(request.get("messages", []))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt + completion_tokens,
    }
