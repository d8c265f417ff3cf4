"""Names of everything replicas share in Redis (one place, so they never drift apart).

All under ``cluster.namespace`` (default ``tokenrelay``): gateways that must not see each
other's streams (two environments on one Redis) use different namespaces.
"""

from __future__ import annotations


class Keys:
    """The Redis keys and channel of one namespace."""

    __slots__ = ("_prefix", "replicas", "stop_channel")

    def __init__(self, namespace: str) -> None:
        self._prefix = namespace
        self.replicas = f"{namespace}:replicas"  # replica ids that may hold open streams
        self.stop_channel = f"{namespace}:stop"  # pub/sub: stream ids to stop, heard everywhere

    def heartbeat(self, replica_id: str) -> str:
        """Exists while the replica is alive (renewed; expires ``orphan_after_seconds`` after death)."""
        return f"{self._prefix}:replica:{replica_id}"

    def leases(self, replica_id: str) -> str:
        """Hash: stream id -> what a row needs, for each stream the replica has open."""
        return f"{self._prefix}:open:{replica_id}"

    def reaping(self, replica_id: str) -> str:
        """Lock: one survivor writes a dead replica's rows at a time."""
        return f"{self._prefix}:reaping:{replica_id}"

    def stream_log(self, stream_id: str) -> str:
        """Redis Stream of a resumable stream's events."""
        return f"{self._prefix}:rs:{stream_id}"

    def stream_meta(self, stream_id: str) -> str:
        """Hash: the stream's key, owner replica, protocol; ``ended`` once it is over."""
        return f"{self._prefix}:rs:{stream_id}:meta"

    def followers(self, stream_id: str) -> str:
        """Exists while some client follows the stream (renewed by each follower)."""
        return f"{self._prefix}:rs:{stream_id}:follow"
