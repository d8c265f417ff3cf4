"""Which deployment serves the next attempt of a model, and which ones sit out.

Selection, per attempt (``ModelRouter.pick``):

1. Candidates: the model's deployments not yet tried for this request and not ejected (a
   deployment whose cool-down is over takes exactly one probe request at a time).
2. The best priority group: the lowest ``priority`` among the candidates; higher groups are
   fallbacks, used only when every deployment of the better groups was tried or is ejected.
3. Power of two random choices: two distinct deployments drawn by ``weight``, compared by
   their attempts in flight per unit of weight. Where their times to first output (an EWMA)
   differ clearly -- by more than 25 % and 5 ms -- each one's load is scaled by its time
   ("peak EWMA", as Finagle and Linkerd balance): a deployment ten times slower holds a
   request ten times longer, so it counts as ten times as busy, and least-in-flight alone
   would still hand it a share of a busy model's traffic. Where they do not differ clearly,
   fewer in flight wins; on a tie the first one drawn, so that weights decide the split among
   equals. A deployment never measured counts as fastest: each one is tried before the
   measurements decide; and a measurement fades (time constant ``EWMA_DECAY_SECONDS``), so a
   deployment once slow is tried again now and then and can earn its traffic back.

If every remaining deployment is ejected, the one whose cool-down ends first is tried anyway
(as Envoy's panic threshold does): a request is better served by a doubtful deployment than by
a certain error.

Ejection: ``eject_after_failures`` failures in a row (any upstream failure, before or after
the first token; a client's own fault -- 400, 404, 413, 422 -- and a client leaving are not
the deployment's) eject a deployment for ``cooldown_seconds``; then one probe request; its
success brings the deployment back, its failure ejects it again.

State lives in this process. Each replica (and each worker) judges the deployments by what it
sees itself: an ejection is a local, fast reaction, not a fleet-wide decision.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from tokenrelay.config import DeploymentConfig, ModelConfig
from tokenrelay.upstreams import Upstream

# Weight of the newest time-to-first-output sample in the average.
EWMA_ALPHA = 0.3
# A measurement not renewed fades towards "fast" with this time constant.
EWMA_DECAY_SECONDS = 10.0
# Two averages closer than this are a tie (noise, not a difference worth skewing load for).
_TIE_RATIO = 1.25
_TIE_SECONDS = 0.005


class DeploymentHealth(StrEnum):
    """A deployment's state, as ``/readyz`` and the metrics show it."""

    HEALTHY = "healthy"
    EJECTED = "ejected"
    # Cool-down over; one probe request decides.
    PROBING = "probing"


class RoutingEvents(Protocol):
    """Who hears about deployments (the metrics)."""

    def deployment_state(self, model: str, deployment: str, state: str) -> None: ...

    def deployment_in_flight(self, model: str, deployment: str, delta: int) -> None: ...


class NoRoutingEvents:
    def deployment_state(self, model: str, deployment: str, state: str) -> None:
        pass

    def deployment_in_flight(self, model: str, deployment: str, delta: int) -> None:
        pass


@dataclass(slots=True, eq=False)
class Deployment:
    """One deployment of one model and what this process knows of it."""

    model: str
    config: DeploymentConfig
    upstream: Upstream
    name: str = ""
    in_flight: int = 0
    ewma_ttft: float | None = None
    ewma_at: float = 0.0
    consecutive_failures: int = 0
    ejected_until: float | None = None
    probe_in_flight: bool = False
    ejections: int = 0

    def __post_init__(self) -> None:
        self.name = self.config.name or "default"

    @property
    def health(self) -> DeploymentHealth:
        if self.ejected_until is None:
            return DeploymentHealth.HEALTHY
        if self.probe_in_flight or time.monotonic() >= self.ejected_until:
            return DeploymentHealth.PROBING
        return DeploymentHealth.EJECTED

    def ttft_estimate(self, now: float) -> float:
        """The time-to-first-output average, faded by its age (0.0: never measured)."""
        if self.ewma_ttft is None:
            return 0.0
        return self.ewma_ttft * math.exp((self.ewma_at - now) / EWMA_DECAY_SECONDS)

    def available(self, now: float) -> bool:
        """May take an attempt now: healthy, or cooled down with no probe running."""
        if self.ejected_until is None:
            return True
        return now >= self.ejected_until and not self.probe_in_flight

    def snapshot(self) -> dict[str, Any]:
        """For ``/readyz``."""
        now = time.monotonic()
        return {
            "provider": self.config.provider,
            "state": str(self.health),
            "in_flight": self.in_flight,
            "consecutive_failures": self.consecutive_failures,
            "ewma_ttft_ms": None if self.ewma_ttft is None else round(self.ewma_ttft * 1000, 1),
            "cooldown_left_s": (
                round(self.ejected_until - now, 1)
                if self.ejected_until is not None and self.ejected_until > now
                else None
            ),
            "ejections": self.ejections,
        }


