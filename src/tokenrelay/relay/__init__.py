"""The stream lifecycle: admit, open upstream, forward, finish."""

from tokenrelay.relay.admission import Admission
from tokenrelay.relay.response import RelayedStream
from tokenrelay.relay.runtime import DrainCoordinator, RelayRuntime
from tokenrelay.relay.sender import Sender
from tokenrelay.relay.stream import StreamRelay

__all__ = ["Admission", "DrainCoordinator", "RelayRuntime", "RelayedStream", "Sender", "StreamRelay"]
