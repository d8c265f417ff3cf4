"""Client protocols: encoders that turn neutral events into one wire format each.

``ChatEvents`` for ``POST /chat``; ``OpenAIChunks`` and ``OpenAICompletion`` for
``POST /v1/chat/completions`` streamed and not; ``AnthropicEvents`` and ``AnthropicMessage``
for ``POST /v1/messages`` streamed and not. The relay sees only the ``Encoder`` protocol.
"""

from tokenrelay.protocols.anthropic import AnthropicEvents, AnthropicMessage
from tokenrelay.protocols.base import Encoder
from tokenrelay.protocols.chat_events import ChatEvents
from tokenrelay.protocols.openai import OpenAIChunks, OpenAICompletion

__all__ = ["AnthropicEvents", "AnthropicMessage", "ChatEvents", "Encoder", "OpenAIChunks", "OpenAICompletion"]
