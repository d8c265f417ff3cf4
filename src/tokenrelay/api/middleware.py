"""Pure ASGI middleware (no BaseHTTPMiddleware: it would buffer and hide disconnects)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tokenrelay.api.errors import is_anthropic_path
from tokenrelay.errors import BodyTooLarge
from tokenrelay.relay.sender import WIRE_SEND
from tokenrelay.relay.stream import ABORT_CONNECTION

_SANE_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")


def new_request_id() -> str:
    """A fresh request id (32 hex characters)."""
    return uuid.uuid4().hex


def offer_server_extensions(scope: Scope, send: Send) -> None:
    """Put the server's own ``send`` in ``scope["extensions"]``, and its connection ``abort``
    where the server has one.

    The relay writes body chunks with the unwrapped ``send`` (``relay.sender``).

    ASGI has no message for "abort this connection". An app that returns with its response
    unfinished gets a graceful close from uvicorn, which waits for the client to read what is
    still buffered: for a client that stopped reading, that is forever (a socket and its
    buffers held, and an error logged). uvicorn's ``send`` is a bound method of the
    connection's request cycle, which holds the transport. Called with the server's own
    ``send``, before any middleware wraps it (``app.TokenRelayApp``); under another server
    no abort is offered and the relay simply returns.
    """
    extensions = scope.get("extensions")
    if extensions is None:
        extensions = scope["extensions"] = {}
    extensions[WIRE_SEND] = send
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    abort = getattr(transport, "abort", None)
    if abort is not None:
        extensions[ABORT_CONNECTION] = abort


class RequestIdMiddleware:
    """Takes ``X-Request-ID`` from the request if it is sane, else makes one; echoes it back.

    The id is logged and stored with the stream, so a supplied one that is a secret (a client
    that put its key in the wrong header) is replaced, never kept.
    """

    def __init__(self, app: ASGIApp, *, is_secret: Callable[[str], bool] = lambda _value: False) -> None:
        self.app = app
        self._is_secret = is_secret

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        supplied = next((v for k, v in scope["headers"] if k == b"x-request-id"), None)
        request_id = supplied.decode() if supplied and _SANE_REQUEST_ID.match(supplied) else None
        if request_id is None or self._is_secret(request_id):
            request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        header = (b"x-request-id", request_id.encode())

        async def send_with_request_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        await self.app(scope, receive, send_with_request_id)


class BodyLimitMiddleware:
    """Refuses bodies over ``max_body_bytes`` with 413, by header or while reading a chunked body."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None:
            # The server holds the body to its declared length, so the header is all we check
            # and the stream's hot path is not wrapped.
            if declared.isdigit() and int(declared) > limit:
                await _send_too_large(scope, send, limit)
            else:
                await self.app(scope, receive, send)
            return
        # No declared length (chunked upload): read the body here, up to the limit, then replay it.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before sending its body
            size += len(message.get("body", b""))
            if size > limit:
                await _send_too_large(scope, send, limit)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body_message: Message | None = {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        async def replay_receive() -> Message:
            nonlocal body_message
            if body_message is not None:
                message, body_message = body_message, None
                return message
            return await receive()

        await self.app(scope, replay_receive, send)


async def _send_too_large(scope: Scope, send: Send, limit: int) -> None:
    error = BodyTooLarge(f"request body exceeds {limit} bytes (max_body_bytes)")
    body = error.anthropic_body() if is_anthropic_path(scope["path"]) else error.openai_body()
    await send(
        {"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": body})
