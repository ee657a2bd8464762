"""Health monitoring: active probes, merged outside reports, and announced changes.

Writes ``provider_states[*].health`` (and its detail, last error, uptime) through the
registry's ``sync_health``; the pure machine per provider is ``core.health.ProviderHealth``,
which the registry feeds with every attempt's outcome (passive monitoring).

- Active: every ``health.probe_interval_s`` a provider whose own evidence is older than that
  gets one cheap probe (the adapter's ``probe``: a model list, ``/api/tags``), bounded by
  ``probe_timeout_ms``. Real traffic is evidence, so under load no probe is sent.
- Outside reports (``provider_health`` with ``origin: monitor``) are merged
  (``control.py`` hands them to ``registry.report_health``); reports another router
  instance published (``origin: router``) are for observers and are not merged: each
  instance keeps its own evidence.
- Every health or breaker change this instance sees is published on ``provider_health``
  with ``origin: router``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from router_agent.core.model import Deployment
from router_agent.outbox import Outbox
from router_agent.registry import ProviderRegistry
from router_agent.settings import RouterSettings
from signals import ProviderHealth

log = logging.getLogger("router_agent")


class HealthMonitor:
    def __init__(self, settings: RouterSettings, registry: ProviderRegistry, outbox: Outbox,
                 clock: Callable[[], float], instance_id: str, spawn: Callable[..., None]):
        self.settings = settings
        self.registry = registry
        self.outbox = outbox
        self.clock = clock
        self.instance_id = instance_id
        self.spawn = spawn
        self.probes_sent = 0
        registry.on_circuit_change = self._circuit_changed
        registry.on_health_change = self._health_changed

    async def run(self) -> None:
        """Probe providers whose evidence is old; never returns (cancelled at stop)."""
        interval = self.settings.health.probe_interval_s
        if interval <= 0:
            return
        tick = min(interval, 1.0)
        while True:
            await asyncio.sleep(tick)
            now = self.clock()
            for name, health in list(self.registry.health.items()):
                entry = self.registry.state.providers.get(name)
                if entry is None or not entry.enabled or not health.probe_due(now):
                    continue
                health.process_probe_sent(now)
                self.probes_sent += 1
                self.spawn(self._probe(name))

    async def _probe(self, name: str) -> None:
        entry = self.registry.state.providers.get(name)
        if entry is None:
            return
        ok, detail, _ = await self.registry.probe(entry.api, entry.base_url or _any_url(entry.models.values()),
                                                  self.registry.secrets.get(name))
        self.registry.probe_result(name, ok, detail)

    # ------------------------------------------------------------------ announcements

    def _circuit_changed(self, dep: Deployment, before: tuple[str, str], after: tuple[str, str]) -> None:
        state = self.registry.state.provider_states[dep.provider]
        if before[0] != after[0]:
            self._announce(ProviderHealth(provider=dep.provider, status=state.health, model=dep.model,
                                          circuit=after[0], origin="router", reporter=self.instance_id,
                                          detail=f"breaker of {dep.model} is {after[0]}"))
        if before[1] != after[1]:
            self._announce(ProviderHealth(provider=dep.provider, status=state.health, circuit=after[1],
                                          origin="router", reporter=self.instance_id,
                                          detail=f"provider breaker is {after[1]}"))

    def _health_changed(self, provider: str, before: str, after: str) -> None:
        state = self.registry.state.provider_states[provider]
        self._announce(ProviderHealth(provider=provider, status=state.health, origin="router",
                                      reporter=self.instance_id, detail=state.health_detail[:500]))

    def _announce(self, signal: ProviderHealth) -> None:
        if self.outbox.nc.is_connected:
            self.spawn(self.outbox.publish(self.outbox.subjects.provider_health, "provider_health", signal))


def _any_url(deployments: object) -> str:
    for dep in deployments:  # type: ignore[attr-defined]
        return dep.base_url
    return ""