class Attempt:
    """One deployment taking one attempt: counted in flight until ``release``."""

    __slots__ = ("_released", "deployment", "probe", "router", "started_mono")

    def __init__(self, router: ModelRouter, deployment: Deployment, probe: bool) -> None:
        self.router = router
        self.deployment = deployment
        self.probe = probe
        self.started_mono = time.monotonic()
        self._released = False

    def succeeded(self, first_output_mono: float) -> None:
        """The attempt produced its first output: the deployment answers (a probe passed)."""
        self.router.record_success(self.deployment, first_output_mono - self.started_mono, self.probe)
        self.probe = False

    def completed(self) -> None:
        """The answer was complete: the deployment's run of failures is over. (Not at the first
        output: a deployment that drops every answer half-way must still be ejected.)"""
        self.deployment.consecutive_failures = 0

    def failed(self) -> None:
        """The deployment failed this attempt (counts towards its ejection)."""
        self.router.record_failure(self.deployment, self.probe)
        self.probe = False

    def abandoned(self) -> None:
        """The attempt ended for a reason that is not the deployment's (the client left)."""
        if self.probe:
            self.deployment.probe_in_flight = False  # the next request probes instead
            self.probe = False

    def release(self) -> None:
        """The attempt's connection is closed (idempotent)."""
        if not self._released:
            self._released = True
            self.abandoned()
            self.router.release(self.deployment)


