"""A provider emulator: a real HTTP server that speaks a vendor's wire format.

Why it exists: the demo, the tests and the benchmarks need an upstream that behaves
like a provider on the wire (real sockets, real HTTP, real JSON) without keys, cost
or network flakiness. Mocking the HTTP client would skip exactly the part the router
has to get right, so this is a server, not a mock.

What it promises (OpenAI chat completions, non-streaming):

- ``POST /v1/chat/completions`` answers in the OpenAI response shape, with
  ``system_fingerprint: "emulated"`` and the response header ``x-emulated: true``,
  so nothing it serves can be mistaken for a real model's output.
- Content and usage are pure functions of the request: the same body always gets the
  same ``choices`` and ``usage`` (only ``id`` and ``created`` vary).
  ``content = "[emulated MODEL] " + the first 12 words of the last user message,
  reversed``; tokens are estimated as ``ceil(chars / 4)``, plus 3 per prompt message.
  ``max_tokens`` (or ``max_completion_tokens``) caps the completion: the content is cut
  to ``4 * max_tokens`` characters and ``finish_reason`` becomes ``"length"``.
- Latency: every chat completion that parsed waits ``latency_ms`` before answering
  (injected faults included); the request header ``x-emulator-latency-ms`` overrides
  it per request. Malformed requests are answered at once.
- Faults: ``faults`` maps a model name to an HTTP status; requests for that model get
  that status and an OpenAI-style error body (429 adds ``retry-after: 1``).
- Malformed JSON, a body that does not fit the request shape, or ``stream: true``
  (not emulated yet) get a 400 with an OpenAI-style error body.
- ``GET /v1/models`` lists a few generic names plus the faulty models; any model name
  is accepted by chat completions anyway. ``GET /health`` says it is up and emulated.

Speed matters (benchmarks push thousands of requests per second through it on two
cores): msgspec Structs decode and encode the bodies, access logging is off, nothing
is logged per request, and each handler does the minimum.

Layout: one small function per route, wire types next to them; other vendors' wire
formats and streaming are meant to be added as more routes of the same shape.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import time
from dataclasses import dataclass, field
from typing import Annotated

import msgspec
from aiohttp import web

__all__ = ["Emulator", "create_app", "serve", "start_emulator"]

LATENCY_HEADER = "x-emulator-latency-ms"
GENERIC_MODELS = ("emulator-small", "emulator-medium", "emulator-large")
REPLY_WORDS = 12
CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 3
# The OS caps this at net.core.somaxconn; the default 128 drops SYNs (and costs a
# 1 s retransmit) when a benchmark opens a couple of thousand connections at once.
LISTEN_BACKLOG = 4096
# In-flight requests get this long to finish on close(); a long emulated latency
# must not hold a test's teardown hostage.
SHUTDOWN_TIMEOUT_S = 2.0


# --- OpenAI wire types -------------------------------------------------------------


class ContentPart(msgspec.Struct):
    """One part of a multi-part message content; only text parts carry text."""

    type: str
    text: str | None = None


class ChatMessage(msgspec.Struct):
    """A request message; unknown fields (name, tool_calls, ...) are ignored."""

    role: str
    content: str | list[ContentPart] | None = None


class ChatCompletionRequest(msgspec.Struct):
    """The fields of an OpenAI chat completion request the emulator looks at."""

    model: str
    messages: list[ChatMessage]
    temperature: float | None = None
    max_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    max_completion_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    stream: bool = False


class AssistantMessage(msgspec.Struct):
    role: str
    content: str


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


class ModelCard(msgspec.Struct):
    id: str
    created: int
    object: str = "model"
    owned_by: str = "emulator"


class ModelList(msgspec.Struct):
    data: list[ModelCard]
    object: str = "list"


class ErrorDetail(msgspec.Struct):
    message: str
    type: str
    code: str | None
    param: str | None = None


class ErrorBody(msgspec.Struct):
    error: ErrorDetail


_decode_chat = msgspec.json.Decoder(ChatCompletionRequest).decode
_encode = msgspec.json.Encoder().encode

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
}


# --- settings ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EmulatorSettings:
    """What one emulator app was created with; read by the handlers on each request."""

    latency_ms: float = 0.0
    faults: dict[str, int] = field(default_factory=dict)
    started: int = field(default_factory=lambda: int(time.time()))


_SETTINGS = web.AppKey("emulator_settings", EmulatorSettings)
_ids = itertools.count(1)
_ID_PREFIX = os.urandom(4).hex()


# --- pure parts (no I/O) -----------------------------------------------------------


def _text(content: str | list[ContentPart] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return " ".join(part.text for part in content if part.text)


def _estimate_tokens(chars: int) -> int:
    return math.ceil(chars / CHARS_PER_TOKEN)


def complete(body: ChatCompletionRequest) -> tuple[str, str, Usage]:
    """The deterministic answer to a request: (content, finish_reason, usage)."""
    texts = [_text(m.content) for m in body.messages]
    prompt_tokens = _estimate_tokens(sum(map(len, texts))) + TOKENS_PER_MESSAGE * len(texts)
    last_user = next(
        (t for m, t in zip(reversed(body.messages), reversed(texts)) if m.role == "user"),
        texts[-1],
    )
    words = last_user.split()[:REPLY_WORDS]
    content = f"[emulated {body.model}] " + (" ".join(reversed(words)) or "(empty prompt)")
    completion_tokens = _estimate_tokens(len(content))
    finish_reason = "stop"
    cap = body.max_completion_tokens or body.max_tokens
    if cap is not None and completion_tokens > cap:
        content = content[: cap * CHARS_PER_TOKEN]
        completion_tokens = cap
        finish_reason = "length"
    usage = Usage(prompt_tokens, completion_tokens, prompt_tokens + completion_tokens)
    return content, finish_reason, usage


def _completion_id(n: int) -> str:
    """Unique across requests and across emulator processes (random per-process prefix)."""
    return f"chatcmpl-emu-{_ID_PREFIX}{n:x}"


# --- responses ---------------------------------------------------------------------


def _json(body: bytes, status: int = 200, extra: dict[str, str] | None = None) -> web.Response:
    headers = {"Content-Type": "application/json", "x-emulated": "true"}
    if extra:
        headers.update(extra)
    return web.Response(body=body, status=status, headers=headers)


def error_response(status: int, message: str) -> web.Response:
    """An OpenAI-style error answer; 429 tells the client when to retry."""
    kind, code = _ERROR_KINDS.get(status, ("server_error", "server_error"))
    body = _encode(ErrorBody(ErrorDetail(message=message, type=kind, code=code)))
    extra = {"retry-after": "1"} if status == 429 else None
    return _json(body, status, extra)


def _latency_s(request: web.Request, default_ms: float) -> float:
    """The latency for this request in seconds; raises ValueError on a bad header."""
    raw = request.headers.get(LATENCY_HEADER)
    if raw is None:
        return default_ms / 1000.0
    value = float(raw)
    if not math.isfinite(value) or value < 0:
        raise ValueError(raw)
    return value / 1000.0


# --- routes ------------------------------------------------------------------------


async def chat_completions(request: web.Request) -> web.Response:
    """POST /v1/chat/completions, OpenAI wire format, non-streaming."""
    settings = request.app[_SETTINGS]
    try:
        delay = _latency_s(request, settings.latency_ms)
    except ValueError:
        return error_response(400, f"{LATENCY_HEADER} must be a non-negative number")
    try:
        body = _decode_chat(await request.read())
    except msgspec.DecodeError as exc:  # ValidationError is a subclass
        return error_response(400, f"invalid request body: {exc}")
    if not body.messages:
        return error_response(400, "messages must not be empty")
    if body.stream:
        return error_response(400, "stream=true is not emulated yet")
    if delay > 0:
        await asyncio.sleep(delay)
    status = settings.faults.get(body.model)
    if status is not None:
        return error_response(status, f"emulated fault {status} for model {body.model!r}")
    content, finish_reason, usage = complete(body)
    answer = ChatCompletion(
        id=_completion_id(next(_ids)),
        model=body.model,
        created=int(time.time()),
        choices=[Choice(0, AssistantMessage("assistant", content), finish_reason)],
        usage=usage,
    )
    return _json(_encode(answer))


async def list_models(request: web.Request) -> web.Response:
    """GET /v1/models: generic names plus every model with an injected fault."""
    settings = request.app[_SETTINGS]
    names = [*GENERIC_MODELS, *sorted(settings.faults.keys() - set(GENERIC_MODELS))]
    return _json(_encode(ModelList([ModelCard(n, settings.started) for n in names])))


_HEALTH = msgspec.json.encode({"status": "ok", "emulated": True})


async def health(request: web.Request) -> web.Response:
    """GET /health: liveness, and a reminder that this is not a real provider."""
    return _json(_HEALTH)


# --- app and server ----------------------------------------------------------------


def create_app(latency_ms: float = 0.0, faults: dict[str, int] | None = None) -> web.Application:
    """Build the emulator app; ``faults`` is copied, so later edits to it have no effect."""
    if not math.isfinite(latency_ms) or latency_ms < 0:
        raise ValueError(f"latency_ms must be a non-negative number, got {latency_ms!r}")
    faults = dict(faults or {})
    for model, status in faults.items():
        if not 400 <= status <= 599:
            raise ValueError(f"fault status for {model!r} must be 4xx or 5xx, got {status}")
    app = web.Application()
    app[_SETTINGS] = EmulatorSettings(latency_ms=latency_ms, faults=faults)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/health", health)
    return app


class Emulator:
    """A running emulator: where it listens, and how to stop it."""

    def __init__(self, runner: web.AppRunner, host: str, port: int) -> None:
        self._runner = runner
        self.host = host
        self.port = port
        netloc = f"[{host}]" if ":" in host else host
        self.url = f"http://{netloc}:{port}/v1"

    async def close(self) -> None:
        """Stop listening and close connections; safe to call twice."""
        await self._runner.cleanup()

    async def __aenter__(self) -> Emulator:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"Emulator(url={self.url!r})"


async def start_emulator(
    host: str = "127.0.0.1",
    port: int = 0,
    latency_ms: float = 0.0,
    faults: dict[str, int] | None = None,
) -> Emulator:
    """Start an emulator on ``host:port`` (0 picks a free port) and report where it is."""
    app = create_app(latency_ms=latency_ms, faults=faults)
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT_S
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, backlog=LISTEN_BACKLOG)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_port = runner.addresses[0][1]
    return Emulator(runner, host, bound_port)


async def serve(host: str, port: int, latency_ms: float) -> None:
    """Run an emulator until cancelled; the CLI's ``emulate`` command calls this."""
    emulator = await start_emulator(host, port, latency_ms)
    try:
        print(
            f"emulator ready: {emulator.url} "
            f"(emulated OpenAI chat completions, latency {latency_ms:g} ms)",
            flush=True,
        )
        await asyncio.Event().wait()
    finally:
        await emulator.close()
