"""Error responses: OpenAI-shaped JSON (``{"error": {"message", "type", "param", "code"}}``),
except under ``/v1/messages``, whose clients are Anthropic's SDKs and get Anthropic's shape
(``{"type": "error", "error": {"type", "message"}}``)."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from tokenrelay.errors import InvalidRequest, TokenRelayError, anthropic_error_type

log = logging.getLogger(__name__)

# Requests under this path speak Anthropic's protocol, errors included.
ANTHROPIC_PATH = "/v1/messages"


def is_anthropic_path(path: str) -> bool:
    """Whether errors for ``path`` take Anthropic's shape."""
    return path.startswith(ANTHROPIC_PATH)


def error_response(error: TokenRelayError, *, anthropic: bool = False) -> Response:
    """The HTTP response for an error raised before a stream started."""
    return Response(
        error.anthropic_body() if anthropic else error.openai_body(),
        status_code=error.http_status,
        headers=error.headers(),
        media_type="application/json",
    )


# pydantic appends the union member it tried to an error's location ("content.str"); those
# are types, not fields, and must not reach the client as the parameter name.
_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "dict", "list", "none", "bytes"})


def _is_field(part: object) -> bool:
    text = str(part)
    return part != "body" and text not in _TYPE_TAGS and "[" not in text and "-" not in text


def describe_validation_errors(errors: list[Any]) -> tuple[str, str | None]:
    """(message, param) for pydantic errors: the first one, naming its field."""
    first = errors[0]
    location = [str(part) for part in first.get("loc", ()) if _is_field(part)]
    if first.get("type") == "json_invalid":
        return f"request body is not valid JSON: {first.get('ctx', {}).get('error', 'parse error')}", None
    param = ".".join(location) or None
    message = first.get("msg", "invalid request")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return (f"{param}: {message}{more}" if param else f"{message}{more}"), param


def install_error_handlers(app: FastAPI) -> None:
    """Map validation errors, our exception tree and stray HTTP errors to error bodies, shaped
    by the request's path (see the module docstring)."""

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        message, param = describe_validation_errors(list(exc.errors()))
        return error_response(InvalidRequest(message, param=param), anthropic=_anthropic(request))

    async def on_tokenrelay_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, TokenRelayError)
        return error_response(exc, anthropic=_anthropic(request))

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        error = InvalidRequest(str(exc.detail))
        if _anthropic(request):
            # The type follows the real status (404 not_found_error, ...), not InvalidRequest's.
            kind = anthropic_error_type(exc.status_code)
            body = orjson.dumps({"type": "error", "error": {"type": kind, "message": error.message}})
        else:
            body = error.openai_body()
        return Response(body, status_code=exc.status_code, headers=exc.headers, media_type="application/json")

    async def on_unexpected(request: Request, _exc: Exception) -> Response:
        log.exception("unhandled error", extra={"request_id": request.state.request_id})
        return error_response(TokenRelayError("internal server error"), anthropic=_anthropic(request))

    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(TokenRelayError, on_tokenrelay_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)


def _anthropic(request: Request) -> bool:
    return is_anthropic_path(request.scope["path"])
