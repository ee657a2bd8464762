"""The router agent: an actor on NATS that owns the router's state.

Theory of operation
-------------------
nats-py awaits a subscription's callbacks one at a time, so every handler is short: the
route decodes and checks the signal, the handler hands slow work (HTTP calls, probes) to a
child task. Child tasks report back through the registry and the request shell, which run
on the same event loop between awaits: the agent is the only writer of its state and needs
no locks. Every task the agent starts is guarded: a bug is logged and counted, never lost
as "Task exception was never retrieved".

Who writes what: ``registry.py`` providers, provider states, breakers, limiters, model
capabilities; ``requests.py`` active requests, request metrics, the routing cursor;
``routes.py`` the bad-input counters; ``reports.py`` the published averages;
``control_service.py`` the routing overrides.

The surface, in one place (``RouterAgent.routes``):

| subject             | input            | handler              | bad input answered by | publishes |
|---------------------|------------------|----------------------|-----------------------|-----------|
| llm_request (queue) | LlmRequest       | requests.on_request  | llm_response error    | routing_decision.<agent>, llm_response.<agent> (+ reply), llm_chunk (reply, else llm_chunk.<agent>) when streamed |
| provider_register   | ProviderRegister | control.on_register  | provider_registered   | provider_registered.<provider> (+ reply) |
| provider_update     | ProviderUpdate   | control.on_update    | provider_registered   | provider_registered.<provider> (+ reply) |
| provider_health     | ProviderHealth   | control.on_health    | router_error          | router_error on bad input |
| routing_control     | RoutingControl   | control_service.on_event | router_error      | router_error on bad input or a change this instance cannot apply |
| router_control.<endpoint> (queue) | Control* (nats.micro) | control_service.on_<endpoint> | control_result | control_result (reply), routing_control |
| $SRV.PING / INFO / STATS | (nats.micro)  | nats.micro           |                       | the control service's discovery answers |
| (timer)             |                  | reports              |                       | provider_metrics.<provider>, cost_report |
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime

import nats.errors

from router_agent.bus import Liveness, sync_subscriptions
from router_agent.cached import CacheGate
from router_agent.config import Config
from router_agent.control import Control
from router_agent.control_service import ControlService
from router_agent.core.endpoints import endpoint_host, is_local
from router_agent.http import Guard, HttpClient, policy_guard
from router_agent.ledger_service import LedgerService
from router_agent.monitor import HealthMonitor
from router_agent.outbox import Outbox
from router_agent.providers.base import Adapter
from router_agent.registry import ProviderRegistry
from router_agent.reports import Reports
from router_agent.requests import RequestShell
from router_agent.response_cache import ResponseCache
from router_agent.routes import Route, callback
from router_agent.state import RouterState
from router_agent.tasks import cancel_and_wait
from router_agent.telemetry import Tracing
from signals import CostReport, EventFactory, ProviderStats, Subjects

log = logging.getLogger("router_agent")


class RouterAgent:
    def __init__(
        self,
        config: Config,
        nc,
        http: HttpClient | None = None,
        emulator_url: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        tracing: Tracing | None = None,
        adapters: Mapping[str, Adapter] | None = None,
        rng: random.Random | None = None,
    ):
        self.config = config
        self.settings = config.router
        self.nc = nc
        # Every address a provider call connects to is judged by the endpoint policy, except
        # hosts the operator wrote into config (and the emulator): DNS rebinding cannot
        # move a runtime provider onto a refused address after its registration was checked.
        self.http = http or HttpClient(guard=self._connection_guard(config, emulator_url))
        self.instance_id = self.settings.instance_id or f"{socket.gethostname()}-{os.getpid()}"
        self.subjects = Subjects(self.settings.subject_prefix)
        self.state = RouterState()
        self.tracing = tracing or Tracing(config.telemetry)
        self.ledger = LedgerService(config, self.instance_id, clock=clock)
        self.outbox = Outbox(nc, EventFactory(f"router-agent/{self.instance_id}"), self.subjects, self.state.metrics,
                             self.tracing)
        self.registry = ProviderRegistry(config, self.state, self.http, emulator_url, adapters, clock)
        self.requests = RequestShell(config, self.state, self.registry, self.outbox, self.ledger, self.tracing, clock,
                                   rng)
        self.response_cache: ResponseCache | None = None
        if self.settings.cache.enabled:
            self.response_cache = ResponseCache(nc, self.settings.cache, clock, subject_prefix=self.settings.subject_prefix)
            self.requests.cache = CacheGate(config, self.response_cache, self.state.metrics, clock)
        self.monitor = HealthMonitor(self.settings, self.registry, self.outbox, clock, self.instance_id, self.spawn)
        self.control = Control(config, self.registry, self.outbox, self.state.metrics, self.spawn)
        self.control_service = ControlService(
            config, self.state, self.registry, self.outbox, self.subjects, self.instance_id, clock, self.state.metrics
        )
        self.reports = Reports(
            self.settings, self.state, self.registry, self.ledger, self.outbox, self.instance_id,
            datetime.now(UTC).isoformat(timespec="seconds"),
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._subscriptions: list = []
        self._request_sub = None
        self._stopping = False
        self.liveness: Liveness | None = None

        self.state.routing_rules = [
            {"agent": agent_id, "condition": rule.condition, "model": rule.model}
            for agent_id, agent in config.agents.items()
            for rule in agent.routing_rules
        ]
        self.state.load_balancing.strategy = config.routing.default_strategy

    def _connection_guard(self, config: Config, emulator_url: str | None) -> Guard:
        """Judges the addresses of every new provider connection (not the config's hosts)."""
        policy = policy_guard(config.security.endpoints, trusted_hosts=_config_hosts(config, emulator_url))
        local_networks = config.security.local_networks

        def guard(host: str, addresses: list[str]) -> str | None:
            reason = policy(host, addresses)
            if reason is None and host in self.registry.runtime_local_hosts and not is_local(addresses, local_networks):
                # Registered as local (so private requests may go there): it must stay local.
                reason = f"{host!r} was registered as local but resolves outside security.local_networks"
            return reason

        return guard

    # ------------------------------------------------------------------ the surface

    def routes(self) -> list[Route]:
        """Every subject the agent listens on."""
        s, r, c = self.subjects, self.requests, self.control
        return [
            Route(s.llm_request, "llm_request", r.on_request, r.reject,
                  "routing_decision.<agent>, llm_response.<agent> (+ reply), "
                  "llm_chunk (reply, else llm_chunk.<agent>) when streamed", queue=self.settings.queue_group),
            Route(s.provider_register, "provider_register", c.on_register, c.reject_register,
                  "provider_registered.<provider> (+ reply)"),
            Route(s.provider_update, "provider_update", c.on_update, c.reject_update,
                  "provider_registered.<provider> (+ reply)"),
            Route(s.provider_health, "provider_health", c.on_health, c.reject_health,
                  "router_error on bad input"),
            Route(s.routing_control, "routing_control", self.control_service.on_event,
                  self.control_service.reject_event,
                  "router_error on bad input or a change this instance cannot apply"),
        ]

    # ------------------------------------------------------------------ start / stop

    async def start(self) -> None:
        """Load configured providers, subscribe, start the periodic reports."""
        for spec in self.config.policy.strategies.values():
            if spec.cache and self.response_cache is None:  # accepted, and said, never silently ignored
                log.warning("routing.strategies.%s: cache_responses is off: router.cache.enabled is false", spec.name)
        await self.ledger.start(self.nc)  # LedgerUnavailable: no JetStream (budgets.store says what to do)
        if self.response_cache is not None:
            await self.response_cache.start()  # the shared bucket; in-process only without JetStream
        await self.registry.load_configured()
        self._count_slow_consumer_drops()
        for route in self.routes():
            sub = await self.nc.subscribe(
                route.subject, queue=route.queue,
                cb=callback(route, self.settings.max_payload_bytes, self.state.metrics, self.tracing),
                pending_msgs_limit=self.settings.pending_messages_limit,
                pending_bytes_limit=self.settings.pending_bytes_limit,
            )
            self._subscriptions.append(sub)
            if route.subject == self.subjects.llm_request:
                self._request_sub = sub
        await self.control_service.start(self.nc)  # nats.micro: $SRV.* and router_control.<endpoint>
        await self.ledger.serve_endpoint(self.control_service)  # router_control.cost_report
        await sync_subscriptions(self.nc)
        self.liveness = Liveness.from_config(self.nc, self.config.nats)  # reconnects a deaf client
        self.spawn(self.liveness.run())  # cancelled with the other tasks in stop()
        self.spawn(self.monitor.run())  # active health probes
        state = self.state
        self.tracing.observe(
            in_flight=lambda: state.metrics.in_flight,
            queue_depth=lambda: self.requests.queued + self.requests.waitroom.depth,
            breaker_states=lambda: ((key, b.state) for key, b in state.circuit_breakers.items()),
        )
        self.spawn(self._every(self.settings.metrics_interval_s, self.reports.publish_metrics))
        self.spawn(self._every(self.settings.cost_report_interval_s, self.reports.publish_cost_report))

    async def stop(self) -> None:
        """Stop taking requests; serve what is in flight or buffered for the grace period,
        then answer the rest ``shutting_down``; stop the timers and control tasks."""
        if self._stopping:
            return
        self._stopping = True
        loop = asyncio.get_running_loop()
        grace_ends = loop.time() + self.settings.shutdown_grace_s
        # Drain, not unsubscribe: the server stops sending us requests at once (the queue
        # group gives new ones to other instances), and messages nats-py already buffered
        # still reach the handler, which serves them while the grace period lasts.
        drained = asyncio.ensure_future(self._request_sub.drain()) if self._request_sub is not None else None
        while True:
            pending = set(self.requests.tasks)
            if drained is not None and not drained.done():
                pending.add(drained)
            remaining = grace_ends - loop.time()
            if not pending or remaining <= 0:
                break
            await asyncio.wait(pending, timeout=remaining)
        self.requests.refusing = True
        leftover = set(self.requests.tasks)
        for task in leftover:
            task.cancel()  # each answers shutting_down on its way out
        if leftover:
            await asyncio.wait(leftover, timeout=5)
        await self.requests.planner.drain()
        await self.ledger.stop()  # every request is answered: ship their spend, give back leases
        if self.response_cache is not None:
            await self.response_cache.drain()
            await self.response_cache.close()
        if drained is not None:
            with contextlib.suppress(nats.errors.Error, OSError, RuntimeError, TimeoutError):
                async with asyncio.timeout(5):
                    await drained
        await cancel_and_wait(self._tasks)
        await self.reports.publish_cost_report()
        try:
            await self.control_service.stop()
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

    def _count_slow_consumer_drops(self) -> None:
        """nats-py reports a message dropped from a full pending buffer only to the
        connection's error callback (``_error_cb``, set at connect): count it there. The
        request handler never waits, so this only happens when the loop cannot keep up."""
        previous = getattr(self.nc, "_error_cb", None)
        if previous is None:  # the in-memory bus of the fast tests has none
            return
        metrics = self.state.metrics

        async def on_error(exc: Exception) -> None:
            if isinstance(exc, nats.errors.SlowConsumerError):
                metrics.slow_consumer_drops += 1
                if metrics.slow_consumer_drops in (1, 10, 100, 1000) or metrics.slow_consumer_drops % 10_000 == 0:
                    log.error("NATS dropped %d message(s): the router cannot keep up (slow consumer)",
                              metrics.slow_consumer_drops)
            await previous(exc)

        self.nc._error_cb = on_error

    # ------------------------------------------------------------------ tasks

    def spawn(self, coro: Awaitable[None]) -> None:
        """Start a guarded child task: its failure is logged and counted, never lost."""
        task = asyncio.ensure_future(self._guarded(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guarded(self, coro: Awaitable[None]) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("agent task failed")
            self.state.metrics.internal_errors += 1

    async def _every(self, interval_s: float, publish: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await publish()
            except Exception:
                log.exception("periodic publish failed")
                self.state.metrics.internal_errors += 1

    # ------------------------------------------------------------------ views

    def provider_stats(self, name: str) -> ProviderStats:
        return self.registry.provider_stats(name)

    def cost_report(self) -> CostReport:
        return self.reports.cost_report()

    def snapshot(self) -> dict:
        """The whole state as validated JSON-ready data (no secrets: they are not in it)."""
        if self.liveness is not None:
            self.state.metrics.bus_reconnects = self.liveness.reconnects
        return RouterState.model_validate(self.state.model_dump()).model_dump(mode="json")


def _config_hosts(config: Config, emulator_url: str | None) -> set[str]:
    """Hosts the operator named in config (and the emulator's): trusted, not re-judged."""
    urls = [p.base_url for p in config.providers.values()] + [m.endpoint for m in config.models.values()]
    urls.append(emulator_url)
    return {endpoint_host(url) for url in urls if url} - {""}
