"""The routing engine: from one request and the router's view of the world, a plan (pure).

Pipeline (``decide``)
---------------------
1. **Facts**: estimated tokens and cost; task complexity (the request's, else estimated
   from task type, size and requirements); PII kinds in the prompt (``core.pii``, unless the
   agent switched detection off and the environment does not require it); today's cloud
   spend against the budget; the active strategy (an operator override for the agent, else
   a global override, else the agent's ``strategy``, else ``routing.default_strategy``).
2. **Request-level rules**: ``routing.yaml``'s global rules whose condition reads no
   ``model.*`` field (``privacy_enforcement``, ``cost_circuit_breaker``), the environment's
   modes and the strategy's own rules decide whether only local models may serve.
3. **Candidates**: a model an operator forced for the task id; else the caller's model or
   alias; else the agent's preferences (an operator's primary first) plus the models of
   its matching ``routing_rules``; else every model of the default pool.
4. **Hard constraints** (``core.routing.filter_candidates``) remove what may not serve.
5. **First choice**: an operator's primary; else the first matching agent rule whose model
   survived (a rule whose model was removed is noted, and the next is tried; a rule reading
   ``model.*`` is judged per deployment after the constraints); else the agent's configured
   primary when no strategy was chosen for it (default strategy); else the strategy's best.
6. **Order** the rest with the strategy (``core.strategies``), then apply per-model
   global rules: ``switch_to_fallback`` demotes matching candidates (a model whose rate
   limit is approaching), ``switch_to_local_only`` / ``force_local_model`` remove matching
   cloud ones, ``require_cloud_verification`` asks for a verifier (``quality_assurance``).

The plan holds only candidates that passed every hard constraint, so its fallbacks never
break one either. Same inputs and the same ``rng`` state give the same plan.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from router_agent.core.breaker import Breaker
from router_agent.core.cost import estimate_input_tokens, estimate_output_tokens
from router_agent.core.features import request_texts, required_capabilities
from router_agent.core.limiter import APPROACHING_BELOW, DeploymentLimiter
from router_agent.core.model import Deployment, DeploymentKey
from router_agent.core.observed import DeploymentStats
from router_agent.core.pii import detect
from router_agent.core.policy import AgentPolicy, Policy
from router_agent.core.routing import (
    ALL_MODELS,
    Limits,
    ProviderView,
    candidate_models,
    filter_candidates,
)
from router_agent.core.strategies import (
    OrderContext,
    Scale,
    Scored,
    best_local_confidence,
    confidence,
    order,
    score_all,
    sticky_key,
    suitability,
    verifier_for,
)
from signals import LlmRequest, Rejection

SENSITIVITY = {"high": 1.0, "low": 0.0}
"""How sensitive the data is, 0-1, for the privacy factor; otherwise 0.3 (1.0 with PII)."""
TYPE_COMPLEXITY = {
    "architecture_design": 7, "complex_reasoning": 7, "code_generation": 5, "code_review": 4,
    "code_analysis": 4, "test_generation": 4, "ui_design": 4, "summarization": 3,
    "translation": 3, "extraction": 2, "classification": 2, "chat": 2,
}
"""Complexity a task type starts from when the caller gives none (others: 3)."""
_NO_AGENT = AgentPolicy()


class Catalog(Protocol):
    deployments_by_model: Mapping[str, Sequence[Deployment]]
    default_pool: Sequence[str]
    pool_deployments: Sequence[Deployment]
    """Every deployment of ``default_pool``, flat (optional: built from the names without it)."""
    views: Mapping[str, ProviderView]
    stats: Mapping[DeploymentKey, DeploymentStats]
    limiters: Mapping[DeploymentKey, DeploymentLimiter]
    """Rate limiters of the deployments that have one (optional: none limited without it)."""


@dataclass(slots=True)
class Plan:
    ordered: list[Scored]
    rejected: list[Rejection]
    strategy: str
    decided_by: str
    """What put the first choice first: a rule's label, ``forced``, ``caller``, ``primary``,
    ``strategy`` or a global rule's name."""
    reason: str
    complexity: int
    complexity_source: str
    pii: tuple[str, ...] = ()
    privacy: str = ""
    """The local-only constraint applied, when one was (its detail)."""
    privacy_constraint: str = ""
    """``privacy`` (privacy level or personal data) or ``local_only`` (budget, environment, agent,
    strategy), when one applied."""
    confidence: float = 0.0
    verify_with: Scored | None = None
    notes: list[str] = field(default_factory=list)
    hedge: bool = False
    cache: bool = False
    tokens: int = 0
    """Estimated tokens of the request (prompt and completion), for the rate limiters."""
    input_tokens: int = 0
    """Estimated prompt tokens (what a cancelled hedge is billed)."""
    unexplained: Callable[[], None] | None = None
    """What ``explain`` still has to work out (``decide(..., explain=False)``)."""

    def explain(self) -> Plan:
        """The plan, with the scores, suitability and confidence ``decide`` may have left."""
        pending, self.unexplained = self.unexplained, None
        if pending is not None:
            pending()
        return self


