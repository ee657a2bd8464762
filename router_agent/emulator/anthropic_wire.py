"""Anthropic Messages: ``POST /v1/messages``, answered as JSON or as the real SSE event sequence.

Streams: ``message_start``, ``ping``, then per content block ``content_block_start``,
``content_block_delta`` (``text_delta`` or ``input_json_delta``) and ``content_block_stop``,
then ``message_delta`` (stop reason, output tokens) and ``message_stop``. Stop reasons:
``end_turn``, ``max_tokens``, ``stop_sequence``, ``tool_use``. Errors are
``{"type": "error", "error": {"type": ..., "message": ...}}`` (429 ``rate_limit_error`` with
``retry-after``; 529 ``overloaded_error``). ``x-api-key`` and ``anthropic-version`` are
accepted and not checked.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from aiohttp import web

from router_agent.emulator.content import Answer, Prompt, Tool, fragments, pieces
from router_agent.emulator.faults import retry_after_headers
from router_agent.emulator.respond import BadRequest, Ctx, Frame, Wire, handle, json_response, stamp

# --- request -------------------------------------------------------------------------


class Block(msgspec.Struct):
    """A content block: text, image, document, tool_use, tool_result, thinking, ..."""

    type: str
    text: str | None = None
    content: str | list[Block] | None = None
    name: str | None = None
    input: Any = None


class Message(msgspec.Struct):
    role: str
    content: str | list[Block]


class ToolDef(msgspec.Struct):
    name: str
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    type: str | None = None


class ToolChoice(msgspec.Struct):
    type: str
    name: str | None = None


class OutputFormat(msgspec.Struct):
    type: str
    schema: dict[str, Any] | None = None


class OutputConfig(msgspec.Struct):
    format: OutputFormat | None = None


class MessagesRequest(msgspec.Struct):
    model: str
    max_tokens: Annotated[int, msgspec.Meta(ge=1)]
    messages: list[Message]
    system: str | list[Block] | None = None
    stream: bool = False
    stop_sequences: list[str] | None = None
    tools: list[ToolDef] | None = None
    tool_choice: ToolChoice | None = None
    output_config: OutputConfig | None = None
    output_format: OutputFormat | None = None
    temperature: float | None = None


_decode_request = msgspec.json.Decoder(MessagesRequest).decode
_encode = msgspec.json.Encoder().encode


def _text(content: str | list[Block] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in content:
        if block.text:
            parts.append(block.text)
        elif block.type == "tool_result":
            parts.append(_text(block.content))
        elif block.type == "tool_use":
            parts.append((block.name or "") + _encode(block.input).decode())
    return " ".join(parts)


def _user_text(content: str | list[Block]) -> str:
    """User text only: tool results handed back are not the user speaking."""
    if isinstance(content, str):
        return content
    return " ".join(b.text for b in content if b.type == "text" and b.text)


def decode(raw: bytes, request: web.Request) -> Prompt:
    body = _decode_request(raw)
    if not body.messages:
        raise BadRequest("messages: at least one message is required")
    texts = [_text(m.content) for m in body.messages]
    if body.system:
        texts.insert(0, _text(body.system))
    last = body.messages[-1]
    ends_with_results = (
        last.role == "user" and not isinstance(last.content, str)
        and any(b.type == "tool_result" for b in last.content)
    )
    last_user = next((_user_text(m.content) for m in reversed(body.messages)
                      if m.role == "user" and _user_text(m.content)), "")
    prompt = Prompt(body.model, texts, last_user, ends_with_results, stream=body.stream,
                    max_tokens=body.max_tokens, stop=body.stop_sequences or [])
    for message in body.messages:
        if not isinstance(message.content, str):
            prompt.images += sum(1 for b in message.content if b.type == "image")
    if body.tools:
        prompt.tools = [Tool(t.name, t.input_schema) for t in body.tools if t.input_schema is not None]
        prompt.tool_chars = len(_encode(body.tools))
    choice = body.tool_choice
    if choice is not None:
        mode = {"auto": "auto", "any": "required", "tool": "force", "none": "none"}.get(choice.type)
        if mode is None:
            raise BadRequest(f"tool_choice.type must be auto, any, tool or none, got {choice.type!r}")
        prompt.tool_choice, prompt.forced_tool = mode, choice.name
    fmt = body.output_format or (body.output_config.format if body.output_config else None)
    if fmt is not None and fmt.type == "json_schema":
        prompt.json_mode, prompt.schema = True, fmt.schema
    return prompt


# --- response ------------------------------------------------------------------------


class TextBlock(msgspec.Struct, tag="text", tag_field="type"):
    text: str


class ToolUseBlock(msgspec.Struct, tag="tool_use", tag_field="type"):
    id: str
    name: str
    input: Any


class Usage(msgspec.Struct):
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


class MessageOut(msgspec.Struct, tag="message", tag_field="type"):
    id: str
    model: str
    content: list[TextBlock | ToolUseBlock]
    stop_reason: str | None
    stop_sequence: str | None
    usage: Usage
    role: str = "assistant"


_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


def _stop_reason(result: Answer) -> str:
    return "stop_sequence" if result.stop_sequence is not None else _STOP_REASONS[result.finish]


def _blocks(result: Answer, ctx: Ctx) -> list[TextBlock | ToolUseBlock]:
    if result.tool_calls:
        return [ToolUseBlock(f"toolu_emu{ctx.serial}_{i}", c.name, c.arguments)
                for i, c in enumerate(result.tool_calls)]
    return [TextBlock(result.text)]


def render(prompt: Prompt, result: Answer, ctx: Ctx) -> bytes:
    return _encode(MessageOut(
        id=f"msg_emu{ctx.serial}",
        model=prompt.model,
        content=_blocks(result, ctx),
        stop_reason=_stop_reason(result),
        stop_sequence=result.stop_sequence,
        usage=Usage(result.prompt_tokens, result.completion_tokens),
    ))


def _event(name: bytes, payload: dict[str, Any], tokens: int = 0) -> Frame:
    return Frame(_event_bytes(name, payload), tokens)


def _event_bytes(name: bytes, payload: dict[str, Any]) -> bytes:
    return b"event: " + name + b"\ndata: " + _encode(payload) + b"\n\n"


def _deltas(index: int, kind: str, field: str, texts: list[str]) -> list[Frame]:
    """One ``content_block_delta`` per text, a token each."""
    def delta(text: str) -> bytes:
        payload = {"type": "content_block_delta", "index": index, "delta": {"type": kind, field: text}}
        return _event_bytes(b"content_block_delta", payload)

    return [Frame(data, 1) for data in stamp(delta, texts)]


def frames(prompt: Prompt, result: Answer, ctx: Ctx) -> list[Frame]:
    start = MessageOut(f"msg_emu{ctx.serial}", prompt.model, [], None, None, Usage(result.prompt_tokens, 1))
    out = [_event(b"message_start", {"type": "message_start", "message": start}),
           _event(b"ping", {"type": "ping"})]
    for index, block in enumerate(_blocks(result, ctx)):
        if isinstance(block, TextBlock):
            opening: Any = TextBlock("")
            deltas = _deltas(index, "text_delta", "text", pieces(block.text))
        else:
            opening = ToolUseBlock(block.id, block.name, {})
            deltas = _deltas(index, "input_json_delta", "partial_json", fragments(_encode(block.input).decode()))
        out.append(_event(b"content_block_start",
                          {"type": "content_block_start", "index": index, "content_block": opening}))
        out.extend(deltas)
        out.append(_event(b"content_block_stop", {"type": "content_block_stop", "index": index}))
    out.append(_event(b"message_delta", {
        "type": "message_delta",
        "delta": {"stop_reason": _stop_reason(result), "stop_sequence": result.stop_sequence},
        "usage": {"output_tokens": result.completion_tokens},
    }))
    out.append(_event(b"message_stop", {"type": "message_stop"}))
    return out


# --- errors --------------------------------------------------------------------------

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_response(status: int, message: str, retry_after_s: float | None = None) -> web.Response:
    kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    body = _encode({"type": "error", "error": {"type": kind, "message": message}})
    extra = None
    if status == 429:
        extra = retry_after_headers(1.0 if retry_after_s is None else retry_after_s)
        extra["anthropic-ratelimit-requests-remaining"] = "0"
    return json_response(body, status, extra)


WIRE = Wire(decode=decode, render=render, frames=frames, error=error_response)


async def messages(request: web.Request) -> web.StreamResponse:
    """POST /v1/messages."""
    return await handle(request, WIRE)
