"""The simulated OpenAI-compatible upstream (tests, benchmarks and the out-of-the-box demo)."""

from tokenrelay.sim.server import SimOptions, SimulatedUpstream

__all__ = ["SimOptions", "SimulatedUpstream"]
