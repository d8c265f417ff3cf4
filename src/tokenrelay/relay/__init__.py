"""The stream lifecycle: admit, open upstream, forward, finish."""

from tokenrelay.ledger.record import DisconnectPhase, StreamRecord, StreamStatus, UsageSource
from tokenrelay.relay.lifecycle import DrainCoordinator, RelayRuntime, StreamRelay

__all__ = [
    "DisconnectPhase",
    "DrainCoordinator",
    "RelayRuntime",
    "StreamRecord",
    "StreamRelay",
    "StreamStatus",
    "UsageSource",
]
