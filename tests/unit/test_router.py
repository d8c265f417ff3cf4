"""Deployment selection and ejection (routing/router.py): the rules, with a seeded random."""

from __future__ import annotations

import random
import time
from collections import Counter
from typing import Any

import pytest

from tokenrelay.config import DeploymentConfig, ModelConfig
from tokenrelay.routing import Deployment, ModelRouter


class _Upstream:
    """Selection never opens a stream; the router only keeps the object."""

    def start(self) -> None:
        pass


def router(*deployments: dict[str, Any], seed: int = 1, **model: Any) -> ModelRouter:
    config = ModelConfig(
        deployments=[DeploymentConfig(base_url="http://x", **d) for d in deployments], **model
    )
    return ModelRouter(
        "m",
        config,
        [(d, _Upstream()) for d in config.resolved_deployments()],  # type: ignore[misc]
        rng=random.Random(seed),
    )


def pick_name(r: ModelRouter, tried: list[Deployment] | None = None) -> str:
    attempt = r.pick(tried or [])
    assert attempt is not None
    attempt.release()
    return attempt.deployment.name


def test_a_single_upstream_model_is_one_implicit_deployment() -> None:
    config = ModelConfig(base_url="http://x/v1", upstream_model="gpt", api_key_env="K")
    (only,) = config.resolved_deployments()
    assert (only.name, only.base_url, only.upstream_model, only.api_key_env) == (
        "default",
        "http://x/v1",
        "gpt",
        "K",
    )
    assert only.attempt_first_token_timeout_seconds == config.first_token_timeout_seconds / 3


def test_a_model_needs_base_url_or_deployments_not_both() -> None:
    with pytest.raises(ValueError, match="either base_url or"):
        ModelConfig()
    with pytest.raises(ValueError, match="either base_url or"):
        ModelConfig(base_url="http://x", deployments=[DeploymentConfig(base_url="http://y")])
    with pytest.raises(ValueError, match="unique"):
        ModelConfig(deployments=[DeploymentConfig(base_url="http://y", name="a")] * 2)


def test_deployments_inherit_the_models_timeouts_and_prices_unless_they_set_their_own() -> None:
    config = ModelConfig(
        connect_timeout_seconds=2,
        attempt_first_token_timeout_seconds=4,
        default_max_tokens=64000,
        input_price_per_million=1,
        deployments=[
            DeploymentConfig(base_url="http://a"),
            DeploymentConfig(base_url="http://b", connect_timeout_seconds=9, output_price_per_million=5),
        ],
    )
    a, b = config.resolved_deployments()
    assert (a.name, a.connect_timeout_seconds, a.attempt_first_token_timeout_seconds, a.prices()) == (
        "openai-1",
        2,
        4,
        (1, 0),
    )
    assert (b.name, b.connect_timeout_seconds, b.prices()) == ("openai-2", 9, (0, 5))
    assert a.default_max_tokens == b.default_max_tokens == 64000


def test_the_best_priority_group_is_used_and_the_next_only_as_fallback() -> None:
    r = router({"name": "p0", "priority": 0}, {"name": "p1", "priority": 1})
    assert {pick_name(r) for _ in range(50)} == {"p0"}
    first = r.deployments[0]
    assert pick_name(r, [first]) == "p1"
    assert r.pick(r.deployments) is None


def test_weights_split_traffic_among_equals() -> None:
    r = router({"name": "heavy", "weight": 3}, {"name": "light", "weight": 1})
    counts = Counter(pick_name(r) for _ in range(4000))
    assert 0.70 < counts["heavy"] / 4000 < 0.80, counts


def test_fewer_in_flight_per_weight_wins() -> None:
    r = router({"name": "a"}, {"name": "b"})
    busy = r.pick()
    assert busy is not None
    # With one attempt open on the first choice, every pick goes to the other.
    others = {pick_name(r) for _ in range(20)}
    assert others == {"b" if busy.deployment.name == "a" else "a"}


def test_on_a_tie_the_clearly_faster_deployment_wins_and_unmeasured_ones_are_tried_first() -> None:
    r = router({"name": "slow"}, {"name": "fast"})
    slow, fast = r.deployments
    slow.ewma_ttft, fast.ewma_ttft = 0.3, 0.01
    slow.ewma_at = fast.ewma_at = time.monotonic()
    assert {pick_name(r) for _ in range(30)} == {"fast"}
    fresh = router({"name": "measured"}, {"name": "new"})
    fresh.deployments[0].ewma_ttft, fresh.deployments[0].ewma_at = 0.05, time.monotonic()
    assert {pick_name(fresh) for _ in range(30)} == {"new"}
    close = router({"name": "a"}, {"name": "b"})
    close.deployments[0].ewma_ttft, close.deployments[1].ewma_ttft = 0.100, 0.110
    close.deployments[0].ewma_at = close.deployments[1].ewma_at = time.monotonic()
    assert {pick_name(close) for _ in range(60)} == {"a", "b"}  # noise: the weights decide


