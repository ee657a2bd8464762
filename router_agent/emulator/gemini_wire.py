"""Google Gemini: ``POST /v1beta/models/{model}:generateContent`` and ``:streamGenerateContent``.

Streams with ``?alt=sse`` (what the SDK asks for) are ``data: <GenerateContentResponse>``
events; without it, one JSON array of them, as the API does. The last chunk carries
``finishReason`` (``STOP``, ``MAX_TOKENS``) and ``usageMetadata``. ``:countTokens`` and
``GET /v1beta/models`` answer too. The key (``x-goog-api-key`` header or ``?key=``) is
accepted and not checked. Errors are ``{"error": {"code", "message", "status"}}`` with the
Google RPC status name; a 429 (``RESOURCE_EXHAUSTED``) adds a ``RetryInfo`` detail and
``retry-after``. The same routes answer under ``/v1/models/...`` (the SDK's ``v1`` option).
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from router_agent.emulator.content import Answer, Prompt, Tool, count_prompt_tokens, pieces
from router_agent.emulator.faults import retry_after_headers
from router_agent.emulator.respond import BadRequest, Ctx, Frame, Wire, handle, json_response, stamp
from router_agent.emulator.runtime import RUNTIME

# --- request -------------------------------------------------------------------------


class Part(msgspec.Struct):
    text: str | None = None
    inlineData: dict[str, Any] | None = None
    fileData: dict[str, Any] | None = None
    functionCall: dict[str, Any] | None = None
    functionResponse: dict[str, Any] | None = None
    thought: bool | None = None


class Content(msgspec.Struct):
    parts: list[Part] = []
    role: str | None = None


class FunctionDeclaration(msgspec.Struct):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    parametersJsonSchema: dict[str, Any] | None = None
    parameters_json_schema: dict[str, Any] | None = None
    """google-genai 3.x sends this one in snake case."""


class ToolDef(msgspec.Struct):
    functionDeclarations: list[FunctionDeclaration] | None = None


class FunctionCallingConfig(msgspec.Struct):
    mode: str | None = None
    allowedFunctionNames: list[str] | None = None


class ToolConfig(msgspec.Struct):
    functionCallingConfig: FunctionCallingConfig | None = None


class GenerationConfig(msgspec.Struct):
    maxOutputTokens: int | None = None
    stopSequences: list[str] | None = None
    responseMimeType: str | None = None
    responseSchema: dict[str, Any] | None = None
    responseJsonSchema: dict[str, Any] | None = None
    response_json_schema: dict[str, Any] | None = None
    temperature: float | None = None


class GenerateContentRequest(msgspec.Struct):
    contents: list[Content] = []
    systemInstruction: Content | None = None
    generationConfig: GenerationConfig | None = None
    tools: list[ToolDef] | None = None
    toolConfig: ToolConfig | None = None


_decode_request = msgspec.json.Decoder(GenerateContentRequest).decode
_encode = msgspec.json.Encoder().encode


def _text(content: Content) -> str:
    out: list[str] = []
    for part in content.parts:
        if part.text and not part.thought:
            out.append(part.text)
        elif part.functionCall is not None or part.functionResponse is not None:
            out.append(_encode(part.functionCall or part.functionResponse).decode())
    return " ".join(out)


def _user_text(content: Content) -> str:
    return " ".join(p.text for p in content.parts if p.text and not p.thought)


def split_spec(spec: str) -> tuple[str, str]:
    """``"gemini-2.0-flash:generateContent"`` -> (model, action)."""
    model, sep, action = spec.rpartition(":")
    if not sep or not model:
        raise BadRequest(f"expected models/{{model}}:{{action}}, got models/{spec}")
    return model, action


def decode(raw: bytes, request: web.Request) -> Prompt:
    model, action = split_spec(request.match_info["spec"])
    body = _decode_request(raw)
    if not body.contents:
        raise BadRequest("contents must not be empty")
    texts = [_text(c) for c in body.contents]
    if body.systemInstruction is not None:
        texts.insert(0, _text(body.systemInstruction))
    last = body.contents[-1]
    last_user = next((_user_text(c) for c in reversed(body.contents)
                      if c.role in (None, "user") and _user_text(c)), "")
    prompt = Prompt(model, texts, last_user, stream=action == "streamGenerateContent")
    prompt.ends_with_tool_result = any(p.functionResponse is not None for p in last.parts)
    prompt.images = sum(1 for c in body.contents for p in c.parts
                        if p.inlineData is not None or p.fileData is not None)
    config = body.generationConfig
    if config is not None:
        prompt.max_tokens = config.maxOutputTokens if config.maxOutputTokens and config.maxOutputTokens > 0 else None
        prompt.stop = config.stopSequences or []
        if config.responseMimeType == "application/json":
            prompt.json_mode = True
            prompt.schema = config.responseJsonSchema or config.response_json_schema or config.responseSchema
    declarations = [d for t in body.tools or () for d in t.functionDeclarations or ()]
    if declarations:
        prompt.tools = [Tool(d.name, d.parametersJsonSchema or d.parameters_json_schema or d.parameters)
                        for d in declarations]
        prompt.tool_chars = len(_encode(declarations))
    calling = body.toolConfig.functionCallingConfig if body.toolConfig else None
    if calling is not None and calling.mode:
        mode = calling.mode.upper()
        if mode == "NONE":
            prompt.tool_choice = "none"
        elif mode == "ANY":
            allowed = calling.allowedFunctionNames
            if allowed:
                prompt.tools = [t for t in prompt.tools if t.name in allowed] or [Tool(allowed[0])]
            if allowed and len(allowed) == 1:
                prompt.tool_choice, prompt.forced_tool = "force", allowed[0]
            else:
                prompt.tool_choice = "required"
        elif mode not in ("AUTO", "VALIDATED", "MODE_UNSPECIFIED"):
            raise BadRequest(f"functionCallingConfig.mode must be AUTO, ANY, NONE or VALIDATED, got {calling.mode!r}")
    return prompt


# --- response ------------------------------------------------------------------------


def _usage(result: Answer, final: bool = True) -> dict[str, int]:
    if not final:
        return {"promptTokenCount": result.prompt_tokens, "totalTokenCount": result.prompt_tokens}
    return {
        "promptTokenCount": result.prompt_tokens,
        "candidatesTokenCount": result.completion_tokens,
        "totalTokenCount": result.prompt_tokens + result.completion_tokens,
    }


def _response(prompt: Prompt, ctx: Ctx, parts: list[dict[str, Any]], usage: dict[str, int],
              finish: str | None) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
    if finish is not None:
        candidate["finishReason"] = finish
    return {"candidates": [candidate], "usageMetadata": usage,
            "modelVersion": prompt.model, "responseId": f"emu{ctx.serial}"}


def _finish(result: Answer) -> str:
    return "MAX_TOKENS" if result.finish == "length" else "STOP"


def _call_parts(result: Answer, ctx: Ctx) -> list[dict[str, Any]]:
    return [{"functionCall": {"id": f"call_emu{ctx.serial}_{i}", "name": c.name, "args": c.arguments}}
            for i, c in enumerate(result.tool_calls)]


def render(prompt: Prompt, result: Answer, ctx: Ctx) -> bytes:
    parts = _call_parts(result, ctx) if result.tool_calls else [{"text": result.text}]
    return _encode(_response(prompt, ctx, parts, _usage(result), _finish(result)))


def _chunks(prompt: Prompt, result: Answer, ctx: Ctx, head: bytes, tail: bytes) -> list[Frame]:
    """The stream's chunks, each between ``head`` and ``tail``."""
    if result.tool_calls:
        whole = _response(prompt, ctx, _call_parts(result, ctx), _usage(result), _finish(result))
        return [Frame(head + _encode(whole) + tail, result.completion_tokens)]
    texts = pieces(result.text) or [""]
    partial = _usage(result, final=False)

    def chunk(text: str) -> bytes:
        return head + _encode(_response(prompt, ctx, [{"text": text}], partial, None)) + tail

    out = [Frame(data, 1) for data in stamp(chunk, texts[:-1])]
    last = _response(prompt, ctx, [{"text": texts[-1]}], _usage(result), _finish(result))
    out.append(Frame(head + _encode(last) + tail, 1))
    return out


