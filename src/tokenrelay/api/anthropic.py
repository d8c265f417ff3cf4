"""``POST /v1/messages``: Anthropic's Messages API as a client protocol.

The body is validated as Anthropic validates it (``max_tokens`` required, unknown top-level
fields refused), then translated into the OpenAI chat-completions shaped body every upstream
takes; what only Anthropic understands travels verbatim under ``events.ANTHROPIC_FIELDS``
(the Anthropic upstream applies it, others drop it). A turn the OpenAI shape would lose
something of carries its blocks, as the client sent them, under that key on its message: signed
thinking (Anthropic refuses a tool-use turn without it when thinking is on), ``cache_control``
marks, ``is_error``, text after a tool use. An Anthropic deployment is sent those blocks; for
others the key is dropped, and with it the thinking (its signature is Anthropic's, no other
provider takes it). Unsigned thinking (another provider's reasoning, as our encoders return
it) is dropped everywhere: Anthropic would refuse its empty signature.

The route's steps (refuse while draining, authenticate, resolve the model, build the stream)
are ``routes.py``'s own, passed in by it: ``routes.py`` imports this module, not the reverse.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, model_validator
from starlette.requests import Request
from starlette.responses import Response

from tokenrelay.api.errors import describe_validation_errors
from tokenrelay.auth.keys import Caller
from tokenrelay.errors import InvalidRequest
from tokenrelay.events import ANTHROPIC_FIELDS
from tokenrelay.protocols import AnthropicEvents, AnthropicMessage, Encoder

# -- the request body ------------------------------------------------------------------------


class _Block(BaseModel):
    # Fields we do not translate (citations, ...) are ignored, not refused: a client sends back
    # the blocks of an earlier answer as its SDK serialised them, fields and all.
    model_config = ConfigDict(extra="ignore")


class TextBlock(_Block):
    type: Literal["text"]
    text: str
    cache_control: dict[str, Any] | None = None


class Base64Source(BaseModel):
    type: Literal["base64"]
    media_type: str = Field(min_length=1)
    data: str


class UrlSource(BaseModel):
    type: Literal["url"]
    url: str = Field(min_length=1)


class ImageBlock(_Block):
    type: Literal["image"]
    source: Annotated[Base64Source | UrlSource, Field(discriminator="type")]
    cache_control: dict[str, Any] | None = None


class ToolUseBlock(_Block):
    type: Literal["tool_use"]
    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    input: dict[str, Any]
    cache_control: dict[str, Any] | None = None


ToolResultPart = Annotated[TextBlock | ImageBlock, Field(discriminator="type")]


class ToolResultBlock(_Block):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1)
    content: str | list[ToolResultPart] | None = None
    is_error: StrictBool | None = None
    cache_control: dict[str, Any] | None = None

    @property
    def marked(self) -> bool:
        """Whether it says what only Anthropic's shape can (an error, cache marks)."""
        parts = self.content if isinstance(self.content, list) else ()
        return bool(self.is_error) or any(m.cache_control is not None for m in (self, *parts))


class ThinkingBlock(_Block):
    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(_Block):
    type: Literal["redacted_thinking"]
    data: str


ContentBlock = Annotated[
    TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | RedactedThinkingBlock,
    Field(discriminator="type"),
]


