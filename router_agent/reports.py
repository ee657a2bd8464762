"""Periodic ``provider_metrics`` and ``cost_report``.

The figures come from the registry (``provider_stats.py`` assembles a provider's: counters,
uptime, last error, retries, failovers and hedges, each deployment's breaker, rate headroom
and latency) and the ledger (``core/ledger.py``); this module only publishes them. Writes
``metrics.avg_latency_by_provider`` and ``metrics.error_rates`` (the snapshot's copy of what
it publishes).
"""

from __future__ import annotations

from router_agent.config import RouterSettings
from router_agent.ledger_service import LedgerService
from router_agent.outbox import Outbox
from router_agent.registry import ProviderRegistry
from router_agent.state import RouterState
from signals import CostReport, ProviderMetrics


class Reports:
    def __init__(
        self,
        settings: RouterSettings,
        state: RouterState,
        registry: ProviderRegistry,
        ledger: LedgerService,
        outbox: Outbox,
        instance_id: str,
        started_at: str,
    ):
        self.settings = settings
        self.state = state
        self.registry = registry
        self.ledger = ledger
        self.outbox = outbox
        self.instance_id = instance_id
        self.started_at = started_at

    async def publish_metrics(self) -> None:
        metrics = self.state.metrics
        for name in list(self.state.providers):
            stats = self.registry.provider_stats(name)
            metrics.avg_latency_by_provider[name] = stats.avg_latency_ms
            metrics.error_rates[name] = stats.error_rate
            await self.outbox.publish(
                self.outbox.subjects.provider_metrics(name),
                "provider_metrics",
                ProviderMetrics(instance_id=self.instance_id, window_s=self.settings.metrics_interval_s, stats=stats),
            )

    def cost_report(self) -> CostReport:
        """The ledger's figures: the shared ledger's (``LedgerService.report``: every instance,
        budgets, projection)."""
        return self.ledger.report(self.instance_id, self.started_at)

    async def publish_cost_report(self) -> None:
        if self.outbox.nc.is_connected:
            await self.outbox.publish(self.outbox.subjects.cost_report, "cost_report", self.cost_report())
