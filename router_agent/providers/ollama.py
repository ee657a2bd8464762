"""Ollama's native chat API (``{base_url}/api/chat``; base URL like ``http://localhost:11434``),
probed with ``/api/tags``. Streams are NDJSON: one JSON object a line, the last with
``done: true``, ``done_reason`` and the counts (``prompt_eval_count``, ``eval_count``).

Translation: messages keep their roles; content parts become the text plus ``images``
(base64 only: Ollama takes no image URLs); tool calls carry their arguments as an object and
tool results name their function (``tool_name``). Sampling goes in ``options``
(``num_predict`` for max_tokens); ``json_object`` -> ``format: "json"``, ``json_schema`` ->
``format: <schema>``. Ollama has no ``tool_choice``: ``none`` sends no tools, the other
choices are left to the model. Ollama's tool calls have no ids; they get new ones.
"""

from __future__ import annotations

import uuid
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
    json_arguments,
    split_data_url,
    text_of,
    tool_call_names,
    untranslatable,
)
from signals import (
    FunctionCall,
    ImagePart,
    JsonObjectFormat,
    JsonSchemaFormat,
    LlmRequest,
    TextPart,
    ToolCall,
    Usage,
)

DONE_REASONS = {"stop": "stop", "length": "length"}
"""Ollama's ``done_reason``, canonical; anything else (``load``, ``unload``) is ``stop``."""


def _message(message: Any, names: dict[str, str]) -> dict[str, Any]:
    content = message.content
    out: dict[str, Any] = {"role": message.role if message.role != "developer" else "system"}
    if type(content) is str or content is None:
        out["content"] = content or ""
    else:
        images = []
        for part in content:
            if type(part) is ImagePart:
                data = split_data_url(part.image_url.url)
                if data is None:
                    raise untranslatable("Ollama takes images inline only: send a data URL")
                images.append(data[1])
        out["content"] = "\n".join(p.text for p in content if type(p) is TextPart)
        if images:
            out["images"] = images
    if message.role == "tool":
        out["content"] = text_of(content, "a tool result")
        name = names.get(message.tool_call_id or "")
        if name is not None:
            out["tool_name"] = name
    if message.tool_calls:
        out["tool_calls"] = [
            {"function": {"name": c.function.name, "arguments": json_arguments(c.function.arguments)}}
            for c in message.tool_calls
        ]
    return out


def build_body(request: LlmRequest, model_id: str, stream: bool = False) -> dict[str, Any]:
    names = tool_call_names(request.messages) if any(m.role == "tool" for m in request.messages) else {}
    body: dict[str, Any] = {
        "model": model_id, "messages": [_message(m, names) for m in request.messages], "stream": stream,
    }
    p = request.params
    options = {
        key: value
        for key, value in (("temperature", p.temperature), ("top_p", p.top_p), ("num_predict", p.max_tokens),
                           ("stop", p.stop), ("seed", p.seed), ("presence_penalty", p.presence_penalty),
                           ("frequency_penalty", p.frequency_penalty))
        if value is not None
    }
    if options:
        body["options"] = options
    if request.tools and request.tool_choice != "none":
        body["tools"] = [msgspec.to_builtins(t) for t in request.tools]
    fmt = request.response_format
    if type(fmt) is JsonObjectFormat:
        body["format"] = "json"
    elif type(fmt) is JsonSchemaFormat:
        body["format"] = fmt.json_schema.schema
    return body


def build_request(request: LlmRequest, model_id: str, stream: bool = False) -> bytes:
    return msgspec.json.encode(build_body(request, model_id, stream))


# --------------------------------------------------------------------------- answers


class _Function(msgspec.Struct):
    name: str = ""
    arguments: Any = None


class _ToolCall(msgspec.Struct):
    function: _Function = msgspec.field(default_factory=_Function)
    id: str | None = None


class _Message(msgspec.Struct):
    content: str = ""
    tool_calls: list[_ToolCall] | None = None


class _Chunk(msgspec.Struct):
    message: _Message = msgspec.field(default_factory=_Message)
    done: bool = False
    done_reason: str | None = None
    prompt_eval_count: int | None = None
    eval_count: int | None = None
    error: Any = None


