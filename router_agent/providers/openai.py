"""OpenAI Chat Completions (``{base_url}/chat/completions``): OpenAI itself, and the local
servers that speak it (vLLM, llama.cpp server, LM Studio, Ollama's ``/v1``) by base URL.

The canonical request is the OpenAI shape, so messages, tools, ``tool_choice`` and
``response_format`` are encoded as they are, with no copy. ``max_tokens`` is sent as
``max_tokens`` (what every compatible server reads; OpenAI still accepts it outside its
reasoning models). Streams ask for ``stream_options.include_usage`` so that the usage comes
in the last chunk; a server that ignores it gets its usage estimated.

Upstream text is redacted before it becomes an error message (``errors.py``); redirects are
not followed (``router_agent/http.py``): a 3xx fails the call and the probe.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec

from router_agent.core.model import Deployment
from router_agent.http import HttpClient
from router_agent.providers.base import (
    Completion,
    ProviderError,
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
from router_agent.providers.errors import stream_error, unreachable_detail
from signals import (
    ChatMessage,
    FunctionCall,
    LlmRequest,
    ResponseFormat,
    Tool,
    ToolCall,
    ToolChoice,
    Usage,
)

FINISH_REASONS = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}
"""OpenAI's finish reasons, canonical; anything else is ``stop``."""


class _StreamOptions(msgspec.Struct):
    include_usage: bool = True


class _ChatRequest(msgspec.Struct, omit_defaults=True):
    model: str
    messages: list[ChatMessage]
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    response_format: ResponseFormat | None = None
    stream: bool = False
    stream_options: _StreamOptions | None = None


def build_request(request: LlmRequest, model_id: str, stream: bool = False) -> bytes:
    p = request.params
    return _encoder.encode(_ChatRequest(
        model=model_id,
        messages=request.messages,
        temperature=p.temperature,
        top_p=p.top_p,
        max_tokens=p.max_tokens,
        stop=p.stop,
        seed=p.seed,
        presence_penalty=p.presence_penalty,
        frequency_penalty=p.frequency_penalty,
        tools=request.tools or None,
        tool_choice=request.tool_choice,
        response_format=request.response_format,
        stream=stream,
        stream_options=_StreamOptions() if stream else None,
    ))


# --------------------------------------------------------------------------- answers


