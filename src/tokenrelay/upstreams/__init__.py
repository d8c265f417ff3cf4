"""Upstream providers: open a stream, yield its raw bytes, close it."""

from tokenrelay.upstreams.openai_compat import UpstreamClient, UpstreamStream
from tokenrelay.upstreams.registry import Upstreams

__all__ = ["UpstreamClient", "UpstreamStream", "Upstreams"]
