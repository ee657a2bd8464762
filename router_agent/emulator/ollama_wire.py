"""Ollama's native API: ``POST /api/chat`` (NDJSON stream by default), ``GET /api/tags``, ``GET /api/version``.

A stream is one JSON object per line, ``{"model", "created_at", "message": {"role",
"content"}, "done": false}``, then a last line with ``done: true``, ``done_reason`` (``stop``
or ``length``), ``prompt_eval_count`` / ``eval_count`` and the ``*_duration`` fields (in
nanoseconds, from the planned timing). ``"stream": false`` gets that last object alone,
holding the whole message. Tool calls come whole, as ``message.tool_calls[].function``
with ``arguments`` as an object. ``format: "json"`` or a schema is JSON mode; ``options``
``num_predict`` and ``stop`` cap the answer. Errors are ``{"error": "<message>"}``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
from aiohttp import web

from router_agent.emulator.content import Answer, Prompt, Tool, pieces
from router_agent.emulator.faults import retry_after_headers
from router_agent.emulator.respond import BadRequest, Ctx, Frame, Wire, handle, json_response, stamp
from router_agent.emulator.runtime import RUNTIME

# --- request -------------------------------------------------------------------------


class CalledFunction(msgspec.Struct):
    name: str
    arguments: Any = None


class RequestToolCall(msgspec.Struct):
    function: CalledFunction


class Message(msgspec.Struct):
    role: str
    content: str = ""
    images: list[str] | None = None
    tool_calls: list[RequestToolCall] | None = None


class FunctionDef(msgspec.Struct):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ToolDef(msgspec.Struct):
    function: FunctionDef
    type: str = "function"


class Options(msgspec.Struct):
    num_predict: int | None = None
    stop: list[str] | None = None
    temperature: float | None = None
    seed: int | None = None


class ChatRequest(msgspec.Struct):
    model: str
    messages: list[Message] = []
    stream: bool = True
    format: str | dict[str, Any] | None = None
    options: Options | None = None
    tools: list[ToolDef] | None = None


_decode_request = msgspec.json.Decoder(ChatRequest).decode
_encode = msgspec.json.Encoder().encode


def decode(raw: bytes, request: web.Request) -> Prompt:
    body = _decode_request(raw)
    if not body.messages:
        raise BadRequest("messages must not be empty")
    texts = [m.content for m in body.messages]
    last_user = next((m.content for m in reversed(body.messages) if m.role == "user"), "")
    prompt = Prompt(body.model, texts, last_user, body.messages[-1].role == "tool", stream=body.stream)
    prompt.images = sum(len(m.images or ()) for m in body.messages)
    for message in body.messages:
        for call in message.tool_calls or ():
            prompt.tool_chars += len(call.function.name) + len(_encode(call.function.arguments))
    if body.tools:
        prompt.tools = [Tool(t.function.name, t.function.parameters) for t in body.tools]
        prompt.tool_chars += len(_encode(body.tools))
    if body.format is not None:
        if isinstance(body.format, dict):
            prompt.json_mode, prompt.schema = True, body.format
        elif body.format == "json":
            prompt.json_mode = True
        elif body.format:
            raise BadRequest(f'format must be "json" or a JSON schema, got {body.format!r}')
    if body.options is not None:
        if body.options.num_predict is not None and body.options.num_predict > 0:
            prompt.max_tokens = body.options.num_predict
        prompt.stop = body.options.stop or []
    return prompt


# --- response ------------------------------------------------------------------------


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _final(prompt: Prompt, result: Answer, ctx: Ctx, message: dict[str, Any]) -> dict[str, Any]:
    prompt_ns = round(ctx.ttft_s * 1e9)
    eval_ns = round(ctx.per_token_s * result.completion_tokens * 1e9)
    return {
        "model": prompt.model,
        "created_at": _now(),
        "message": message,
        "done": True,
        "done_reason": "length" if result.finish == "length" else "stop",
        "total_duration": prompt_ns + eval_ns,
        "load_duration": 0,
        "prompt_eval_count": result.prompt_tokens,
        "prompt_eval_duration": prompt_ns,
        "eval_count": result.completion_tokens,
        "eval_duration": eval_ns,
    }


def _message(result: Answer, text: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if result.tool_calls:
        message["tool_calls"] = [{"function": {"name": c.name, "arguments": c.arguments}}
                                 for c in result.tool_calls]
    return message


def render(prompt: Prompt, result: Answer, ctx: Ctx) -> bytes:
    return _encode(_final(prompt, result, ctx, _message(result, result.text)))


def frames(prompt: Prompt, result: Answer, ctx: Ctx) -> list[Frame]:
    created = _now()
    out: list[Frame] = []
    if result.tool_calls:
        line = {"model": prompt.model, "created_at": created, "message": _message(result, ""), "done": False}
        out.append(Frame(_encode(line) + b"\n", result.completion_tokens))

    def piece_line(piece: str) -> bytes:
        return _encode({"model": prompt.model, "created_at": created,
                        "message": {"role": "assistant", "content": piece}, "done": False}) + b"\n"

    out.extend(Frame(data, 1) for data in stamp(piece_line, pieces(result.text)))
    last = _final(prompt, result, ctx, {"role": "assistant", "content": ""})
    out.append(Frame(_encode(last) + b"\n"))
    return out


def error_response(status: int, message: str, retry_after_s: float | None = None) -> web.Response:
    extra = retry_after_headers(1.0 if retry_after_s is None else retry_after_s) if status == 429 else None
    return json_response(_encode({"error": message}), status, extra)


WIRE = Wire(decode=decode, render=render, frames=frames, error=error_response,
            stream_type="application/x-ndjson", broken=lambda data: data[: len(data) // 2] + b"\n")


async def chat(request: web.Request) -> web.StreamResponse:
    """POST /api/chat."""
    return await handle(request, WIRE)


async def tags(request: web.Request) -> web.Response:
    """GET /api/tags: the models it answers for, in Ollama's listing shape."""
    runtime = request.app[RUNTIME]
    modified = datetime.fromtimestamp(runtime.created, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    models = [{"name": n, "model": n, "modified_at": modified, "size": 0, "digest": "emulated",
               "details": {"format": "emulated", "family": "emulated", "parameter_size": "0B",
                           "quantization_level": "none"}}
              for n in runtime.model_names()]
    return json_response(_encode({"models": models}))


_VERSION = _encode({"version": "0.0.0-emulated"})


async def version(request: web.Request) -> web.Response:
    """GET /api/version."""
    return json_response(_VERSION)

