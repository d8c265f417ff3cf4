"""What choosing a deployment costs per request, in process: ``ModelRouter.pick()`` + ``release()``.

    python bench/selection_overhead.py                 # 9 rounds of 30,000 picks per variant
    python bench/selection_overhead.py --rounds 3 --picks 20000 --json out.json

Only the selection: no upstream, no ``Failover.open()``. Each request of the gateway picks a
deployment for its first attempt (``router.pick()``, which counts the attempt in flight) and gives
the slot back when its stream ends (``attempt.release()``); that pair is timed, back to back,
``--picks`` times per round, and the figure is the median over ``--rounds`` rounds of the CPU
time per pair (this thread's, ``time.thread_time_ns``: time the process spends descheduled on a
busy machine does not count; the wall time is reported beside it), the loop's own overhead
included (it is measured apart, *loop*). Variants:

* **1 deployment**: a model in the single-upstream form (the common case, kept cheap in
  ``pick``);
* **8 deployments**: one priority group, weights 1-8 in a shuffled order, some deployments
  with attempts in flight and time-to-first-output averages (EWMA) that differ clearly for some
  pairs and not for others, so both branches of the power-of-two-choices comparison run (the
  peak-EWMA cost and least-in-flight). The averages are renewed before every round so that
  they do not fade during the measurement.

The routers are built as the gateway builds them, with a placeholder for each deployment's
upstream client (selection never touches it). Run from a checkout: the script imports
``tokenrelay`` from the ``src`` directory next to it; without ``tokenrelay.routing`` (a commit
before deployments) it writes ``{"skipped": ...}`` and exits 0.
"""

from __future__ import annotations

import argparse
import importlib
import json
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))  # this checkout's tokenrelay, whatever is installed

import tokenrelay  # noqa: E402

# Eight deployments of one priority: (weight, attempts in flight, EWMA of time to first output).
# Pairs such as 0.040 / 0.045 s tie (within 25 % or 5 ms: least in flight decides); 0.040 /
# 0.250 s do not (each one's load is scaled by its time); None: never measured (counts as fastest).
EIGHT = [
    (3.0, 2, 0.040),
    (1.0, 0, 0.045),
    (5.0, 6, 0.250),
    (2.0, 1, None),
    (8.0, 9, 0.042),
    (4.0, 3, 0.120),
    (6.0, 4, 0.041),
    (7.0, 5, 0.600),
]


def build(variant: str) -> Any:
    from tokenrelay.config import DeploymentConfig, ModelConfig
    from tokenrelay.routing import ModelRouter

    if variant == "1 deployment":
        config = ModelConfig(base_url="http://x", upstream_model="m")
    else:
        config = ModelConfig(
            deployments=[
                DeploymentConfig(name=f"d{i}", base_url="http://x", weight=weight)
                for i, (weight, _, _) in enumerate(EIGHT)
            ]
        )
    return ModelRouter(
        "m", config, [(d, object()) for d in config.resolved_deployments()], rng=random.Random(7)
    )


def prepare(router: Any) -> None:
    """In-flight attempts and fresh EWMA values on the 8 deployments (nothing on 1)."""
    if len(router.deployments) == 1:
        return
    now = time.monotonic()
    for deployment, (_, in_flight, ewma) in zip(router.deployments, EIGHT, strict=True):
        deployment.in_flight = in_flight
        deployment.ewma_ttft = ewma
        deployment.ewma_at = now


def timed(router: Any, picks: int) -> tuple[float, float]:
    """Nanoseconds of CPU and of wall time per ``pick()`` + ``release()``."""
    pick = router.pick
    w0, c0 = time.perf_counter_ns(), time.thread_time_ns()
    for _ in range(picks):
        pick().release()
    return (time.thread_time_ns() - c0) / picks, (time.perf_counter_ns() - w0) / picks


def loop_ns(picks: int) -> float:
    """Nanoseconds per iteration of the same loop calling a trivial function twice."""

    class Nothing:
        def release(self) -> None:
            pass

    nothing = Nothing()

    def pick() -> Nothing:
        return nothing

    t0 = time.thread_time_ns()
    for _ in range(picks):
        pick().release()
    return (time.thread_time_ns() - t0) / picks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=9, help="rounds per variant (median reported)")
    parser.add_argument("--picks", type=int, default=30_000, help="pick + release pairs per round")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    out: dict[str, Any] = {
        "tokenrelay_file": tokenrelay.__file__,
        "rounds": args.rounds,
        "picks": args.picks,
        "python": sys.version.split()[0],
    }
    try:
        importlib.import_module("tokenrelay.routing")
    except ImportError as exc:
        out["skipped"] = f"no deployments in this checkout ({exc})"
        print(out["skipped"])
        if args.json:
            args.json.write_text(json.dumps(out))
        return 0
    variants: dict[str, Any] = {}
    routers = {name: build(name) for name in ("1 deployment", "8 deployments")}
    for router in routers.values():  # warm-up
        prepare(router)
        timed(router, min(args.picks, 10_000))
    ns: dict[str, list[float]] = {name: [] for name in routers}
    wall: dict[str, list[float]] = {name: [] for name in routers}
    loops = []
    for _ in range(args.rounds):
        for name, router in routers.items():  # interleaved, so drift hits both alike
            prepare(router)
            cpu, elapsed = timed(router, args.picks)
            ns[name].append(cpu)
            wall[name].append(elapsed)
        loops.append(loop_ns(args.picks))
    for name, router in routers.items():
        prepare(router)
        chosen: Counter[str] = Counter()
        for _ in range(10_000):
            attempt = router.pick()
            chosen[attempt.deployment.name] += 1
            attempt.release()
        in_flight_after = [d.in_flight for d in router.deployments]
        variants[name] = {
            "us_per_request": statistics.median(ns[name]) / 1000,
            "rounds_us": [v / 1000 for v in ns[name]],
            "wall_us": statistics.median(wall[name]) / 1000,
            "chosen_share": {d.name: chosen[d.name] / 10_000 for d in router.deployments},
            # pick + release leave the in-flight counts as prepared (a leak would show here)
            "in_flight_restored": in_flight_after
            == ([0] if name == "1 deployment" else [row[1] for row in EIGHT]),
        }
        print(
            f"{name}: {variants[name]['us_per_request']:.2f} µs of CPU per pick + release "
            f"(rounds {', '.join(f'{v:.2f}' for v in variants[name]['rounds_us'])}; "
            f"wall {variants[name]['wall_us']:.2f} µs)"
        )
    out["variants"] = variants
    out["loop_us"] = statistics.median(loops) / 1000
    out["eight"] = [
        {"weight": w, "in_flight": f, "ewma_ms": None if e is None else e * 1000} for w, f, e in EIGHT
    ]
    print(f"loop overhead: {out['loop_us']:.3f} µs per iteration")
    if args.json:
        args.json.write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