_decoder = msgspec.json.Decoder(_Chunk)


def _call(call: _ToolCall) -> ToolCall:
    arguments = msgspec.json.encode(call.function.arguments if call.function.arguments is not None else {}).decode()
    return ToolCall(id=call.id or f"call_{uuid.uuid4().hex[:24]}",
                    function=FunctionCall(name=call.function.name, arguments=arguments))


def _finish(reason: str | None, has_calls: bool) -> str:
    finish = DONE_REASONS.get(reason or "", "stop")
    return "tool_calls" if finish == "stop" and has_calls else finish


def _usage(chunk: _Chunk) -> Usage | None:
    if chunk.prompt_eval_count is None and chunk.eval_count is None:
        return None
    return Usage(input_tokens=chunk.prompt_eval_count or 0, output_tokens=chunk.eval_count or 0)


def parse_response(body: bytes, request: LlmRequest, api_key: str | None = None) -> Completion:
    try:
        chunk = _decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise unreadable_error(exc, api_key) from None
    if chunk.error is not None:
        raise stream_error(body, api_key)
    calls = [_call(c) for c in chunk.message.tool_calls or ()]
    content = chunk.message.content
    usage = _usage(chunk) or estimated_usage(request, len(content))
    return Completion(
        content=content, finish_reason=_finish(chunk.done_reason, bool(calls)),
        input_tokens=usage.input_tokens, output_tokens=usage.output_tokens, tool_calls=calls,
        usage_estimated=usage.estimated,
    )


class StreamParser:
    """One NDJSON line at a time -> canonical events; ``done`` after the ``done: true`` line."""

    def __init__(self, request: LlmRequest, api_key: str | None = None):
        self.request = request
        self.api_key = api_key
        self.finish: str | None = None
        self.usage: Usage | None = None
        self.calls = 0
        self.chars = 0
        self.done = False

    def feed(self, line: bytes) -> list[StreamEvent]:
        if not line.strip():
            return []
        try:
            chunk = _decoder.decode(line)
        except msgspec.DecodeError as exc:
            raise unreadable_error(exc, self.api_key) from None
        if chunk.error is not None:
            raise stream_error(line, self.api_key)
        events: list[StreamEvent] = []
        if chunk.message.content:
            self.chars += len(chunk.message.content)
            events.append(TextDelta(chunk.message.content))
        for raw in chunk.message.tool_calls or ():
            call = _call(raw)
            self.chars += len(call.function.arguments)
            events.append(ToolCallDelta(self.calls, call.id, call.function.name, call.function.arguments))
            self.calls += 1
        if chunk.done:
            self.done = True
            self.finish = _finish(chunk.done_reason, self.calls > 0)
            self.usage = _usage(chunk)
        return events

    def end(self) -> StreamEnd:
        if self.finish is None:
            raise cut_short()
        return StreamEnd(self.finish, self.usage or estimated_usage(self.request, self.chars))


# --------------------------------------------------------------------------- the adapter


def _headers(api_key: str | None) -> dict[str, str]:
    headers = {"content-type": "application/json"}
    if api_key:  # a proxy in front of Ollama may want one
        headers["authorization"] = f"Bearer {api_key}"
    return headers


class OllamaAdapter:
    def __init__(self, http: HttpClient):
        self._http = http

    async def complete(self, request: LlmRequest, deployment: Deployment, api_key: str | None) -> Completion:
        body = await post_json(self._http, f"{deployment.base_url}/api/chat",
                               build_request(request, deployment.model_id), _headers(api_key), api_key)
        return parse_response(body, request, api_key)

    def stream(self, request: LlmRequest, deployment: Deployment, api_key: str | None) -> AsyncIterator[StreamEvent]:
        parser = StreamParser(request, api_key)
        return stream_events(parser, self._http, f"{deployment.base_url}/api/chat",
                             build_request(request, deployment.model_id, stream=True), _headers(api_key), api_key,
                             sse=False)

    async def probe(self, base_url: str, api_key: str | None) -> tuple[bool, str, bool]:
        return await probe_get(self._http, base_url, "/api/tags", _headers(api_key))
