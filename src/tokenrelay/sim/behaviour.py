"""What the simulated upstream does for a request: its options, its answer, its counts.

Options come in the model name (``sim?tokens=50&tps=40``) or an ``X-Sim-Options`` header;
``server.py`` documents each one. The answer (:class:`Answer`) is the same for both wire
protocols; each encodes it as :class:`Frames` (runs of pieces, each a :class:`Block`) for
``server.py`` to pace: one frame per piece.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import orjson

_FILLER_TEXT = (
    "tokens stream from the simulated upstream through tokenrelay so that every chunk can be seen "
    "as it is generated and nothing waits for the end of the answer"
)
FILLER = _FILLER_TEXT.split()


_INT_OPTIONS = frozenset(
    {"tokens", "piece", "stall_after", "drop_after", "error_after", "status"}
    | {"think", "cache_read", "cache_creation"}
)
DEFAULT_TOOL = "get_weather"
# The tool call's arguments, {"city": "Paris", "unit": "celsius"}, as they are streamed: JSON
# cut in three, as models do (a client must join the pieces before parsing).
TOOL_ARGUMENTS = ('{"city": ', '"Paris", "unit": ', '"celsius"}')


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
    malformed: bool = False
    tool: bool = False
    think: int = 0
    cache_read: int = 0
    cache_creation: int = 0
    finish: str | None = None

    @classmethod
    def parse(cls, text: str) -> SimOptions:
        options = cls()
        for key, value in parse_qsl(text, keep_blank_values=True):
            if key in ("echo", "usage", "burst", "tool", "malformed"):
                setattr(options, key, value not in ("0", "false", ""))
            elif key in ("retry_after", "drop", "finish"):
                setattr(options, key, value)
            elif key in _INT_OPTIONS:
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
    # The requesting connection's port: a test counts connections by it (pooling, reuse).
    client_port: int | None = None


@dataclass
class SimState:
    requests: collections.deque[RequestStats] = field(
        default_factory=lambda: collections.deque(maxlen=20_000)
    )
    active: int = 0

    def snapshot(self) -> dict[str, Any]:
        return {"active": self.active, "requests": [asdict(r) for r in self.requests]}


def text_of(content: Any) -> str:
    """A message's text: a string, or the text parts of a list (both protocols' shape)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        content = message.get("content")
        if message.get("role") == "user" and isinstance(content, str | list):
            return text_of(content)
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
    """The answer's text as the pieces that will be streamed, one per chunk."""
    if options.echo:
        text = last_user_text(messages)
        return [text[i : i + options.piece] for i in range(0, len(text), options.piece)]
    if options.tokens is not None:
        return FillerWords(options.tokens)
    said = last_user_text(messages)[:200]
    text = f"Hello from the simulated model. You said: {said!r}. " + " ".join(FILLER) + "."
    return [text[i : i + 4] for i in range(0, len(text), 4)]


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    return sum(len(text_of(m.get("content", "")).split()) + 3 for m in messages) + 3


@dataclass(slots=True)
class Answer:
    """What the model says, whatever the protocol: thinking, then text or one tool call.

    ``finish`` is in OpenAI's words (``stop``, ``length``, ``tool_calls``); Anthropic's
    encoder translates it.
    """

    thinking: Sequence[str]
    text: Sequence[str]
    tool_name: str | None
    tool_arguments: Sequence[str]
    finish: str
    prompt_tokens: int

    @property
    def output_tokens(self) -> int:
        """One token per streamed piece, whatever its kind."""
        return len(self.thinking) + len(self.text) + len(self.tool_arguments)


def plan(request: dict[str, Any], options: SimOptions) -> Answer:
    """The answer to a chat-completions or Messages request."""
    messages: list[dict[str, Any]] = request.get("messages") or []
    system = request.get("system")  # Anthropic's, outside the messages
    prompt = prompt_tokens([{"content": system}, *messages] if system else messages)
    tool_name = _first_tool_name(request.get("tools")) if options.tool else None
    return Answer(
        thinking=FillerWords(options.think),
        text=() if options.tool else answer(messages, options),
        tool_name=tool_name,
        tool_arguments=TOOL_ARGUMENTS if options.tool else (),
        finish=options.finish or ("tool_calls" if options.tool else "stop"),
        prompt_tokens=prompt,
    )


def _first_tool_name(tools: Any) -> str:
    if not tools or not isinstance(tools[0], dict):
        return DEFAULT_TOOL
    tool: dict[str, Any] = tools[0]
    # Anthropic names the tool at the top; OpenAI inside ``function``.
    return str(tool.get("name") or (tool.get("function") or {}).get("name") or DEFAULT_TOOL)


@dataclass(slots=True)
class Block:
    """A run of pieces on the wire: ``start`` before the first, each as ``prefix + JSON + suffix``,
    ``stop`` after the last (sent with the next block's first piece, or at the end)."""

    pieces: Sequence[str]
    prefix: bytes
    suffix: bytes
    start: bytes = b""
    stop: bytes = b""


@dataclass(slots=True)
class Frames:
    """A whole stream: ``opening`` before the first piece, one frame per piece, ``closing``
    after the last; ``error`` is the in-band error event ``error_after`` sends instead."""

    opening: bytes
    blocks: list[Block]
    closing: bytes
    error: bytes

    def __iter__(self) -> Iterator[bytes]:
        pending = b""
        for block in self.blocks:
            if not len(block.pieces):
                continue  # an empty block is not on the wire at all
            head = pending + block.start
            for piece in block.pieces:
                yield head + block.prefix + orjson.dumps(piece) + block.suffix
                head = b""
            pending = block.stop

    def tail(self) -> bytes:
        """What follows the last frame: the last block's ``stop``, then ``closing``."""
        last = next((b for b in reversed(self.blocks) if len(b.pieces)), None)
        return (last.stop if last is not None else b"") + self.closing