class _Function(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class _ToolCall(msgspec.Struct):
    index: int = 0
    id: str | None = None
    function: _Function = msgspec.field(default_factory=_Function)


class _Message(msgspec.Struct):
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[_ToolCall] | None = None


class _Choice(msgspec.Struct):
    message: _Message = msgspec.field(default_factory=_Message)
    delta: _Message = msgspec.field(default_factory=_Message)
    finish_reason: str | None = None


class _PromptDetails(msgspec.Struct):
    cached_tokens: int | None = 0


class _CompletionDetails(msgspec.Struct):
    reasoning_tokens: int | None = 0


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_tokens_details: _PromptDetails | None = None
    completion_tokens_details: _CompletionDetails | None = None


class _ChatResponse(msgspec.Struct):
    choices: list[_Choice] = []
    usage: _Usage | None = None
    error: Any = None


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(_ChatResponse)


def _usage(u: _Usage) -> Usage:
    return Usage(
        input_tokens=u.prompt_tokens,
        output_tokens=u.completion_tokens,
        cached_input_tokens=(u.prompt_tokens_details.cached_tokens or 0) if u.prompt_tokens_details else 0,
        reasoning_tokens=(u.completion_tokens_details.reasoning_tokens or 0) if u.completion_tokens_details else 0,
    )


def parse_response(body: bytes, api_key: str | None = None) -> Completion:
    try:
        parsed = _decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise unreadable_error(exc, api_key) from None
    if not parsed.choices:
        raise ProviderError("server_error", "provider answered with no choices", True)
    choice = parsed.choices[0]
    message = choice.message
    calls = [
        ToolCall(id=c.id or f"call_{i}", function=FunctionCall(name=c.function.name or "",
                                                                arguments=c.function.arguments or "{}"))
        for i, c in enumerate(message.tool_calls or ())
    ]
    finish = FINISH_REASONS.get(choice.finish_reason or "", "stop")
    content = message.content or ""
    if message.refusal and not content:
        content, finish = message.refusal, "content_filter"
    usage = _usage(parsed.usage) if parsed.usage is not None else Usage()
    return Completion(
        content=content, finish_reason=finish, input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
        tool_calls=calls, cached_input_tokens=usage.cached_input_tokens, reasoning_tokens=usage.reasoning_tokens,
    )


class StreamParser:
    """One chunk's data at a time -> canonical events; ``end()`` once ``[DONE]`` or EOF."""

    def __init__(self, request: LlmRequest, api_key: str | None = None):
        self.request = request
        self.api_key = api_key
        self.finish: str | None = None
        self.usage: Usage | None = None
        self.chars = 0
        self.done = False

    def feed(self, data: bytes) -> list[StreamEvent]:
        if data == b"[DONE]":
            self.done = True
            return []
        try:
            chunk = _decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise unreadable_error(exc, self.api_key) from None
        if chunk.error is not None:
            raise stream_error(data, self.api_key)
        if chunk.usage is not None:
            self.usage = _usage(chunk.usage)
        events: list[StreamEvent] = []
        for choice in chunk.choices[:1]:
            delta = choice.delta
            if delta.content:
                self.chars += len(delta.content)
                events.append(TextDelta(delta.content))
            elif delta.refusal:
                self.chars += len(delta.refusal)
                events.append(TextDelta(delta.refusal))
                self.finish = "content_filter"
            for call in delta.tool_calls or ():
                arguments = call.function.arguments or ""
                self.chars += len(arguments)
                events.append(ToolCallDelta(call.index, call.id, call.function.name, arguments))
            if choice.finish_reason:
                self.finish = self.finish or FINISH_REASONS.get(choice.finish_reason, "stop")
        return events

    def end(self) -> StreamEnd:
        if self.finish is None:
            raise cut_short()
        return StreamEnd(self.finish, self.usage or estimated_usage(self.request, self.chars))


# --------------------------------------------------------------------------- the adapter

_BASE_HEADERS = {"content-type": "application/json", "accept": "application/json"}
_STREAM_HEADERS = {"content-type": "application/json", "accept": "text/event-stream"}


def _headers(base: dict[str, str], api_key: str | None) -> dict[str, str]:
    return {**base, "authorization": f"Bearer {api_key}"} if api_key else base


class OpenAIAdapter:
    def __init__(self, http: HttpClient):
        self._http = http

    async def complete(self, request: LlmRequest, deployment: Deployment, api_key: str | None) -> Completion:
        body = await post_json(self._http, f"{deployment.base_url}/chat/completions",
                               build_request(request, deployment.model_id), _headers(_BASE_HEADERS, api_key), api_key)
        return parse_response(body, api_key)

    def stream(self, request: LlmRequest, deployment: Deployment, api_key: str | None) -> AsyncIterator[StreamEvent]:
        parser = StreamParser(request, api_key)
        return stream_events(parser, self._http, f"{deployment.base_url}/chat/completions",
                             build_request(request, deployment.model_id, stream=True),
                             _headers(_STREAM_HEADERS, api_key), api_key, sse=True)

    async def probe(self, base_url: str, api_key: str | None) -> tuple[bool, str, bool]:
        return await probe_get(self._http, base_url, "/models", _headers({}, api_key))


async def probe_get(http: HttpClient, base_url: str, path: str, headers: dict[str, str]) -> tuple[bool, str, bool]:
    """(reachable, detail, emulated): GET ``base_url + path``; a redirect is a failure."""
    url = f"{base_url}{path}"
    try:
        result = await http.get(url, headers)
    except OSError as exc:
        return False, f"cannot reach {base_url}: {unreachable_detail(exc)}", False
    emulated = result.headers.get("x-emulated", "").lower() == "true"
    if result.status == 200:
        return True, "ok", emulated
    if 300 <= result.status < 400:
        return False, (f"{url} answered with a redirect (HTTP {result.status}); "
                       "redirects are not followed: register the final URL"), emulated
    return False, f"{url} answered HTTP {result.status}", emulated