def estimate_complexity(request: LlmRequest, est_in: int) -> int:
    task = request.task
    level = TYPE_COMPLEXITY.get(task.type or "", 3)
    level += (est_in > 1000) + (est_in > 4000) + (est_in > 16000)
    level += 2 * task.requires_reasoning + task.critical + bool(request.requirements.capabilities)
    return max(0, min(10, level))


def _model_fields(ctx: dict[str, Any], c: Scored) -> dict[str, Any]:
    dep = c.dep
    ctx["model.id"] = dep.model
    ctx["model.provider"] = dep.provider
    ctx["model.type"] = dep.type
    ctx["model.capabilities"] = dep.capabilities
    ctx["model.rate_limit_approaching"] = c.rate_share > 1.0 - APPROACHING_BELOW
    return ctx


def decide(
    request: LlmRequest,
    *,
    policy: Policy,
    catalog: Catalog,
    aliases: Mapping[str, str],
    breakers: Mapping[DeploymentKey, Breaker],
    overrides: Any,
    daily_cloud_cost: float,
    now: float,
    rng: random.Random,
    cursor: int,
    limit: int = 0,
    explain: bool = True,
) -> Plan:
    """``limit``: how many candidates the caller will try (0: all). Scores, suitability and
    per-model ``switch_to_fallback`` rules are worked out for that many, in order. ``explain=False``
    leaves what only explains the order to ``Plan.explain`` (for a caller that reports it later)."""
    task = request.task
    agent_id = request.agent_id
    agent = policy.agents.get(agent_id, _NO_AGENT)
    est_in, est_out = estimate_input_tokens(request), estimate_output_tokens(request)

    # 1. facts
    override = overrides.strategy_for(agent_id, now) if overrides is not None else None
    if override is not None:
        name, chosen_how = override.strategy, f"override ({override.scope or 'global'}: {override.reason})"
    elif agent.strategy is not None:
        name, chosen_how = agent.strategy, f"agent {agent_id!r}"
    else:
        name, chosen_how = policy.default_strategy, "default"
    spec = policy.strategy(name)
    if task.complexity is not None:
        complexity, complexity_source = task.complexity, "request"
    else:
        complexity, complexity_source = estimate_complexity(request, est_in), "estimated"
    pii = detect(request_texts(request)) if agent.pii_detection or policy.require_local_for_pii else frozenset()
    budgets = [b for b in (policy.max_cloud_spend_per_day, spec.cloud_budget_per_day) if b is not None]
    budget = min(budgets) if budgets else None
    cost_limit = budget is not None and daily_cloud_cost >= budget
    ctx: dict[str, Any] = {
        "task.type": task.type, "task.complexity": complexity, "task.privacy_level": task.privacy_level,
        "task.critical": task.critical, "task.involves_ui_design": task.involves_ui_design,
        "task.requires_reasoning": task.requires_reasoning, "data.contains_pii": bool(pii),
        "cost_limit_reached": cost_limit, "budget_mode": spec.base == "cost_optimized",
        "daily_cost": daily_cloud_cost, "budget": budget,
    }
    kinds = ", ".join(sorted(pii))

    # 2. request-level rules: may only local models serve?
    local: list[tuple[str, str]] = []
    if task.privacy_level == "high":
        local.append(("privacy", "privacy_level high allows local models only"))
    if pii and policy.require_local_for_pii:
        local.append(("privacy", f"personal data found ({kinds}); require_local_for_pii: local models only"))
    demote_first = verify_rule = ""
    per_model_rules = []
    for g in policy.global_rules:
        if g.per_model:
            per_model_rules.append(g)
        elif g.rule.evaluate(ctx):
            if g.action == "force_local_model":
                found = f"personal data found ({kinds})" if pii else f"{g.rule.source}"
                local.append(("privacy", f"{g.name}: {found}: local models only"))
            elif g.action == "switch_to_local_only":
                local.append(("local_only", f"{g.name}: {g.rule.source}: local models only"))
            elif g.action == "switch_to_fallback":
                demote_first = g.name
            else:
                verify_rule = g.name
    if policy.force_local:
        local.append(("local_only", "force_local_models is on in this environment"))
    if agent.local_only:
        local.append(("local_only", f"agent {agent_id!r} is local only"))
    if spec.local_only:
        local.append(("local_only", f"strategy {name!r} allows local models only"))
    local_only = next((c for c in local if c[0] == "privacy"), local[0] if local else None)
    needs = required_capabilities(request)
    asked = request.requirements.capabilities
    limits = Limits(est_in, est_out, needs.union(asked) if asked else needs, local_only)
    if cost_limit:
        limits.cloud_budget_left = False
        limits.budget_detail = f"today's cloud spend ${daily_cloud_cost:.2f} reached the ${budget:.2f} budget"

    # 3. candidates
    by_model = catalog.deployments_by_model
    notes: list[str] = []
    forced = overrides.forced_for(task.id, now) if overrides is not None and task.id else None
    matched = []
    tentative: set[str] = set()  # models only a per-model rule brought in: kept if it holds for them
    decided_by = ""
    lead: str | None = None
    primary = None
    if forced is not None:
        names, why = [aliases.get(forced.model, forced.model)], f"operator forced {forced.model!r} for task {task.id!r} ({forced.reason})"
        decided_by = "forced"
    elif request.model is not None:
        names, why = candidate_models(request, by_model, aliases, None)
        decided_by = "caller"
    else:
        prefs: Sequence[str] = agent.preferences
        primary = overrides.primary_for(agent_id, now) if overrides is not None else None
        if primary is not None:
            prefs = (primary.model, *(p for p in prefs if p != primary.model))
        names, why = candidate_models(request, by_model, aliases, prefs, catalog.default_pool)
        if primary is not None or (override is None and agent.strategy is None and prefs):
            # An operator's primary always leads; the configured one only when nobody chose a
            # strategy for this agent (choosing one, in agents.yaml or by override, lets it rank).
            lead = prefs[0]
        for r in agent.rules:
            # A rule reading model.* is judged per deployment once the constraints have run
            # (it needs the live rate window); its model is a candidate until then.
            if by_model.get(r.model) and (r.per_model or r.rule.evaluate(ctx)):
                matched.append(r)
                if r.model not in names:
                    names.append(r.model)
                    if r.per_model:
                        tentative.add(r.model)
    pool = getattr(catalog, "pool_deployments", None)
    if pool is not None and why == ALL_MODELS and len(names) == len(catalog.default_pool):
        deployments = pool  # the registry's flat list of the default pool: no per-request rebuild
    else:
        deployments = [d for m in names for d in by_model.get(m, ())]

    # 4. hard constraints
    kept, rejected, scale = filter_candidates(request, deployments, limits, catalog.views, catalog.stats, breakers, now,
                                              getattr(catalog, "limiters", None))
    base = Plan([], rejected, name, "", "", complexity, complexity_source, tuple(sorted(pii)),
                local_only[1] if local_only else "", local_only[0] if local_only else "",
                hedge=spec.hedge, cache=spec.cache,
                tokens=est_in + est_out, input_tokens=est_in)
    if not kept:
        base.reason = f"{why}; no candidate passed the hard constraints" if deployments else why
        return base
    sensitivity = 1.0 if pii else SENSITIVITY.get(task.privacy_level or "", 0.3)
    weights = policy.factor_weights

    def scorer(cands: list[Scored], store: bool = True, adaptive: bool = False) -> list[float]:
        return score_all(cands, weights, complexity, sensitivity, scale, store, adaptive)

    # 5. first choice: an operator's primary, else the first rule that holds for a survivor
    first: list[Scored] = []
    if primary is not None:
        first = [c for c in kept if c.dep.model == primary.model]
        if first:
            decided_by = "primary"
            if matched:
                notes.append(f"operator's primary {primary.model} ({primary.reason}) comes before the agent's rules")
    why_removed = {r.model: r for r in rejected}
    mctx = dict(ctx)
    held: set[str] = set()
    for r in matched if not first else ():
        group = [c for c in kept if c.dep.model == r.model
                 and (not r.per_model or r.rule.evaluate(_model_fields(mctx, c)))]
        if group:
            first, decided_by = group, r.label
            held.add(r.model)
            break
        gone = why_removed.get(r.model)
        if not r.per_model:
            notes.append(f"{r.label} ({r.rule.source}) matched, but {r.model} was removed"
                         + (f" by {gone.constraint}: {gone.detail}" if gone else ""))
    if tentative - held:
        dropped = tentative - held
        kept = [c for c in kept if c.dep.model not in dropped]
        base.rejected = rejected = [r for r in rejected if r.model not in dropped]
        if not kept:
            base.reason = f"{why}; no candidate passed the hard constraints"
            return base
        fresh = Scale.of(kept)  # the scale of the survivors that stay
        scale.top_cost, scale.fastest = fresh.top_cost, fresh.fastest
    if not first and lead is not None and primary is None:
        first = [c for c in kept if c.dep.model == lead]
        if first:
            decided_by = "primary"

    # 6. order
    prefer = spec.prefer_type
    if spec.complexity_split:
        prefer = "cloud" if complexity >= 7 else "local" if complexity <= 3 else prefer
    if prefer == "local" and (spec.cloud_above_complexity is not None or spec.cloud_below_confidence is not None):
        best_local = best_local_confidence(kept, task.type, complexity, spec.cloud_below_confidence)
        if (spec.cloud_above_complexity is not None and complexity >= spec.cloud_above_complexity) or (
                spec.cloud_below_confidence is not None and best_local < spec.cloud_below_confidence):
            prefer = "cloud"
            notes.append(f"{name}: complexity {complexity} / local confidence {best_local:.2f} past the "
                         "fallback_to_cloud_threshold: cloud first")
    octx = OrderContext(rng, cursor, scale, scorer, agent.capabilities | limits.capabilities
                        | ({task.type} if task.type else frozenset()), spec.hybrid,
                        dict(spec.model_weights) or None,
                        sticky_key(spec.name, request.metadata.get(spec.sticky_key)) if spec.sticky_key else None,
                        spec.dynamic)
    if first:
        # Not "every other model": a per-model rule may have put only some of a model's
        # deployments first (those it holds for); the others are still candidates.
        leading = {id(c) for c in first}
        rest = [c for c in kept if id(c) not in leading]
        ordered = order(spec.base, first, octx) + order(spec.base, rest, octx, prefer)
    else:
        ordered = order(spec.base, kept, octx, prefer)
        decided_by = decided_by or "strategy"
    if demote_first and len(ordered) > 1:
        ordered = ordered[1:] + ordered[:1]
        notes.append(f"{demote_first}: first choice moved to the end")
        decided_by = demote_first
    if per_model_rules:
        ordered, decided_by, verify_rule = _per_model(per_model_rules, ordered, ctx, rejected, notes,
                                                      decided_by, verify_rule, limit or len(ordered))
    if not ordered:
        base.reason = f"{why}; global rules removed every candidate"
        base.notes = notes
        return base
    shown = ordered[: max(limit, 2) if limit else len(ordered)]  # the runner-up too: confidence reads it

    def explained() -> None:
        scorer(shown)
        for c in shown:
            c.suitability = suitability(c.dep, task.type, complexity, c.stats)
        base.confidence = confidence(ordered, decided_by)
    base.ordered = ordered
    base.decided_by = decided_by
    base.notes = notes
    base.reason = f"{why}; first choice by {decided_by}; strategy {name} ({chosen_how})"
    if verify_rule:
        base.verify_with = verifier = verifier_for(ordered, local_only is not None)
        if verifier is not None and verifier.suitability == 0:  # beyond the part scored above
            scorer([verifier])
            verifier.suitability = suitability(verifier.dep, task.type, complexity, verifier.stats)
        if verifier is None:
            notes.append(f"{verify_rule}: no stronger model may serve this request; answered unverified")
        else:
            notes.append(f"{verify_rule}: {ordered[0].dep.model} answers, {base.verify_with.dep.model} verifies")
    base.unexplained = explained
    return base.explain() if explain else base


