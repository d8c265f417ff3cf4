"""What the gateway knows about one stream: its outcome and its counts.

Built at admission, filled in by the relay as the stream runs, handed to the ledger writer at
the end. Observability and the ledger read it; nothing here knows how it is stored or shown.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

# Text parts joined into one block every this many (see StreamRecord.fold_completion).
FOLD_EVERY = 4096


class StreamStatus(StrEnum):
    """How a stream ended."""

    COMPLETED = "completed"
    CLIENT_DISCONNECTED = "client_disconnected"
    # The client stopped reading: one write stayed blocked for client_write_timeout_seconds.
    CLIENT_TOO_SLOW = "client_too_slow"
    UPSTREAM_ERROR = "upstream_error"
    TIMEOUT = "timeout"
    BUDGET_EXCEEDED = "budget_exceeded"
    SHUTDOWN = "shutdown"
    # POST /v1/streams/{id}/stop: the user stopped the answer (not a disconnect).
    STOPPED = "stopped"
    # Written by another replica: the one running the stream died (usage estimated).
    REPLICA_LOST = "replica_lost"


# Ends the client caused: not the upstream's failures, not the gateway's.
CLIENT_ENDS = frozenset({StreamStatus.CLIENT_DISCONNECTED, StreamStatus.CLIENT_TOO_SLOW})


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
    """One stream from admission to its end. Times ending in ``_mono`` are ``time.monotonic()``."""

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
    # The answer's text as it arrived: one string per content chunk, folded into blocks as it grows.
    completion_parts: list[str] = field(default_factory=list)
    # Content chunks folded into blocks so far, and how many leading parts are blocks.
    folded_parts: int = 0
    folded_blocks: int = 0
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
    # The deployment that served (or was last tried), and every attempt as (deployment, outcome):
    # "ok" for the one that answered, else its failure class (see relay/failover.py).
    deployment: str | None = None
    attempt_log: list[tuple[str, str]] = field(default_factory=list)
    # Prompt tokens read from / written to the provider's prompt cache (included in prompt_tokens).
    cache_read_tokens: int | None = None
    cache_creation_tokens: int | None = None
    # Resumable: its events go to a Redis Stream and it outlives its client's connection.
    resumable: bool = False
    # The Redis hash holding this stream's open-stream lease entry (cluster/leases.py), if any.
    lease: str | None = None

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

    @property
    def content_chunks(self) -> int:
        """Content chunks received (each one a token, for budgets)."""
        return len(self.completion_parts) + self.folded_parts

    def completion_text(self) -> str:
        """Everything the upstream generated (that reached us)."""
        return "".join(self.completion_parts)

    def fold_completion(self) -> None:
        """Join the parts that arrived since the last fold into one block, once there are many.

        A long answer kept as one small string per chunk costs about ten times its text (each
        str object is ~50 bytes of overhead); blocks of a thousand cost about the text itself.
        Each part is joined once, so folding is linear in the answer's length.
        """
        parts = self.completion_parts
        if len(parts) - self.folded_blocks < FOLD_EVERY:
            return
        block = "".join(parts[self.folded_blocks :])
        self.folded_parts += len(parts) - self.folded_blocks - 1
        del parts[self.folded_blocks :]
        parts.append(block)
        self.folded_blocks = len(parts)

    @property
    def attempts(self) -> int:
        """Upstream attempts made for this stream (more than one: a failover)."""
        return len(self.attempt_log)

    def set_upstream_usage(
        self,
        prompt_tokens: int,
        completion_tokens: int,
        cache_read_tokens: int | None = None,
        cache_creation_tokens: int | None = None,
    ) -> None:
        """Take the upstream's own token counts."""
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        if cache_read_tokens is not None:
            self.cache_read_tokens = cache_read_tokens
        if cache_creation_tokens is not None:
            self.cache_creation_tokens = cache_creation_tokens
        self.usage_source = UsageSource.UPSTREAM
