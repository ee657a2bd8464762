"""One request's life, the same for every wire format: decode, time, fault, answer, stream.

A vendor module supplies a :class:`Wire` (decode its request into a
:class:`~router_agent.emulator.content.Prompt`; render an answer, a stream of frames, an
error) and :func:`handle` does the rest. Keeping the flow here means a fault or a timing
rule behaves the same whichever SDK is talking.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
from aiohttp import web

from router_agent.emulator.content import Answer, Prompt, answer
from router_agent.emulator.faults import Fault
from router_agent.emulator.runtime import RUNTIME

__all__ = [
    "LATENCY_HEADER",
    "TOKENS_PER_S_HEADER",
    "BadRequest",
    "Ctx",
    "Frame",
    "Wire",
    "handle",
    "json_response",
]

LATENCY_HEADER = "x-emulator-latency-ms"
"""Overrides the model's time to first token for one request (milliseconds)."""
TOKENS_PER_S_HEADER = "x-emulator-tokens-per-s"
"""Overrides the model's generation pace for one request (0: instant)."""

JSON_HEADERS = {"Content-Type": "application/json", "x-emulated": "true"}
STREAM_HEADERS = {"Cache-Control": "no-cache", "x-emulated": "true"}


class BadRequest(Exception):
    """The request does not fit the wire format; answered with a 400 in the vendor's shape."""


@dataclass(slots=True)
class Ctx:
    """What a renderer needs besides the prompt and the answer."""

    serial: str
    created: int
    ttft_s: float
    per_token_s: float


@dataclass(slots=True)
class Frame:
    """One piece of a stream on the wire, and how many generated tokens it carries (pacing)."""

    data: bytes
    tokens: int = 0


@dataclass(frozen=True, slots=True)
class Wire:
    """A vendor wire format, as the shared flow uses it."""

    decode: Callable[[bytes, web.Request], Prompt]
    render: Callable[[Prompt, Answer, Ctx], bytes]
    frames: Callable[[Prompt, Answer, Ctx], list[Frame]]
    error: Callable[[int, str, float | None], web.Response]
    stream_type: str = "text/event-stream"
    broken: Callable[[bytes], bytes] = lambda data: data[: len(data) // 2] + b"\n\n"
    """A frame made malformed (its JSON cut short, the framing kept)."""


def json_response(body: bytes, status: int = 200, extra: dict[str, str] | None = None) -> web.Response:
    headers = JSON_HEADERS if extra is None else {**JSON_HEADERS, **extra}
    return web.Response(body=body, status=status, headers=headers)


def _header_number(request: web.Request, name: str) -> float | None:
    raw = request.headers.get(name)
    if raw is None:
        return None
    value = float(raw)  # ValueError on junk
    if not math.isfinite(value) or value < 0:
        raise ValueError(raw)
    return value


async def handle(request: web.Request, wire: Wire) -> web.StreamResponse:
    """Answer one generation request in ``wire``'s format."""
    runtime = request.app[RUNTIME]
    try:
        ttft_ms = _header_number(request, LATENCY_HEADER)
        tokens_per_s = _header_number(request, TOKENS_PER_S_HEADER)
    except ValueError:
        return wire.error(400, f"{LATENCY_HEADER} and {TOKENS_PER_S_HEADER} must be non-negative numbers", None)
    try:
        prompt = wire.decode(await request.read(), request)
    except msgspec.DecodeError as exc:  # ValidationError is a subclass
        return wire.error(400, f"invalid request body: {exc}", None)
    except BadRequest as exc:
        return wire.error(400, str(exc), None)
    model = prompt.model
    runtime.count(model)
    fault = runtime.fault(model)
    ttft_s, per_token_s = runtime.timing(model, ttft_ms, tokens_per_s)
    if fault is not None and fault.kind in ("error", "hang"):
        if ttft_s > 0:
            await asyncio.sleep(ttft_s)
        if fault.kind == "hang":
            await runtime.hang(fault.hang_s)
            return _drop(request)
        message = f"emulated fault {fault.status} for model {model!r} ({fault.cause})"
        return wire.error(fault.status, message, fault.retry_after_s)
    result = answer(prompt)
    ctx = Ctx(runtime.next_id(), runtime.created, ttft_s, per_token_s)
    if prompt.stream:
        return await _stream(request, wire, wire.frames(prompt, result, ctx), ctx, fault)
    delay = ttft_s + per_token_s * result.completion_tokens
    if delay > 0:
        await asyncio.sleep(delay)
    body = wire.render(prompt, result, ctx)
    if fault is None:
        return json_response(body)
    if fault.kind == "malformed":
        return json_response(body[: len(body) // 2])
    # cut (stall has nothing to stall in a single body: it is cut as well)
    response = web.StreamResponse(headers=JSON_HEADERS)
    response.content_length = len(body)
    await response.prepare(request)
    await response.write(body[: len(body) // 2])
    return _drop(request, response)


def _drop(request: web.Request, response: web.StreamResponse | None = None) -> web.StreamResponse:
    """Close the connection without (finishing) an answer."""
    if request.transport is not None:
        request.transport.close()
    return response if response is not None else web.Response(status=204)


async def _stream(
    request: web.Request, wire: Wire, frames: list[Frame], ctx: Ctx, fault: Fault | None
) -> web.StreamResponse:
    """Send ``frames`` paced by ``ctx``: headers and the first token after the time to first
    token, each later token ``per_token_s`` after the one before (on a fixed schedule, so
    slow writes do not add up). A ``cut`` / ``stall`` / ``malformed`` fault strikes at the
    middle frame (never the first, so something is always delivered first)."""
    if ctx.ttft_s > 0:
        await asyncio.sleep(ctx.ttft_s)
    response = web.StreamResponse(headers={**STREAM_HEADERS, "Content-Type": wire.stream_type})
    await response.prepare(request)
    strike = max(1, len(frames) // 2) if fault is not None else -1
    if ctx.per_token_s <= 0 and strike < 0:
        await response.write(b"".join(f.data for f in frames))
        await response.write_eof()
        return response
    loop = asyncio.get_running_loop()
    due = loop.time()
    pending: list[bytes] = []
    first_token = True
    for index, frame in enumerate(frames):
        if index == strike and fault is not None:
            if pending:
                await response.write(b"".join(pending))
                pending = []
            if fault.kind == "cut":
                return _drop(request, response)
            if fault.kind == "stall":
                await request.app[RUNTIME].hang(fault.hang_s)
                return _drop(request, response)
            pending.append(wire.broken(frame.data))
            continue
        if frame.tokens and ctx.per_token_s > 0:
            if first_token:  # the time to first token already passed
                first_token = False
            else:
                due += frame.tokens * ctx.per_token_s
                wait = due - loop.time()
                if wait > 0:
                    if pending:
                        await response.write(b"".join(pending))
                        pending = []
                    await asyncio.sleep(wait)
        pending.append(frame.data)
    if pending:
        await response.write(b"".join(pending))
    await response.write_eof()
    return response
