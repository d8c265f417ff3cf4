"""The events of ``POST /chat`` as the client hands them out, and the client's errors."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import orjson

# --- events -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delta:
    """A piece of the answer's text."""

    text: str


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts; ``source`` is ``upstream`` or ``estimated`` (counted by the gateway)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    source: str


@dataclass(frozen=True, slots=True)
class Done:
    """The stream ended normally."""

    finish_reason: str | None


ChatEvent = Delta | Usage | Done


@dataclass(frozen=True, slots=True)
class ChatResult:
    """A whole answer, available once its stream is done."""

    text: str
    usage: Usage | None
    finish_reason: str | None
    request_id: str | None
    time_to_first_token: float | None
    duration: float


# --- errors -------------------------------------------------------------------------------


class TokenRelayClientError(Exception):
    """Base class of the client's errors; ``code`` is the gateway's error code."""

    def __init__(self, message: str, *, code: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.request_id = request_id


class APIError(TokenRelayClientError):
    """The gateway refused the request with an HTTP error before the stream started."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str,
        error_type: str | None = None,
        param: str | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, code=code, request_id=request_id)
        self.status = status
        self.error_type = error_type
        self.param = param
        self.retry_after = retry_after


class BadRequestError(APIError):
    """400/404/413/422: the request itself is wrong (unknown model, invalid field, ...)."""


class AuthenticationError(APIError):
    """401/403: a missing, wrong or insufficient key."""


class RateLimitError(APIError):
    """429: a rate limit or budget; ``retry_after`` says when to try again, if known."""


class UpstreamError(APIError):
    """5xx: the model provider is down or timed out, or the gateway is shutting down."""


class StreamError(TokenRelayClientError):
    """The stream started, then failed: the gateway sent an ``error`` event."""


class StreamInterrupted(TokenRelayClientError):
    """The connection failed, or the stream ended without ``done`` or ``error``."""


def _api_error(status: int, body: bytes, headers: httpx.Headers) -> APIError:
    request_id = headers.get("x-request-id")
    retry_after = _seconds(headers.get("retry-after"))
    try:
        error = orjson.loads(body)["error"]
        message, code = str(error["message"]), str(error.get("code") or "http_error")
        error_type, param = error.get("type"), error.get("param")
    except (orjson.JSONDecodeError, KeyError, TypeError):
        # Not our JSON: a proxy's HTML page, say. Keep a readable excerpt.
        excerpt = " ".join(body[:200].decode("utf-8", "replace").split())
        message, code, error_type, param = f"HTTP {status}: {excerpt}".rstrip(": "), "http_error", None, None
    cls: type[APIError]
    if status == 429:
        cls = RateLimitError
    elif status in (401, 403):
        cls = AuthenticationError
    elif status >= 500:
        cls = UpstreamError
    else:
        cls = BadRequestError
    return cls(
        message,
        status=status,
        code=code,
        error_type=error_type,
        param=param,
        request_id=request_id,
        retry_after=retry_after,
    )


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date: rare enough for a client to ignore