def test_three_failures_in_a_row_eject_then_one_probe_decides() -> None:
    r = router({"name": "flaky"}, {"name": "steady"}, eject_after_failures=3, cooldown_seconds=0.05)
    flaky = r.deployments[0]
    for _ in range(2):
        attempt = r._take(flaky, probe=False)
        attempt.failed()
        attempt.release()
    assert str(flaky.health) == "healthy"
    attempt = r._take(flaky, probe=False)
    attempt.failed()
    attempt.release()
    assert str(flaky.health) == "ejected"
    assert {pick_name(r) for _ in range(30)} == {"steady"}
    time.sleep(0.06)
    probe = r.pick([r.deployments[1]])
    assert probe is not None and probe.deployment is flaky and probe.probe
    # While the probe runs nobody else is sent there.
    assert {pick_name(r) for _ in range(30)} == {"steady"}
    probe.failed()  # the probe fails: ejected again for a full cool-down
    probe.release()
    assert str(flaky.health) == "ejected"
    time.sleep(0.06)
    probe = r.pick([r.deployments[1]])
    assert probe is not None and probe.probe
    probe.succeeded(time.monotonic())
    probe.release()
    assert str(flaky.health) == "healthy" and flaky.consecutive_failures == 0


def test_a_probe_cut_short_by_the_client_lets_the_next_request_probe() -> None:
    r = router({"name": "flaky"}, {"name": "steady"}, eject_after_failures=1, cooldown_seconds=0.01)
    flaky = r.deployments[0]
    attempt = r._take(flaky, probe=False)
    attempt.failed()
    attempt.release()
    time.sleep(0.02)
    probe = r.pick([r.deployments[1]])
    assert probe is not None and probe.probe
    probe.release()  # abandoned: neither success nor failure
    again = r.pick([r.deployments[1]])
    assert again is not None and again.deployment is flaky and again.probe
    again.release()


def test_with_everything_ejected_the_one_back_soonest_is_still_tried() -> None:
    r = router({"name": "a"}, {"name": "b"}, eject_after_failures=1, cooldown_seconds=30)
    for deployment in r.deployments:
        attempt = r._take(deployment, probe=False)
        attempt.failed()
        attempt.release()
    assert pick_name(r) == "a"  # ejected first, so back first


def test_in_flight_is_counted_until_release() -> None:
    r = router({"name": "a"})
    attempt = r.pick()
    assert attempt is not None and r.deployments[0].in_flight == 1
    attempt.release()
    attempt.release()  # idempotent
    assert r.deployments[0].in_flight == 0


def test_a_slow_measurement_fades_so_the_deployment_is_tried_again() -> None:
    r = router({"name": "slow"}, {"name": "fast"})
    slow, fast = r.deployments
    now = time.monotonic()
    slow.ewma_ttft, slow.ewma_at = 0.3, now
    fast.ewma_ttft, fast.ewma_at = 0.01, now
    assert {pick_name(r) for _ in range(30)} == {"fast"}
    slow.ewma_at = fast.ewma_at = now - 60  # a minute without news of either
    assert slow.ttft_estimate(now) < 0.001
    assert "slow" in {pick_name(r) for _ in range(30)}


def test_a_success_that_began_before_the_ejection_does_not_bring_the_deployment_back() -> None:
    """Regression: any success un-ejected; only the probe may."""
    r = router({"name": "flaky"}, {"name": "steady"}, eject_after_failures=1, cooldown_seconds=30)
    flaky = r.deployments[0]
    slow_answer = r._take(flaky, probe=False)  # began while flaky was still healthy
    failing = r._take(flaky, probe=False)
    failing.failed()
    failing.release()
    assert str(flaky.health) == "ejected"
    slow_answer.succeeded(time.monotonic())
    slow_answer.release()
    assert str(flaky.health) == "ejected"


def test_failures_after_the_first_output_still_eject() -> None:
    """Regression: the first output reset the failure count, so a deployment that broke off
    every answer half-way was never ejected. Only a complete answer ends a run of failures."""
    r = router({"name": "dropper"}, {"name": "steady"}, eject_after_failures=3)
    dropper = r.deployments[0]
    for _ in range(3):
        attempt = r._take(dropper, probe=False)
        attempt.succeeded(time.monotonic())  # first output...
        attempt.failed()  # ...then the connection dropped
        attempt.release()
    assert str(dropper.health) == "ejected"
    healthy = r.deployments[1]
    for _ in range(5):
        attempt = r._take(healthy, probe=False)
        attempt.failed()
        attempt.succeeded(time.monotonic())
        attempt.completed()
        attempt.release()
    assert healthy.consecutive_failures == 0 and str(healthy.health) == "healthy"


def test_a_model_with_one_deployment_never_ejects_it() -> None:
    """Nothing to route around: its failures are counted, but every request still goes there
    and no probe bookkeeping flips its state."""
    r = router({"name": "only"}, eject_after_failures=1)
    for _ in range(5):
        attempt = r.pick()
        assert attempt is not None and not attempt.probe
        attempt.failed()
        attempt.release()
    only = r.deployments[0]
    assert (str(only.health), only.consecutive_failures, only.ejections) == ("healthy", 5, 0)
