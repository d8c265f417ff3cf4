"""The upstream clients of a running gateway: one per (provider, base URL, key), shared by the
deployments that use it."""

from __future__ import annotations

from tokenrelay.config import DeploymentConfig
from tokenrelay.upstreams.anthropic import AnthropicUpstream
from tokenrelay.upstreams.base import Upstream
from tokenrelay.upstreams.openai import OpenAIUpstream


class Upstreams:
    """Creates clients on first use and closes them all at shutdown.

    ``url_overrides`` maps a ``builtin:`` base URL to where that server listens (the embedded
    simulator); ``builtins`` maps one to an upstream object of its own (the local model).
    """

    def __init__(
        self,
        *,
        max_connections: int,
        url_overrides: dict[str, str] | None = None,
        builtins: dict[str, Upstream] | None = None,
    ) -> None:
        self._max_connections = max_connections
        self._url_overrides = url_overrides or {}
        self._builtins = builtins or {}
        self._clients: dict[tuple[str, str, str | None], Upstream] = {}

    def client_for(self, deployment: DeploymentConfig) -> Upstream:
        """The client serving ``deployment`` (created once, then reused)."""
        builtin = self._builtins.get(deployment.base_url)
        if builtin is not None:
            return builtin
        base_url = self._url_overrides.get(deployment.base_url, deployment.base_url)
        api_key = deployment.api_key()
        key = (deployment.provider, base_url, api_key)
        client = self._clients.get(key)
        if client is None:
            kind = AnthropicUpstream if deployment.provider == "anthropic" else OpenAIUpstream
            client = kind(base_url=base_url, api_key=api_key, max_connections=self._max_connections)
            self._clients[key] = client
        return client

    async def aclose(self) -> None:
        """Close every connection pool."""
        clients: list[Upstream] = [*self._clients.values(), *self._builtins.values()]
        self._clients, self._builtins = {}, {}
        for client in clients:
            await client.aclose()
