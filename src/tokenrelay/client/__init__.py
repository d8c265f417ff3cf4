"""Python client for tokenrelay's ``POST /chat`` event protocol, sync and async, on httpx.

::

    from tokenrelay.client import Client, Delta

    with Client("http://127.0.0.1:8000") as client:
        with client.stream_chat([{"role": "user", "content": "Hi"}]) as stream:
            for event in stream:
                if isinstance(event, Delta):
                    print(event.text, end="", flush=True)
        print(stream.result.usage)

Leaving the ``with`` block early (``break``, an exception, Ctrl-C) closes the connection, and
the gateway then aborts the upstream call. The key comes from ``api_key`` or the
``TOKENRELAY_API_KEY`` environment variable. This package imports none of the server.
"""

from tokenrelay.client._async import AsyncChatStream, AsyncClient
from tokenrelay.client._events import (
    APIError,
    AuthenticationError,
    BadRequestError,
    ChatEvent,
    ChatResult,
    Delta,
    Done,
    RateLimitError,
    StreamError,
    StreamInterrupted,
    TokenRelayClientError,
    UpstreamError,
    Usage,
)
from tokenrelay.client._protocol import API_KEY_ENV, DEFAULT_URL, URL_ENV, Message
from tokenrelay.client._sync import ChatStream, Client

__all__ = [
    "API_KEY_ENV",
    "DEFAULT_URL",
    "URL_ENV",
    "APIError",
    "AsyncChatStream",
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "ChatEvent",
    "ChatResult",
    "ChatStream",
    "Client",
    "Delta",
    "Done",
    "Message",
    "RateLimitError",
    "StreamError",
    "StreamInterrupted",
    "TokenRelayClientError",
    "UpstreamError",
    "Usage",
]
