"""Anthropic Messages (``{base_url}/messages``, base URL like ``https://api.anthropic.com/v1``).

Translation, request side:
- ``system`` and ``developer`` messages are lifted out into ``system`` (text only).
- ``max_tokens`` is always sent (the API requires it): the caller's, else
  ``DEFAULT_MAX_TOKENS``.
- Content parts become blocks: text, and images as ``base64`` sources (data URLs) or ``url``
  sources (``https://``). Assistant ``tool_calls`` become ``tool_use`` blocks, ``tool``
  messages ``tool_result`` blocks in a user turn; consecutive turns of one role are merged.
- ``tool_choice``: auto -> auto, required -> any, none -> none, a function -> tool.
- ``temperature`` (capped at 1, Anthropic's range) and ``top_p`` are sent only when the
  caller sets them: API version 2023-06-01 takes them, but Claude models after Opus 4.6
  refuse them ("deprecated for this model", classified as fallback-worthy) and SDK 2.x no
  longer has them. ``seed`` and the penalties have no Anthropic equivalent and are not sent.
- ``response_format``: ``json_schema`` becomes a tool whose input schema is the schema, forced
  when the caller offers no tools of its own; its input comes back as the message content
  (Anthropic's documented way to get JSON that follows a schema). ``json_object`` adds an
  instruction to the system prompt.

Answer side: text blocks joined, ``tool_use`` blocks as tool calls, stop reasons mapped
(``STOP_REASONS``), usage with cache reads and writes (canonical ``input_tokens`` counts
both, Anthropic's own does not).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec

from router_agent.core.model import Deployment
from router_agent.http import HttpClient
from router_agent.providers.base import (
    Completion,
    StreamEnd,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    cut_short,
    estimated_usage,
    post_json,
    stream_events,
    unreadable_error,
)
from router_agent.providers.errors import stream_error
from router_agent.providers.openai import probe_get
from router_agent.providers.translate import (
    JSON_OBJECT_INSTRUCTION,
    json_arguments,
    split_data_url,
    text_of,
    untranslatable,
)
from signals import (
    FunctionCall,
    ImagePart,
    JsonObjectFormat,
    JsonSchemaFormat,
    LlmRequest,
    ToolCall,
    Usage,
)

API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096
"""Sent when the caller sets no ``max_tokens``: the largest output every Claude 3 model
allows (newer models allow more; ask for it with ``params.max_tokens``)."""

STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def _block(part: Any) -> dict[str, Any]:
    if type(part) is ImagePart:
        url = part.image_url.url
        data = split_data_url(url)
        if data is not None:
            return {"type": "image", "source": {"type": "base64", "media_type": data[0], "data": data[1]}}
        if not url.startswith(("https://", "http://")):
            raise untranslatable("an image URL must be https:// or a data URL")
        return {"type": "image", "source": {"type": "url", "url": url}}
    return {"type": "text", "text": part.text}


def build_body(request: LlmRequest, model_id: str, stream: bool = False) -> dict[str, Any]:
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for message in request.messages:
        role = message.role
        if role in ("system", "developer"):
            system.append(text_of(message.content, "a system message"))
            continue
        content = message.content
        if role == "tool":
            blocks: list[dict[str, Any]] = [{
                "type": "tool_result", "tool_use_id": message.tool_call_id,
                "content": content if type(content) is str else [_block(p) for p in content or ()],
            }]
            role = "user"
        elif type(content) is str:
            blocks = [{"type": "text", "text": content}] if content or role == "user" else []
        else:
            blocks = [_block(p) for p in content or ()]
        for call in message.tool_calls or ():
            blocks.append({"type": "tool_use", "id": call.id, "name": call.function.name,
                           "input": json_arguments(call.function.arguments)})
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    if not turns:
        raise untranslatable("Anthropic needs at least one user or assistant message besides the system prompt")
    p = request.params
    body: dict[str, Any] = {"model": model_id, "max_tokens": p.max_tokens or DEFAULT_MAX_TOKENS, "messages": turns}
    tools = [
        {"name": t.function.name, "description": t.function.description or "",
         "input_schema": t.function.parameters or {"type": "object", "properties": {}}}
        for t in request.tools
    ]
    choice = request.tool_choice
    fmt = request.response_format
    if type(fmt) is JsonSchemaFormat:
        spec = fmt.json_schema
        tools.append({"name": spec.name, "description": spec.description or "Answer with this tool's input.",
                      "input_schema": spec.schema})
        if not request.tools:
            choice = None
            body["tool_choice"] = {"type": "tool", "name": spec.name}
    elif type(fmt) is JsonObjectFormat:
        system.append(JSON_OBJECT_INSTRUCTION)
    if system:
        body["system"] = "\n\n".join(system)
    if tools:
        body["tools"] = tools
    if choice is not None:
        body["tool_choice"] = (
            {"type": "tool", "name": choice.function.name} if not isinstance(choice, str)
            else {"type": {"auto": "auto", "required": "any", "none": "none"}[choice]}
        )
    if p.temperature is not None:
        body["temperature"] = min(p.temperature, 1.0)
    if p.top_p is not None:
        body["top_p"] = p.top_p
    if p.stop:
        body["stop_sequences"] = p.stop
    if stream:
        body["stream"] = True
    return body


def build_request(request: LlmRequest, model_id: str, stream: bool = False) -> bytes:
    return msgspec.json.encode(build_body(request, model_id, stream))


def schema_tool(request: LlmRequest) -> str | None:
    """The name of the tool standing in for a ``json_schema`` response format, if any."""
    fmt = request.response_format
    return fmt.json_schema.name if type(fmt) is JsonSchemaFormat else None


# --------------------------------------------------------------------------- answers


class _Block(msgspec.Struct):
    type: str
    text: str = ""
    id: str = ""
    name: str = ""
    input: Any = None


class _Usage(msgspec.Struct):
    input_tokens: int | None = 0
    output_tokens: int | None = 0
    cache_creation_input_tokens: int | None = 0
    cache_read_input_tokens: int | None = 0


class _Message(msgspec.Struct):
    content: list[_Block] = []
    stop_reason: str | None = None
    usage: _Usage = msgspec.field(default_factory=_Usage)


_decoder = msgspec.json.Decoder(_Message)


def _usage(u: _Usage) -> Usage:
    created, read = u.cache_creation_input_tokens or 0, u.cache_read_input_tokens or 0
    return Usage(
        input_tokens=(u.input_tokens or 0) + created + read, output_tokens=u.output_tokens or 0,
        cached_input_tokens=read, cache_creation_input_tokens=created,
    )


def parse_response(body: bytes, request: LlmRequest, api_key: str | None = None) -> Completion:
    try:
        message = _decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise unreadable_error(exc, api_key) from None
    schema = schema_tool(request)
    texts: list[str] = []
    calls: list[ToolCall] = []
    answered_by_schema = False
    for block in message.content:
        if block.type == "text":
            texts.append(block.text)
        elif block.type == "tool_use":
            arguments = msgspec.json.encode(block.input if block.input is not None else {}).decode()
            if block.name == schema:
                texts.append(arguments)
                answered_by_schema = True
            else:
                calls.append(ToolCall(id=block.id, function=FunctionCall(name=block.name, arguments=arguments)))
    finish = STOP_REASONS.get(message.stop_reason or "", "stop")
    if finish == "tool_calls" and not calls:
        finish = "stop"
    usage = _usage(message.usage)
    return Completion(
        content="".join(texts) if not answered_by_schema else texts[-1], finish_reason=finish,
        input_tokens=usage.input_tokens, output_tokens=usage.output_tokens, tool_calls=calls,
        cached_input_tokens=usage.cached_input_tokens, cache_creation_input_tokens=usage.cache_creation_input_tokens,
    )


class _Delta(msgspec.Struct):
    type: str = ""
    text: str = ""
    partial_json: str = ""
    stop_reason: str | None = None


class _Event(msgspec.Struct):
    type: str
    index: int = 0
    message: _Message | None = None
    content_block: _Block | None = None
    delta: _Delta | None = None
    usage: _Usage | None = None


_event_decoder = msgspec.json.Decoder(_Event)


class StreamParser:
    """Anthropic's stream events -> canonical events (``message_start``, ``content_block_*``,
    ``message_delta``, ``message_stop``, ``ping``, ``error``)."""

    def __init__(self, request: LlmRequest, api_key: str | None = None):
        self.request = request
        self.api_key = api_key
        self.schema = schema_tool(request)
        self.usage = _Usage()
        self.saw_usage = False
        self.stop_reason: str | None = None
        self.done = False
        self.chars = 0
        self._calls: dict[int, int] = {}  # Anthropic block index -> canonical tool call index
        self._schema_blocks: set[int] = set()

    def feed(self, data: bytes) -> list[StreamEvent]:
        try:
            event = _event_decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise unreadable_error(exc, self.api_key) from None
        kind = event.type
        if kind == "content_block_delta" and event.delta is not None:
            delta = event.delta
            if delta.type == "text_delta" and delta.text:
                self.chars += len(delta.text)
                return [TextDelta(delta.text)]
            if delta.type == "input_json_delta" and delta.partial_json:
                self.chars += len(delta.partial_json)
                if event.index in self._schema_blocks:
                    return [TextDelta(delta.partial_json)]
                if event.index in self._calls:
                    return [ToolCallDelta(self._calls[event.index], arguments=delta.partial_json)]
            return []  # thinking and signature deltas are not part of the answer
        if kind == "content_block_start" and event.content_block is not None:
            block = event.content_block
            if block.type == "tool_use":
                if block.name == self.schema:
                    self._schema_blocks.add(event.index)
                    return []
                self._calls[event.index] = len(self._calls)
                return [ToolCallDelta(self._calls[event.index], id=block.id, name=block.name)]
            if block.type == "text" and block.text:
                return [TextDelta(block.text)]
            return []
        if kind == "message_start" and event.message is not None:
            self._merge(event.message.usage)
        elif kind == "message_delta":
            if event.delta is not None and event.delta.stop_reason:
                self.stop_reason = event.delta.stop_reason
            if event.usage is not None:
                self._merge(event.usage)
        elif kind == "message_stop":
            self.done = True
        elif kind == "error":
            raise stream_error(data, self.api_key)
        return []

    def _merge(self, usage: _Usage) -> None:
        """``message_start`` carries the input side, ``message_delta`` the (cumulative) output."""
        self.saw_usage = True
        for name in _Usage.__struct_fields__:
            value = getattr(usage, name)
            if value:
                setattr(self.usage, name, value)

    def end(self) -> StreamEnd:
        if not self.done and self.stop_reason is None:
            raise cut_short()
        finish = STOP_REASONS.get(self.stop_reason or "", "stop")
        if finish == "tool_calls" and not self._calls:
            finish = "stop"
        usage = _usage(self.usage) if self.saw_usage else estimated_usage(self.request, self.chars)
        return StreamEnd(finish, usage)


# --------------------------------------------------------------------------- the adapter


def _headers(api_key: str | None, accept: str) -> dict[str, str]:
    headers = {"content-type": "application/json", "accept": accept, "anthropic-version": API_VERSION}
    if api_key:
        headers["x-api-key"] = api_key
    return headers


class AnthropicAdapter:
    def __init__(self, http: HttpClient):
        self._http = http

    async def complete(self, request: LlmRequest, deployment: Deployment, api_key: str | None) -> Completion:
        body = await post_json(self._http, f"{deployment.base_url}/messages", build_request(request, deployment.model_id),
                               _headers(api_key, "application/json"), api_key)
        return parse_response(body, request, api_key)

    def stream(self, request: LlmRequest, deployment: Deployment, api_key: str | None) -> AsyncIterator[StreamEvent]:
        parser = StreamParser(request, api_key)
        return stream_events(parser, self._http, f"{deployment.base_url}/messages",
                             build_request(request, deployment.model_id, stream=True),
                             _headers(api_key, "text/event-stream"), api_key, sse=True)

    async def probe(self, base_url: str, api_key: str | None) -> tuple[bool, str, bool]:
        headers = {"anthropic-version": API_VERSION, **({"x-api-key": api_key} if api_key else {})}
        return await probe_get(self._http, base_url, "/models", headers)
