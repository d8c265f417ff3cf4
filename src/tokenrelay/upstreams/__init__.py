"""Upstream providers: open a stream, yield its neutral events, close it."""

from tokenrelay.upstreams.anthropic import AnthropicStream, AnthropicUpstream
from tokenrelay.upstreams.base import Upstream, UpstreamStream
from tokenrelay.upstreams.openai import OpenAIStream, OpenAIUpstream
from tokenrelay.upstreams.registry import Upstreams

__all__ = [
    "AnthropicStream",
    "AnthropicUpstream",
    "OpenAIStream",
    "OpenAIUpstream",
    "Upstream",
    "UpstreamStream",
    "Upstreams",
]
