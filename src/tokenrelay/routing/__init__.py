"""Deployments per model: selection, ejection and their state (``router.py``)."""

from __future__ import annotations

from typing import Any

from tokenrelay.config import Settings
from tokenrelay.routing.router import (
    Attempt,
    Deployment,
    DeploymentHealth,
    ModelRouter,
    NoRoutingEvents,
    RoutingEvents,
)
from tokenrelay.upstreams import Upstreams

__all__ = [
    "Attempt",
    "Deployment",
    "DeploymentHealth",
    "ModelRouter",
    "NoRoutingEvents",
    "Routing",
    "RoutingEvents",
]


class Routing:
    """A router per configured model, its deployments' clients taken from ``upstreams``."""

    def __init__(self, settings: Settings, upstreams: Upstreams, events: RoutingEvents | None = None) -> None:
        self._routers = {
            name: ModelRouter(
                name,
                model,
                [
                    (deployment, upstreams.client_for(deployment))
                    for deployment in model.resolved_deployments()
                ],
                events=events,
            )
            for name, model in settings.models.items()
        }

    def router(self, model: str) -> ModelRouter:
        """The router of a configured public model name."""
        return self._routers[model]

    def start(self) -> None:
        """Start every deployment's client (inside the running event loop)."""
        for router in self._routers.values():
            for deployment in router.deployments:
                deployment.upstream.start()

    def snapshot(self) -> dict[str, Any]:
        """Per model, per deployment: state, in-flight, failures (``/readyz``)."""
        return {name: router.snapshot() for name, router in self._routers.items()}
