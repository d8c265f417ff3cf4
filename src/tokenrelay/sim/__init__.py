"""The simulated OpenAI-compatible upstream (tests, benchmarks and the out-of-the-box demo)."""

from tokenrelay.sim.behaviour import SimOptions
from tokenrelay.sim.server import SimulatedUpstream

__all__ = ["SimOptions", "SimulatedUpstream"]
