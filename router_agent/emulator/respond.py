"""One request's life, the same for every wire format: decode, time, fault, answer, stream.

A vendor module supplies a :class:`Wire` (decode its request into a
:class:`~router_agent.emulator.content.Prompt`; render an answer, a stream of frames, an
error) and :func:`handle` does the rest. Keeping the flow here means a fault or a timing
rule behaves the same whichever SDK is talking.

A stream is cheap per token because its work is done up front: the wire stamps its token
frames from one encoded template (:func:`stamp`), :func:`stream_writes` groups the frames into the
writes the schedule calls for, and a timer callback per token puts each write on the socket
(:class:`_Pacer`), where a sleeping task would cost a future, a wake-up and aiohttp's write
path every time.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import msgspec
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from router_agent.emulator.content import Answer, Prompt, answer
from router_agent.emulator.faults import Fault
from router_agent.emulator.runtime import RUNTIME

__all__ = [
    "LATENCY_HEADER",
    "TOKENS_PER_S_HEADER",
    "BadRequest",
    "Ctx",
    "Frame",
    "StreamWrites",
    "Wire",
    "handle",
    "json_response",
    "stamp",
    "stream_writes",
]

LATENCY_HEADER = "x-emulator-latency-ms"
"""Overrides the model's time to first token for one request (milliseconds)."""
TOKENS_PER_S_HEADER = "x-emulator-tokens-per-s"
"""Overrides the model's generation pace for one request (0: instant)."""

JSON_HEADERS = {"Content-Type": "application/json", "x-emulated": "true"}
STREAM_HEADERS = {"Cache-Control": "no-cache", "x-emulated": "true"}
DRAIN_AT = 0x10000
"""A stream waits for the client when this much is still unsent (aiohttp's writer's limit)."""


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


_MARKER = "\x00emulator piece\x00"
_MARKER_JSON = msgspec.json.encode(_MARKER)
_encode_str = msgspec.json.Encoder().encode


def stamp(encode_frame: Callable[[str], bytes], texts: Sequence[str]) -> list[bytes]:
    """``[encode_frame(text) for text in texts]``, with the frame encoded only once.

    A stream sends one frame per token that differs from the others in one string only, so
    the frame is encoded with a marker in that place and each text's JSON string is put
    between the bytes around it: the same bytes, at a fraction of the cost per token.
    """
    head, found, tail = encode_frame(_MARKER).partition(_MARKER_JSON)
    if not found or _MARKER_JSON in tail:  # the marker is also elsewhere (a model name): no shortcut
        return [encode_frame(text) for text in texts]
    encode = _encode_str
    return [head + encode(text) + tail for text in texts]


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
        writes = stream_writes(wire.frames(prompt, result, ctx), per_token_s, fault, wire.broken)
        return await _stream(request, wire, writes, ctx, fault)
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


async def _stream(request: web.Request, wire: Wire, writes: StreamWrites, ctx: Ctx, fault: Fault | None) -> web.StreamResponse:
    """Send a stream's writes paced by ``ctx``: headers and the first token after the time to
    first token, each later token ``per_token_s`` after the one before (on a fixed schedule,
    so slow writes do not add up). A ``cut`` / ``stall`` fault ends the stream after its last
    write (see :func:`stream_writes`)."""
    if ctx.ttft_s > 0:
        await asyncio.sleep(ctx.ttft_s)
    response = web.StreamResponse(headers={**STREAM_HEADERS, "Content-Type": wire.stream_type})
    writer = await response.prepare(request)  # a StreamResponse sends its headers here
    transport = request.transport
    if transport is None or writer is None:
        raise ConnectionResetError("the client went away")
    pacer = _Pacer(transport, writer, writes, ctx.per_token_s)
    try:
        first = await pacer.run()
        while first is None:  # the client reads slower than the stream comes
            await writer.drain()
            first = await pacer.resume()
    finally:
        pacer.stop()
    wait = pacer.due - asyncio.get_running_loop().time()
    if wait > 0:
        await asyncio.sleep(wait)
    rest = b"".join(writes.data[first:])
    if writes.ends:
        await response.write_eof(rest)  # one write: the last frames and the end of the body
        return response
    await response.write(rest)
    if fault is not None and fault.kind == "stall":
        await request.app[RUNTIME].hang(fault.hang_s)
    return _drop(request, response)


@dataclass(slots=True)
class StreamWrites:
    """A stream's writes: ``data[i]`` is due ``tokens[i]`` generated tokens after ``data[i - 1]``.

    Plain lists, not an object per write or frame: a stream keeps its writes for seconds, and
    thousands of small objects held that long keep the cyclic garbage collector busy.
    """

    tokens: list[int]
    data: list[bytes]
    flush: int = -1
    """A write that goes out alone even when the next one is already due (a fault's flush)."""
    ends: bool = True
    """False: the stream is cut after its last write instead of ending."""


