"""The router agent: an actor on NATS that owns the router's state.

Theory of operation
-------------------
nats-py awaits a subscription's callbacks one at a time, so every handler here is short:
it decodes and checks the signal, then hands slow work (HTTP calls, probes) to a child
task. Child tasks report back by calling the agent's ``_record_*`` methods, which run on
the same event loop between awaits: the agent is the only writer of its state and needs
no locks. ``llm_request`` tasks are bounded by ``max_concurrent_requests``; at the bound
the request subscription waits (NATS buffers), so no request is dropped.

Every ``llm_request`` ends in exactly one ``llm_response``: ``_serve`` answers on every
path, including cancellation at shutdown and unexpected exceptions.

The surface, in one place (see ``RouterAgent._handlers``):

| subject             | handler                  | input             | publishes |
|---------------------|--------------------------|-------------------|-----------|
| llm_request (queue) | _on_llm_request          | LlmRequest        | routing_decision.<agent>, llm_response.<agent> (+ reply) |
| provider_register   | _on_provider_register    | ProviderRegister  | provider_registered.<provider> (+ reply) |
| provider_update     | _on_provider_update      | ProviderUpdate    | provider_registered.<provider> (+ reply) |
| provider_health     | _on_provider_health      | ProviderHealth    | router_error on bad input |
| (timer)             | _publish_metrics         |                   | provider_metrics.<provider> |
| (timer)             | _publish_cost_report     |                   | cost_report |
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from router_agent.bus import sync_subscriptions
from router_agent.config import Config, ProviderConfig
from router_agent.core.breaker import Breaker
from router_agent.core.cost import cost_usd
from router_agent.core.endpoints import check_endpoint, endpoint_host
from router_agent.core.routing import Deployment, ProviderView, candidate_models, route
from router_agent.http import HttpClient
from router_agent.providers.base import Adapter, ProviderError
from router_agent.providers.openai import OpenAIAdapter
from router_agent.state import (
    ActiveRequest,
    ModelEntry,
    ProviderEntry,
    ProviderState,
    RateLimiter,
    RouterState,
    SecretStore,
)
from router_agent.telemetry import Tracing
from signals import (
    AssistantMessage,
    Attempt,
    CostLine,
    CostReport,
    ErrorInfo,
    EventFactory,
    LlmRequest,
    LlmResponse,
    ProviderHealth,
    ProviderMetrics,
    ProviderRegister,
    ProviderRegistered,
    ProviderStats,
    ProviderUpdate,
    RouterError,
    RoutingDecision,
    SignalError,
    Subjects,
    Usage,
    decode_event,
)
from signals.types import ErrorCode

log = logging.getLogger("router_agent")

SUPPORTED_APIS = {"openai"}
"""Wire formats the agent has an adapter for; other vendors are emulated until theirs lands."""


class _Partial(msgspec.Struct):
    """What can still be read from an invalid request, to address the error answer."""

    request_id: str | None = None
    agent_id: str | None = None


class _PartialEvent(msgspec.Struct):
    data: _Partial | None = None


def _partial(payload: bytes) -> _Partial:
    try:
        event = msgspec.json.decode(payload, type=_PartialEvent)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return _Partial()
    return event.data or _Partial()


def _short(value: str | None, limit: int = 128) -> str:
    return (value or "")[:limit]


class RouterAgent:
    def __init__(
        self,
        config: Config,
        nc: Client,
        http: HttpClient | None = None,
        emulator_url: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        tracing: Tracing | None = None,
    ):
        self.config = config
        self.settings = config.router
        self.nc = nc
        self.http = http or HttpClient()
        self.emulator_url = emulator_url.rstrip("/") if emulator_url else None
        self.clock = clock
        self.instance_id = self.settings.instance_id or f"{socket.gethostname()}-{os.getpid()}"
        self.subjects = Subjects(self.settings.subject_prefix)
        self.events = EventFactory(f"router-agent/{self.instance_id}")
        self.state = RouterState()
        self.secrets = SecretStore()
        self.tracing = tracing or Tracing(config.telemetry)
        self.adapters: dict[str, Adapter] = {"openai": OpenAIAdapter(self.http)}
        self.started_at = datetime.now(UTC).isoformat(timespec="seconds")

        self._deployments_by_model: dict[str, list[Deployment]] = {}
        self._model_names: list[str] = []
        self._provider_views: dict[str, ProviderView] = {}
        self._cost_by: dict[str, dict[str, CostLine]] = {"agent": {}, "model": {}, "provider": {}}
        self._cost_total = CostLine()
        self._slots = asyncio.Semaphore(self.settings.max_concurrent_requests)
        self._request_tasks: set[asyncio.Task[None]] = set()
        self._control_tasks: set[asyncio.Task[None]] = set()
        self._subscriptions: list = []
        self._request_sub = None
        self._timers: list[asyncio.Task[None]] = []
        self._stopping = False

        self.state.routing_rules = [
            {"agent": agent_id, "condition": rule.condition, "model": rule.model}
            for agent_id, agent in config.agents.items()
            for rule in agent.routing_rules
        ]
        self.state.load_balancing.strategy = config.routing.default_strategy

    # ------------------------------------------------------------------ the surface

    def _handlers(self) -> list[tuple[str, str, Callable[[Msg], Awaitable[None]]]]:
        """(subject, queue group, handler): every subject the agent listens on."""
        s = self.subjects
        return [
            (s.llm_request, self.settings.queue_group, self._guarded(self._on_llm_request, self._reject_request)),
            (s.provider_register, "", self._guarded(self._on_provider_register, self._router_error)),
            (s.provider_update, "", self._guarded(self._on_provider_update, self._router_error)),
            (s.provider_health, "", self._guarded(self._on_provider_health, self._router_error)),
        ]

    def _guarded(
        self,
        handler: Callable[[Msg], Awaitable[None]],
        answer: Callable[[Msg, SignalError], Awaitable[None]],
    ) -> Callable[[Msg], Awaitable[None]]:
        """A bug in a handler still gets the sender a typed answer, and the agent goes on."""

        async def guarded(msg: Msg) -> None:
            try:
                await handler(msg)
            except Exception:
                log.exception("handler for %s failed", msg.subject)
                await answer(msg, SignalError("internal", "internal router error"))

        return guarded

    async def start(self) -> None:
        """Load configured providers, subscribe, start the periodic reports."""
        await self._load_configured_providers()
        for subject, queue, handler in self._handlers():
            sub = await self.nc.subscribe(subject, queue=queue, cb=handler)
            self._subscriptions.append(sub)
            if subject == self.subjects.llm_request:
                self._request_sub = sub
        await sync_subscriptions(self.nc)
        self._timers = [
            asyncio.create_task(self._every(self.settings.metrics_interval_s, self._publish_metrics)),
            asyncio.create_task(self._every(self.settings.cost_report_interval_s, self._publish_cost_report)),
        ]

    async def stop(self) -> None:
        """Stop taking requests, finish (or fail, with an answer) in-flight ones, drain."""
        if self._stopping:
            return
        self._stopping = True
        # Drain, not unsubscribe: the server stops sending us requests at once (the queue
        # group gives new ones to other instances), and messages nats-py already buffered
        # still get a shutting_down answer instead of vanishing. The drain finishes only
        # after the grace period, because a buffered message may be waiting for a slot.
        drained = None
        if self._request_sub is not None:
            drained = asyncio.ensure_future(self._request_sub.drain())
        if self._request_tasks:
            _, pending = await asyncio.wait(set(self._request_tasks), timeout=self.settings.shutdown_grace_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        if drained is not None:
            with contextlib.suppress(nats.errors.Error, OSError, RuntimeError):
                await drained
        for task in [*self._timers, *self._control_tasks]:
            task.cancel()
        await asyncio.gather(*self._timers, *self._control_tasks, return_exceptions=True)
        await self._publish_cost_report()
        try:
            for sub in self._subscriptions:
                if sub is not self._request_sub:
                    await sub.unsubscribe()
            if self.nc.is_connected:
                await self.nc.flush(timeout=2)
        except (TimeoutError, nats.errors.Error, OSError, RuntimeError) as exc:
            # The bus went away first: the answers are published as far as it allowed.
            log.warning("bus unavailable while stopping: %s", type(exc).__name__)
        finally:
            await self.http.close()
            self.tracing.shutdown()

    # ------------------------------------------------------------------ providers

    async def _load_configured_providers(self) -> None:
        """Providers from models.yaml; each is real, emulated (and says why) or disabled."""
        cfg = self.config
        grouped: dict[str, dict[str, ModelEntry]] = {name: {} for name in cfg.providers}
        for model_name, model in cfg.models.items():
            provider = cfg.providers[model.provider]
            grouped[model.provider][model_name] = ModelEntry(
                model_id=model.model_id or model_name,
                type=model.type,
                base_url=(model.endpoint or provider.base_url or "").rstrip("/"),
                capabilities=list(model.capabilities),
                price_in=model.cost_per_1k_tokens.input,
                price_out=model.cost_per_1k_tokens.output,
                context_window=model.context_window,
                requests_per_minute=model.rate_limits.requests_per_minute,
                tokens_per_minute=model.rate_limits.tokens_per_minute,
                enabled=model.enabled,
            )
        decisions = await asyncio.gather(
            *(self._emulation_for(name, cfg.providers[name], models) for name, models in grouped.items())
        )
        for (name, models), (emulated, reason) in zip(grouped.items(), decisions):
            provider = cfg.providers[name]
            key = _read_key(provider.api_key_env, provider.api_key_file)
            enabled = provider.enabled
            if emulated:
                if self.emulator_url is None:
                    reason, enabled = f"{reason}; no emulator available", False
                else:
                    for entry in models.values():
                        entry.base_url = self.emulator_url
                key = None
            elif reason:
                enabled = False
            self.secrets.set(name, key)
            self._add_provider(
                ProviderEntry(
                    name=name,
                    api=provider.api if not emulated else "openai",
                    type=provider.type,
                    base_url=(provider.base_url or "").rstrip("/"),
                    models=models,
                    weight=provider.weight,
                    enabled=enabled,
                    timeout_ms=provider.timeout_ms,
                    emulated=emulated,
                    emulated_reason=reason if emulated else "",
                    has_key=key is not None,
                    source="config",
                )
            )
            if reason and not emulated:
                self.state.provider_states[name].health_detail = reason
        self._rebuild_routing_tables()

    async def _emulation_for(
        self, name: str, provider: ProviderConfig, models: dict[str, ModelEntry]
    ) -> tuple[bool, str]:
        """(emulated, why) for a configured provider; why without emulation means disabled."""
        mode = self.config.emulation.mode
        if mode == "always":
            return True, "emulation mode is 'always'"
        if provider.api not in SUPPORTED_APIS:
            why = f"no adapter for the {provider.api!r} API yet"
            return (mode == "auto"), why
        if provider.type == "cloud":
            if _read_key(provider.api_key_env, provider.api_key_file) is None:
                why = f"no API key in ${provider.api_key_env}" if provider.api_key_env else "no API key"
                return (mode == "auto"), why
            return False, ""
        if mode == "never":
            return False, ""
        urls = sorted({m.base_url for m in models.values()})
        results = await asyncio.gather(*(self._probe(provider.api, url, None) for url in urls))
        down = [detail for ok, detail, _ in results if not ok]
        if down:
            return True, f"local endpoint not reachable ({down[0]})"
        return False, ""

    async def _probe(self, api: str, base_url: str, key: str | None) -> tuple[bool, str, bool]:
        try:
            async with asyncio.timeout(self.settings.probe_timeout_ms / 1000):
                return await self.adapters[api].probe(base_url, key)
        except TimeoutError:
            return False, f"{base_url} did not answer within {self.settings.probe_timeout_ms} ms", False

    def _add_provider(self, entry: ProviderEntry) -> None:
        self.state.providers[entry.name] = entry
        self.state.provider_states.setdefault(entry.name, ProviderState())
        cb = self.settings.circuit_breaker
        for model_name, model in entry.models.items():
            key = f"{entry.name}/{model_name}"
            self.state.circuit_breakers.setdefault(
                key, Breaker(threshold=cb.failure_threshold, cooldown_s=cb.cooldown_s)
            )
            self.state.rate_limiters[key] = RateLimiter(
                requests_per_minute=model.requests_per_minute, tokens_per_minute=model.tokens_per_minute
            )

    def _rebuild_routing_tables(self) -> None:
        """Derive the routing view from the state after any provider change."""
        by_model: dict[str, list[Deployment]] = {}
        capabilities: dict[str, set[str]] = {}
        views: dict[str, ProviderView] = {}
        for name, entry in self.state.providers.items():
            views[name] = ProviderView(enabled=entry.enabled, health=self.state.provider_states[name].health)
            for model_name, model in entry.models.items():
                by_model.setdefault(model_name, []).append(
                    Deployment(
                        provider=name,
                        model=model_name,
                        model_id=model.model_id,
                        type=model.type,
                        base_url=model.base_url,
                        capabilities=frozenset(model.capabilities),
                        price_in=model.price_in,
                        price_out=model.price_out,
                        context_window=model.context_window,
                        enabled=model.enabled,
                    )
                )
                capabilities.setdefault(model_name, set()).update(model.capabilities)
        self._deployments_by_model = by_model
        self._model_names = list(by_model)
        self._provider_views = views
        self.state.model_capabilities = {m: sorted(c) for m, c in capabilities.items()}
        self.state.load_balancing.weights = {n: e.weight for n, e in self.state.providers.items()}

    # ------------------------------------------------------------------ llm_request

    async def _on_llm_request(self, msg: Msg) -> None:
        payload = msg.data
        if len(payload) > self.settings.max_payload_bytes:
            await self._reject_request(
                msg,
                SignalError(
                    "payload_too_large",
                    f"payload is {len(payload)} bytes; the limit is {self.settings.max_payload_bytes}",
                ),
            )
            return
        try:
            _, request = decode_event(payload, "llm_request")
        except SignalError as exc:
            await self._reject_request(msg, exc)
            return
        headers = msg.headers
        traceparent = headers.get("traceparent") if headers else None
        if self._stopping:
            await self._answer_error(request, msg.reply, traceparent, "shutting_down", "router is stopping", True, [])
            return
        await self._slots.acquire()
        if self._stopping:  # stop() began while this request waited for a slot
            self._slots.release()
            await self._answer_error(request, msg.reply, traceparent, "shutting_down", "router is stopping", True, [])
            return
        task = asyncio.create_task(self._serve(request, msg.reply, traceparent))
        self._request_tasks.add(task)
        task.add_done_callback(self._request_done)

    def _request_done(self, task: asyncio.Task[None]) -> None:
        self._request_tasks.discard(task)
        self._slots.release()

    async def _serve(self, request: LlmRequest, reply: str, traceparent: str | None) -> None:
        """Route, call, fail over, answer exactly once."""
        started = self.clock()
        metrics = self.state.metrics
        metrics.total_requests += 1
        active_key = f"{request.agent_id}/{request.request_id}"
        if active_key in self.state.active_requests:
            await self._answer_error(
                request, reply, traceparent, "invalid_request",
                f"request_id {request.request_id!r} is already in flight for this agent", False, [],
            )
            return
        active = ActiveRequest(request.request_id, request.agent_id, started)
        self.state.active_requests[active_key] = active
        attempts: list[Attempt] = []
        response: LlmResponse | None = None
        span, traceparent = self.tracing.start(
            "llm_request", traceparent, {"router.agent_id": request.agent_id, "router.request_id": request.request_id}
        )
        timeout_ms = request.timeout_ms or self.settings.default_timeout_ms
        try:
            async with asyncio.timeout(timeout_ms / 1000):
                response = await self._route_and_call(request, reply, traceparent, started, active, attempts)
        except TimeoutError:
            response = await self._answer_error(
                request, reply, traceparent, "timeout", f"no answer within {timeout_ms} ms", True, attempts
            )
        except asyncio.CancelledError:
            if response is None:
                response = await self._answer_error(
                    request, reply, traceparent, "shutting_down",
                    "router stopped before the provider answered", True, attempts,
                )
            raise
        except Exception:
            log.exception("request %s failed unexpectedly", _short(request.request_id))
            response = await self._answer_error(
                request, reply, traceparent, "internal", "internal router error", True, attempts
            )
        finally:
            self.state.active_requests.pop(active_key, None)
            if span is not None:
                self.tracing.end(span, {
                    "router.status": response.status if response else "error",
                    "router.error_code": response.error.code if response and response.error else "",
                    "router.provider": active.provider,
                    "router.model": active.model,
                    "router.attempts": len(attempts),
                })

    async def _decide(self, request: LlmRequest, traceparent: str | None) -> tuple[list[Deployment], str]:
        """Route and publish the routing_decision; return the deployments to try in order.

        Kept apart from the call so the decision's objects are freed before the long wait
        on the provider (they were ~1.3 KB of every in-flight request).
        """
        agent_cfg = self.config.agents.get(request.agent_id)
        models, why = candidate_models(
            request,
            self._model_names,
            self.config.aliases,
            agent_cfg.model_preferences if agent_cfg else None,
        )
        deployments = [d for m in models for d in self._deployments_by_model.get(m, ())]
        lb = self.state.load_balancing
        decision = route(
            request, deployments, self._provider_views, self.state.circuit_breakers, self.clock(), lb.cursor
        )
        lb.cursor += 1
        ordered = decision.ordered[: self.settings.max_attempts]
        candidates = decision.candidates()
        emulated = bool(ordered) and self.state.providers[ordered[0].provider].emulated
        await self._publish(
            self.subjects.routing_decision(request.agent_id),
            "routing_decision",
            RoutingDecision(
                request_id=request.request_id,
                agent_id=request.agent_id,
                strategy=decision.strategy,
                reason=f"{why}; {decision.reason}",
                chosen=candidates[0] if candidates else None,
                fallbacks=candidates[1 : len(ordered)],
                rejected=decision.rejected,
                emulated=emulated,
            ),
            traceparent,
        )
        return ordered, (why if not deployments else decision.reason)

    async def _route_and_call(
        self,
        request: LlmRequest,
        reply: str,
        traceparent: str | None,
        started: float,
        active: ActiveRequest,
        attempts: list[Attempt],
    ) -> LlmResponse:
        ordered, no_candidates_reason = await self._decide(request, traceparent)
        if not ordered:
            return await self._answer_error(
                request, reply, traceparent, "no_candidates", no_candidates_reason, False, attempts
            )

        last_error: ProviderError | None = None
        for dep in ordered:
            breaker = self.state.circuit_breakers[dep.key]
            now = self.clock()
            if not breaker.process_attempt(now):
                attempts.append(Attempt(provider=dep.provider, model=dep.model, outcome="skipped",
                                        error=ErrorInfo(code="provider_error", message="circuit open", retryable=True)))
                continue
            probe = breaker.state == "half_open"
            pstate = self.state.provider_states[dep.provider]
            pstate.in_flight += 1
            active.provider = dep.provider
            active.model = dep.model
            call_started = now
            try:
                completion = await self.adapters["openai"].complete(request, dep, self.secrets.get(dep.provider))
            except ProviderError as exc:
                latency = (self.clock() - call_started) * 1000
                self._record_failure(dep, latency, breaker, probe)
                attempts.append(Attempt(
                    provider=dep.provider, model=dep.model, outcome="error", latency_ms=round(latency, 3),
                    error=ErrorInfo(code=exc.code, message=exc.message, retryable=exc.retryable),
                ))
                last_error = exc
                if not exc.retryable:
                    break
                continue
            except BaseException:
                # Timeout or cancellation: the breaker learns of it, the caller's handler answers.
                latency = (self.clock() - call_started) * 1000
                self._record_failure(dep, latency, breaker, probe)
                attempts.append(Attempt(provider=dep.provider, model=dep.model, outcome="timeout",
                                        latency_ms=round(latency, 3)))
                raise
            finally:
                pstate.in_flight -= 1
            latency = (self.clock() - call_started) * 1000
            entry = self.state.providers[dep.provider]
            cost = cost_usd(completion.input_tokens, completion.output_tokens, dep.price_in, dep.price_out)
            self._record_success(request.agent_id, dep, latency, completion.input_tokens,
                                 completion.output_tokens, cost, breaker)
            attempts.append(Attempt(provider=dep.provider, model=dep.model, outcome="ok", latency_ms=round(latency, 3)))
            response = LlmResponse(
                request_id=request.request_id,
                agent_id=request.agent_id,
                status="ok",
                message=AssistantMessage(content=completion.content),
                model=dep.model,
                provider=dep.provider,
                emulated=entry.emulated,
                finish_reason=completion.finish_reason,
                usage=Usage(input_tokens=completion.input_tokens, output_tokens=completion.output_tokens),
                cost_usd=round(cost, 10),
                latency_ms=round((self.clock() - started) * 1000, 3),
                attempts=attempts,
            )
            await self._answer(request, reply, traceparent, response)
            return response

        if last_error is not None and not last_error.retryable:
            code, message, retryable = last_error.code, last_error.message, False
        else:
            code, message, retryable = "all_providers_failed", f"{len(attempts)} attempt(s) failed", True
        return await self._answer_error(request, reply, traceparent, code, message, retryable, attempts)

    def _record_success(
        self, agent_id: str, dep: Deployment, latency_ms: float, tokens_in: int, tokens_out: int,
        cost: float, breaker: Breaker,
    ) -> None:
        breaker.process_success()
        p = self.state.provider_states[dep.provider]
        p.requests += 1
        p.successes += 1
        p.latency_ms_total += latency_ms
        p.input_tokens += tokens_in
        p.output_tokens += tokens_out
        p.cost_usd += cost
        m = self.state.metrics
        m.completed += 1
        m.total_cost += cost
        m.requests_by_provider[dep.provider] = p.requests
        self._charge(self._cost_total, tokens_in, tokens_out, cost)
        for kind, key in (("agent", agent_id), ("model", dep.model), ("provider", dep.provider)):
            table = self._cost_by[kind]
            line = table.get(key)
            if line is None:
                line = table[key] = CostLine()
            self._charge(line, tokens_in, tokens_out, cost)

    @staticmethod
    def _charge(line: CostLine, tokens_in: int, tokens_out: int, cost: float) -> None:
        line.requests += 1
        line.input_tokens += tokens_in
        line.output_tokens += tokens_out
        line.cost_usd += cost

    def _record_failure(self, dep: Deployment, latency_ms: float, breaker: Breaker, probe: bool) -> None:
        breaker.process_failure(self.clock(), probe)
        p = self.state.provider_states[dep.provider]
        p.requests += 1
        p.failures += 1
        p.latency_ms_total += latency_ms
        self.state.metrics.requests_by_provider[dep.provider] = p.requests

    # ------------------------------------------------------------------ answers

    async def _answer(self, request: LlmRequest, reply: str, traceparent: str | None, response: LlmResponse) -> None:
        payload = self.events.encode("llm_response", response)
        headers = {"traceparent": traceparent} if traceparent else None
        if reply:
            await self._send(reply, payload, headers)
        await self._send(self.subjects.llm_response(request.agent_id), payload, headers)

    async def _answer_error(
        self, request: LlmRequest, reply: str, traceparent: str | None, code: ErrorCode, message: str,
        retryable: bool, attempts: list[Attempt],
    ) -> LlmResponse:
        metrics = self.state.metrics
        metrics.failed += 1
        metrics.errors_by_code[code] = metrics.errors_by_code.get(code, 0) + 1
        response = LlmResponse(
            request_id=request.request_id,
            agent_id=request.agent_id,
            status="error",
            attempts=attempts,
            error=ErrorInfo(code=code, message=message, retryable=retryable),
        )
        await self._answer(request, reply, traceparent, response)
        return response

    async def _reject_request(self, msg: Msg, exc: SignalError) -> None:
        """Bad llm_request input: a typed error answer, counted, and the agent goes on."""
        self._count_invalid(exc.code)
        partial = _partial(msg.data) if exc.code != "payload_too_large" else _Partial()
        agent_id = _short(partial.agent_id) if isinstance(partial.agent_id, str) else ""
        response = LlmResponse(
            request_id=_short(partial.request_id) if isinstance(partial.request_id, str) else "",
            agent_id=agent_id,
            status="error",
            error=ErrorInfo(code=exc.code, message=exc.message, field=exc.field),
        )
        payload = self.events.encode("llm_response", response)
        if msg.reply:
            await self._send(msg.reply, payload, None)
        await self._send(self.subjects.llm_response(agent_id or "_invalid"), payload, None)

    def _count_invalid(self, code: str) -> None:
        metrics = self.state.metrics
        metrics.invalid_inputs += 1
        metrics.invalid_by_code[code] = metrics.invalid_by_code.get(code, 0) + 1

    async def _router_error(self, msg: Msg, exc: SignalError) -> None:
        self._count_invalid(exc.code)
        data = RouterError(subject=msg.subject, error=ErrorInfo(code=exc.code, message=exc.message, field=exc.field))
        payload = self.events.encode("router_error", data)
        await self._send(msg.reply or self.subjects.router_error, payload, None)

    async def _publish(self, subject: str, signal: str, data: object, traceparent: str | None = None) -> None:
        headers = {"traceparent": traceparent} if traceparent else None
        await self._send(subject, self.events.encode(signal, data), headers)

    async def _send(self, subject: str, payload: bytes, headers: dict[str, str] | None) -> None:
        """Publish; losing the bus must not take the actor down (nats-py buffers on reconnect)."""
        try:
            await self.nc.publish(subject, payload, headers=headers)
        except (nats.errors.Error, OSError) as exc:
            log.warning("publish to %s failed: %s", subject, type(exc).__name__)

    # ------------------------------------------------------------------ control signals

    def _decode_control(self, msg: Msg, signal: str):
        if len(msg.data) > self.settings.max_payload_bytes:
            raise SignalError(
                "payload_too_large",
                f"payload is {len(msg.data)} bytes; the limit is {self.settings.max_payload_bytes}",
            )
        return decode_event(msg.data, signal)[1]

    async def _on_provider_register(self, msg: Msg) -> None:
        try:
            register: ProviderRegister = self._decode_control(msg, "provider_register")
        except SignalError as exc:
            self._count_invalid(exc.code)
            name = _short(_partial_provider(msg.data))
            await self._ack(msg, ProviderRegistered(
                provider=name, accepted=False,
                errors=[ErrorInfo(code=exc.code, message=exc.message, field=exc.field)],
            ))
            return
        errors = self._check_register(register)
        if errors:
            self._count_invalid(errors[0].code)
            await self._ack(msg, ProviderRegistered(provider=register.provider, accepted=False, errors=errors))
            return
        self._spawn_control(self._complete_registration(msg, register))

    def _check_register(self, register: ProviderRegister) -> list[ErrorInfo]:
        """Synchronous checks: the key rule and the endpoint policy on the literal URL."""
        errors: list[ErrorInfo] = []
        security = self.config.security
        if register.api_key is not None and not security.allow_inline_api_keys:
            errors.append(ErrorInfo(
                code="invalid_provider_config", field="$.data.api_key",
                message="raw API keys are not accepted here; name an environment variable in api_key_env",
            ))
        if register.api_key_file is not None and security.secret_files_dir is not None:
            allowed = Path(security.secret_files_dir).resolve()
            if allowed not in Path(register.api_key_file).resolve().parents:
                errors.append(ErrorInfo(
                    code="invalid_provider_config", field="$.data.api_key_file",
                    message=f"api_key_file must be under {security.secret_files_dir}",
                ))
        reason = check_endpoint(register.base_url, security.endpoints)
        if reason:
            errors.append(ErrorInfo(code="endpoint_not_allowed", field="$.data.base_url", message=reason))
        existing = self.state.providers.get(register.provider)
        if existing is not None and existing.source == "config":
            errors.append(ErrorInfo(
                code="invalid_provider_config", field="$.data.provider",
                message=f"provider {register.provider!r} comes from config and cannot be replaced at run time",
            ))
        names = [m.name for m in register.models]
        if len(set(names)) != len(names):
            errors.append(ErrorInfo(code="invalid_provider_config", field="$.data.models",
                                    message="model names repeat"))
        return errors

    async def _complete_registration(self, msg: Msg, register: ProviderRegister) -> None:
        """Resolve and re-check the host, probe, then add the provider (back on the actor)."""
        base_url = register.base_url.rstrip("/")
        host = endpoint_host(base_url)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, None)
            resolved = sorted({info[4][0] for info in infos})
        except OSError as exc:
            await self._ack(msg, ProviderRegistered(provider=register.provider, accepted=False, errors=[
                ErrorInfo(code="probe_failed", field="$.data.base_url", message=f"cannot resolve {host!r}: {exc.strerror}")
            ]))
            return
        reason = check_endpoint(base_url, self.config.security.endpoints, resolved)
        if reason:
            self._count_invalid("endpoint_not_allowed")
            await self._ack(msg, ProviderRegistered(provider=register.provider, accepted=False, errors=[
                ErrorInfo(code="endpoint_not_allowed", field="$.data.base_url", message=reason)
            ]))
            return
        key = register.api_key or _read_key(register.api_key_env, register.api_key_file)
        ok, detail, emulated = await self._probe(register.api, base_url, key)
        if not ok:
            await self._ack(msg, ProviderRegistered(provider=register.provider, accepted=False, errors=[
                ErrorInfo(code="probe_failed", message=detail, retryable=True)
            ]))
            return
        existing = self.state.providers.get(register.provider)
        if existing is not None and existing.source == "config":
            await self._ack(msg, ProviderRegistered(provider=register.provider, accepted=False, errors=[
                ErrorInfo(code="invalid_provider_config", message="provider comes from config")
            ]))
            return
        models = {
            spec.name: ModelEntry(
                model_id=spec.model_id or spec.name,
                type=register.type,
                base_url=base_url,
                capabilities=list(spec.capabilities),
                price_in=spec.cost_per_1k_tokens.input,
                price_out=spec.cost_per_1k_tokens.output,
                context_window=spec.context_window,
                requests_per_minute=spec.rate_limits.requests_per_minute,
                tokens_per_minute=spec.rate_limits.tokens_per_minute,
            )
            for spec in register.models
        }
        self.secrets.set(register.provider, key)
        self.state.provider_states.pop(register.provider, None)
        self._add_provider(ProviderEntry(
            name=register.provider,
            api=register.api,
            type=register.type,
            base_url=base_url,
            models=models,
            weight=register.weight,
            enabled=register.enabled,
            timeout_ms=register.timeout_ms or 60_000,
            emulated=emulated,
            emulated_reason="the endpoint says it is an emulator" if emulated else "",
            has_key=key is not None,
            source="runtime",
        ))
        self._rebuild_routing_tables()
        log.info("provider %s registered with %d model(s)%s", register.provider, len(models),
                 " (emulated)" if emulated else "")
        await self._ack(msg, ProviderRegistered(
            provider=register.provider, accepted=True, models=list(models), emulated=emulated,
        ))

    async def _on_provider_update(self, msg: Msg) -> None:
        try:
            update: ProviderUpdate = self._decode_control(msg, "provider_update")
        except SignalError as exc:
            self._count_invalid(exc.code)
            await self._ack(msg, ProviderRegistered(
                provider=_short(_partial_provider(msg.data)), accepted=False, action="update",
                errors=[ErrorInfo(code=exc.code, message=exc.message, field=exc.field)],
            ))
            return
        entry = self.state.providers.get(update.provider)
        errors: list[ErrorInfo] = []
        if entry is None:
            errors.append(ErrorInfo(code="unknown_provider", message=f"provider {update.provider!r} is not registered"))
        else:
            for i, model in enumerate(update.models):
                if model.name not in entry.models:
                    errors.append(ErrorInfo(code="invalid_provider_config", field=f"$.data.models[{i}].name",
                                            message=f"provider {update.provider!r} has no model {model.name!r}"))
        if errors:
            self._count_invalid(errors[0].code)
            await self._ack(msg, ProviderRegistered(provider=update.provider, accepted=False, action="update", errors=errors))
            return
        assert entry is not None
        # Validate the whole change before applying any of it.
        changed = entry.model_copy(deep=True)
        if update.enabled is not None:
            changed.enabled = update.enabled
        if update.weight is not None:
            changed.weight = update.weight
        if update.timeout_ms is not None:
            changed.timeout_ms = update.timeout_ms
        for model in update.models:
            target = changed.models[model.name]
            if model.cost_per_1k_tokens is not None:
                target.price_in = model.cost_per_1k_tokens.input
                target.price_out = model.cost_per_1k_tokens.output
            if model.rate_limits is not None:
                target.requests_per_minute = model.rate_limits.requests_per_minute
                target.tokens_per_minute = model.rate_limits.tokens_per_minute
            if model.enabled is not None:
                target.enabled = model.enabled
        changed = ProviderEntry.model_validate(changed.model_dump())
        self._add_provider(changed)
        self._rebuild_routing_tables()
        await self._ack(msg, ProviderRegistered(
            provider=update.provider, accepted=True, action="update", models=list(changed.models),
            emulated=changed.emulated,
        ))

    async def _on_provider_health(self, msg: Msg) -> None:
        try:
            health: ProviderHealth = self._decode_control(msg, "provider_health")
        except SignalError as exc:
            await self._router_error(msg, exc)
            return
        state = self.state.provider_states.get(health.provider)
        if state is None:
            await self._router_error(msg, SignalError("unknown_provider", f"provider {health.provider!r} is not registered"))
            return
        state.health = health.status
        state.health_detail = health.detail[:500]
        self._provider_views[health.provider].health = health.status

    async def _ack(self, msg: Msg, answer: ProviderRegistered) -> None:
        payload = self.events.encode("provider_registered", answer)
        if msg.reply:
            await self._send(msg.reply, payload, None)
        await self._send(self.subjects.provider_registered(answer.provider or "_invalid"), payload, None)

    def _spawn_control(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._control_tasks.add(task)
        task.add_done_callback(self._control_tasks.discard)

    # ------------------------------------------------------------------ reports

    async def _every(self, interval_s: float, publish: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await publish()
            except Exception:
                log.exception("periodic publish failed")

    def provider_stats(self, name: str) -> ProviderStats:
        entry = self.state.providers[name]
        p = self.state.provider_states[name]
        breakers = [b.state for k, b in self.state.circuit_breakers.items() if k.startswith(f"{name}/")]
        circuit = "open" if "open" in breakers else "half_open" if "half_open" in breakers else "closed"
        return ProviderStats(
            provider=name,
            health=p.health,
            circuit=circuit,
            enabled=entry.enabled,
            emulated=entry.emulated,
            in_flight=p.in_flight,
            requests=p.requests,
            successes=p.successes,
            failures=p.failures,
            error_rate=round(p.failures / p.requests, 6) if p.requests else 0.0,
            avg_latency_ms=round(p.latency_ms_total / p.requests, 3) if p.requests else 0.0,
            input_tokens=p.input_tokens,
            output_tokens=p.output_tokens,
            cost_usd=round(p.cost_usd, 10),
        )

    async def _publish_metrics(self) -> None:
        metrics = self.state.metrics
        for name in self.state.providers:
            stats = self.provider_stats(name)
            metrics.avg_latency_by_provider[name] = stats.avg_latency_ms
            metrics.error_rates[name] = stats.error_rate
            await self._publish(
                self.subjects.provider_metrics(name),
                "provider_metrics",
                ProviderMetrics(instance_id=self.instance_id, window_s=self.settings.metrics_interval_s, stats=stats),
            )

    def cost_report(self) -> CostReport:
        def rounded(line: CostLine) -> CostLine:
            return CostLine(requests=line.requests, input_tokens=line.input_tokens,
                            output_tokens=line.output_tokens, cost_usd=round(line.cost_usd, 10))

        return CostReport(
            instance_id=self.instance_id,
            since=self.started_at,
            total=rounded(self._cost_total),
            by_agent={k: rounded(v) for k, v in self._cost_by["agent"].items()},
            by_model={k: rounded(v) for k, v in self._cost_by["model"].items()},
            by_provider={k: rounded(v) for k, v in self._cost_by["provider"].items()},
        )

    async def _publish_cost_report(self) -> None:
        if self.nc.is_connected:
            await self._publish(self.subjects.cost_report, "cost_report", self.cost_report())

    def snapshot(self) -> dict:
        """The whole state as validated JSON-ready data (no secrets: they are not in it)."""
        return RouterState.model_validate(self.state.model_dump()).model_dump(mode="json")


def _read_key(env_name: str | None, file_name: str | None) -> str | None:
    if env_name:
        value = os.environ.get(env_name)
        if value:
            return value.strip()
    if file_name:
        try:
            value = Path(file_name).read_text(encoding="utf-8").strip()
        except OSError:
            return None
        return value or None
    return None


class _ProviderOnly(msgspec.Struct):
    provider: str | None = None


class _ProviderEvent(msgspec.Struct):
    data: _ProviderOnly | None = None


def _partial_provider(payload: bytes) -> str:
    try:
        event = msgspec.json.decode(payload, type=_ProviderEvent)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return ""
    return (event.data.provider if event.data else None) or ""
