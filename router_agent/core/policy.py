"""The routing policy, compiled once when config loads (pure).

``build_policy`` turns the plain data of ``agents.yaml`` and ``routing.yaml`` (after the
environment overlay) into frozen objects the engine reads on every request: parsed rule
conditions (``core.rules``), strategy specs, factor weights and the environment's modes.
Every problem is reported as ``(key path, message)``, so the config loader can name the
file; a strategy rule, action or key the engine does not implement is an error, never
silently ignored.

Strategies
----------
Building blocks (``BUILDING_BLOCKS``), each an ordering of the candidates that passed the
hard constraints:

- ``round_robin``: a rotation, weighted by provider weight (0: fallback only);
- ``weighted``: a draw by static weights: provider weight times the strategy's
  ``model_weights`` (an A/B split between models). With ``sticky_key`` (a ``metadata``
  key such as ``user``) the draw is a hash of that value, so a user stays on one arm;
- ``least_loaded``: lowest in-flight relative to capacity (``capacity`` per model type);
- ``cost_optimized``: lowest estimated cost of this request;
- ``performance_first``: lowest observed latency (EWMA, with a prior for models without
  data), load-adjusted, power of two choices for the first pick (no stampede);
- ``capability_based``: best capability match (agent's and task's), then cost;
- ``hybrid``: ``cost_weight`` x cost efficiency + ``latency_weight`` x speed +
  ``reliability_weight`` x reliability (default 0.4 / 0.4 / 0.2);
- ``adaptive``: a draw by weights that fall with a model's error rate and latency
  degradation and come back as it recovers (with a floor, so a degraded model still sees
  the traffic that shows its recovery);
- ``balanced``: by the ``routing_factors`` score.

The named strategies of ``routing.yaml`` are a base plus rules (``STRATEGY_RULES``):
``cost_optimized`` (cost_optimized + prefer local, a cloud budget, a complexity/confidence
threshold above which cloud comes first), ``performance_optimized`` (performance_first +
prefer cloud), ``privacy_first`` (capability_based + local only), ``balanced`` (balanced +
cloud for complex, local for routine, adaptive health weighting).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from router_agent.core.rules import Rule, RuleError, parse

BUILDING_BLOCKS = (
    "round_robin", "weighted", "least_loaded", "cost_optimized", "performance_first",
    "capability_based", "hybrid", "adaptive", "balanced",
)
NAMED_BASES = MappingProxyType({
    "cost_optimized": "cost_optimized",
    "performance_optimized": "performance_first",
    "privacy_first": "capability_based",
    "balanced": "balanced",
})
"""The base of routing.yaml's named strategies when their entry names none."""

GLOBAL_ACTIONS = ("switch_to_fallback", "switch_to_local_only", "force_local_model", "require_cloud_verification")
FACTORS = ("task_complexity", "cost_efficiency", "privacy_requirements", "performance_needs", "model_availability")
DEFAULT_FACTOR_WEIGHTS = (0.3, 0.25, 0.2, 0.15, 0.1)
COMPLEX_MIN, ROUTINE_MAX = 7, 3
"""balanced: a task of complexity >= 7 prefers cloud, <= 3 prefers local."""