def stream_writes(frames: list[Frame], per_token_s: float, fault: Fault | None, broken: Callable[[bytes], bytes]) -> StreamWrites:
    """Group ``frames`` into writes: one per token frame with the frames without tokens that
    follow it; the first token goes out with what precedes it (the time to first token
    covers it).

    A ``cut`` / ``stall`` / ``malformed`` fault strikes at the middle frame, never the first,
    so something is always delivered first: what is pending is flushed there and the stream
    ends (cut, stall), or goes on with that frame made malformed by ``broken`` and its tokens
    not waited for.
    """
    strike = max(1, len(frames) // 2) if fault is not None else -1
    paced = per_token_s > 0
    out = StreamWrites([], [])
    parts: list[bytes] = []
    tokens = 0
    first_token = True
    for index, frame in enumerate(frames):
        if index == strike:
            out.flush = len(out.data)
            out.tokens.append(tokens)
            out.data.append(b"".join(parts))
            if fault is None or fault.kind != "malformed":
                out.ends = False
                return out
            parts, tokens = [broken(frame.data)], 0
            continue
        if frame.tokens and paced:
            if first_token:
                first_token = False
            else:
                out.tokens.append(tokens)
                out.data.append(b"".join(parts))
                parts, tokens = [], frame.tokens
        parts.append(frame.data)
    out.tokens.append(tokens)
    out.data.append(b"".join(parts))
    return out


class _Pacer:
    """Sends a stream's writes, all but the last, each when due, from timer callbacks.

    Per token that is one timer and one ``transport.write``: no future, no task wake-up and
    no trip down the coroutine stack of aiohttp's handler and its writer. The bytes are the
    ones aiohttp's writer would send (its chunked framing included), and writes that are due
    at the same time (the loop ran late) go out together, as one write.
    """

    __slots__ = (
        "_chunked",
        "_done",
        "_index",
        "_loop",
        "_per_token_s",
        "_timer",
        "_transport",
        "_writer",
        "_writes",
        "due",
    )

    def __init__(self, transport: asyncio.Transport, writer: AbstractStreamWriter, writes: StreamWrites,
                 per_token_s: float, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """``loop``: the running one unless given (a test drives it on a virtual clock)."""
        self._loop = loop or asyncio.get_running_loop()
        self._transport = transport
        self._writer = writer
        self._chunked: bool = getattr(writer, "chunked", False)
        self._writes = writes
        self._per_token_s = per_token_s
        self._index = 0
        self._timer: asyncio.TimerHandle | None = None
        self._done: asyncio.Future[int | None] = self._loop.create_future()
        self.due = self._loop.time()
        """When the write at ``_index`` is due."""

    def run(self) -> asyncio.Future[int | None]:
        """Send what is due now and the rest on time. The future holds the index of the first
        write left unsent (they, the last included, are due at :attr:`due`), or None when the
        client has too much unread: drain, then :meth:`resume`."""
        self._send()
        return self._done

    def resume(self) -> asyncio.Future[int | None]:
        self._done = self._loop.create_future()
        self._timer = self._loop.call_at(self.due, self._send)
        return self._done

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _send(self) -> None:
        """Write from ``_index`` (due now) on what is due, then wait for the next write."""
        self._timer = None
        loop, tokens, flush = self._loop, self._writes.tokens, self._writes.flush
        last = len(tokens) - 1
        i = first = self._index  # writes first..i are due and unsent
        while i < last:
            if i == flush:
                if not self._put(first, i + 1):
                    return
                first = i + 1
            i += 1
            if tokens[i]:
                self.due += tokens[i] * self._per_token_s
                if self.due > loop.time():
                    if first < i and not self._put(first, i):
                        return
                    first = self._index = i
                    if i == last:
                        break
                    if self._transport.get_write_buffer_size() > DRAIN_AT:
                        self._done.set_result(None)
                    else:
                        self._timer = loop.call_at(self.due, self._send)
                    return
        self._index = i
        self._done.set_result(first)

    def _put(self, first: int, stop: int) -> bool:
        transport = self._transport
        if transport.is_closing():
            self._done.set_exception(ConnectionResetError("Cannot write to closing transport"))
            return False
        data = self._writes.data[first] if stop - first == 1 else b"".join(self._writes.data[first:stop])
        self._writer.output_size += len(data)
        # aiohttp's chunked framing, written here so that a token costs no coroutine
        transport.write(b"%x\r\n%b\r\n" % (len(data), data) if self._chunked else data)
        return True
