"""Routing decisions: the engine's plan for each request, counted and published.

The request shell asks ``Planner.plan`` for the deployments to try. It runs the pure
engine (``core.engine.decide``) over the registry's view, today's cloud spend and the
operators' overrides, counts the decision (``metrics.decisions_by_strategy``,
``metrics.privacy_activations``), publishes the ``routing_decision`` and, when
``verbose_routing_logs`` is on, logs it.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

from router_agent.config import Config
from router_agent.core.engine import Plan, decide
from router_agent.core.model import Deployment
from router_agent.core.strategies import Scored
from router_agent.ledger_service import LedgerService
from router_agent.outbox import Outbox
from router_agent.registry import ProviderRegistry
from router_agent.state import ActiveRequest, RouterState
from signals import Candidate, LlmRequest, RoutingDecision
from signals.types import MAX_REJECTIONS_LISTED

log = logging.getLogger("router_agent")


class Planner:
    def __init__(self, config: Config, state: RouterState, registry: ProviderRegistry, outbox: Outbox,
                 ledger: LedgerService, clock: Callable[[], float], rng: random.Random | None = None):
        self.config = config
        self.settings = config.router
        self.policy = config.policy
        self.state = state
        self.registry = registry
        self.outbox = outbox
        self.ledger = ledger
        self.clock = clock
        self.rng = rng if rng is not None else random.Random()
        """The engine's random source (weighted draws, two random choices); seed it to replay."""
        self.publishing: set[asyncio.Task[None]] = set()
        """Decisions on their way to the bus (``drain`` waits for them at a stop)."""

    def _publish_later(self, request: LlmRequest, plan: Plan, ordered: list[Scored], traceparent: str | None) -> None:
        """Publish the decision from a task of its own, started by a loop callback: the
        request's task runs on to the adapter's write before the task is even made."""
        task = asyncio.get_running_loop().create_task(self._publish(request, plan, ordered, traceparent))
        self.publishing.add(task)
        task.add_done_callback(self._published)

    async def _publish(self, request: LlmRequest, plan: Plan, ordered: list[Scored], traceparent: str | None) -> None:
        await self.outbox.publish(self.outbox.subjects.routing_decision(request.agent_id), "routing_decision",
                                  self._decision(request, plan, ordered), traceparent)

    def _decision(self, request: LlmRequest, plan: Plan, ordered: list[Scored]) -> RoutingDecision:
        plan.explain()
        chosen = ordered[0] if ordered else None
        decision = RoutingDecision(
            request_id=request.request_id,
            agent_id=request.agent_id,
            strategy=plan.strategy,
            rule=plan.decided_by,
            reason=plan.reason,
            confidence=plan.confidence,
            complexity=plan.complexity,
            complexity_source=plan.complexity_source,
            pii_kinds=list(plan.pii),
            privacy=plan.privacy,
            chosen=_candidate(chosen) if chosen is not None else None,
            fallbacks=[_candidate(c) for c in ordered[1:]],
            verify_with=_candidate(plan.verify_with) if plan.verify_with is not None else None,
            estimated_cost_usd=round(chosen.estimate, 8) if chosen is not None else 0.0,
            notes=plan.notes,
            rejected=plan.rejected[:MAX_REJECTIONS_LISTED],
            rejected_omitted=max(0, len(plan.rejected) - MAX_REJECTIONS_LISTED),
            emulated=chosen is not None and self.state.providers[chosen.dep.provider].emulated,
        )
        if self.policy.verbose:
            log.info("routing %s/%s: %s", request.agent_id, request.request_id, _describe(decision))
        return decision

    def _published(self, task: asyncio.Task[None]) -> None:
        self.publishing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("publishing a routing_decision failed", exc_info=task.exception())
            self.state.metrics.internal_errors += 1

    async def drain(self) -> None:
        """Let every decision still on its way reach the bus."""
        await asyncio.sleep(0)  # a decision whose task a loop callback is about to start
        if self.publishing:
            await asyncio.wait(set(self.publishing), timeout=5)

    async def plan(self, request: LlmRequest, traceparent: str | None, active: ActiveRequest) -> Planned:
        """Plan with the engine and publish the routing_decision; return the deployments to
        try in order, why there are none (when so), the verifier the plan asks for, and
        whether to hedge.

        Kept apart from the call so the plan's objects are freed before the long wait on
        the provider."""
        lb = self.state.load_balancing
        plan = decide(
            request, policy=self.policy, catalog=self.registry, aliases=self.config.aliases,
            breakers=self.registry.tripped, overrides=self.state.routing_overrides,
            daily_cloud_cost=self.ledger.daily_cloud_cost(), now=self.clock(), rng=self.rng,
            cursor=lb.cursor, limit=self.settings.max_attempts, explain=False,  # explained when published
        )
        lb.cursor += 1
        ranked = plan.ordered
        if any(c.rate_share >= 1.0 for c in ranked):
            # Rate limited now: tried (waited for) only after every candidate that can go now.
            ranked = [c for c in ranked if c.rate_share < 1.0] + [c for c in ranked if c.rate_share >= 1.0]
        ordered = ranked[: self.settings.max_attempts]
        active.tokens = plan.tokens
        active.input_tokens = plan.input_tokens
        metrics = self.state.metrics
        metrics.decisions_by_strategy[plan.strategy] = metrics.decisions_by_strategy.get(plan.strategy, 0) + 1
        if plan.privacy_constraint == "privacy":
            metrics.privacy_activations += 1
        if ordered:
            # Built, encoded and published once the first attempt is on its way: they would
            # otherwise sit between the plan and the upstream call.
            asyncio.get_running_loop().call_soon(self._publish_later, request, plan, ordered, traceparent)
        else:
            await self._publish(request, plan, ordered, traceparent)
        verifier = plan.verify_with.dep if plan.verify_with is not None else None
        return Planned([c.dep for c in ordered], plan.reason, verifier, plan.hedge, plan.cache,
                       plan.privacy_constraint == "privacy")


@dataclass(slots=True)
class Planned:
    """What the request shell needs of a plan."""

    ordered: list[Deployment]
    reason: str
    verifier: Deployment | None
    hedge: bool
    cache: bool = False
    """The strategy's ``cache_responses``."""
    private: bool = False
    """Privacy kept the request local (privacy level high, or personal data found)."""


def _candidate(c: Scored) -> Candidate:
    dep = c.dep
    return Candidate(provider=dep.provider, model=dep.model, score=round(c.score, 4),
                     estimated_cost_usd=round(c.estimate, 8), suitability=c.suitability)


def _describe(d: RoutingDecision) -> str:
    chosen = f"{d.chosen.provider}/{d.chosen.model}" if d.chosen else "nothing"
    removed = ", ".join(f"{r.model}: {r.constraint}" for r in d.rejected)
    return (f"{chosen} by {d.rule or '-'} (strategy {d.strategy}, confidence {d.confidence}); {d.reason}"
            + (f"; removed {removed}" if removed else "") + (f"; {'; '.join(d.notes)}" if d.notes else ""))
