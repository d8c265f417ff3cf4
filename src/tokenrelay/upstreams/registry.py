"""The upstream clients of a running gateway: one per (base URL, key), shared by its models."""

from __future__ import annotations

from tokenrelay.config import ModelConfig
from tokenrelay.upstreams.openai_compat import UpstreamClient


class Upstreams:
    """Creates clients on first use and closes them all at shutdown."""

    def __init__(self, *, max_connections: int, url_overrides: dict[str, str] | None = None) -> None:
        self._max_connections = max_connections
        self._url_overrides = url_overrides or {}
        self._clients: dict[tuple[str, str | None], UpstreamClient] = {}

    def client_for(self, model: ModelConfig) -> UpstreamClient:
        """The client serving ``model`` (created once, then reused)."""
        base_url = self._url_overrides.get(model.base_url, model.base_url)
        api_key = model.api_key()
        key = (base_url, api_key)
        client = self._clients.get(key)
        if client is None:
            client = UpstreamClient(base_url=base_url, api_key=api_key, max_connections=self._max_connections)
            self._clients[key] = client
        return client

    async def aclose(self) -> None:
        """Close every connection pool."""
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()
