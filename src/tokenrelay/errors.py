"""The one exception tree of tokenrelay.

Each class knows its HTTP status (used while the response has not started), its event code
(used in an ``error`` event once streaming began) and, for ``/v1/messages``, the Anthropic
error type, which follows from the status as Anthropic documents it (docs.anthropic.com/en/api/errors)::

    TokenRelayError                      500  internal_error           api_error
    ├── InvalidRequest                   400  invalid_request_error    invalid_request_error
    │   ├── BodyTooLarge                 413  request_too_large        request_too_large
    │   └── ModelNotFound                404  model_not_found          not_found_error
    ├── AuthenticationFailed             401  invalid_api_key          authentication_error
    ├── PermissionDenied                 403  permission_denied        permission_error
    │   └── ModelNotAllowed              403  model_not_allowed        permission_error
    ├── RateLimitExceeded                429  rate_limit_exceeded      rate_limit_error (Retry-After)
    │   └── BudgetExceeded               429  budget_exceeded          rate_limit_error
    ├── ServiceUnavailable               503  shutting_down            overloaded_error
    │   └── StreamShutdown               503  shutdown                 overloaded_error (drain over)
    └── UpstreamError                    502  upstream_error           api_error
        ├── UpstreamRateLimited          429  upstream_rate_limited    rate_limit_error (Retry-After)
        ├── UpstreamRejected             4xx  upstream_rejected        by its status
        ├── UpstreamUnavailable          502  upstream_unavailable     api_error
        ├── UpstreamProtocolError        502  upstream_protocol_error  api_error
        └── UpstreamTimeout              504  upstream_timeout         timeout_error

``UpstreamRejected``: the upstream's own 400/404/413/422 (the request itself).
``UpstreamUnavailable``: connection refused, 5xx, 401/403 (the gateway's credentials).
``UpstreamProtocolError``: an unparsable stream, or one dropped mid-stream.
"""

from __future__ import annotations

from typing import ClassVar

import orjson

# Anthropic's error type for each status it documents; any other 4xx is an invalid request to
# it, any other 5xx an api_error. 503 is "overloaded": retry, here or elsewhere (its SDKs do).
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def anthropic_error_type(status: int) -> str:
    """The ``error.type`` Anthropic uses for an HTTP status."""
    return _ANTHROPIC_TYPES.get(status) or ("invalid_request_error" if status < 500 else "api_error")


class TokenRelayError(Exception):
    """Base class: a failure with a status, an OpenAI error type and an event code."""

    status_code: ClassVar[int] = 500
    error_type: ClassVar[str] = "server_error"
    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    @property
    def http_status(self) -> int:
        """The status for a response that has not started yet."""
        return self.status_code

    def headers(self) -> dict[str, str]:
        """Extra response headers (e.g. Retry-After)."""
        return {}

    def openai_body(self) -> bytes:
        """The error as OpenAI shapes it: ``{"error": {"message", "type", "param", "code"}}``."""
        return orjson.dumps(
            {
                "error": {
                    "message": self.message,
                    "type": self.error_type,
                    "param": self.param,
                    "code": self.code,
                }
            }
        )

    @property
    def anthropic_type(self) -> str:
        """The Anthropic ``error.type`` of this error (see the table above)."""
        return anthropic_error_type(self.http_status)

    def anthropic_body(self) -> bytes:
        """The error as Anthropic shapes it: ``{"type": "error", "error": {"type", "message"}}``."""
        error = {"type": self.anthropic_type, "message": self.message}
        return orjson.dumps({"type": "error", "error": error})


class InvalidRequest(TokenRelayError):
    status_code = 400
    error_type = "invalid_request_error"
    code = "invalid_request_error"


class BodyTooLarge(InvalidRequest):
    status_code = 413
    code = "request_too_large"


class ModelNotFound(InvalidRequest):
    status_code = 404
    code = "model_not_found"


class AuthenticationFailed(TokenRelayError):
    """No key, a malformed header, or a key that is wrong, revoked or expired (never which)."""

    status_code = 401
    error_type = "invalid_request_error"
    code = "invalid_api_key"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="tokenrelay"'}


class PermissionDenied(TokenRelayError):
    status_code = 403
    error_type = "permission_error"
    code = "permission_denied"


class ModelNotAllowed(PermissionDenied):
    code = "model_not_allowed"


class AdminKeyRequired(PermissionDenied):
    """The admin API is off: auth is disabled or no admin key is configured."""

    code = "admin_key_required"


class KeyNotFound(TokenRelayError):
    """No API key has this id (the admin API)."""

    status_code = 404
    error_type = "not_found_error"
    code = "key_not_found"


class MetricsDisabled(TokenRelayError):
    """The live summary is read from the metrics, which are turned off."""

    status_code = 404
    error_type = "not_found_error"
    code = "metrics_disabled"


class RateLimitExceeded(TokenRelayError):
    status_code = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after_seconds: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_seconds)} if self.retry_after_seconds else {}


class BudgetExceeded(RateLimitExceeded):
    code = "budget_exceeded"


class ServiceUnavailable(TokenRelayError):
    status_code = 503
    error_type = "service_unavailable"
    code = "shutting_down"


class UpstreamError(TokenRelayError):
    status_code = 502
    error_type = "upstream_error"
    code = "upstream_error"
    # The failure class in metrics: rate_limited, rejected, server_error, connection, timeout,
    # mid_stream_drop, mid_stream_error, protocol, auth, overloaded (Anthropic's 529), other.
    failure: str = "other"

    def __init__(self, message: str, *, failure: str | None = None) -> None:
        super().__init__(message)
        if failure is not None:
            self.failure = failure


class UpstreamRateLimited(UpstreamError):
    status_code = 429
    error_type = "rate_limit_error"
    code = "upstream_rate_limited"
    failure = "rate_limited"

    def __init__(self, message: str, *, retry_after: str | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": self.retry_after} if self.retry_after else {}


class UpstreamRejected(UpstreamError):
    """The upstream refused the request itself (e.g. context too long): the client can fix it."""

    error_type = "invalid_request_error"
    code = "upstream_rejected"
    failure = "rejected"

    def __init__(self, message: str, *, upstream_status: int) -> None:
        super().__init__(message)
        self.upstream_status = upstream_status

    @property
    def http_status(self) -> int:
        return self.upstream_status


class UpstreamUnavailable(UpstreamError):
    code = "upstream_unavailable"
    failure = "server_error"


class UpstreamProtocolError(UpstreamError):
    code = "upstream_protocol_error"
    failure = "protocol"


class UpstreamTimeout(UpstreamError):
    status_code = 504
    error_type = "timeout_error"
    code = "upstream_timeout"
    failure = "timeout"


class StreamShutdown(ServiceUnavailable):
    """The gateway is stopping and the drain period ran out."""

    code = "shutdown"


class StreamNotFound(TokenRelayError):
    """No resumable stream with this id for this key (unknown, expired, or another key's)."""

    status_code = 404
    error_type = "not_found_error"
    code = "stream_not_found"


class ResumableUnavailable(ServiceUnavailable):
    """A resumable stream was asked for and the shared Redis is not reachable."""

    code = "resumable_unavailable"


class StreamLost(TokenRelayError):
    """The replica generating a resumable stream died; the answer stops here."""

    status_code = 502
    error_type = "api_error"
    code = "stream_lost"


class StreamAbandoned(TokenRelayError):
    """Nobody came back for a resumable stream within the grace period: it was aborted."""

    status_code = 499
    error_type = "api_error"
    code = "client_disconnected"
