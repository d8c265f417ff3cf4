"""What the relay knows about one stream: its outcome and its counts."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class StreamStatus(StrEnum):
    """How a stream ended."""

    COMPLETED = "completed"
    CLIENT_DISCONNECTED = "client_disconnected"
    UPSTREAM_ERROR = "upstream_error"
    TIMEOUT = "timeout"
    BUDGET_EXCEEDED = "budget_exceeded"
    SHUTDOWN = "shutdown"


class DisconnectPhase(StrEnum):
    """When the client left."""

    BEFORE_FIRST_TOKEN = "before_first_token"
    MID_STREAM = "mid_stream"


class UsageSource(StrEnum):
    """Where token counts came from."""

    UPSTREAM = "upstream"
    # Counted by tokenrelay with tiktoken: close, not exact, for models with another tokenizer.
    ESTIMATED = "estimated"
    # Counted by tokenrelay with the model's own tokenizer and chat template (the local model).
    TOKENIZER = "tokenizer"


@dataclass(slots=True, eq=False)
class StreamRecord:
    """One stream from admission to its end. Times ending in ``_mono`` are ``loop.time()``."""

    stream_id: str
    request_id: str
    model: str
    upstream_model: str
    messages: list[dict[str, Any]]
    tokenizer_encoding: str
    started_at: datetime
    started_mono: float
    api_key_id: str | None = None
    # USD per million tokens (the model's configured prices); None: no price known.
    prices: tuple[float, float] | None = None
    first_token_mono: float | None = None
    finished_mono: float | None = None
    finished_at: datetime | None = None
    chunk_count: int = 0
    completion_parts: list[str] = field(default_factory=list)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    usage_source: UsageSource | None = None
    finish_reason: str | None = None
    status: StreamStatus | None = None
    error_code: str | None = None
    error_class: str | None = None
    # The upstream failure class (metrics only, not stored): see errors.UpstreamError.failure.
    upstream_failure: str | None = None
    disconnect_phase: DisconnectPhase | None = None

    @property
    def ttft_ms(self) -> float | None:
        """Time to first token (first content delta) in milliseconds."""
        if self.first_token_mono is None:
            return None
        return (self.first_token_mono - self.started_mono) * 1000.0

    @property
    def duration_ms(self) -> float | None:
        """Time from admission to the end of the stream in milliseconds."""
        if self.finished_mono is None:
            return None
        return (self.finished_mono - self.started_mono) * 1000.0

    @property
    def cost_usd(self) -> float | None:
        """What the stream cost at the model's prices, once its usage is known."""
        if self.prices is None or self.prompt_tokens is None:
            return None
        prompt_price, completion_price = self.prices
        return (self.prompt_tokens * prompt_price + (self.completion_tokens or 0) * completion_price) / 1e6

    def completion_text(self) -> str:
        """Everything the upstream generated (that reached us)."""
        return "".join(self.completion_parts)

    def set_upstream_usage(self, usage: dict[str, Any]) -> None:
        """Take the upstream's own token counts."""
        self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        self.completion_tokens = int(usage.get("completion_tokens") or 0)
        self.usage_source = UsageSource.UPSTREAM
