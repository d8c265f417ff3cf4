"""How a stream is ended from outside the phase it is in: one ``stop`` future, raced.

Whatever ends a stream first -- upstream done, client gone, time-out, shutdown, the user's
Stop -- resolves the stream's one ``StopSignal``; the relay runs each phase with ``race``,
which cancels the phase (and waits for it to unwind) when the signal fires first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from tokenrelay.errors import TokenRelayError
from tokenrelay.record import StreamStatus

T = TypeVar("T")


class StreamStopped(Exception):
    """Something outside the current phase ended the stream (client, time-out, shutdown, stop)."""

    def __init__(self, status: StreamStatus, error: TokenRelayError | None) -> None:
        super().__init__(status)
        self.status = status
        self.error = error


class StopSignal:
    """One stream's stop: set once (the first caller wins), raced against every phase."""

    __slots__ = ("_future",)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._future: asyncio.Future[StreamStopped] = loop.create_future()

    def done(self) -> bool:
        return self._future.done()

    def request(self, status: StreamStatus, error: TokenRelayError | None = None) -> None:
        if not self._future.done():
            self._future.set_result(StreamStopped(status, error))

    def result(self) -> StreamStopped:
        return self._future.result()

    async def race(self, phase: Awaitable[T]) -> T:
        """Run ``phase`` until it finishes or the stream is stopped; the loser is cancelled."""
        task = asyncio.ensure_future(phase)
        try:
            await asyncio.wait((task, self._future), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not task.done():
                task.cancel()
                # Wait for the phase to unwind (it closes what it opened) before going on.
                await asyncio.wait((task,))
        succeeded = task.done() and not task.cancelled() and task.exception() is None
        if not succeeded and self._future.done():
            # Whatever the phase raised while being stopped is a consequence, not the cause.
            raise self._future.result()
        return task.result()
