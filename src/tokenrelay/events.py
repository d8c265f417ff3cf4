"""The provider-neutral events of one answer: what upstreams yield and encoders consume.

This is the seam between the wire formats: an upstream module (``upstreams/``) turns its
provider's stream into these; an encoder (``protocols/``) turns these into one client
protocol. Adding a provider or a client protocol touches one module, never the relay.

A :class:`Chunk` is one upstream chunk with whatever it carried: text, tool-call fragments,
reasoning, a finish reason, usage. Anthropic's thinking blocks also carry what a client must
send back verbatim on its next turn (Anthropic checks it): a ``signature`` ends a thinking block,
a ``redacted_thinking`` block is one opaque ``data`` string; each comes in a Chunk of its own
(nothing else set), so encoders look for them only in chunks without output. Upstreams that
speak a client protocol natively (OpenAI upstreams to the OpenAI endpoint) attach their parsed
chunk as ``native`` so its encoder can pass it through instead of rebuilding it. An error the
upstream reports inside its stream is not an event but the end of them: the iteration raises an
``UpstreamError`` after the events before it (see ``upstreams/base.py``).

A chunk is handled thousands of times a second: upstream iterators reuse one ``Chunk`` for
all the events of a read, so whoever takes an event takes what it needs from it before the
next one (the relay and every encoder do).

Finish reasons use OpenAI's words (``stop``, ``length``, ``tool_calls``, ``content_filter``);
other providers' reasons are mapped to them where they are read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# The request body every upstream receives is OpenAI chat-completions shaped. Fields only
# Anthropic's Messages API understands (``thinking``, ``top_k``, ``metadata``, cache-controlled
# system blocks), sent by a client of ``/v1/messages``, travel under this key: the Anthropic
# upstream applies them, the OpenAI upstream drops them.
ANTHROPIC_FIELDS = "_anthropic"


@dataclass(slots=True)
class ToolCallDelta:
    """A fragment of one tool call: its id and name come first, its arguments in pieces."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str | None = None


@dataclass(slots=True)
class Usage:
    """Token counts as the upstream reported them."""

    prompt_tokens: int
    completion_tokens: int
    # Prompt tokens read from / written to the provider's prompt cache (where it says so).
    cache_read_tokens: int | None = None
    cache_creation_tokens: int | None = None


class Chunk:
    """One upstream chunk, normalized. Every field may be absent."""

    __slots__ = (
        "finish_reason",
        "native",
        "reasoning",
        "redacted_thinking",
        "signature",
        "text",
        "tool_calls",
        "usage",
    )

    def __init__(
        self,
        text: str | None = None,
        reasoning: str | None = None,
        tool_calls: list[ToolCallDelta] | None = None,
        finish_reason: str | None = None,
        usage: Usage | None = None,
        native: dict[str, Any] | None = None,
        *,
        signature: str | None = None,
        redacted_thinking: str | None = None,
    ) -> None:
        self.text = text
        self.reasoning = reasoning
        self.tool_calls = tool_calls
        self.finish_reason = finish_reason
        self.usage = usage
        self.native = native
        # Set only by the Anthropic upstream, once per thinking block (see the module docstring).
        self.signature = signature
        self.redacted_thinking = redacted_thinking

    @property
    def is_progress(self) -> bool:
        """Output that is not text but shows the model working (a tool call, thinking)."""
        return bool(self.tool_calls or self.reasoning or self.signature or self.redacted_thinking)

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__ if name != "native")
        return f"Chunk({fields})"