def _per_model(rules: list, ordered: list[Scored], ctx: dict[str, Any], rejected: list[Rejection],
               notes: list[str], decided_by: str, verify_rule: str, limit: int) -> tuple[list[Scored], str, str]:
    mctx = dict(ctx)
    # Only the last rule that moves or removes candidates may stop at ``limit`` (the next reads all).
    last_mover = max((i for i, g in enumerate(rules) if g.action != "require_cloud_verification"), default=-1)
    for i, g in enumerate(rules):
        if not ordered:
            break
        if g.action == "require_cloud_verification":
            if g.rule.evaluate(_model_fields(mctx, ordered[0])):
                verify_rule = g.name
            continue
        if g.action == "switch_to_fallback":
            # Walk in order until ``limit`` candidates do not match: only those are tried.
            front: list[Scored] = []
            hits: list[Scored] = []
            seen = 0
            walk = limit if i == last_mover else len(ordered)
            for c in ordered:
                if len(front) == walk:
                    break
                seen += 1
                (hits if g.rule.evaluate(_model_fields(mctx, c)) else front).append(c)
            if hits and front:
                lead = ordered[0]
                ordered = front + hits + ordered[seen:]
                notes.append(f"{g.name}: {', '.join(c.dep.model for c in hits)} moved behind the others")
                if ordered[0] is not lead:
                    decided_by = g.name
            continue
        hits = [c for c in ordered if g.rule.evaluate(_model_fields(mctx, c))]
        gone = [c for c in hits if c.dep.type != "local"]
        if gone:  # switch_to_local_only / force_local_model: the matching cloud candidates go
            lead = ordered[0]
            gone_ids = {id(c) for c in gone}
            ordered = [c for c in ordered if id(c) not in gone_ids]
            notes.append(f"{g.name}: removed {', '.join(c.dep.model for c in gone)}")
            if ordered and ordered[0] is not lead:
                decided_by = g.name
            rejected.extend(Rejection(provider=c.dep.provider, model=c.dep.model, constraint=g.name,
                                      detail=g.rule.source) for c in gone)
    return ordered, decided_by, verify_rule
