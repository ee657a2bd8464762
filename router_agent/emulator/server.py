"""The emulator as a server: the route table, start and stop, and the ``emulate`` command's loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any, Self

import msgspec
from aiohttp import web

from router_agent.emulator import anthropic_wire, gemini_wire, ollama_wire, openai_wire
from router_agent.emulator.admin import add_admin_routes
from router_agent.emulator.respond import json_response
from router_agent.emulator.runtime import RUNTIME, Runtime
from router_agent.emulator.settings import EmulatorConfig, FaultSpec, ModelProfile, to_fault_spec

__all__ = ["Emulator", "build_config", "create_app", "serve", "start_emulator"]

# The OS caps this at net.core.somaxconn; the default 128 drops SYNs (and costs a
# 1 s retransmit) when a benchmark opens a couple of thousand connections at once.
LISTEN_BACKLOG = 4096
# In-flight requests get this long to finish on close(); a long emulated latency
# must not hold a test's teardown hostage.
SHUTDOWN_TIMEOUT_S = 2.0

VENDOR_ROUTES: list[tuple[str, str, Callable[[web.Request], Any]]] = [
    ("POST", "/v1/chat/completions", openai_wire.chat_completions),
    ("GET", "/v1/models", openai_wire.list_models),
    ("GET", "/v1/models/{model}", openai_wire.retrieve_model),
    ("POST", "/v1/messages", anthropic_wire.messages),
    ("POST", "/v1beta/models/{spec}", gemini_wire.models_action),
    ("GET", "/v1beta/models", gemini_wire.list_models),
    ("POST", "/v1/models/{spec}", gemini_wire.models_action),
    ("POST", "/api/chat", ollama_wire.chat),
    ("GET", "/api/tags", ollama_wire.tags),
    ("GET", "/api/version", ollama_wire.version),
]
"""Every vendor path, as the vendors spell them. The non-OpenAI ones are also served under
``/v1`` (``/v1/v1/messages``, ``/v1/api/chat``, ...), so a provider whose base URL is the
emulator's :attr:`Emulator.url` reaches any format by appending its vendor's usual path."""

_HEALTH = msgspec.json.encode({"status": "ok", "emulated": True})


async def health(request: web.Request) -> web.Response:
    """GET /health: liveness, and a reminder that this is not a real provider."""
    return json_response(_HEALTH)


async def not_found(request: web.Request) -> web.Response:
    return openai_wire.error_response(404, f"the emulator does not serve {request.method} {request.path}")


def build_config(
    config: EmulatorConfig | None = None,
    *,
    latency_ms: float | None = None,
    faults: Mapping[str, FaultSpec | int | Mapping[str, Any]] | None = None,
    models: Mapping[str, ModelProfile | Mapping[str, Any]] | None = None,
    **changes: Any,
) -> EmulatorConfig:
    """``config`` (default: zero latency, no faults) with the given settings replaced and checked."""
    fields = msgspec.structs.asdict(config or EmulatorConfig(latency_ms=0.0))
    if latency_ms is not None:
        fields["latency_ms"] = latency_ms
    if faults is not None:
        fields["faults"] = {model: to_fault_spec(spec) for model, spec in faults.items()}
    if models is not None:
        fields["models"] = {
            name: p if isinstance(p, ModelProfile) else msgspec.convert(dict(p), ModelProfile)
            for name, p in models.items()
        }
    fields.update({k: v for k, v in changes.items() if v is not None})
    return EmulatorConfig(**fields)


def create_app(
    latency_ms: float | None = None,
    faults: Mapping[str, FaultSpec | int | Mapping[str, Any]] | None = None,
    *,
    config: EmulatorConfig | None = None,
    **changes: Any,
) -> web.Application:
    """Build the emulator app; the settings are copied, so later edits to them have no effect
    (change a running emulator through :class:`Emulator` or the admin endpoint)."""
    runtime = Runtime(build_config(config, latency_ms=latency_ms, faults=faults, **changes))
    app = web.Application()
    app[RUNTIME] = runtime
    for method, path, handler in VENDOR_ROUTES:
        app.router.add_route(method, path, handler)
        if not path.startswith("/v1/") or path == "/v1/messages":
            app.router.add_route(method, "/v1" + path, handler)
    app.router.add_get("/health", health)
    add_admin_routes(app, runtime)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app


class Emulator:
    """A running emulator: where it listens, how to change it, and how to stop it.

    ``url`` is the OpenAI-style base (``http://host:port/v1``); ``base_url`` is the root
    that the Anthropic, Gemini and Ollama SDKs take.
    """

    def __init__(self, runner: web.AppRunner, runtime: Runtime, host: str, port: int) -> None:
        self._runner = runner
        self.runtime = runtime
        self.host = host
        self.port = port
        netloc = f"[{host}]" if ":" in host else host
        self.base_url = f"http://{netloc}:{port}"
        self.url = f"{self.base_url}/v1"
        self.admin_url = f"{self.base_url}/admin"

    def set_fault(self, model: str, spec: FaultSpec | int | Mapping[str, Any] | None) -> None:
        """Set (``None``: remove) one model's faults; ``"*"`` applies to every other model."""
        self.runtime.set_fault(model, None if spec is None else to_fault_spec(spec))

    def set_faults(self, faults: Mapping[str, FaultSpec | int | Mapping[str, Any]]) -> None:
        """Replace the whole fault table."""
        self.runtime.replace_faults({m: to_fault_spec(s) for m, s in faults.items()})

    def set_profile(self, model: str, profile: ModelProfile | Mapping[str, Any] | None) -> None:
        if profile is not None and not isinstance(profile, ModelProfile):
            profile = msgspec.convert(dict(profile), ModelProfile)
        self.runtime.set_profile(model, profile)

    def stats(self) -> dict[str, object]:
        return self.runtime.stats()

    async def wait_for(self, predicate: Callable[[Runtime], bool]) -> None:
        """Return once ``predicate(runtime)`` holds (e.g. ``lambda r: r.hanging == 2``)."""
        await self.runtime.until(lambda: predicate(self.runtime))

    async def close(self) -> None:
        """Release hanging requests, stop listening, close connections; safe to call twice."""
        self.runtime.closing.set()
        await self._runner.cleanup()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"Emulator(url={self.url!r})"


async def start_emulator(
    host: str | None = None,
    port: int | None = None,
    latency_ms: float | None = None,
    faults: Mapping[str, FaultSpec | int | Mapping[str, Any]] | None = None,
    *,
    config: EmulatorConfig | None = None,
    **changes: Any,
) -> Emulator:
    """Start an emulator (default 127.0.0.1, a free port, no latency) and report where it is.

    ``changes`` are further :class:`EmulatorConfig` fields (``seed``, ``tokens_per_s``,
    ``jitter``, ``models``, ``admin_token``); explicit arguments win over ``config``.
    """
    host = host if host is not None else (config.host if config else "127.0.0.1")
    port = port if port is not None else (config.port if config else 0)
    app = create_app(latency_ms, faults, config=config, **changes)
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        handler_cancellation=True,  # a client that gives up frees its hanging handler
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, backlog=LISTEN_BACKLOG)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_port = runner.addresses[0][1]
    return Emulator(runner, app[RUNTIME], host, bound_port)


async def serve(
    host: str | None = None,
    port: int | None = None,
    latency_ms: float | None = None,
    *,
    config: EmulatorConfig | None = None,
) -> None:
    """Run an emulator until cancelled; the CLI's ``emulate`` command calls this.

    Without ``config`` the CLI's defaults apply (port 8000, 40 ms to the first token).
    """
    config = config or EmulatorConfig()
    emulator = await start_emulator(host, port, latency_ms, config=config)
    runtime = emulator.runtime
    try:
        print(
            f"emulator ready: {emulator.url} "
            f"(emulated OpenAI, Anthropic, Gemini and Ollama APIs, "
            f"latency {runtime.default.ttft_ms or 0:g} ms, admin {emulator.admin_url})",
            flush=True,
        )
        await asyncio.Event().wait()
    finally:
        await emulator.close()
