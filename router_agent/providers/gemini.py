"""Google Gemini (``{base_url}/models/{model}:generateContent`` and
``:streamGenerateContent?alt=sse``, base URL like ``https://generativelanguage.googleapis.com/v1beta``).

The key travels in the ``x-goog-api-key`` header, never in the URL (URLs end up in logs).

Translation, request side:
- roles: ``assistant`` -> ``model``, ``user`` and ``tool`` -> ``user``; ``system`` and
  ``developer`` messages -> ``systemInstruction``; consecutive turns of one role merged.
- parts: text; images as ``inlineData`` (data URLs) or ``fileData`` (other URLs);
  assistant tool calls as ``functionCall`` (arguments as an object), tool results as
  ``functionResponse`` named after the call they answer (a JSON object result is sent as
  it is, anything else as ``{"result": ...}``). Call ids are not sent: Gemini matches a
  response to its call by name and its ids are optional, so an id another vendor made up
  (or that we made up for a call Gemini gave none) is kept out of its request.
- ``generationConfig``: temperature, topP, maxOutputTokens, stopSequences, seed, penalties;
  ``json_object`` -> ``responseMimeType: application/json``; ``json_schema`` -> that and
  ``responseJsonSchema``. Tools -> ``functionDeclarations`` with ``parametersJsonSchema``
  (both take standard JSON Schema, which the canonical request carries, where the older
  ``parameters`` / ``responseSchema`` take an OpenAPI subset).
- ``tool_choice`` -> ``toolConfig.functionCallingConfig`` (AUTO, ANY, NONE, ANY limited to
  one function).

Answer side: text parts joined (thought parts left out), ``functionCall`` parts as tool
calls (Gemini's id when it gives one, else a new one), ``FINISH_REASONS`` mapped, and
``usageMetadata``: output counts candidates and thoughts tokens, reasoning the thoughts.
A prompt Gemini blocks outright (no candidates, ``promptFeedback.blockReason``) fails as
``content_filtered``.
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
from router_agent.providers.errors import stream_error
from router_agent.providers.openai import probe_get
from router_agent.providers.translate import (
    guess_media_type,
    json_arguments,
    split_data_url,
    text_of,
    tool_call_names,
    tool_result,
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

FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
    "MODEL_ARMOR": "content_filter",
    "MALFORMED_FUNCTION_CALL": "error",
    "UNEXPECTED_TOOL_CALL": "error",
    "TOO_MANY_TOOL_CALLS": "error",
    "MALFORMED_RESPONSE": "error",
}
"""Gemini's finish reasons, canonical; anything else (``OTHER``, ``LANGUAGE``, unspecified) is
``stop``, and ``stop`` with function calls is ``tool_calls``."""

_MODES = {"auto": "AUTO", "required": "ANY", "none": "NONE"}


def _part(part: Any) -> dict[str, Any]:
    if type(part) is ImagePart:
        url = part.image_url.url
        data = split_data_url(url)
        if data is not None:
            return {"inlineData": {"mimeType": data[0], "data": data[1]}}
        return {"fileData": {"mimeType": guess_media_type(url), "fileUri": url}}
    return {"text": part.text}


def build_body(request: LlmRequest) -> dict[str, Any]:
    system: list[str] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] | None = None
    for message in request.messages:
        role = message.role
        content = message.content
        if role in ("system", "developer"):
            system.append(text_of(content, "a system message"))
            continue
        if role == "tool":
            if names is None:
                names = tool_call_names(request.messages)
            name = names.get(message.tool_call_id or "")
            if name is None:
                raise untranslatable(f"tool message {message.tool_call_id!r} answers no tool call in the conversation")
            parts = [{"functionResponse": {"name": name, "response": tool_result(content)}}]
            role = "user"
        elif type(content) is str:
            parts = [{"text": content}] if content or not message.tool_calls else []
        else:
            parts = [_part(p) for p in content or ()]
        for call in message.tool_calls or ():
            parts.append({"functionCall": {"name": call.function.name, "args": json_arguments(call.function.arguments)}})
        wire_role = "model" if role == "assistant" else "user"
        if contents and contents[-1]["role"] == wire_role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": wire_role, "parts": parts})
    if not contents:
        raise untranslatable("Gemini needs at least one user or assistant message besides the system prompt")
    body: dict[str, Any] = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
    p = request.params
    config: dict[str, Any] = {}
    for key, value in (("temperature", p.temperature), ("topP", p.top_p), ("maxOutputTokens", p.max_tokens),
                       ("stopSequences", p.stop), ("seed", p.seed), ("presencePenalty", p.presence_penalty),
                       ("frequencyPenalty", p.frequency_penalty)):
        if value is not None:
            config[key] = value
    fmt = request.response_format
    if type(fmt) is JsonObjectFormat:
        config["responseMimeType"] = "application/json"
    elif type(fmt) is JsonSchemaFormat:
        config["responseMimeType"] = "application/json"
        config["responseJsonSchema"] = fmt.json_schema.schema
    if config:
        body["generationConfig"] = config
    if request.tools:
        declarations = []
        for tool in request.tools:
            fn = tool.function
            declaration: dict[str, Any] = {"name": fn.name}
            if fn.description:
                declaration["description"] = fn.description
            if fn.parameters:
                declaration["parametersJsonSchema"] = fn.parameters
            declarations.append(declaration)
        body["tools"] = [{"functionDeclarations": declarations}]
    choice = request.tool_choice
    if choice is not None:
        if isinstance(choice, str):
            calling: dict[str, Any] = {"mode": _MODES[choice]}
        else:
            calling = {"mode": "ANY", "allowedFunctionNames": [choice.function.name]}
        body["toolConfig"] = {"functionCallingConfig": calling}
    return body


def build_request(request: LlmRequest) -> bytes:
    return msgspec.json.encode(build_body(request))


# --------------------------------------------------------------------------- answers


class _FunctionCall(msgspec.Struct):
    name: str = ""
    args: Any = None
    id: str | None = None


class _Part(msgspec.Struct):
    text: str | None = None
    thought: bool = False
    functionCall: _FunctionCall | None = None


class _Content(msgspec.Struct):
    parts: list[_Part] = []


class _Candidate(msgspec.Struct):
    content: _Content = msgspec.field(default_factory=_Content)
    finishReason: str | None = None


class _UsageMetadata(msgspec.Struct):
    promptTokenCount: int = 0
    candidatesTokenCount: int = 0
    cachedContentTokenCount: int = 0
    thoughtsTokenCount: int = 0
    toolUsePromptTokenCount: int = 0


class _PromptFeedback(msgspec.Struct):
    blockReason: str | None = None


class _Response(msgspec.Struct):
    candidates: list[_Candidate] = []
    usageMetadata: _UsageMetadata | None = None
    promptFeedback: _PromptFeedback | None = None
    error: Any = None


_decoder = msgspec.json.Decoder(_Response)


def _usage(u: _UsageMetadata) -> Usage:
    return Usage(
        input_tokens=u.promptTokenCount + u.toolUsePromptTokenCount,
        output_tokens=u.candidatesTokenCount + u.thoughtsTokenCount,
        cached_input_tokens=u.cachedContentTokenCount,
        reasoning_tokens=u.thoughtsTokenCount,
    )


def _blocked(response: _Response) -> ProviderError | None:
    if response.candidates:
        return None
    reason = response.promptFeedback.blockReason if response.promptFeedback else None
    if reason:
        return ProviderError("content_filtered", f"Gemini blocked the prompt ({reason})", False, fallback=False)
    return None


def _finish(reason: str | None, has_calls: bool) -> str:
    finish = FINISH_REASONS.get(reason or "", "stop")
    return "tool_calls" if finish == "stop" and has_calls else finish


def _call(call: _FunctionCall) -> ToolCall:
    arguments = msgspec.json.encode(call.args if call.args is not None else {}).decode()
    return ToolCall(id=call.id or f"call_{uuid.uuid4().hex[:24]}", function=FunctionCall(name=call.name, arguments=arguments))


def parse_response(body: bytes, api_key: str | None = None) -> Completion:
    try:
        response = _decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise unreadable_error(exc, api_key) from None
    blocked = _blocked(response)
    if blocked is not None:
        raise blocked
    if not response.candidates:
        raise ProviderError("server_error", "provider answered with no candidates", True)
    candidate = response.candidates[0]
    texts = [p.text for p in candidate.content.parts if p.text and not p.thought]
    calls = [_call(p.functionCall) for p in candidate.content.parts if p.functionCall is not None]
    usage = _usage(response.usageMetadata) if response.usageMetadata else Usage()
    return Completion(
        content="".join(texts), finish_reason=_finish(candidate.finishReason, bool(calls)),
        input_tokens=usage.input_tokens, output_tokens=usage.output_tokens, tool_calls=calls,
        cached_input_tokens=usage.cached_input_tokens, reasoning_tokens=usage.reasoning_tokens,
    )


class StreamParser:
    """Each SSE event is a whole ``GenerateContentResponse`` holding the next parts; the
    last carries ``finishReason`` and the usage (usage on earlier ones is overwritten)."""

    def __init__(self, request: LlmRequest, api_key: str | None = None):
        self.request = request
        self.api_key = api_key
        self.finish: str | None = None
        self.usage: Usage | None = None
        self.calls = 0
        self.chars = 0

    def feed(self, data: bytes) -> list[StreamEvent]:
        try:
            response = _decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise unreadable_error(exc, self.api_key) from None
        if response.error is not None:
            raise stream_error(data, self.api_key)
        blocked = _blocked(response)
        if blocked is not None:
            raise blocked
        if response.usageMetadata is not None:
            self.usage = _usage(response.usageMetadata)
        events: list[StreamEvent] = []
        for candidate in response.candidates[:1]:
            for part in candidate.content.parts:
                if part.functionCall is not None:
                    call = _call(part.functionCall)
                    self.chars += len(call.function.arguments)
                    events.append(ToolCallDelta(self.calls, call.id, call.function.name, call.function.arguments))
                    self.calls += 1
                elif part.text and not part.thought:
                    self.chars += len(part.text)
                    events.append(TextDelta(part.text))
            if candidate.finishReason:
                self.finish = _finish(candidate.finishReason, self.calls > 0)
        return events

    def end(self) -> StreamEnd:
        if self.finish is None:
            raise cut_short()
        return StreamEnd(self.finish, self.usage or estimated_usage(self.request, self.chars))


# --------------------------------------------------------------------------- the adapter


def _headers(api_key: str | None, accept: str) -> dict[str, str]:
    headers = {"content-type": "application/json", "accept": accept}
    if api_key:
        headers["x-goog-api-key"] = api_key
    return headers


class GeminiAdapter:
    def __init__(self, http: HttpClient):
        self._http = http

    async def complete(self, request: LlmRequest, deployment: Deployment, api_key: str | None) -> Completion:
        url = f"{deployment.base_url}/models/{deployment.model_id}:generateContent"
        body = await post_json(self._http, url, build_request(request), _headers(api_key, "application/json"), api_key)
        return parse_response(body, api_key)

    def stream(self, request: LlmRequest, deployment: Deployment, api_key: str | None) -> AsyncIterator[StreamEvent]:
        parser = StreamParser(request, api_key)
        url = f"{deployment.base_url}/models/{deployment.model_id}:streamGenerateContent?alt=sse"
        return stream_events(parser, self._http, url, build_request(request),
                             _headers(api_key, "text/event-stream"), api_key, sse=True)

    async def probe(self, base_url: str, api_key: str | None) -> tuple[bool, str, bool]:
        return await probe_get(self._http, base_url, "/models", {"x-goog-api-key": api_key} if api_key else {})
