"""Properties of the routing engine over random worlds (hypothesis).

A world is a random registry (types, capabilities, prices, context windows, enabled flags,
provider health and weight, breaker states, observed stats and rate windows), a random
policy (agent rules and global rules generated from the rule grammar's fields, a random
named strategy over any building block, environment modes), random overrides and a
random request (privacy level, PII inserted or not, requirements, task fields).

Checked for every world:
- the plan never holds a deployment that breaks a hard constraint; in particular never a
  cloud model when ``privacy_level`` is high, or when PII was found and the privacy rule or
  ``require_local_for_pii`` is on (the constraints are re-derived here from the request and
  the world, not read from the engine);
- every deployment the engine considered is either ordered or rejected, never both, never
  twice; what it had to consider (forced, caller, preferences or the pool) is all there;
- the same inputs and the same seed give the same plan; another seed or cursor may reorder
  but never changes which deployments may serve.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router_agent.core.breaker import Breaker
from router_agent.core.cost import cost_usd, estimate_input_tokens, estimate_output_tokens
from router_agent.core.engine import Plan, decide
from router_agent.core.limiter import DeploymentLimiter
from router_agent.core.observed import DeploymentStats
from router_agent.core.overrides import RoutingOverrides
from router_agent.core.policy import BUILDING_BLOCKS, GLOBAL_ACTIONS, Policy, build_policy
from router_agent.core.routing import ProviderView
from signals import ChatMessage, LlmRequest, Params, Requirements, Task
from tests.test_engine import PII_TEXTS, catalog, dep

NOW = 50_000.0
CAPS = ["code_generation", "vision", "ui_design", "test_generation", "complex_reasoning", "general_reasoning"]
TYPES = ["code_generation", "test_generation", "ui_design", "chat", "architecture_design"]
MODELS = [f"m{i}" for i in range(5)]
PROVIDERS = [f"p{i}" for i in range(4)]
ALIASES = {"al": "m0", "gone": "m9"}
CLEAN = ["please refactor this function", "summarise the design notes", "y" * 3000, "hi"]

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------- conditions from the grammar

REQUEST_ATOMS = [
    *(f"task.type == '{t}'" for t in TYPES), "task.type in ['code_generation', 'chat']", "task.type != 'chat'",
    "task.type not in ['ui_design']",
    *(f"task.complexity {op} {n}" for op in (">", ">=", "<", "==") for n in (0, 3, 7, 8)),
    "0 < task.complexity <= 8", "task.complexity * 2 > 10",
    "task.privacy_level == 'high'", "task.privacy_level != 'low'",
    "task.critical", "task.involves_ui_design", "task.requires_reasoning", "task.critical == false",
    "data.contains_pii", "cost_limit_reached", "budget_mode == true", "daily_cost > budget * 0.8",
    "daily_cost >= 50", "budget - daily_cost < 10", "true", "false",
]
MODEL_ATOMS = [
    "model.type == 'local'", "model.type == 'cloud'", "model.rate_limit_approaching",
    "'vision' in model.capabilities", "'code_generation' not in model.capabilities",
    *(f"model.provider == '{p}'" for p in PROVIDERS[:2]), *(f"model.id == '{m}'" for m in MODELS[:2]),
]


def condition(rnd: random.Random, atoms=REQUEST_ATOMS + MODEL_ATOMS, depth: int = 2) -> str:
    if depth == 0 or rnd.randrange(3) == 0:
        return rnd.choice(atoms)
    kind = rnd.choice(["and", "or", "not"])
    if kind == "not":
        return f"not ({condition(rnd, atoms, depth - 1)})"
    return f"({condition(rnd, atoms, depth - 1)}) {kind} ({condition(rnd, atoms, depth - 1)})"


_rnd = random.Random(8)
CONDITIONS = [*REQUEST_ATOMS, *MODEL_ATOMS, *(condition(_rnd) for _ in range(300))]
"""Atoms and random and/or/not combinations of them (drawn from a list: hypothesis draws are
what a world costs, and a list shrinks to its first, simplest entries)."""


STRATEGY_RULE_VALUES = [
    ("prefer_local_models", True), ("prefer_local_models", False), ("prefer_cloud_models", True),
    ("cloud_budget_per_day", 0.0), ("cloud_budget_per_day", 50.0), ("cloud_budget_per_day", 100.0),
    ("fallback_to_cloud_threshold", {"complexity": 7, "confidence": 0.6}),
    ("fallback_to_cloud_threshold", {"confidence": 0.9}),
    ("allow_cloud_models", False), ("allow_cloud_models", True),
    ("required_model_type", "local"), ("required_model_type", "cloud"),
    ("cloud_for_complex_tasks", True), ("local_for_routine_tasks", True), ("dynamic_routing", True),
    ("parallel_requests", True), ("cache_responses", True),
]

SHIPPED_GLOBAL = {
    "rate_limit_protection": ("model.rate_limit_approaching", "switch_to_fallback"),
    "cost_circuit_breaker": ("daily_cost > budget * 0.8", "switch_to_local_only"),
    "privacy_enforcement": ("data.contains_pii", "force_local_model"),
    "quality_assurance": ("task.critical and model.type == 'local'", "require_cloud_verification"),
}


# --------------------------------------------------------------------------- a world


@dataclass
class World:
    """Plain data; ``build()`` makes fresh engine inputs from it (so two runs share nothing)."""

    deps: list[dict]
    views: dict[str, dict]
    breakers: dict[tuple[str, str], dict]
    stats: dict[tuple[str, str], dict]
    agents: dict[str, Any]
    routing: dict[str, Any]
    overrides: list[tuple]
    request: dict[str, Any]
    pii_kind: str | None
    daily: float
    privacy_rule: bool
    limiters: dict[tuple[str, str], dict]

    def build(self) -> dict[str, Any]:
        deps = [dep(**d) for d in self.deps]
        cat = catalog(deps, {p: ProviderView(**v) for p, v in self.views.items()},
                      {k: DeploymentStats(**s) for k, s in self.stats.items()})
        cat.limiters = {k: _limiter(**spec) for k, spec in self.limiters.items()}
        for p in list(cat.views):  # some providers are not in the view at all
            if p not in self.views:
                del cat.views[p]
        table = RoutingOverrides()
        for kind, *args in self.overrides:
            getattr(table, kind)(*args)
        return {
            "request": make_request(self.request, self.pii_kind),
            "policy": build_policy(self.agents, self.routing, sorted({d["model"] for d in self.deps})),
            "catalog": cat, "aliases": dict(ALIASES),
            "breakers": {k: Breaker(**b) for k, b in self.breakers.items()},
            "overrides": table, "daily_cloud_cost": self.daily, "now": NOW,
        }


def make_request(fields: dict[str, Any], pii_kind: str | None) -> LlmRequest:
    content = fields["content"] + (f" {PII_TEXTS[pii_kind]}" if pii_kind else "")
    return LlmRequest(
        request_id="r-1", agent_id=fields["agent"], messages=[ChatMessage(role="user", content=content)],
        model=fields["model"], params=Params(max_tokens=fields["max_tokens"]), task=Task(**fields["task"]),
        requirements=Requirements(**fields["requirements"]), metadata=fields["metadata"],
    )


def pick(rnd: random.Random, *weighted: tuple[Any, int]) -> Any:
    return rnd.choices([v for v, _ in weighted], [w for _, w in weighted])[0]


@st.composite
def worlds(draw) -> World:
    """Structure (deployments, types, rules, modes, the request's privacy and PII) is drawn
    by hypothesis; the details of each part come from a drawn seed (one draw each, so a world
    costs a few milliseconds and still shrinks)."""
    detail = random.Random(draw(st.integers(0, 2**32 - 1)))
    deps, seen = [], set()
    for _ in range(draw(st.integers(1, 8))):
        provider, model = draw(st.sampled_from(PROVIDERS)), draw(st.sampled_from(MODELS))
        if (provider, model) in seen:
            continue
        seen.add((provider, model))
        r = random.Random(draw(st.integers(0, 2**32 - 1)))
        deps.append({
            "model": model, "provider": provider, "type": draw(st.sampled_from(["cloud", "local"])),
            "caps": frozenset(r.sample(CAPS, r.randrange(5))),
            "price_in": r.choice([0.0, 0.001, 0.01, 0.1]), "price_out": r.choice([0.0, 0.002, 0.03]),
            "context_window": pick(r, (None, 6), (100_000, 6), (600, 2), (40, 1)),
            "enabled": r.randrange(16) > 0,
            "requests_per_minute": r.choice([None, 10, 100]), "tokens_per_minute": r.choice([None, 2_000, 100_000]),
            "tokens_per_second": r.choice([None, 30.0]),
        })
    views = {}
    for p in sorted({d["provider"] for d in deps}):
        if detail.randrange(20) > 0:  # sometimes missing from the view
            views[p] = {"enabled": detail.randrange(16) > 0,
                            "health": pick(detail, ("healthy", 10), ("degraded", 3), ("unhealthy", 1)),
                            "weight": pick(detail, (1.0, 4), (0.0, 1), (0.5, 1), (3.0, 1))}
    breakers, stats, limiters = {}, {}, {}
    for d in deps:
        key = (d["provider"], d["model"])
        if detail.randrange(6) == 0:
            breakers[key] = {"state": detail.choice(["closed", "open", "half_open"]),
                                 "opened_at": NOW - detail.choice([0.0, 10.0, 30.0, 90.0]),
                                 "probe_in_flight": detail.random() < 0.5, "cooldown_s": 30.0, "failures": 5}
        if detail.random() < 0.5:
            stats[key] = {
                "latency_ms": detail.choice([None, 50.0, 500.0, 3000.0]), "baseline_ms": detail.choice([None, 60.0, 400.0]),
                "error_rate": detail.choice([0.0, 0.1, 0.5, 0.95]), "in_flight": detail.randrange(80),
                "successes": detail.choice([0, 5, 50]), "failures": detail.choice([0, 3, 20]),
            }
        if detail.random() < 0.3:  # a rate limiter: its requests left now, or a provider's block
            limiters[key] = {"rpm": detail.choice([None, 10, 100]), "tpm": detail.choice([None, 2_000, 100_000]),
                             "left": detail.choice([0.0, 0.5, 1.0, 2.0, 9.0]),
                             "blocked_for": detail.choice([0.0, 0.0, 5.0])}
    names = sorted({d["model"] for d in deps})
    conditions = st.sampled_from(CONDITIONS)
    rule_models = st.sampled_from(names + ["m9"])  # m9: a rule naming a model nobody serves
    agent = {
        "model_preferences": {f"role{i}": detail.choice(names + ["m9"]) for i in range(detail.randrange(4))},
        "routing_rules": [{"condition": draw(conditions), "model": draw(rule_models)}
                          for _ in range(draw(st.integers(0, 4)))],
        "strategy": pick(detail, (None, 4), ("s", 2), *((b, 1) for b in BUILDING_BLOCKS)),
        "pii_detection": detail.randrange(4) > 0,
        "local_only": detail.randrange(10) == 0,
        "capabilities_required": detail.sample(CAPS, detail.randrange(4)),
    }
    strategy: dict[str, Any] = {
        "base": draw(st.sampled_from(BUILDING_BLOCKS)),
        "rules": [{k: v} for k, v in detail.sample(STRATEGY_RULE_VALUES, detail.randrange(4))],
    }
    if detail.random() < 0.5:
        strategy["model_weights"] = {m: detail.choice([0.0, 1.0, 9.0]) for m in detail.sample(names, detail.randrange(len(names) + 1))}
        strategy["sticky_key"] = detail.choice([None, "user"])
    if detail.random() < 0.5:
        strategy["weights"] = {"cost_weight": detail.choice([0.0, 0.5]), "latency_weight": 0.3,
                               "reliability_weight": detail.choice([0.0, 0.7])}
    shipped = [name for name in SHIPPED_GLOBAL if draw(st.booleans())]
    global_rules = [{"name": name, "condition": SHIPPED_GLOBAL[name][0], "action": SHIPPED_GLOBAL[name][1]}
                    for name in shipped]
    global_rules += [{"name": f"g{i}", "condition": draw(conditions), "action": draw(st.sampled_from(GLOBAL_ACTIONS))}
                     for i in range(draw(st.integers(0, 3)))]
    detail.shuffle(global_rules)
    routing: dict[str, Any] = {
        "default_strategy": draw(st.sampled_from(["s", *BUILDING_BLOCKS])),
        "strategies": {"s": strategy},
        "global_rules": global_rules,
        "global_overrides": {
            "force_local_models": detail.randrange(12) == 0,
            "require_local_for_pii": draw(st.booleans()),
            "max_cloud_spend_per_day": pick(detail, (None, 6), (0.0, 1), (100.0, 2)),
        },
    }
    if detail.random() < 0.5:
        routing["routing_factors"] = [{"name": f, "weight": detail.choice([0.0, 0.2, 1.0])}
                                      for f in ("task_complexity", "cost_efficiency", "privacy_requirements",
                                                "performance_needs", "model_availability")]
        if not any(f["weight"] for f in routing["routing_factors"]):
            routing["routing_factors"][0]["weight"] = 1.0
    agent_id = pick(detail, ("ag", 3), ("stranger", 1))
    overrides: list[tuple] = []
    strategies = ["s", *BUILDING_BLOCKS]
    if detail.randrange(4) == 0:
        overrides.append(("set_strategy", None, detail.choice(strategies), detail.choice([None, 10.0]), "g", NOW - 5))
    if detail.randrange(4) == 0:
        overrides.append(("set_strategy", agent_id, detail.choice(strategies), detail.choice([None, 1.0]), "a", NOW - 5))
    if detail.randrange(4) == 0:
        overrides.append(("set_primary", agent_id, detail.choice(names + ["al"]), "p", NOW - 5,
                          detail.choice([None, 1.0, 100.0])))
    if detail.randrange(4) == 0:
        overrides.append(("force_model", "t1", detail.choice(names + ["al"]), detail.choice([None, 1.0]), "f", NOW - 5))
    pii_kind = draw(st.sampled_from([None, None, None, None, *sorted(PII_TEXTS)]))
    request = {
        "agent": agent_id,
        "content": detail.choice(CLEAN),
        "model": pick(detail, (None, 40), ("al", 1), ("gone", 1), ("ghost", 1), *((m, 1) for m in names)),
        "max_tokens": detail.choice([None, 1, 100, 2_000]),
        "task": {
            "id": detail.choice([None, "t1", "t2"]),
            "type": detail.choice([None, *TYPES]),
            "complexity": detail.choice([None, 0, 3, 5, 7, 9, 10]),
            "privacy_level": draw(st.sampled_from([None, "low", "normal", "high"])),
            "critical": draw(st.booleans()), "involves_ui_design": detail.random() < 0.3,
            "requires_reasoning": detail.random() < 0.3,
        },
        "requirements": {
            "capabilities": detail.sample(CAPS, pick(detail, (0, 10), (1, 2), (2, 1))),
            "model_type": pick(detail, (None, 10), ("cloud", 1), ("local", 1)),
            "max_cost_usd": pick(detail, (None, 16), (0.0, 1), (0.001, 1), (1.0, 1)),
            "max_latency_ms": pick(detail, (None, 12), (100, 1), (1_000, 1)),
        },
        "metadata": detail.choice([{}, {"user": "alice"}, {"user": "bob"}]),
    }
    return World(deps, views, breakers, stats, {"ag": agent}, routing, overrides, request, pii_kind,
                 detail.choice([0.0, 50.0, 80.5, 100.0, 1_000.0]), "privacy_enforcement" in shipped, limiters)


# --------------------------------------------------------------------------- the checks


def run(inputs: dict[str, Any], seed: int, cursor: int, limit: int = 0) -> Plan:
    return decide(**inputs, rng=random.Random(seed), cursor=cursor, limit=limit)


def active_strategy(world: World, policy: Policy) -> str:
    agent_id = world.request["agent"]
    live = {}
    for kind, *args in world.overrides:
        if kind == "set_strategy":
            scope, name, duration, _reason, at = args
            if duration is None or NOW < at + duration:
                live[scope] = name
    if agent_id in live:
        return live[agent_id]
    if None in live:
        return live[None]
    agent = policy.agents.get(agent_id)
    return agent.strategy if agent is not None and agent.strategy else policy.default_strategy


def violation(d, world: World, inputs: dict[str, Any], pii_found: bool) -> str | None:
    """The hard constraint deployment ``d`` breaks, re-derived from the world; else None."""
    request: LlmRequest = inputs["request"]
    policy: Policy = inputs["policy"]
    view = world.views.get(d.provider)
    spec = policy.strategy(active_strategy(world, policy))
    agent = policy.agents.get(request.agent_id)
    if view is None or not view["enabled"] or not d.enabled:
        return "disabled"
    if view["health"] == "unhealthy":
        return "unhealthy"
    if d.type != "local":
        if request.task.privacy_level == "high":
            return "cloud model for privacy_level high"
        if pii_found and (world.privacy_rule or policy.require_local_for_pii):
            return "cloud model for a request with PII"
        if policy.force_local or (agent is not None and agent.local_only) or spec.local_only:
            return "cloud model in a local-only mode"
        budgets = [b for b in (policy.max_cloud_spend_per_day, spec.cloud_budget_per_day) if b is not None]
        if budgets and world.daily >= min(budgets):
            return "cloud model past the budget"
    req = request.requirements
    if req.model_type is not None and d.type != req.model_type:
        return "model_type"
    if not d.capabilities.issuperset(req.capabilities):
        return "capability"
    est_in, est_out = estimate_input_tokens(request), estimate_output_tokens(request)
    if d.context_window is not None and est_in + est_out > d.context_window:
        return "context_window"
    if req.max_cost_usd is not None and cost_usd(est_in, est_out, d.price_in, d.price_out) > req.max_cost_usd:
        return "max_cost"
    seen = world.stats.get(d.key)
    if req.max_latency_ms is not None and seen and seen["latency_ms"] is not None and seen["latency_ms"] > req.max_latency_ms:
        return "max_latency"
    b = world.breakers.get(d.key)
    if b is not None and not Breaker(**b).allows(NOW):
        return "circuit_open"
    return None  # a rate limit is no constraint: the request may wait for it (core/routing.py)


def _limiter(rpm: int | None, tpm: int | None, left: float, blocked_for: float) -> DeploymentLimiter:
    full = DeploymentLimiter.per_minute(rpm, tpm, NOW)
    requests, tokens = (None if b is None else dataclasses.replace(b, level=min(b.capacity, left * scale))
                        for b, scale in ((full.requests, 1), (full.tokens, 100)))
    return DeploymentLimiter(requests=requests, tokens=tokens, blocked_until=NOW + blocked_for)


def allowed_cooling(plan: Plan, world: World, key: tuple[str, str]) -> bool:
    """Every candidate that passed the other constraints is cooling down behind an open
    breaker: the one whose cooldown ends first is kept alone, to be probed."""
    cooling = [(Breaker(**world.breakers[r.provider, r.model]).retry_at(NOW), (r.provider, r.model))
               for r in plan.rejected if r.constraint == "circuit_open"]
    mine = Breaker(**world.breakers[key]).retry_at(NOW)
    return len(plan.ordered) == 1 and len(cooling) >= 1 and all(mine <= t for t, _ in cooling)


def signature(plan: Plan) -> tuple:
    return (
        [(c.dep.key, c.score, c.suitability, c.estimate, c.factors) for c in plan.ordered],
        [(r.provider, r.model, r.constraint, r.detail) for r in plan.rejected],
        plan.strategy, plan.decided_by, plan.reason, plan.notes, plan.complexity, plan.complexity_source,
        plan.pii, plan.privacy, plan.confidence, plan.verify_with.dep.key if plan.verify_with else None,
        plan.hedge, plan.cache, plan.tokens,
    )


@SETTINGS
@given(world=worlds(), seed=st.integers(0, 2**32 - 1), cursor=st.integers(0, 1_000))
def test_a_plan_never_holds_a_candidate_that_breaks_a_hard_constraint(world, seed, cursor):
    inputs = world.build()
    plan = run(inputs, seed, cursor)
    policy: Policy = inputs["policy"]
    agent = policy.agents.get(world.request["agent"])
    detecting = agent is None or agent.pii_detection or policy.require_local_for_pii
    # PII is found exactly when inserted (and detection is on), and only its kind is named.
    assert set(plan.pii) == ({world.pii_kind} if world.pii_kind and detecting else set())
    for c in plan.ordered:
        broken = violation(c.dep, world, inputs, bool(plan.pii))
        if broken == "circuit_open" and allowed_cooling(plan, world, c.dep.key):
            continue
        assert broken is None, (c.dep.key, plan.reason, plan.rejected)
    if plan.verify_with is not None:
        assert plan.verify_with in plan.ordered[1:]
        assert plan.verify_with.dep.quality > plan.ordered[0].dep.quality
    private = world.request["task"]["privacy_level"] == "high" or (
        plan.pii and (world.privacy_rule or policy.require_local_for_pii))
    if private:
        assert all(c.dep.type == "local" for c in plan.ordered)
        assert plan.privacy
        assert plan.verify_with is None or plan.verify_with.dep.type == "local"
    for c in plan.ordered:
        assert 1 <= c.suitability <= 5
        assert -1e-9 <= c.score <= 1.0 + 1e-9
    assert 0.0 <= plan.confidence <= 1.0
    assert (plan.complexity_source == "request") == (world.request["task"]["complexity"] is not None)
    assert 0 <= plan.complexity <= 10


@SETTINGS
@given(world=worlds(), seed=st.integers(0, 2**32 - 1), cursor=st.integers(0, 1_000))
def test_every_considered_deployment_is_either_ordered_or_rejected(world, seed, cursor):
    inputs = world.build()
    plan = run(inputs, seed, cursor)
    cat = inputs["catalog"]
    ordered = Counter(c.dep.key for c in plan.ordered)
    rejected = Counter((r.provider, r.model) for r in plan.rejected)
    assert max(ordered.values(), default=1) == 1 and max(rejected.values(), default=1) == 1
    assert not set(ordered) & set(rejected)
    accounted = set(ordered) | set(rejected)
    every = {d.key for ds in cat.deployments_by_model.values() for d in ds}
    assert accounted <= every
    accounted_models = {m for _, m in accounted}

    # What the engine had to consider, from the world:
    request = inputs["request"]
    served = cat.deployments_by_model
    forced = [o for o in world.overrides if o[0] == "force_model" and request.task.id == "t1"
              and (o[3] is None or NOW < o[5] + o[3])]
    rule_models = {r["model"] for r in world.agents["ag"]["routing_rules"]} if request.agent_id == "ag" else set()
    if forced:
        must = {ALIASES.get(forced[0][2], forced[0][2])}
        may = must
        assert plan.decided_by in ("forced", "") or plan.decided_by in {g["name"] for g in world.routing["global_rules"]}
    elif request.model is not None:
        name = request.model if request.model in served else ALIASES.get(request.model)
        must = may = {name} if name else set()
    else:
        prefs = list(world.agents["ag"]["model_preferences"].values()) if request.agent_id == "ag" else []
        for o in world.overrides:
            if o[0] == "set_primary" and o[1] == request.agent_id and (o[5] is None or NOW < o[4] + o[5]):
                prefs = [o[2], *prefs]
        must = {m for m in prefs if m in served} or set(served)
        may = must | rule_models
    must_keys = {d.key for m in must for d in served.get(m, ())}
    assert must_keys <= accounted, (must, plan.reason)
    assert accounted_models <= may


@SETTINGS
@given(world=worlds(), seed=st.integers(0, 2**32 - 1), cursor=st.integers(0, 1_000),
       other_seed=st.integers(0, 2**32 - 1), other_cursor=st.integers(0, 1_000))
def test_the_same_inputs_and_seed_give_the_same_plan(world, seed, cursor, other_seed, other_cursor):
    plan = run(world.build(), seed, cursor)
    again = run(world.build(), seed, cursor)
    assert signature(plan) == signature(again)
    # another random source or cursor may reorder, never change who may serve
    other = run(world.build(), other_seed, other_cursor)
    assert {c.dep.key for c in other.ordered} == {c.dep.key for c in plan.ordered}
    assert sorted((r.provider, r.model, r.constraint) for r in other.rejected) == sorted(
        (r.provider, r.model, r.constraint) for r in plan.rejected)
    assert (other.pii, other.privacy, other.strategy, other.complexity) == (plan.pii, plan.privacy, plan.strategy,
                                                                           plan.complexity)


@SETTINGS
@given(world=worlds(), seed=st.integers(0, 2**32 - 1), cursor=st.integers(0, 1_000), limit=st.integers(1, 4))
def test_a_limit_only_bounds_what_is_worked_out(world, seed, cursor, limit):
    """``limit`` (the planner's max_attempts) changes neither who may serve nor the first
    ``limit`` in order, nor their scores; each of those is scored (0-1) and rated (1-5)."""
    full = run(world.build(), seed, cursor)
    part = run(world.build(), seed, cursor, limit)
    head = [(c.dep.key, c.score, c.suitability, c.factors) for c in part.ordered[:limit]]
    assert head == [(c.dep.key, c.score, c.suitability, c.factors) for c in full.ordered[:limit]]
    assert {c.dep.key for c in part.ordered} == {c.dep.key for c in full.ordered}
    assert (part.decided_by, part.strategy, part.pii, part.privacy, part.complexity) == (
        full.decided_by, full.strategy, full.pii, full.privacy, full.complexity)
    assert (part.verify_with is None) == (full.verify_with is None)
    if full.verify_with is not None:
        assert part.verify_with.dep.key == full.verify_with.dep.key
    for c in part.ordered[:limit]:
        assert 0.0 <= c.score <= 1.0 + 1e-9 and 1 <= c.suitability <= 5