_Problems = list[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class StrategySpec:
    name: str
    base: str
    prefer_type: str | None = None
    """``local`` or ``cloud``: that type ranks first, each part ordered by the base."""
    local_only: bool = False
    cloud_budget_per_day: float | None = None
    cloud_above_complexity: float | None = None
    cloud_below_confidence: float | None = None
    complexity_split: bool = False
    dynamic: bool = False
    hedge: bool = False
    cache: bool = False
    hybrid: tuple[float, float, float] = (0.4, 0.4, 0.2)
    model_weights: Mapping[str, float] = field(default_factory=dict)
    sticky_key: str | None = None


@dataclass(frozen=True, slots=True)
class AgentRule:
    rule: Rule
    model: str
    label: str
    """``agents.<id>.routing_rules[i]``, as the decision names it."""
    per_model: bool
    """The condition reads ``model.*``: evaluated against the rule's own model."""


@dataclass(frozen=True, slots=True)
class AgentPolicy:
    rules: tuple[AgentRule, ...] = ()
    strategy: str | None = None
    pii_detection: bool = True
    local_only: bool = False
    capabilities: frozenset[str] = frozenset()
    preferences: tuple[str, ...] = ()
    """``model_preferences`` in file order, the ``primary`` first."""


@dataclass(frozen=True, slots=True)
class GlobalRule:
    name: str
    rule: Rule
    action: str
    per_model: bool


@dataclass(frozen=True, slots=True)
class Policy:
    default_strategy: str = "round_robin"
    strategies: Mapping[str, StrategySpec] = field(default_factory=dict)
    agents: Mapping[str, AgentPolicy] = field(default_factory=dict)
    global_rules: tuple[GlobalRule, ...] = ()
    factor_weights: tuple[float, float, float, float, float] = DEFAULT_FACTOR_WEIGHTS
    force_local: bool = False
    require_local_for_pii: bool = False
    max_cloud_spend_per_day: float | None = None
    verbose: bool = False

    def strategy(self, name: str) -> StrategySpec:
        spec = self.strategies.get(name)
        return spec if spec is not None else StrategySpec(name, name)

    def strategy_names(self) -> list[str]:
        """Every name a config, an agent or an override may select."""
        return sorted(set(BUILDING_BLOCKS) | set(self.strategies))


# ------------------------------------------------------------------ named strategy rules

def _flag(spec: dict[str, Any], value: Any, key: str) -> str | None:
    if not isinstance(value, bool):
        return "must be true or false"
    spec[key] = value
    return None


def _rule_prefer(type_: str) -> Any:
    def apply(spec: dict[str, Any], value: Any) -> str | None:
        if not isinstance(value, bool):
            return "must be true or false"
        if value:
            spec["prefer_type"] = type_
        return None
    return apply


def _rule_budget(spec: dict[str, Any], value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return "must be a number of USD >= 0"
    spec["cloud_budget_per_day"] = float(value)
    return None


def _rule_threshold(spec: dict[str, Any], value: Any) -> str | None:
    if not isinstance(value, dict) or not value or set(value) - {"complexity", "confidence"}:
        return "must map complexity (0-10) and/or confidence (0-1)"
    c, k = value.get("complexity"), value.get("confidence")
    for v, hi in ((c, 10), (k, 1)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= hi):
            return f"complexity must be within 0-10 and confidence within 0-1, got {value!r}"
    spec["cloud_above_complexity"], spec["cloud_below_confidence"] = c, k
    return None


def _rule_allow_cloud(spec: dict[str, Any], value: Any) -> str | None:
    if not isinstance(value, bool):
        return "must be true or false"
    spec["local_only"] = spec.get("local_only", False) or not value
    return None


def _rule_model_type(spec: dict[str, Any], value: Any) -> str | None:
    if value not in ("local", "cloud"):
        return "must be 'local' or 'cloud'"
    if value == "local":
        spec["local_only"] = True
    else:
        spec["prefer_type"] = "cloud"
    return None


STRATEGY_RULES: Mapping[str, Any] = MappingProxyType({
    "prefer_local_models": _rule_prefer("local"),
    "prefer_cloud_models": _rule_prefer("cloud"),
    "cloud_budget_per_day": _rule_budget,
    "fallback_to_cloud_threshold": _rule_threshold,
    "parallel_requests": lambda s, v: _flag(s, v, "hedge"),
    "cache_responses": lambda s, v: _flag(s, v, "cache"),
    "allow_cloud_models": _rule_allow_cloud,
    "required_model_type": _rule_model_type,
    "cloud_for_complex_tasks": lambda s, v: _flag(s, v, "complexity_split"),
    "local_for_routine_tasks": lambda s, v: _flag(s, v, "complexity_split"),
    "dynamic_routing": lambda s, v: _flag(s, v, "dynamic"),
})
"""What each rule of a named strategy does (documented in docs/routing.md)."""


def _strategy(name: str, raw: Mapping[str, Any], models: Collection[str], where: str, problems: _Problems) -> StrategySpec:
    base = raw.get("base") or NAMED_BASES.get(name) or (name if name in BUILDING_BLOCKS else None)
    if base not in BUILDING_BLOCKS:
        problems.append((f"{where}.base", f"a strategy needs a base, one of {list(BUILDING_BLOCKS)}"
                         + (f" (got {base!r})" if base else "")))
        base = "round_robin"
    spec: dict[str, Any] = {}
    for i, item in enumerate(raw.get("rules") or []):
        if not isinstance(item, dict) or len(item) != 1:
            problems.append((f"{where}.rules[{i}]", "each rule is one 'key: value' pair"))
            continue
        (key, value), = item.items()
        apply = STRATEGY_RULES.get(key)
        if apply is None:
            problems.append((f"{where}.rules[{i}]", f"unknown strategy rule {key!r} (known: {sorted(STRATEGY_RULES)})"))
            continue
        error = apply(spec, value)
        if error:
            problems.append((f"{where}.rules[{i}].{key}", error))
    weights = raw.get("weights")
    if weights:
        spec["hybrid"] = (weights.get("cost_weight", 0.0), weights.get("latency_weight", 0.0),
                          weights.get("reliability_weight", 0.0))
        if sum(spec["hybrid"]) <= 0:
            problems.append((f"{where}.weights", "at least one weight must be above 0"))
    model_weights = dict(raw.get("model_weights") or {})
    for model in model_weights:
        if model not in models:
            problems.append((f"{where}.model_weights.{model}", f"unknown model {model!r}"))
    return StrategySpec(name=name, base=base, model_weights=MappingProxyType(model_weights),
                        sticky_key=raw.get("sticky_key"), **spec)


# ------------------------------------------------------------------ the whole policy

def _condition(text: str, where: str, problems: _Problems) -> Rule | None:
    try:
        return parse(text, where=where)
    except RuleError as exc:
        problems.append((where, exc.message + f" in rule {text!r}"))
        return None


def build_policy(agents: Mapping[str, Any], routing: Mapping[str, Any], models: Collection[str]) -> Policy:
    """Compile plain config data (``Config.model_dump()`` parts); raises ``PolicyError``."""
    problems: _Problems = []
    strategies = {name: _strategy(name, raw or {}, models, f"routing.strategies.{name}", problems)
                  for name, raw in (routing.get("strategies") or {}).items()}
    known = set(BUILDING_BLOCKS) | set(strategies)

    def check_strategy(name: str | None, where: str) -> None:
        if name is not None and name not in known:
            problems.append((where, f"unknown strategy {name!r} (known: {sorted(known)})"))

    default = routing.get("default_strategy") or "round_robin"
    check_strategy(default, "routing.default_strategy")
    compiled_agents = {}
    for agent_id, agent in agents.items():
        rules = []
        for i, raw in enumerate(agent.get("routing_rules") or []):
            where = f"agents.{agent_id}.routing_rules[{i}].condition"
            rule = _condition(raw["condition"], where, problems)
            if rule is not None:
                per_model = any(n.startswith("model.") for n in rule.names)
                rules.append(AgentRule(rule, raw["model"], f"agents.{agent_id}.routing_rules[{i}]", per_model))
        check_strategy(agent.get("strategy"), f"agents.{agent_id}.strategy")
        prefs = dict(agent.get("model_preferences") or {})
        primary = prefs.pop("primary", None)
        compiled_agents[agent_id] = AgentPolicy(
            rules=tuple(rules), strategy=agent.get("strategy"),
            pii_detection=agent.get("pii_detection", True), local_only=agent.get("local_only", False),
            capabilities=frozenset(agent.get("capabilities_required") or ()),
            preferences=tuple(dict.fromkeys(([primary] if primary else []) + list(prefs.values()))),
        )
    global_rules = []
    for i, raw in enumerate(routing.get("global_rules") or []):
        where = f"routing.global_rules[{i}]"
        rule = _condition(raw["condition"], f"{where}.condition", problems)
        if raw["action"] not in GLOBAL_ACTIONS:
            problems.append((f"{where}.action", f"unknown action {raw['action']!r} (known: {list(GLOBAL_ACTIONS)})"))
        elif rule is not None:
            per_model = any(n.startswith("model.") for n in rule.names)
            global_rules.append(GlobalRule(raw["name"], rule, raw["action"], per_model))
    weights = dict(zip(FACTORS, DEFAULT_FACTOR_WEIGHTS))
    given = routing.get("routing_factors") or []
    if given:
        weights = dict.fromkeys(FACTORS, 0.0)
    for i, factor in enumerate(given):
        if factor["name"] not in weights:
            problems.append((f"routing.routing_factors[{i}].name",
                             f"unknown factor {factor['name']!r} (known: {list(FACTORS)})"))
            continue
        weights[factor["name"]] = factor["weight"]
    total = sum(weights.values())
    if total <= 0:
        problems.append(("routing.routing_factors", "the factor weights must not all be 0"))
        total = 1.0
    overrides = routing.get("global_overrides") or {}
    if problems:
        raise PolicyError(problems)
    return Policy(
        default_strategy=default,
        strategies=MappingProxyType(strategies),
        agents=MappingProxyType(compiled_agents),
        global_rules=tuple(global_rules),
        factor_weights=tuple(weights[f] / total for f in FACTORS),  # type: ignore[arg-type]
        force_local=overrides.get("force_local_models", False),
        require_local_for_pii=overrides.get("require_local_for_pii", False),
        max_cloud_spend_per_day=overrides.get("max_cloud_spend_per_day"),
        verbose=overrides.get("verbose_routing_logs", False),
    )


class PolicyError(ValueError):
    def __init__(self, problems: _Problems):
        super().__init__("; ".join(f"{p}: {m}" for p, m in problems))
        self.problems = problems
