"""The stream lifecycle: admit, open upstream, forward, finish."""

from tokenrelay.relay.lifecycle import DrainCoordinator, RelayRuntime, StreamRelay
from tokenrelay.ledger.record import DisconnectPhase, StreamRecord, StreamStatus, UsageSource

__all__ = [
    "DisconnectPhase",
    "DrainCoordinator",
    "RelayRuntime",
    "StreamRecord",
    "StreamRelay",
    "StreamStatus",
    "UsageSource",
]
