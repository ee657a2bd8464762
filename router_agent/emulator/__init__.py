"""A provider emulator: one real HTTP server that speaks every vendor's wire format.

Why it exists: the demo, the tests and the benchmarks need upstreams that behave like
providers on the wire (real sockets, real HTTP, real JSON, real SSE) without keys, cost or
network flakiness. Mocking the HTTP client would skip exactly the part the router has to
get right, so this is a server, not a mock; the vendors' own SDKs accept it when pointed
at it (``tests/test_emulator_sdks.py`` proves it for openai, anthropic and google-genai).

What it serves, on one port (every path also answers under ``/v1``, see
:data:`~router_agent.emulator.server.VENDOR_ROUTES`):

- OpenAI Chat Completions ``POST /v1/chat/completions`` (JSON or SSE), ``GET /v1/models``
  (:mod:`.openai_wire`);
- Anthropic Messages ``POST /v1/messages`` (JSON or SSE events) (:mod:`.anthropic_wire`);
- Gemini ``POST /v1beta/models/{model}:generateContent`` / ``:streamGenerateContent``
  (``?alt=sse``) / ``:countTokens``, ``GET /v1beta/models`` (:mod:`.gemini_wire`);
- Ollama ``POST /api/chat`` (NDJSON or JSON), ``GET /api/tags``, ``GET /api/version``
  (:mod:`.ollama_wire`);
- ``GET /health``, and the admin endpoint ``/admin/faults``, ``/admin/models``,
  ``/admin/stats`` (:mod:`.admin`).

What it promises:

- Nothing it serves can be mistaken for a real model's output: every response has the
  header ``x-emulated: true``; text replies start with ``[emulated MODEL]``; OpenAI answers
  say ``system_fingerprint: "emulated"``; ids contain ``emu``.
- Content and usage are pure functions of the request (only ids and timestamps vary):
  ``"[emulated MODEL] "`` + the first 12 words of the last user message, reversed; tokens
  are ``ceil(chars / 4)`` plus 3 per prompt message. ``max_tokens`` (each vendor's name for
  it) cuts the content to ``4 * max_tokens`` characters with the vendor's "length" finish
  reason. Tool calls and JSON mode follow the rules in :mod:`.content`.
- Timing per model (:class:`ModelProfile`): time to first token, tokens per second, jitter
  from a seeded source. ``latency_ms`` is the default time to first token; the request
  header ``x-emulator-latency-ms`` overrides it per request (``x-emulator-tokens-per-s``
  the pace). An answer that is not streamed arrives after the time to first token plus the
  generation time; injected errors after the time to first token; malformed requests at once.
- Faults per model (:class:`FaultSpec`): a fixed status, error rates by status, 429 bursts
  with ``Retry-After``, 529 overload, hangs, malformed bodies, streams cut or stalled
  mid-way, scheduled outages; each vendor renders errors in its own error shape. They are
  set by file (``config/emulator.yaml``), flags, :meth:`Emulator.set_fault` or the admin
  endpoint while it runs.

Speed matters (benchmarks push thousands of requests per second through it on two cores):
msgspec Structs decode and encode bodies, access logging is off, nothing is logged per
request, an instant stream is written in one piece, and a request without faults or
latency does a few dict look-ups beyond decoding and encoding.
"""

from __future__ import annotations

from router_agent.emulator.respond import LATENCY_HEADER, TOKENS_PER_S_HEADER
from router_agent.emulator.server import Emulator, build_config, create_app, serve, start_emulator
from router_agent.emulator.settings import (
    EmulatorConfig,
    FaultSpec,
    ModelProfile,
    Outage,
    load_config,
)

__all__ = [
    "LATENCY_HEADER",
    "TOKENS_PER_S_HEADER",
    "Emulator",
    "EmulatorConfig",
    "FaultSpec",
    "ModelProfile",
    "Outage",
    "build_config",
    "create_app",
    "load_config",
    "serve",
    "start_emulator",
]
