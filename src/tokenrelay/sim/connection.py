"""What ASGI cannot say: cork, reset or close a connection mid-response, or ask if it is gone.

uvicorn's ``send`` is a bound method of the connection's request cycle, which holds the
transport and knows whether the peer is gone. Not served by uvicorn, the simulator falls
back to what ASGI allows: no cork, and a clean close when the app raises.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

from starlette.types import Send


def peer_gone(send: Send) -> bool:
    """uvicorn drops writes to a connection already gone without a word: ask it."""
    return bool(getattr(getattr(send, "__self__", None), "disconnected", False))


def _socket_of(send: Send) -> tuple[Any, Any]:
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    return transport, sock


def cork(send: Send, corked: bool) -> None:
    """TCP_CORK: the kernel holds what is written until uncorked or closed (Linux)."""
    _, sock = _socket_of(send)
    if sock is not None and hasattr(socket, "TCP_CORK"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, int(corked))


def drop_connection(send: Send, *, reset: bool) -> None:
    """Close the connection now, right behind the data: a FIN, or a reset (RST).

    Loopback delivers what was written before a reset, so the peer reads the data first and
    then ``ECONNRESET``; a corked FIN goes out in the same segment as the data.
    """
    transport, sock = _socket_of(send)
    if transport is None:
        return
    if reset:
        cork(send, False)  # out before the reset, which would discard unsent data
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    else:
        transport.close()
