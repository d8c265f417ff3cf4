"""Request bodies of the public endpoints (validated before anything else happens)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class ChatMessage(BaseModel):
    """One message; provider-specific extra fields (name, tool_calls, ...) pass through."""

    model_config = ConfigDict(extra="allow")

    role: Role
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(BaseModel):
    """``POST /chat``."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(default=None, min_length=1, max_length=200)
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    # Survive a dropped connection (GET /v1/streams/{id}); None: the model's or gateway's default.
    resumable: StrictBool | None = None

    def upstream_body(self) -> dict[str, Any]:
        """The body to send upstream (model and streaming flags are the relay's to set)."""
        return self.model_dump(exclude_none=True, exclude={"model", "resumable"})


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: StrictBool = False


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions``: OpenAI's body; unknown parameters pass through upstream."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=200)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    n: int | None = None
    resumable: StrictBool | None = None

    @field_validator("n")
    @classmethod
    def _single_choice(cls, n: int | None) -> int | None:
        if n is not None and n != 1:
            raise ValueError("only n=1 is supported")
        return n

    def upstream_body(self) -> dict[str, Any]:
        """The body to send upstream (model and streaming flags are the relay's to set)."""
        return self.model_dump(
            exclude_none=True, exclude={"model", "stream", "stream_options", "n", "resumable"}
        )