class ModelRouter:
    """The deployments of one model, and the choice among them."""

    def __init__(
        self,
        model: str,
        config: ModelConfig,
        deployments: Sequence[tuple[DeploymentConfig, Upstream]],
        *,
        events: RoutingEvents | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.model = model
        self.config = config
        self._events = events or NoRoutingEvents()
        self.deployments = [
            Deployment(model=model, config=dc, upstream=upstream) for dc, upstream in deployments
        ]
        self._single = self.deployments[0] if len(self.deployments) == 1 else None
        self._random = (rng or random.Random()).random
        # The usual pick -- nothing tried yet, nothing ejected -- is among the best priority
        # group, known from the configuration: kept with its cumulative weights.
        best = min(d.config.priority for d in self.deployments)
        self._best = [d for d in self.deployments if d.config.priority == best]
        self._best_cumulative = list(itertools.accumulate(d.config.weight for d in self._best))
        self._ejected = 0  # deployments with an ejection deadline (cooling down or probing)
        for deployment in self.deployments:
            self._events.deployment_state(model, deployment.name, str(DeploymentHealth.HEALTHY))

    @property
    def max_attempts(self) -> int:
        return min(self.config.max_attempts, len(self.deployments))

    def pick(self, tried: Sequence[Deployment] = ()) -> Attempt | None:
        """The deployment for the next attempt, counted in flight; None when none is left."""
        single = self._single
        if single is not None:
            # The common case, kept cheap: one deployment, tried once.
            if tried:
                return None
            return self._take(single, probe=False)
        if not tried and not self._ejected:
            best = self._best
            if len(best) == 1:
                return self._take(best[0], probe=False)
            return self._take(self._two_choices(best, self._best_cumulative), probe=False)
        now = time.monotonic()
        untried = [d for d in self.deployments if d not in tried]
        if not untried:
            return None
        candidates = [d for d in untried if d.available(now)]
        if not candidates:
            # Everything left is ejected (or probing): try the one back soonest, not nobody.
            waiting = [d for d in untried if not d.probe_in_flight] or untried
            chosen = min(waiting, key=lambda d: d.ejected_until or 0.0)
            return self._take(chosen, probe=chosen.ejected_until is not None)
        top = min(d.config.priority for d in candidates)
        group = [d for d in candidates if d.config.priority == top]
        if len(group) == 1:
            chosen = group[0]
        else:
            chosen = self._two_choices(group, list(itertools.accumulate(d.config.weight for d in group)))
        return self._take(chosen, probe=chosen.ejected_until is not None)

    def _two_choices(self, group: list[Deployment], cumulative: list[float]) -> Deployment:
        first, second = self._two_weighted(group, cumulative)
        a, b = first.ewma_ttft, second.ewma_ttft
        if a is None and b is None:
            a = b = 0.0
        else:
            now = time.monotonic()
            a, b = first.ttft_estimate(now), second.ttft_estimate(now)
        if abs(a - b) > _TIE_SECONDS and max(a, b) > min(a, b) * _TIE_RATIO:
            # +1: the request being placed, so that an idle slow one costs more than an idle fast one.
            first_cost = (first.in_flight + 1) / first.config.weight * max(a, _TIE_SECONDS)
            second_cost = (second.in_flight + 1) / second.config.weight * max(b, _TIE_SECONDS)
            return second if second_cost < first_cost else first
        first_load = first.in_flight / first.config.weight
        second_load = second.in_flight / second.config.weight
        return second if second_load < first_load else first

    def _two_weighted(
        self, group: list[Deployment], cumulative: list[float]
    ) -> tuple[Deployment, Deployment]:
        """Two distinct members drawn by weight (the second drawn again until it differs)."""
        total, rnd, last = cumulative[-1], self._random, len(group) - 1
        first = min(bisect.bisect_right(cumulative, rnd() * total), last)
        for _ in range(8):
            second = min(bisect.bisect_right(cumulative, rnd() * total), last)
            if second != first:
                return group[first], group[second]
        # One weight dwarfs the rest: the next member, rather than drawing for ever.
        return group[first], group[(first + 1) % len(group)]

    def _take(self, deployment: Deployment, *, probe: bool) -> Attempt:
        deployment.in_flight += 1
        self._events.deployment_in_flight(self.model, deployment.name, 1)
        if probe:
            deployment.probe_in_flight = True
            self._events.deployment_state(self.model, deployment.name, str(DeploymentHealth.PROBING))
        return Attempt(self, deployment, probe)

    def release(self, deployment: Deployment) -> None:
        deployment.in_flight -= 1
        self._events.deployment_in_flight(self.model, deployment.name, -1)

    def record_success(self, deployment: Deployment, ttft_seconds: float, probe: bool) -> None:
        now = time.monotonic()
        if deployment.ewma_ttft is None:
            deployment.ewma_ttft = ttft_seconds
        else:
            previous = deployment.ttft_estimate(now)
            deployment.ewma_ttft = previous + EWMA_ALPHA * (ttft_seconds - previous)
        deployment.ewma_at = now
        # Only the probe brings a deployment back: a request that began before the ejection
        # and answers now says nothing about the deployment since.
        if probe and deployment.ejected_until is not None:
            self._ejected -= 1
            deployment.ejected_until = None
            deployment.probe_in_flight = False
            deployment.consecutive_failures = 0
            self._events.deployment_state(self.model, deployment.name, str(DeploymentHealth.HEALTHY))

    def record_failure(self, deployment: Deployment, probe: bool) -> None:
        deployment.consecutive_failures += 1
        if self._single is not None:
            return  # nothing to route around: the one deployment takes every request anyway
        if probe:
            deployment.probe_in_flight = False
        if probe or (
            deployment.ejected_until is None
            and deployment.consecutive_failures >= self.config.eject_after_failures
        ):
            if deployment.ejected_until is None:
                self._ejected += 1
            deployment.ejected_until = time.monotonic() + self.config.cooldown_seconds
            deployment.ejections += 1
            self._events.deployment_state(self.model, deployment.name, str(DeploymentHealth.EJECTED))

    def snapshot(self) -> dict[str, Any]:
        """Every deployment's state, for ``/readyz``."""
        return {d.name: d.snapshot() for d in self.deployments}
