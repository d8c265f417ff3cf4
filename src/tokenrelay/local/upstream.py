"""The local model as an upstream: a fair queue in front of the child, and its tokenizer."""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import httpx

from tokenrelay.config import DeploymentConfig
from tokenrelay.local.supervisor import LocalModelServer
from tokenrelay.upstreams.openai import OpenAIStream, OpenAIUpstream


class FairQueue:
    """At most ``capacity`` holders; waiters are served strictly first come, first served.

    A waiter that is cancelled (its client left) leaves the queue without ever holding a slot.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self.running = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def waiting(self) -> int:
        """Requests queued for a slot."""
        return len(self._waiters)

    async def acquire(self) -> None:
        """Wait for a slot, behind everyone who asked before."""
        if self.running < self._capacity and not self._waiters:
            self.running += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot in the same instant it was cancelled: pass it on
            else:
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        """Give the slot to the next waiter, or free it."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes on: `running` stays the same
                return
        self.running -= 1


class LocalUpstream:
    """Requests to the local model wait in a fair queue, then go to the supervised child."""

    def __init__(self, server: LocalModelServer, *, concurrency: int, max_connections: int) -> None:
        self.server = server
        self.queue = FairQueue(concurrency)
        self._client = OpenAIUpstream(base_url=server.base_url, api_key=None, max_connections=max_connections)

    def start(self) -> None:
        """Create the connection pool; the model itself starts at start-up or on first use."""
        self._client.start()

    async def open_stream(
        self, *, body: dict[str, Any], upstream_model: str, config: DeploymentConfig, request_id: str
    ) -> OpenAIStream:
        """Queue for the model, then open the stream; its slot is freed when it is closed."""
        # Cancelled here (the client left while queued), the request never reaches the model.
        await self.queue.acquire()
        try:
            await self.server.ready()
            return await self._client.open_stream(
                body=body,
                upstream_model=upstream_model,
                config=config,
                request_id=request_id,
                on_close=self.queue.release,
            )
        except BaseException:
            self.queue.release()
            raise

    def health(self) -> dict[str, Any]:
        """State, process id, queue and restarts, for ``/readyz``."""
        return {
            "state": str(self.server.state),
            "pid": self.server.pid,
            "running": self.queue.running,
            "queued": self.queue.waiting,
            "restarts": self.server.restarts,
        }

    async def aclose(self) -> None:
        """Close the connection pool (the supervisor stops the child)."""
        await self._client.aclose()


class LocalTokenizer:
    """Counts with the child's own tokenizer (blocking: the token counter calls it in a thread)."""

    def __init__(self, server: LocalModelServer) -> None:
        self._server = server
        self._http = httpx.Client(timeout=5.0)

    def count(self, messages: list[dict[str, Any]], completion: str) -> tuple[int, int]:
        """``(prompt_tokens, completion_tokens)``; raises if the child cannot answer."""
        base = self._server.base_url.removesuffix("/v1")
        response = self._http.post(
            f"{base}/tokenrelay/usage", json={"messages": messages, "completion": completion}
        )
        response.raise_for_status()
        counts = response.json()
        return int(counts["prompt_tokens"]), int(counts["completion_tokens"])

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()
