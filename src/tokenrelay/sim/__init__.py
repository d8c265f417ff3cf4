"""The simulated upstream, OpenAI chat completions and Anthropic Messages (tests, benchmarks, the demo)."""

from tokenrelay.sim.behaviour import SimOptions
from tokenrelay.sim.server import SimulatedUpstream

__all__ = ["SimOptions", "SimulatedUpstream"]