def frames(prompt: Prompt, result: Answer, ctx: Ctx) -> list[Frame]:
    return _chunks(prompt, result, ctx, b"data: ", b"\r\n\r\n")


def array_frames(prompt: Prompt, result: Answer, ctx: Ctx) -> list[Frame]:
    """Without ``alt=sse`` the API streams one JSON array, element by element."""
    out = _chunks(prompt, result, ctx, b",\r\n", b"")
    out[0].data = b"[" + out[0].data.removeprefix(b",\r\n")
    out.append(Frame(b"]"))
    return out


# --- errors --------------------------------------------------------------------------

_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
    529: "UNAVAILABLE",
}


def error_response(status: int, message: str, retry_after_s: float | None = None) -> web.Response:
    name = _STATUS_NAMES.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION")
    error: dict[str, Any] = {"code": status, "message": message, "status": name}
    extra = None
    if status == 429:
        retry = 1.0 if retry_after_s is None else retry_after_s
        error["details"] = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{retry:g}s"}]
        extra = retry_after_headers(retry)
    return json_response(_encode({"error": error}), status, extra)


def _broken(data: bytes) -> bytes:
    return data[: len(data) // 2] + b"\r\n\r\n"


WIRE = Wire(decode=decode, render=render, frames=frames, error=error_response, broken=_broken)
ARRAY_WIRE = Wire(decode=decode, render=render, frames=array_frames, error=error_response,
                  stream_type="application/json", broken=lambda data: data[: len(data) // 2])


async def models_action(request: web.Request) -> web.StreamResponse:
    """POST /v1beta/models/{model}:{action}."""
    try:
        _, action = split_spec(request.match_info["spec"])
    except BadRequest as exc:
        return error_response(404, str(exc))
    if action == "generateContent":
        return await handle(request, WIRE)
    if action == "streamGenerateContent":
        return await handle(request, WIRE if request.query.get("alt") == "sse" else ARRAY_WIRE)
    if action == "countTokens":
        return await count_tokens(request)
    return error_response(404, f"method {action!r} is not emulated")


async def count_tokens(request: web.Request) -> web.Response:
    raw = await request.read()
    try:
        wrapped = msgspec.json.decode(raw, type=dict[str, Any])
        if "generateContentRequest" in wrapped:
            raw = _encode(wrapped["generateContentRequest"])
        prompt = decode(raw, request)
    except (msgspec.DecodeError, BadRequest) as exc:
        return error_response(400, f"invalid request body: {exc}")
    return json_response(_encode({"totalTokens": count_prompt_tokens(prompt)}))


async def list_models(request: web.Request) -> web.Response:
    """GET /v1beta/models."""
    methods = ["generateContent", "streamGenerateContent", "countTokens"]
    models = [{"name": f"models/{n}", "displayName": f"{n} (emulated)", "version": "emulated",
               "inputTokenLimit": 1048576, "outputTokenLimit": 65536,
               "supportedGenerationMethods": methods}
              for n in request.app[RUNTIME].model_names()]
    return json_response(_encode({"models": models}))
