"""OpenAI Chat Completions: ``POST /v1/chat/completions`` (JSON or SSE) and ``GET /v1/models``.

Answers carry ``system_fingerprint: "emulated"``. Streams are ``data: <chunk>`` events: a
first chunk with the role, content (or tool-call) deltas, a chunk with the finish reason,
with ``stream_options.include_usage`` one more chunk with empty ``choices`` and the usage,
then ``data: [DONE]``. Errors are ``{"error": {"message", "type", "code", "param"}}``; a
429 carries ``retry-after`` / ``retry-after-ms`` and ``x-ratelimit-remaining-requests: 0``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from aiohttp import web

from router_agent.emulator.content import Answer, Prompt, Tool, fragments, pieces
from router_agent.emulator.faults import retry_after_headers
from router_agent.emulator.respond import BadRequest, Ctx, Frame, Wire, handle, json_response, stamp
from router_agent.emulator.runtime import RUNTIME

IMAGE_PARTS = frozenset({"image_url", "input_image", "image"})


# --- request -------------------------------------------------------------------------


class ContentPart(msgspec.Struct):
    """One part of a multi-part message content; only text parts carry text."""

    type: str
    text: str | None = None


class CalledFunction(msgspec.Struct):
    name: str
    arguments: str = ""


class RequestToolCall(msgspec.Struct):
    function: CalledFunction
    id: str | None = None
    type: str = "function"


class ChatMessage(msgspec.Struct):
    """A request message; unknown fields (name, ...) are ignored."""

    role: str
    content: str | list[ContentPart] | None = None
    tool_calls: list[RequestToolCall] | None = None


class FunctionDef(msgspec.Struct):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ToolDef(msgspec.Struct):
    function: FunctionDef
    type: str = "function"


class NamedFunction(msgspec.Struct):
    name: str


class ToolChoice(msgspec.Struct):
    type: str = "function"
    function: NamedFunction | None = None


class JsonSchemaFormat(msgspec.Struct):
    name: str | None = None
    schema: dict[str, Any] | None = None
    strict: bool | None = None


class ResponseFormat(msgspec.Struct):
    type: str
    json_schema: JsonSchemaFormat | None = None


class StreamOptions(msgspec.Struct):
    include_usage: bool = False


class ChatCompletionRequest(msgspec.Struct):
    """The fields of an OpenAI chat completion request the emulator looks at."""

    model: str
    messages: list[ChatMessage]
    temperature: float | None = None
    max_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    max_completion_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    tools: list[ToolDef] | None = None
    tool_choice: str | ToolChoice | None = None
    response_format: ResponseFormat | None = None
    stop: str | list[str] | None = None
    seed: int | None = None


_decode_chat = msgspec.json.Decoder(ChatCompletionRequest).decode
_encode = msgspec.json.Encoder().encode


def _text(content: str | list[ContentPart] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return " ".join(part.text for part in content if part.text)


def decode(raw: bytes, request: web.Request) -> Prompt:
    body = _decode_chat(raw)
    messages = body.messages
    if not messages:
        raise BadRequest("messages must not be empty")
    texts = [_text(m.content) for m in messages]
    last_user = next(
        (t for m, t in zip(reversed(messages), reversed(texts)) if m.role == "user"), texts[-1]
    )
    prompt = Prompt(body.model, texts, last_user, stream=body.stream)
    prompt.max_tokens = body.max_completion_tokens or body.max_tokens
    if body.stream_options is not None:
        prompt.include_usage = body.stream_options.include_usage
    if body.stop is not None:
        prompt.stop = [body.stop] if isinstance(body.stop, str) else body.stop
    if body.tools or body.tool_choice is not None or body.response_format is not None or messages[-1].role == "tool":
        _features(body, prompt)
    for message in messages:
        if isinstance(message.content, list):
            prompt.images += sum(1 for p in message.content if p.type in IMAGE_PARTS)
    return prompt


def _features(body: ChatCompletionRequest, prompt: Prompt) -> None:
    """Tools, tool choice, JSON mode: read only when the request has them."""
    prompt.ends_with_tool_result = body.messages[-1].role == "tool"
    if body.tools:
        prompt.tools = [Tool(t.function.name, t.function.parameters) for t in body.tools]
        prompt.tool_chars = len(_encode(body.tools))
    for message in body.messages:
        for call in message.tool_calls or ():
            prompt.tool_chars += len(call.function.name) + len(call.function.arguments)
    choice = body.tool_choice
    if isinstance(choice, str):
        if choice not in ("auto", "none", "required"):
            raise BadRequest(f"tool_choice must be auto, none, required or a function, got {choice!r}")
        prompt.tool_choice = choice
    elif choice is not None and choice.function is not None:
        prompt.tool_choice, prompt.forced_tool = "force", choice.function.name
    fmt = body.response_format
    if fmt is not None and fmt.type in ("json_object", "json_schema"):
        prompt.json_mode = True
        if fmt.type == "json_schema":
            if fmt.json_schema is None or fmt.json_schema.schema is None:
                raise BadRequest("response_format json_schema needs json_schema.schema")
            prompt.schema = fmt.json_schema.schema


# --- response ------------------------------------------------------------------------


class CallFunction(msgspec.Struct):
    name: str
    arguments: str


class ToolCallOut(msgspec.Struct):
    id: str
    function: CallFunction
    type: str = "function"


class AssistantMessage(msgspec.Struct, omit_defaults=True):
    role: str
    content: str | None
    tool_calls: list[ToolCallOut] | None = None


class Choice(msgspec.Struct):
    index: int
    message: AssistantMessage
    finish_reason: str
    logprobs: None = None


class Usage(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(msgspec.Struct):
    id: str
    model: str
    created: int
    choices: list[Choice]
    usage: Usage
    object: str = "chat.completion"
    system_fingerprint: str = "emulated"


def _usage(result: Answer) -> Usage:
    return Usage(result.prompt_tokens, result.completion_tokens,
                 result.prompt_tokens + result.completion_tokens)


def _calls(result: Answer, ctx: Ctx) -> list[ToolCallOut]:
    return [ToolCallOut(f"call_emu{ctx.serial}_{i}", CallFunction(c.name, c.arguments_json))
            for i, c in enumerate(result.tool_calls)]


def render(prompt: Prompt, result: Answer, ctx: Ctx) -> bytes:
    if result.tool_calls:
        message = AssistantMessage("assistant", None, _calls(result, ctx))
    else:
        message = AssistantMessage("assistant", result.text)
    return _encode(ChatCompletion(
        id=f"chatcmpl-emu-{ctx.serial}",
        model=prompt.model,
        created=ctx.created,
        choices=[Choice(0, message, result.finish)],
        usage=_usage(result),
    ))


class DeltaFunction(msgspec.Struct, omit_defaults=True):
    name: str | None = None
    arguments: str | None = None


class DeltaToolCall(msgspec.Struct, omit_defaults=True):
    index: int
    function: DeltaFunction
    id: str | None = None
    type: str | None = None


class Delta(msgspec.Struct, omit_defaults=True):
    role: str | None = None
    content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None


class ChunkChoice(msgspec.Struct):
    index: int
    delta: Delta
    finish_reason: str | None = None
    logprobs: None = None


class Chunk(msgspec.Struct):
    id: str
    model: str
    created: int
    choices: list[ChunkChoice]
    usage: Usage | None = None
    object: str = "chat.completion.chunk"
    system_fingerprint: str = "emulated"


def frames(prompt: Prompt, result: Answer, ctx: Ctx) -> list[Frame]:
    cid = f"chatcmpl-emu-{ctx.serial}"

    def event(delta: Delta, finish: str | None = None) -> bytes:
        chunk = Chunk(cid, prompt.model, ctx.created, [ChunkChoice(0, delta, finish)])
        return b"data: " + _encode(chunk) + b"\n\n"

    def arguments(index: int) -> Callable[[str], bytes]:
        return lambda part: event(Delta(tool_calls=[DeltaToolCall(index, DeltaFunction(arguments=part))]))

    out = [Frame(event(Delta(role="assistant", content="" if not result.tool_calls else None)))]
    for index, call in enumerate(_calls(result, ctx)):
        head = DeltaToolCall(index, DeltaFunction(call.function.name, ""), call.id, "function")
        out.append(Frame(event(Delta(tool_calls=[head])), 1))
        out.extend(Frame(data, 1) for data in stamp(arguments(index), fragments(call.function.arguments)))
    out.extend(Frame(data, 1) for data in stamp(lambda piece: event(Delta(content=piece)), pieces(result.text)))
    out.append(Frame(event(Delta(), result.finish)))
    if prompt.include_usage:
        chunk = Chunk(cid, prompt.model, ctx.created, [], _usage(result))
        out.append(Frame(b"data: " + _encode(chunk) + b"\n\n"))
    out.append(Frame(b"data: [DONE]\n\n"))
    return out


# --- errors --------------------------------------------------------------------------


class ErrorDetail(msgspec.Struct):
    message: str
    type: str
    code: str | None
    param: str | None = None


class ErrorBody(msgspec.Struct):
    error: ErrorDetail


# (type, code) per status, after OpenAI's error bodies; anything else is a server error.
_ERROR_KINDS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", "permission_denied"),
    404: ("invalid_request_error", "model_not_found"),
    408: ("timeout_error", "timeout"),
    413: ("invalid_request_error", "request_too_large"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    503: ("server_error", "service_unavailable"),
    529: ("server_error", "overloaded"),
}


def error_response(status: int, message: str, retry_after_s: float | None = None) -> web.Response:
    """An OpenAI-style error answer; a 429 tells the client when to retry."""
    kind, code = _ERROR_KINDS.get(status, ("server_error", "server_error"))
    body = _encode(ErrorBody(ErrorDetail(message=message, type=kind, code=code)))
    extra = None
    if status == 429:
        retry = 1.0 if retry_after_s is None else retry_after_s
        extra = retry_after_headers(retry)
        extra["x-ratelimit-remaining-requests"] = "0"
        extra["x-ratelimit-reset-requests"] = f"{retry:g}s"
    return json_response(body, status, extra)


WIRE = Wire(decode=decode, render=render, frames=frames, error=error_response)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """POST /v1/chat/completions."""
    return await handle(request, WIRE)


class ModelCard(msgspec.Struct):
    id: str
    created: int
    object: str = "model"
    owned_by: str = "emulator"


class ModelList(msgspec.Struct):
    data: list[ModelCard]
    object: str = "list"


async def retrieve_model(request: web.Request) -> web.Response:
    """GET /v1/models/{model}: any name exists (generation accepts any name)."""
    card = ModelCard(request.match_info["model"], request.app[RUNTIME].created)
    return json_response(_encode(card))


async def list_models(request: web.Request) -> web.Response:
    """GET /v1/models: generic names plus every model with a profile or an injected fault.

    Anthropic lists models at the same path; a request with ``anthropic-version`` gets
    Anthropic's shape."""
    runtime = request.app[RUNTIME]
    names = runtime.model_names()
    if "anthropic-version" in request.headers:
        return json_response(_encode(anthropic_model_list(names, runtime.created)))
    return json_response(_encode(ModelList([ModelCard(n, runtime.created) for n in names])))


def anthropic_model_list(names: list[str], created: int) -> dict[str, Any]:
    stamp = datetime.fromtimestamp(created, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    data = [{"type": "model", "id": n, "display_name": f"{n} (emulated)", "created_at": stamp} for n in names]
    return {"data": data, "has_more": False, "first_id": names[0], "last_id": names[-1]}