class AnthropicMessageParam(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # "system": instructions in the conversation (Anthropic's newer API), text blocks only.
    role: Literal["user", "assistant", "system"]
    content: str | Annotated[list[ContentBlock], Field(min_length=1)]


class AnthropicTool(BaseModel):
    """A client tool (Anthropic's server tools, which have no ``input_schema``, are not served)."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["custom"] | None = None
    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    input_schema: dict[str, Any]
    cache_control: dict[str, Any] | None = None


class ToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["auto", "any", "tool", "none"]
    name: str | None = Field(default=None, min_length=1)
    disable_parallel_tool_use: StrictBool | None = None

    @model_validator(mode="after")
    def _tool_has_a_name(self) -> ToolChoice:
        if self.type == "tool" and self.name is None:
            raise ValueError('a tool_choice of type "tool" needs the tool\'s name')
        return self


class Metadata(BaseModel):
    model_config = ConfigDict(extra="allow")

    user_id: str | None = Field(default=None, max_length=256)


class ThinkingConfig(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str = Field(min_length=1)
    budget_tokens: int | None = Field(default=None, ge=1)


class MessagesRequest(BaseModel):
    """``POST /v1/messages``: Anthropic's body; an unknown top-level field is a 400, as there."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=200)
    messages: list[AnthropicMessageParam] = Field(min_length=1)
    max_tokens: int = Field(ge=1)
    system: str | list[TextBlock] | None = None
    stream: StrictBool = False
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    stop_sequences: list[str] | None = None
    tools: list[AnthropicTool] | None = None
    tool_choice: ToolChoice | None = None
    metadata: Metadata | None = None
    thinking: ThinkingConfig | None = None
    # Automatic prompt caching (Anthropic marks the last cacheable block).
    cache_control: dict[str, Any] | None = None
    # tokenrelay's own: survive a dropped connection (see docs/protocol.md).
    resumable: StrictBool | None = None

    def upstream_body(self) -> dict[str, Any]:
        """The OpenAI chat-completions shaped body every upstream takes (see the module docstring)."""
        body: dict[str, Any] = {"messages": openai_messages(self), "max_tokens": self.max_tokens}
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.top_p is not None:
            body["top_p"] = self.top_p
        if self.stop_sequences:
            body["stop"] = self.stop_sequences
        if self.tools:
            body["tools"] = [_openai_tool(tool) for tool in self.tools]
        if self.tool_choice is not None:
            body.update(_openai_tool_choice(self.tool_choice))
        if self.metadata is not None and self.metadata.user_id is not None:
            body["user"] = self.metadata.user_id
        anthropic_only: dict[str, Any] = {}
        if self.thinking is not None:
            anthropic_only["thinking"] = self.thinking.model_dump(exclude_none=True)
        if self.top_k is not None:
            anthropic_only["top_k"] = self.top_k
        if self.metadata is not None:
            anthropic_only["metadata"] = self.metadata.model_dump(exclude_none=True)
        if self.cache_control is not None:
            anthropic_only["cache_control"] = self.cache_control
        if isinstance(self.system, list) and any(block.cache_control is not None for block in self.system):
            # A system prompt marked for caching: the OpenAI shape has no place for the marks.
            anthropic_only["system"] = [block.model_dump(exclude_none=True) for block in self.system]
        if self.tools and any(tool.cache_control is not None for tool in self.tools):
            anthropic_only["tools"] = [tool.model_dump(exclude_none=True) for tool in self.tools]
        # Messages that carry blocks need the key too: the OpenAI upstream strips them only then.
        if anthropic_only or any(ANTHROPIC_FIELDS in message for message in body["messages"]):
            body[ANTHROPIC_FIELDS] = anthropic_only
        return body


# -- translation -----------------------------------------------------------------------------


def openai_messages(request: MessagesRequest) -> list[dict[str, Any]]:
    """The conversation as OpenAI chat messages: a string stays a string, blocks become parts."""
    out: list[dict[str, Any]] = []
    system = request.system
    if isinstance(system, str):
        if system:
            out.append({"role": "system", "content": system})
    elif system:
        out.append({"role": "system", "content": [_text_part(block.text) for block in system]})
    for position, message in enumerate(request.messages):
        content = message.content
        if isinstance(content, str):
            out.append({"role": message.role, "content": content})
        elif message.role == "user":
            _user_turn(content, out, position)
        elif message.role == "assistant":
            _assistant_turn(content, out, position)
        else:
            out.append({"role": "system", "content": _system_parts(content, position)})
    return out


def _system_parts(blocks: list[Any], position: int) -> list[dict[str, Any]]:
    for index, block in enumerate(blocks):
        if not isinstance(block, TextBlock):
            raise _misplaced(block.type, "system", position, index)
    return [_text_part(block.text) for block in blocks]


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def _image_part(block: ImageBlock) -> dict[str, Any]:
    source = block.source
    url = source.url if isinstance(source, UrlSource) else f"data:{source.media_type};base64,{source.data}"
    return {"type": "image_url", "image_url": {"url": url}}


def _user_turn(blocks: list[Any], out: list[dict[str, Any]], position: int) -> None:
    """Tool results first, as ``tool`` messages (OpenAI wants them right after the calls), then
    the rest as one user message; images in tool results join it (tool messages hold text).

    With a cache mark or an error flag in the turn, each message carries its own blocks: the
    tool results whole (images in place), the user message the rest (maybe none)."""
    parts: list[dict[str, Any]] = []
    carry = any(
        block.marked if isinstance(block, ToolResultBlock) else getattr(block, "cache_control", None)
        for block in blocks
    )
    for index, block in enumerate(blocks):
        if isinstance(block, TextBlock):
            parts.append(_text_part(block.text))
        elif isinstance(block, ImageBlock):
            parts.append(_image_part(block))
        elif isinstance(block, ToolResultBlock):
            content = _tool_result(block, parts)
            tool: dict[str, Any] = {"role": "tool", "tool_call_id": block.tool_use_id, "content": content}
            if carry:
                tool[ANTHROPIC_FIELDS] = _carried([block])
            out.append(tool)
        else:
            raise _misplaced(block.type, "user", position, index)
    if parts:
        message: dict[str, Any] = {"role": "user", "content": parts}
        if carry:
            message[ANTHROPIC_FIELDS] = _carried([b for b in blocks if not isinstance(b, ToolResultBlock)])
        out.append(message)


def _carried(blocks: list[Any]) -> dict[str, Any]:
    """The blocks as an Anthropic deployment is to be sent them (see the module docstring)."""
    return {"content": [block.model_dump(exclude_none=True) for block in blocks]}


def _tool_result(block: ToolResultBlock, parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    content = block.content
    if content is None or isinstance(content, str):
        return content or ""
    texts: list[dict[str, Any]] = []
    for part in content:
        if isinstance(part, TextBlock):
            texts.append(_text_part(part.text))
        else:
            parts.append(_image_part(part))
    return texts or ""


def _assistant_turn(blocks: list[Any], out: list[dict[str, Any]], position: int) -> None:
    """Text joined (it was generated as one), tool uses as ``tool_calls``, thinking dropped; the
    blocks carried when that loses signed thinking, cache marks or text after a tool use."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    kept: list[Any] = []  # what an Anthropic deployment gets back: all but unsigned thinking
    carry = False
    for index, block in enumerate(blocks):
        if isinstance(block, TextBlock):
            texts.append(block.text)
            carry = carry or bool(calls) or block.cache_control is not None
        elif isinstance(block, ToolUseBlock):
            arguments = orjson.dumps(block.input).decode()
            calls.append(
                {"id": block.id, "type": "function", "function": {"name": block.name, "arguments": arguments}}
            )
            carry = carry or block.cache_control is not None
        elif isinstance(block, ThinkingBlock | RedactedThinkingBlock):
            if isinstance(block, ThinkingBlock) and not block.signature:
                continue  # another provider's reasoning: Anthropic would refuse the empty signature
            carry = True
        else:
            raise _misplaced(block.type, "assistant", position, index)
        kept.append(block)
    if not texts and not calls:
        return  # only thinking: nothing any upstream can take
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        message["tool_calls"] = calls
    if carry:
        message[ANTHROPIC_FIELDS] = _carried(kept)
    out.append(message)


def _misplaced(kind: str, role: str, position: int, index: int) -> InvalidRequest:
    param = f"messages.{position}.content.{index}"
    return InvalidRequest(f"{param}: a {kind} block cannot be in a {role} message", param=param)


def _openai_tool(tool: AnthropicTool) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name, "parameters": tool.input_schema}
    if tool.description is not None:
        function["description"] = tool.description
    return {"type": "function", "function": function}


def _openai_tool_choice(choice: ToolChoice) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if choice.type == "tool":
        fields["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    else:
        fields["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[choice.type]
    if choice.disable_parallel_tool_use:
        fields["parallel_tool_calls"] = False
    return fields


# -- the route -------------------------------------------------------------------------------

Admit = Callable[[Request], Awaitable[Caller | None]]
StreamOf = Callable[[Request, Caller | None, str | None, dict[str, Any], Encoder, bool | None], Response]
Endpoint = Callable[[Request], Awaitable[Response]]


async def parse_messages_request(request: Request) -> MessagesRequest:
    """The validated body, or ``InvalidRequest`` naming the first bad field."""
    try:
        return MessagesRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        message, param = describe_validation_errors(list(exc.errors()))
        raise InvalidRequest(message, param=param) from None


def messages_endpoint(*, admit: Admit, stream: StreamOf) -> Endpoint:
    """``POST /v1/messages`` built on the routes' own steps (``admit`` before reading the body)."""

    async def messages(request: Request) -> Response:
        """Anthropic's Messages API, streamed (``stream: true``) or one Message; any model."""
        caller = await admit(request)
        payload = await parse_messages_request(request)
        encoder: Encoder
        if payload.stream:
            encoder = AnthropicEvents(public_model=payload.model)
        else:
            encoder = AnthropicMessage(public_model=payload.model)
        return stream(request, caller, payload.model, payload.upstream_body(), encoder, payload.resumable)

    return messages
