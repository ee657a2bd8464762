"""The routing engine (core/engine.decide) with the shipped config and with small policies:
named strategies, agent and global rules, environment overlays, overrides, the decision's
figures and the design's examples. Strategies one by one: test_engine_strategies.py;
properties over random worlds: test_engine_properties.py (both import the helpers below).

Everything is pure: time is ``now``, randomness a seeded ``random.Random``; no test times
anything."""

from __future__ import annotations

import dataclasses
import functools
import random
from collections.abc import Iterable, Mapping
from types import SimpleNamespace
from typing import Any

import pytest

from router_agent.config import Config, load_config
from router_agent.core.breaker import Breaker
from router_agent.core.cost import estimate_input_tokens
from router_agent.core.engine import TYPE_COMPLEXITY, Plan, decide, estimate_complexity
from router_agent.core.limiter import DeploymentLimiter
from router_agent.core.model import Deployment
from router_agent.core.observed import DeploymentStats
from router_agent.core.overrides import RoutingOverrides
from router_agent.core.policy import Policy, build_policy
from router_agent.core.routing import ProviderView
from router_agent.registry import build_deployment
from signals import ChatMessage, LlmRequest, Requirements, Task

NOW = 10_000.0

CARD = "please charge 4111 1111 1111 1111 for the order"
IBAN = "wire it to GB82 WEST 1234 5698 7654 32 today"
EMAIL = "send the report to jane.doe@example.com"
PII_TEXTS = {"payment_card": CARD, "iban": IBAN, "email": EMAIL}
PII_VALUES = ("4111", "1111 1111", "GB82", "WEST 1234", "jane.doe", "example.com")

AGENTS = ("cto_agent", "backend_agent", "frontend_agent", "qa_agent", "someone_else")
CLOUD = ("claude-3-opus", "gpt-4-turbo", "gemini-1.5-pro")
LOCAL = ("llama-3-70b", "deepseek-coder-33b", "qwen-2-72b")


# --------------------------------------------------------------------------- helpers


def dep(model: str, type: str = "cloud", provider: str | None = None, caps: Iterable[str] = (),
        price_in: float = 0.0, price_out: float = 0.0, **fields: Any) -> Deployment:
    provider = provider or f"p-{model}"
    return Deployment(provider=provider, model=model, model_id=model, api="openai", type=type,
                      base_url=f"http://127.0.0.1:9/{provider}", capabilities=frozenset(caps),
                      price_in=price_in, price_out=price_out, **fields)


def catalog(deps: Iterable[Deployment], views: Mapping[str, ProviderView] | None = None,
            stats: Mapping | None = None, pool: list[str] | None = None) -> SimpleNamespace:
    by_model: dict[str, list[Deployment]] = {}
    all_views: dict[str, ProviderView] = {}
    for d in deps:
        by_model.setdefault(d.model, []).append(d)
        all_views.setdefault(d.provider, ProviderView())
    all_views.update(views or {})
    seen = {k: v for k, v in (stats or {}).items() if isinstance(v, DeploymentStats)}
    limiters = {k: v for k, v in (stats or {}).items() if isinstance(v, DeploymentLimiter)}
    return SimpleNamespace(deployments_by_model=by_model, default_pool=pool if pool is not None else list(by_model),
                           views=all_views, stats=seen, limiters=limiters)


def req(agent: str = "tester", content: str = "hello router", **fields: Any) -> LlmRequest:
    fields.setdefault("request_id", "r-1")
    return LlmRequest(agent_id=agent, messages=[ChatMessage(role="user", content=content)], **fields)


def run(request: LlmRequest, cat: SimpleNamespace, policy: Policy | None = None, *,
        aliases: Mapping[str, str] | None = None, breakers: Mapping | None = None,
        overrides: RoutingOverrides | None = None, daily_cloud_cost: float = 0.0, now: float = NOW,
        seed: int = 0, rng: random.Random | None = None, cursor: int = 0) -> Plan:
    return decide(request, policy=policy if policy is not None else Policy(), catalog=cat,
                  aliases=aliases or {}, breakers=breakers or {}, overrides=overrides,
                  daily_cloud_cost=daily_cloud_cost, now=now,
                  rng=rng if rng is not None else random.Random(seed), cursor=cursor)


def models(plan: Plan) -> list[str]:
    return [c.dep.model for c in plan.ordered]


def first(plan: Plan) -> str:
    assert plan.ordered, (plan.reason, plan.rejected, plan.notes)
    return plan.ordered[0].dep.model


def rejected(plan: Plan) -> dict[str, str]:
    """model -> constraint (the shipped config has one deployment per model)."""
    return {r.model: r.constraint for r in plan.rejected}


def policy_of(routing: Mapping[str, Any] | None = None, agents: Mapping[str, Any] | None = None,
              names: Iterable[str] = ()) -> Policy:
    return build_policy(agents or {}, routing or {}, list(names))


@functools.cache
def shipped_config(environment: str = "") -> Config:
    return load_config(environment=environment)


def shipped_catalog(config: Config, stats: Mapping | None = None,
                    views: Mapping[str, ProviderView] | None = None) -> SimpleNamespace:
    """Every model of models.yaml served, every provider enabled and healthy."""
    deps = []
    for name, model in config.models.items():
        provider = config.providers[model.provider]
        deps.append(build_deployment(model.provider, name, model, api=provider.api, type=model.type,
                                     base_url=model.endpoint or provider.base_url or "http://127.0.0.1:9"))
    return catalog(deps, views, stats)


def shipped_routing(environment: str = "") -> dict[str, Any]:
    return shipped_config(environment).routing.model_dump()


def shipped_agents(environment: str = "") -> dict[str, Any]:
    return {a: cfg.model_dump() for a, cfg in shipped_config(environment).agents.items()}


def shipped_run(request: LlmRequest, environment: str = "", policy: Policy | None = None,
                stats: Mapping | None = None, **kw: Any) -> Plan:
    config = shipped_config(environment)
    return run(request, shipped_catalog(config, stats), policy if policy is not None else config.policy,
               aliases=config.aliases, **kw)


def without_rules(routing: dict[str, Any], *names: str) -> dict[str, Any]:
    out = dict(routing)
    out["global_rules"] = [g for g in routing["global_rules"] if g["name"] not in names]
    return out


def window(left: float, rpm: int = 50, tpm: int | None = None, tokens_left: float | None = None,
           age: float = 0.0) -> DeploymentLimiter:
    """A rate limiter (``core/limiter.py``) with ``left`` requests of ``rpm`` in its bucket
    ``age`` seconds before NOW (it refills rpm/60 a second since)."""
    full = DeploymentLimiter.per_minute(rpm, tpm, NOW - age)
    assert full.requests is not None
    requests = dataclasses.replace(full.requests, level=left)
    tokens = full.tokens
    if tokens_left is not None:
        assert tokens is not None
        tokens = dataclasses.replace(tokens, level=tokens_left)
    return DeploymentLimiter(requests=requests, tokens=tokens)  # built whole: its full_at is computed


# --------------------------------------------------------------------------- 7. the design's examples


@pytest.mark.parametrize("agent, task, model, rule", [
    ("backend_agent", Task(type="code_generation"), "deepseek-coder-33b", "agents.backend_agent.routing_rules[0]"),
    ("backend_agent", Task(complexity=7), "claude-3-opus", "agents.backend_agent.routing_rules[1]"),
    ("cto_agent", Task(privacy_level="high"), "llama-3-70b", "agents.cto_agent.routing_rules[0]"),
    ("cto_agent", Task(complexity=9), "claude-3-opus", "agents.cto_agent.routing_rules[1]"),
    ("frontend_agent", Task(involves_ui_design=True), "gpt-4-turbo", "agents.frontend_agent.routing_rules[0]"),
    ("qa_agent", Task(type="test_generation"), "llama-3-70b", "agents.qa_agent.routing_rules[0]"),
    ("qa_agent", Task(requires_reasoning=True), "gpt-4-turbo", "agents.qa_agent.routing_rules[1]"),
])
@pytest.mark.parametrize("environment", ["", "development", "production"])
def test_the_design_examples_route_as_it_says_every_time(agent, task, model, rule, environment):
    rng = random.Random(7)
    for cursor in range(12):  # whatever the rotation or the random draws
        plan = shipped_run(req(agent, task=task), environment, rng=rng, cursor=cursor)
        assert first(plan) == model
        assert plan.decided_by == rule
        assert model in plan.reason or rule in plan.reason
    if task.privacy_level == "high":
        assert all(c.dep.type == "local" for c in plan.ordered)


@pytest.mark.parametrize("kind", sorted(PII_TEXTS))
@pytest.mark.parametrize("agent", AGENTS)
@pytest.mark.parametrize("environment", ["", "production"])
@pytest.mark.parametrize("task", [Task(), Task(complexity=9), Task(type="code_generation"),
                                  Task(involves_ui_design=True), Task(requires_reasoning=True, critical=True)],
                         ids=["plain", "complex", "codegen", "ui", "critical"])
def test_personal_data_keeps_every_agent_on_local_models_with_no_cloud_fallback(kind, agent, environment, task):
    plan = shipped_run(req(agent, PII_TEXTS[kind], task=task), environment)
    assert plan.ordered, plan.reason
    assert plan.ordered[0].dep.type == "local"
    assert [c.dep.type for c in plan.ordered] == ["local"] * len(plan.ordered)
    assert kind in plan.pii
    assert plan.privacy
    assert set(rejected(plan)) <= set(CLOUD)
    assert all(r.constraint == "privacy" for r in plan.rejected)
    assert plan.verify_with is None or plan.verify_with.dep.type == "local"


@pytest.mark.parametrize("kind", sorted(PII_TEXTS))
def test_the_decision_names_pii_kinds_and_never_their_values(kind):
    plan = shipped_run(req("cto_agent", PII_TEXTS[kind], task=Task(complexity=9, critical=True)), "production")
    assert plan.pii == (kind,)
    text = repr((plan.reason, plan.notes, plan.privacy, plan.rejected, plan.pii, plan.decided_by))
    for value in PII_VALUES:
        assert value not in text


def test_pii_in_an_earlier_message_counts_too():
    request = LlmRequest(request_id="r", agent_id="cto_agent", messages=[
        ChatMessage(role="user", content=EMAIL), ChatMessage(role="assistant", content="ok"),
        ChatMessage(role="user", content="now design the system")])
    plan = shipped_run(request)
    assert plan.pii == ("email",)
    assert {c.dep.type for c in plan.ordered} == {"local"}


@pytest.mark.parametrize("where", ["text_part", "tool_call_arguments", "tool_definition"])
def test_pii_anywhere_in_the_prompt_keeps_the_request_local(where):
    from signals import FunctionCall, FunctionDef, TextPart, Tool, ToolCall
    if where == "text_part":
        messages = [ChatMessage(role="user", content=[TextPart(text=CARD)])]
        extra = {}
    elif where == "tool_call_arguments":
        messages = [ChatMessage(role="user", content="look the customer up"),
                    ChatMessage(role="assistant", tool_calls=[ToolCall(id="c1", function=FunctionCall(
                        name="lookup", arguments='{"email": "jane.doe@example.com"}'))]),
                    ChatMessage(role="tool", content="found", tool_call_id="c1")]
        extra = {}
    else:
        messages = [ChatMessage(role="user", content="file the refund")]
        extra = {"tools": [Tool(function=FunctionDef(name="refund", description=f"refund card {CARD}"))]}
    request = LlmRequest(request_id="r", agent_id="cto_agent", messages=messages, task=Task(complexity=9), **extra)
    plan = shipped_run(request, "production")
    assert plan.pii
    assert {c.dep.type for c in plan.ordered} <= {"local"}
    assert {r.model: r.constraint for r in plan.rejected if r.model in CLOUD} == {
        "claude-3-opus": "privacy", "gpt-4-turbo": "privacy"}
    if where != "tool_definition":  # tools need tool_calling, which no shipped model declares
        assert models(plan) == ["llama-3-70b"]


def test_the_request_s_shape_adds_required_capabilities():
    from signals import FunctionDef, ImagePart, ImageUrl, JsonObjectFormat, Tool
    deps = [dep("plain"), dep("tools", caps={"tool_calling"}), dep("eyes", caps={"vision"}),
            dep("json", caps={"json_mode"})]
    plan = run(req("x", tools=[Tool(function=FunctionDef(name="f"))]), catalog(deps))
    assert models(plan) == ["tools"] and set(rejected(plan).values()) == {"capability"}
    image = LlmRequest(request_id="r", agent_id="x", messages=[ChatMessage(role="user", content=[
        ImagePart(image_url=ImageUrl(url="https://example.org/a.png"))])])
    assert models(run(image, catalog(deps))) == ["eyes"]
    assert models(run(req("x", response_format=JsonObjectFormat()), catalog(deps))) == ["json"]


# --------------------------------------------------------------------------- 2. named strategies


def named(strategy: str, environment: str = "", rules: bool = True) -> Policy:
    """The shipped policy with ``strategy`` as the default (and the global rules unless not)."""
    routing = shipped_routing(environment)
    routing["default_strategy"] = strategy
    if not rules:
        routing["global_rules"] = []
    return policy_of(routing, shipped_agents(environment), shipped_config(environment).models)


def test_cost_optimized_puts_local_models_first():
    plan = shipped_run(req("anyone", task=Task(complexity=4)), policy=named("cost_optimized"))
    types = [c.dep.type for c in plan.ordered]
    assert types == ["local"] * 3 + ["cloud"] * 3
    assert plan.strategy == "cost_optimized" and plan.decided_by == "strategy"
    assert not any("fallback_to_cloud_threshold" in n for n in plan.notes)
    # each part is ordered by estimated cost (locals are free; gemini is the cheapest cloud)
    assert models(plan)[3] == "gemini-1.5-pro"
    estimates = [c.estimate for c in plan.ordered[3:]]
    assert estimates == sorted(estimates)


@pytest.mark.parametrize("complexity, cloud_first", [(6, False), (7, True), (10, True)])
def test_cost_optimized_switches_to_cloud_first_at_the_complexity_threshold(complexity, cloud_first):
    plan = shipped_run(req("anyone", task=Task(complexity=complexity)), policy=named("cost_optimized"))
    assert (plan.ordered[0].dep.type == "cloud") is cloud_first
    noted = [n for n in plan.notes if "fallback_to_cloud_threshold" in n]
    assert bool(noted) is cloud_first
    if cloud_first:
        assert f"complexity {complexity}" in noted[0]


def test_cost_optimized_switches_to_cloud_first_when_no_local_model_is_confident():
    # No local model declares ui_design: suitability 2 of 5 = 0.4 < 0.6.
    plan = shipped_run(req("anyone", task=Task(type="ui_design", complexity=4)), policy=named("cost_optimized"))
    assert plan.ordered[0].dep.type == "cloud"
    assert [c.dep.type for c in plan.ordered] == ["cloud"] * 3 + ["local"] * 3
    assert any("fallback_to_cloud_threshold" in n and "0.40" in n for n in plan.notes)
    # a task type the local models declare keeps them first
    plan = shipped_run(req("anyone", task=Task(type="code_generation", complexity=4)), policy=named("cost_optimized"))
    assert plan.ordered[0].dep.type == "local"


@pytest.mark.parametrize("spent, removed", [(99.99, False), (100.0, True), (250.0, True)])
def test_cost_optimized_cloud_budget_removes_cloud_models_when_spent(spent, removed):
    plan = shipped_run(req("anyone"), policy=named("cost_optimized", rules=False), daily_cloud_cost=spent)
    if removed:
        assert rejected(plan) == dict.fromkeys(CLOUD, "budget")
        assert all("100.00" in r.detail for r in plan.rejected)
        assert set(models(plan)) == set(LOCAL)
    else:
        assert plan.rejected == [] and len(plan.ordered) == 6


def test_cost_optimized_budget_feeds_the_shipped_circuit_breaker_which_acts_first():
    # daily_cost > budget * 0.8 with the strategy's 100 USD budget: local only from 80.01 on,
    # before the budget itself is reached.
    policy = named("cost_optimized")
    assert shipped_run(req("anyone"), policy=policy, daily_cloud_cost=80.0).rejected == []
    plan = shipped_run(req("anyone"), policy=policy, daily_cloud_cost=80.01)
    assert rejected(plan) == dict.fromkeys(CLOUD, "local_only")
    assert all("cost_circuit_breaker" in r.detail for r in plan.rejected)


def test_cost_limit_reached_and_budget_mode_feed_the_agent_rules():
    policy = named("cost_optimized", rules=False)
    # backend_agent's third rule: budget_mode == true (a cost_optimized strategy is active)
    plan = shipped_run(req("backend_agent", task=Task(complexity=3)), policy=policy)
    assert plan.decided_by == "agents.backend_agent.routing_rules[2]" and first(plan) == "llama-3-70b"
    # cto_agent's third rule: cost_limit_reached
    plan = shipped_run(req("cto_agent", task=Task(complexity=3)), policy=policy, daily_cloud_cost=100.0)
    assert plan.decided_by == "agents.cto_agent.routing_rules[2]" and first(plan) == "llama-3-70b"
    plan = shipped_run(req("cto_agent", task=Task(complexity=3)), policy=policy, daily_cloud_cost=10.0)
    assert plan.decided_by == "primary" and first(plan) == "claude-3-opus"


def test_performance_optimized_puts_cloud_models_first_and_asks_for_hedging_and_cache():
    for seed in range(20):
        plan = shipped_run(req("anyone", task=Task(complexity=2)), policy=named("performance_optimized"), seed=seed)
        assert [c.dep.type for c in plan.ordered] == ["cloud"] * 3 + ["local"] * 3
        assert plan.strategy == "performance_optimized"
        assert plan.hedge and plan.cache


def test_privacy_first_serves_with_local_models_only():
    plan = shipped_run(req("anyone", task=Task(complexity=9)), policy=named("privacy_first"))
    assert set(models(plan)) == set(LOCAL)
    assert rejected(plan) == dict.fromkeys(CLOUD, "local_only")
    assert all("privacy_first" in r.detail for r in plan.rejected)
    assert plan.privacy


def test_privacy_first_orders_by_capability_match():
    plan = shipped_run(req("anyone", task=Task(type="code_generation")), policy=named("privacy_first"))
    # llama and deepseek declare code_generation, qwen does not
    assert models(plan)[-1] == "qwen-2-72b"


@pytest.mark.parametrize("complexity, lead", [(0, "local"), (3, "local"), (7, "cloud"), (10, "cloud")])
def test_balanced_sends_complex_tasks_to_cloud_and_routine_ones_to_local(complexity, lead):
    plan = shipped_run(req("anyone", task=Task(complexity=complexity)), policy=named("balanced"))
    types = [c.dep.type for c in plan.ordered]
    other = "cloud" if lead == "local" else "local"
    assert types == [lead] * 3 + [other] * 3


@pytest.mark.parametrize("complexity", [4, 5, 6])
def test_balanced_middle_complexity_orders_by_score_alone(complexity):
    plan = shipped_run(req("anyone", task=Task(complexity=complexity)), policy=named("balanced"))
    scores = [c.score for c in plan.ordered]  # healthy, unloaded: the adaptive factor is 1
    assert scores == sorted(scores, reverse=True)


# --------------------------------------------------------------------------- 3. agent rules


def agent_policy(rules: list[tuple[str, str]], prefs: Mapping[str, str] | None = None,
                 names: Iterable[str] = (), routing: Mapping[str, Any] | None = None, **agent: Any) -> Policy:
    return policy_of(routing or {}, {"a": {"routing_rules": [{"condition": c, "model": m} for c, m in rules],
                                           "model_preferences": dict(prefs or {}), **agent}}, names)


FOUR = [dep("c1", "cloud", caps={"code_generation"}), dep("c2", "cloud", caps={"vision"}),
        dep("l1", "local", caps={"code_generation"}), dep("l2", "local")]
FOUR_NAMES = [d.model for d in FOUR]


def test_the_first_matching_rule_wins():
    policy = agent_policy([("task.complexity > 5", "c2"), ("task.complexity > 3", "l1"), ("true", "l2")],
                          names=FOUR_NAMES)
    assert first(run(req("a", task=Task(complexity=9)), catalog(FOUR), policy)) == "c2"
    assert first(run(req("a", task=Task(complexity=4)), catalog(FOUR), policy)) == "l1"
    plan = run(req("a", task=Task(complexity=1)), catalog(FOUR), policy)
    assert first(plan) == "l2" and plan.decided_by == "agents.a.routing_rules[2]"


def test_a_rule_whose_model_is_removed_is_noted_and_the_next_rule_decides():
    # backend_agent code_generation + complexity 7: rule 0 (deepseek) and rule 1 (opus) match.
    deepseek = ("local", "deepseek-coder-33b")
    breakers = {deepseek: Breaker(state="open", opened_at=NOW - 1, failures=5)}
    plan = shipped_run(req("backend_agent", task=Task(type="code_generation", complexity=7)), breakers=breakers)
    assert first(plan) == "claude-3-opus"
    assert plan.decided_by == "agents.backend_agent.routing_rules[1]"
    assert rejected(plan)["deepseek-coder-33b"] == "circuit_open"
    assert any("routing_rules[0]" in n and "deepseek-coder-33b" in n and "circuit_open" in n for n in plan.notes)
    assert "deepseek-coder-33b" not in models(plan)


def test_a_removed_rule_model_with_no_other_rule_leaves_the_choice_to_the_strategy():
    deepseek = ("local", "deepseek-coder-33b")
    breakers = {deepseek: Breaker(state="open", opened_at=NOW - 1, failures=5)}
    plan = shipped_run(req("backend_agent", task=Task(type="code_generation")), breakers=breakers)
    assert plan.decided_by == "strategy"  # the primary (deepseek) is gone too
    assert set(models(plan)) == {"claude-3-opus", "llama-3-70b"}
    assert any("routing_rules[0]" in n for n in plan.notes)


def test_a_rule_model_outside_the_preferences_joins_the_candidates():
    policy = agent_policy([("task.critical", "c2")], {"primary": "l1"}, FOUR_NAMES)
    plan = run(req("a", task=Task(critical=True)), catalog(FOUR), policy)
    assert models(plan)[0] == "c2" and set(models(plan)) == {"c2", "l1"}
    plan = run(req("a"), catalog(FOUR), policy)
    assert models(plan) == ["l1"] and plan.decided_by == "primary"


def test_per_model_conditions_read_the_rule_s_own_model():
    policy = agent_policy([("model.type == 'local' and task.critical", "c1"),  # c1 is cloud: never
                           ("'vision' in model.capabilities", "c2"),
                           ("model.type == 'local'", "l2")], names=FOUR_NAMES)
    plan = run(req("a", task=Task(critical=True)), catalog(FOUR), policy)
    assert first(plan) == "c2" and plan.decided_by == "agents.a.routing_rules[1]"
    only_local = [d for d in FOUR if d.model != "c2"]
    plan = run(req("a", task=Task(critical=True)), catalog(only_local), policy)
    assert first(plan) == "l2" and plan.decided_by == "agents.a.routing_rules[2]"


def test_comparisons_with_an_absent_field_are_false_and_not_negates():
    policy = agent_policy([("task.type != 'chat'", "c2"), ("not (task.type == 'chat')", "l2")], names=FOUR_NAMES)
    plan = run(req("a"), catalog(FOUR), policy)  # no task.type: the first rule is false
    assert first(plan) == "l2" and plan.decided_by == "agents.a.routing_rules[1]"
    assert first(run(req("a", task=Task(type="code_review")), catalog(FOUR), policy)) == "c2"
    plan = run(req("a", task=Task(type="chat")), catalog(FOUR), policy)
    assert plan.decided_by == "strategy"


def test_a_budget_that_is_not_configured_is_absent_so_the_circuit_breaker_stays_off():
    # No environment: no max_cloud_spend_per_day, and round_robin has no budget of its own.
    plan = shipped_run(req("anyone"), daily_cloud_cost=1e9)
    assert plan.rejected == [] and len(plan.ordered) == 6


# --------------------------------------------------------------------------- 3. global rules


def test_rate_limit_protection_demotes_a_model_with_less_than_a_fifth_of_its_limit_left():
    # cto complexity 9 -> opus by rule; opus allows 50 requests a minute.
    request = req("cto_agent", task=Task(complexity=9))
    key = ("anthropic", "claude-3-opus")
    assert first(shipped_run(request, stats={key: window(10)})) == "claude-3-opus"  # 20 % left
    plan = shipped_run(request, stats={key: window(9.9)})
    assert models(plan) == ["gpt-4-turbo", "llama-3-70b", "claude-3-opus"]
    assert plan.decided_by == "rate_limit_protection"
    assert any(n.startswith("rate_limit_protection") and "claude-3-opus" in n for n in plan.notes)


def test_rate_limit_protection_sees_the_bucket_refill():
    request = req("cto_agent", task=Task(complexity=9))
    key = ("anthropic", "claude-3-opus")
    plan = shipped_run(request, stats={key: window(1, age=12.0)})  # + 10 refilled: 11 of 50 left
    assert first(plan) == "claude-3-opus" and plan.decided_by == "agents.cto_agent.routing_rules[1]"
    plan = shipped_run(request, stats={key: window(1, age=10.0)})  # 9.33 left
    assert first(plan) == "gpt-4-turbo"


def test_an_exhausted_rate_limit_keeps_the_model_as_one_to_wait_for_behind_the_others():
    key = ("anthropic", "claude-3-opus")
    plan = shipped_run(req("cto_agent", task=Task(complexity=9)), stats={key: window(0)})
    assert plan.rejected == []  # not removed: the request may wait for it when nothing else serves
    assert first(plan) == "gpt-4-turbo" and models(plan)[-1] == "claude-3-opus"
    assert [c.rate_share >= 1.0 for c in plan.ordered] == [False, False, True]


def test_rate_limit_protection_does_not_demote_when_every_candidate_is_near_its_limit():
    stats = {("anthropic", "claude-3-opus"): window(5), ("openai", "gpt-4-turbo"): window(5, rpm=60)}
    table = RoutingOverrides()
    table.set_primary("cto_agent", "claude-3-opus", "", NOW)
    routing = shipped_routing()
    policy = policy_of(routing, {"cto_agent": {"model_preferences": {"primary": "claude-3-opus",
                                                                     "fallback": "gpt-4-turbo"}}},
                       shipped_config().models)
    plan = shipped_run(req("cto_agent"), policy=policy, stats=stats)
    assert models(plan) == ["claude-3-opus", "gpt-4-turbo"]  # nothing better to switch to
    assert plan.decided_by == "primary"
    assert not any("rate_limit_protection" in n for n in plan.notes)
    plan = shipped_run(req("cto_agent"), policy=policy, stats={("anthropic", "claude-3-opus"): window(5)})
    assert models(plan) == ["gpt-4-turbo", "claude-3-opus"]


def test_rate_limit_protection_counts_tokens_too():
    key = ("anthropic", "claude-3-opus")  # 100,000 tokens a minute
    request = req("cto_agent", task=Task(complexity=9))
    tokens = shipped_run(request).tokens
    assert tokens < 20_000
    stats = {key: window(49, tpm=100_000, tokens_left=19_999)}  # below a fifth of its tokens
    assert first(shipped_run(request, stats=stats)) == "gpt-4-turbo"
    stats = {key: window(49, tpm=100_000, tokens_left=20_000)}
    assert first(shipped_run(request, stats=stats)) == "claude-3-opus"


@pytest.mark.parametrize("spent, local_only", [(400.0, False), (400.01, True), (499.0, True), (10_000.0, True)])
def test_cost_circuit_breaker_goes_local_only_above_80_percent_of_the_production_budget(spent, local_only):
    plan = shipped_run(req("cto_agent", task=Task(complexity=9)), "production", daily_cloud_cost=spent)
    if local_only:
        assert set(models(plan)) == {"llama-3-70b"}
        assert rejected(plan) == {"claude-3-opus": "local_only", "gpt-4-turbo": "local_only"}
        assert all("cost_circuit_breaker" in r.detail for r in plan.rejected)
        assert any("routing_rules[1]" in n for n in plan.notes)  # opus matched, but is gone
    else:
        assert first(plan) == "claude-3-opus" and plan.rejected == []


def test_privacy_enforcement_forces_local_and_lists_kinds():
    plan = shipped_run(req("frontend_agent", f"{EMAIL} and {CARD}", task=Task(involves_ui_design=True)))
    assert plan.pii == ("email", "payment_card")
    assert "privacy_enforcement" in plan.privacy
    assert rejected(plan) == {"gpt-4-turbo": "privacy", "claude-3-opus": "privacy"}
    assert models(plan) == ["llama-3-70b"]
    assert any("routing_rules[0]" in n and "gpt-4-turbo" in n for n in plan.notes)


def test_without_the_privacy_rule_or_an_environment_mode_pii_is_reported_but_does_not_restrict():
    policy = policy_of(without_rules(shipped_routing(), "privacy_enforcement"), shipped_agents(),
                       shipped_config().models)
    plan = shipped_run(req("cto_agent", EMAIL, task=Task(complexity=9)), policy=policy)
    assert plan.pii == ("email",) and plan.privacy == ""
    assert first(plan) == "claude-3-opus"


def test_quality_assurance_verifies_a_critical_task_served_locally_with_a_stronger_cloud_model():
    plan = shipped_run(req("qa_agent", task=Task(type="test_generation", critical=True)))
    assert first(plan) == "llama-3-70b"
    assert plan.verify_with is not None and plan.verify_with.dep.model == "gpt-4-turbo"
    assert any(n.startswith("quality_assurance") and "gpt-4-turbo verifies" in n for n in plan.notes)


def test_quality_assurance_does_not_ask_for_a_verifier_when_a_cloud_model_answers_or_the_task_is_not_critical():
    assert shipped_run(req("cto_agent", task=Task(critical=True, complexity=9))).verify_with is None
    assert shipped_run(req("qa_agent", task=Task(type="test_generation"))).verify_with is None


def test_quality_assurance_on_private_data_uses_a_stronger_local_verifier():
    # backend code_generation -> deepseek (quality 5); llama (general_reasoning: 6) may verify.
    plan = shipped_run(req("backend_agent", task=Task(type="code_generation", critical=True, privacy_level="high")))
    assert first(plan) == "deepseek-coder-33b"
    assert plan.verify_with is not None and plan.verify_with.dep.model == "llama-3-70b"
    assert plan.verify_with.dep.type == "local"


@pytest.mark.parametrize("content, task", [
    ("design it", Task(privacy_level="high", critical=True)),
    (EMAIL, Task(critical=True)),
])
def test_quality_assurance_on_private_data_with_no_stronger_local_model_answers_unverified(content, task):
    plan = shipped_run(req("cto_agent", content, task=task), "production")
    assert models(plan) == ["llama-3-70b"]
    assert plan.verify_with is None
    assert any("quality_assurance" in n and "unverified" in n for n in plan.notes)


def test_quality_assurance_never_picks_a_cloud_verifier_when_local_only_applies():
    # The default pool: three local and three cloud; privacy high keeps the locals only.
    for agent in AGENTS:
        for content in ("x", EMAIL):
            plan = shipped_run(req(agent, content, task=Task(critical=True, privacy_level="high")), "production")
            assert plan.verify_with is None or plan.verify_with.dep.type == "local"


# --------------------------------------------------------------------------- 4. environment overlays


def test_development_force_local_models_removes_every_cloud_model(tmp_path):
    overlay = tmp_path / "force-local.yaml"
    overlay.write_text("routing:\n  global_overrides:\n    force_local_models: true\n")
    config = load_config(environment="development", overlays=[overlay])
    assert config.policy.force_local
    for agent in AGENTS:
        plan = run(req(agent, task=Task(complexity=9)), shipped_catalog(config), config.policy, aliases=config.aliases)
        assert plan.ordered and {c.dep.type for c in plan.ordered} == {"local"}
        assert set(rejected(plan).values()) <= {"local_only"}
        assert all("force_local_models" in r.detail for r in plan.rejected)


def test_the_shipped_development_overlay_leaves_cloud_models_on():
    assert shipped_run(req("cto_agent", task=Task(complexity=9)), "development").ordered[0].dep.type == "cloud"


def test_force_local_models_from_build_policy():
    policy = policy_of({"global_overrides": {"force_local_models": True}}, {}, FOUR_NAMES)
    plan = run(req("x"), catalog(FOUR), policy)
    assert models(plan) == ["l1", "l2"] and rejected(plan) == {"c1": "local_only", "c2": "local_only"}


def test_production_require_local_for_pii_holds_without_the_rule_and_with_detection_switched_off():
    agents = shipped_agents("production")
    for a in agents.values():
        a["pii_detection"] = False
    routing = without_rules(shipped_routing("production"), "privacy_enforcement")
    policy = policy_of(routing, agents, shipped_config("production").models)
    assert policy.require_local_for_pii
    for agent in AGENTS:
        plan = shipped_run(req(agent, CARD, task=Task(complexity=9)), "production", policy=policy)
        assert plan.pii == ("payment_card",)
        assert {c.dep.type for c in plan.ordered} == {"local"}
        assert set(rejected(plan).values()) <= {"privacy"}
        assert "require_local_for_pii" in plan.privacy


def test_pii_detection_switched_off_for_an_agent_without_require_local_for_pii():
    agents = shipped_agents()
    agents["cto_agent"]["pii_detection"] = False
    policy = policy_of(shipped_routing(), agents, shipped_config().models)
    plan = shipped_run(req("cto_agent", CARD, task=Task(complexity=9)), policy=policy)
    assert plan.pii == () and first(plan) == "claude-3-opus"
    # another agent still scans
    assert shipped_run(req("frontend_agent", CARD), policy=policy).pii == ("payment_card",)


@pytest.mark.parametrize("spent, gone", [(499.99, False), (500.0, True)])
def test_max_cloud_spend_per_day_removes_cloud_models_as_budget(spent, gone):
    routing = {"default_strategy": "round_robin", "global_overrides": {"max_cloud_spend_per_day": 500.0}}
    plan = run(req("x"), catalog(FOUR), policy_of(routing, {}, FOUR_NAMES), daily_cloud_cost=spent)
    if gone:
        assert rejected(plan) == {"c1": "budget", "c2": "budget"}
        assert all("500.00" in r.detail for r in plan.rejected)
    else:
        assert plan.rejected == []


def test_production_budget_is_the_smaller_of_the_environment_and_the_strategy_budget():
    routing = shipped_routing("production")
    routing["default_strategy"] = "cost_optimized"
    routing["global_rules"] = []
    policy = policy_of(routing, {}, shipped_config("production").models)
    assert policy.max_cloud_spend_per_day == 500.0
    assert rejected(shipped_run(req("x"), "production", policy=policy, daily_cloud_cost=100.0)) == dict.fromkeys(CLOUD, "budget")


# --------------------------------------------------------------------------- 5. overrides


def test_a_strategy_override_for_an_agent_wins_over_the_global_one_and_both_expire():
    table = RoutingOverrides()
    table.set_strategy(None, "privacy_first", 7200, "audit", NOW)
    table.set_strategy("someone", "performance_optimized", 600, "demo", NOW)
    request = req("someone", task=Task(complexity=2))

    plan = shipped_run(request, overrides=table, now=NOW + 1)
    assert plan.strategy == "performance_optimized"
    assert [c.dep.type for c in plan.ordered] == ["cloud"] * 3 + ["local"] * 3
    assert "override" in plan.reason and "demo" in plan.reason
    other = shipped_run(req("other"), overrides=table, now=NOW + 1)
    assert other.strategy == "privacy_first" and {c.dep.type for c in other.ordered} == {"local"}

    plan = shipped_run(request, overrides=table, now=NOW + 600)  # the agent's expired: the global shows
    assert plan.strategy == "privacy_first" and {c.dep.type for c in plan.ordered} == {"local"}
    assert "audit" in plan.reason

    plan = shipped_run(request, overrides=table, now=NOW + 7200)  # both expired: the config's
    assert plan.strategy == "round_robin" and len(plan.ordered) == 6 and plan.rejected == []


def test_a_strategy_override_stops_the_configured_primary_from_leading():
    table = RoutingOverrides()
    table.set_strategy("cto_agent", "privacy_first", None, "incident", NOW)
    plan = shipped_run(req("cto_agent"), overrides=table)
    assert models(plan) == ["llama-3-70b"] and plan.decided_by == "strategy"


def test_set_primary_makes_that_model_lead_until_it_expires():
    table = RoutingOverrides()
    table.set_primary("qa_agent", "gpt-4-turbo", "llama is slow today", NOW, duration_s=60)
    plan = shipped_run(req("qa_agent"), overrides=table, now=NOW + 1)
    assert first(plan) == "gpt-4-turbo" and plan.decided_by == "primary"
    plan = shipped_run(req("qa_agent"), overrides=table, now=NOW + 60)
    assert first(plan) == "llama-3-70b"


def test_set_primary_can_name_a_model_outside_the_agent_s_preferences():
    table = RoutingOverrides()
    table.set_primary("qa_agent", "gemini-1.5-pro", "try it", NOW)
    plan = shipped_run(req("qa_agent"), overrides=table)
    assert first(plan) == "gemini-1.5-pro" and set(models(plan)) == {"gemini-1.5-pro", "llama-3-70b", "gpt-4-turbo"}


def test_an_operators_primary_comes_before_the_agents_rules_and_says_so():
    table = RoutingOverrides()
    table.set_primary("backend_agent", "claude-3-opus", "deepseek is broken", NOW)
    plan = shipped_run(req("backend_agent", task=Task(type="code_generation")), overrides=table)
    assert first(plan) == "claude-3-opus" and plan.decided_by == "primary"
    assert any("deepseek is broken" in n and "before the agent's rules" in n for n in plan.notes)
    assert "deepseek-coder-33b" in models(plan)  # the rule's model stays a fallback


def test_set_primary_still_yields_to_hard_constraints():
    table = RoutingOverrides()
    table.set_primary("qa_agent", "gpt-4-turbo", "x", NOW)
    plan = shipped_run(req("qa_agent", EMAIL), overrides=table)
    assert models(plan) == ["llama-3-70b"] and rejected(plan) == {"gpt-4-turbo": "privacy"}


def test_force_model_for_a_task_id_is_the_only_candidate():
    table = RoutingOverrides()
    table.force_model("t-1", "gemini-1.5-pro", 30, "repro", NOW)
    plan = shipped_run(req("cto_agent", task=Task(id="t-1", complexity=9)), overrides=table)
    assert models(plan) == ["gemini-1.5-pro"]
    assert plan.decided_by == "forced" and plan.confidence == 1.0
    assert "repro" in plan.reason
    assert first(shipped_run(req("cto_agent", task=Task(id="t-2", complexity=9)), overrides=table)) == "claude-3-opus"
    plan = shipped_run(req("cto_agent", task=Task(id="t-1", complexity=9)), overrides=table, now=NOW + 30)
    assert first(plan) == "claude-3-opus"


def test_force_model_resolves_an_alias():
    table = RoutingOverrides()
    table.force_model("t-1", "llama", None, "", NOW)
    assert models(shipped_run(req("cto_agent", task=Task(id="t-1")), overrides=table)) == ["llama-3-70b"]


@pytest.mark.parametrize("content, task", [("x", Task(id="t-1", privacy_level="high")), (CARD, Task(id="t-1"))])
def test_a_forced_cloud_model_for_a_private_request_gives_no_candidates(content, task):
    table = RoutingOverrides()
    table.force_model("t-1", "claude-3-opus", None, "debug", NOW)
    plan = shipped_run(req("cto_agent", content, task=task), overrides=table)
    assert plan.ordered == []
    assert rejected(plan) == {"claude-3-opus": "privacy"}
    assert "hard constraints" in plan.reason


# --------------------------------------------------------------------------- 6. figures of the decision


def test_suitability_follows_declared_capabilities_and_complexity():
    plan = shipped_run(req("anyone", task=Task(type="code_generation", complexity=6)))
    suit = {c.dep.model: c.suitability for c in plan.ordered}
    assert suit["claude-3-opus"] == 5      # declares it, quality 10 >= 6
    assert suit["deepseek-coder-33b"] == 4  # declares it, quality 5 < 6
    assert suit["qwen-2-72b"] == 2          # does not declare it
    plan = shipped_run(req("anyone"))
    assert {c.suitability for c in plan.ordered} == {3}  # no task type: neutral


def test_suitability_moves_with_observed_outcomes():
    def outcomes(ok: int, failed: int) -> DeploymentStats:
        s = DeploymentStats()
        for _ in range(failed):
            s.in_flight += 1
            s.failed()
        for _ in range(ok):
            s.in_flight += 1
            s.succeeded(100.0)
        return s
    key = ("local", "deepseek-coder-33b")
    task = Task(type="code_generation", complexity=6)
    assert {c.dep.model: c.suitability for c in shipped_run(req("x", task=task), stats={key: outcomes(40, 0)}).ordered}[
        "deepseek-coder-33b"] == 5
    flaky = outcomes(0, 10)
    assert flaky.error_rate > 0.25
    assert {c.dep.model: c.suitability for c in shipped_run(req("x", task=task), stats={key: flaky}).ordered}[
        "deepseek-coder-33b"] == 3


def test_every_suitability_is_within_1_and_5():
    for t in [None, *TYPE_COMPLEXITY, "unknown"]:
        for complexity in (0, 5, 10):
            plan = shipped_run(req("anyone", task=Task(type=t, complexity=complexity)))
            assert all(1 <= c.suitability <= 5 for c in plan.ordered)


def test_complexity_from_the_request_or_estimated():
    plan = shipped_run(req("x", task=Task(complexity=8)))
    assert (plan.complexity, plan.complexity_source) == (8, "request")
    plan = shipped_run(req("x", task=Task(type="architecture_design")))
    assert (plan.complexity, plan.complexity_source) == (7, "estimated")
    plan = shipped_run(req("x"))
    assert (plan.complexity, plan.complexity_source) == (3, "estimated")
    plan = shipped_run(req("x", task=Task(type="chat", requires_reasoning=True, critical=True)))
    assert plan.complexity == 2 + 2 + 1
    long = req("x", "y" * 20_000, task=Task(type="chat"))
    assert estimate_input_tokens(long) > 4000
    assert shipped_run(long).complexity == 2 + 2
    maxed = req("x", "y" * 80_000, task=Task(type="complex_reasoning", requires_reasoning=True, critical=True),
                requirements=Requirements(capabilities=["code_generation"]))
    assert estimate_complexity(maxed, estimate_input_tokens(maxed)) == 10


def test_an_estimated_complexity_feeds_the_rules():
    # cto rule 1: task.complexity > 8 -- an architecture task with reasoning is 7 + 2 = 9.
    plan = shipped_run(req("cto_agent", task=Task(type="architecture_design", requires_reasoning=True)))
    assert plan.complexity == 9 and plan.decided_by == "agents.cto_agent.routing_rules[1]"


def test_confidence_is_one_when_the_caller_or_an_operator_names_the_model():
    plan = shipped_run(req("cto_agent", model="gpt4"))
    assert models(plan) == ["gpt-4-turbo"] and plan.decided_by == "caller" and plan.confidence == 1.0
    for agent in AGENTS:
        for task in (Task(), Task(complexity=9), Task(type="code_generation")):
            plan = shipped_run(req(agent, task=task))
            assert 0.0 <= plan.confidence <= 1.0


def test_a_caller_model_is_still_subject_to_hard_constraints():
    plan = shipped_run(req("cto_agent", EMAIL, model="opus"))
    assert plan.ordered == [] and rejected(plan) == {"claude-3-opus": "privacy"}


def test_decided_by_labels():
    assert shipped_run(req("cto_agent")).decided_by == "primary"
    assert shipped_run(req("someone")).decided_by == "strategy"
    assert shipped_run(req("someone", model="llama")).decided_by == "caller"
    assert shipped_run(req("cto_agent", task=Task(complexity=9))).decided_by == "agents.cto_agent.routing_rules[1]"
    stats = {("anthropic", "claude-3-opus"): window(5)}
    assert shipped_run(req("cto_agent"), stats=stats).decided_by == "rate_limit_protection"


def test_the_plan_carries_scores_factors_and_estimates():
    plan = shipped_run(req("someone", "x" * 400, task=Task(type="code_generation")))
    for c in plan.ordered:
        assert len(c.factors) == 5 and all(0.0 <= f <= 1.0 for f in c.factors)
        assert 0.0 <= c.score <= 1.0 + 1e-9
        assert c.estimate >= 0.0
    assert plan.tokens > 100
    assert {c.dep.model: c.estimate for c in plan.ordered}["llama-3-70b"] == 0.0
    assert {c.dep.model: c.estimate for c in plan.ordered}["claude-3-opus"] > 0.0


def test_no_candidates_lists_each_with_its_constraint():
    plan = shipped_run(req("someone", EMAIL, requirements=Requirements(model_type="cloud")))
    assert plan.ordered == []
    assert rejected(plan) == {**dict.fromkeys(CLOUD, "privacy"), **dict.fromkeys(LOCAL, "model_type")}
    assert plan.confidence == 0.0 and plan.verify_with is None


def test_a_verification_rule_after_a_rule_that_removed_every_candidate_does_not_crash():
    policy = policy_of({"global_rules": [
        {"name": "no_cloud", "condition": "model.type == 'cloud'", "action": "switch_to_local_only"},
        {"name": "qa", "condition": "task.critical and model.type == 'local'", "action": "require_cloud_verification"},
    ]}, {}, [])
    plan = run(req("x", task=Task(critical=True)), catalog([dep("c1"), dep("c2")]), policy)
    assert plan.ordered == [] and plan.verify_with is None
    assert rejected(plan) == {"c1": "no_cloud", "c2": "no_cloud"}
    assert "global rules removed every candidate" in plan.reason


def test_a_limit_scores_only_what_will_be_tried_but_keeps_the_order():
    config = shipped_config()
    full = shipped_run(req("someone", task=Task(type="code_generation")), cursor=2)
    part = decide(req("someone", task=Task(type="code_generation")), policy=config.policy,
                  catalog=shipped_catalog(config), aliases=config.aliases, breakers={}, overrides=None,
                  daily_cloud_cost=0.0, now=NOW, rng=random.Random(0), cursor=2, limit=3)
    assert models(part) == models(full)
    assert [(c.score, c.suitability) for c in part.ordered[:3]] == [(c.score, c.suitability) for c in full.ordered[:3]]


# --------------------------------------------------------------------------- engine bugs found by these tests (fixed)


def limited(request: LlmRequest, limit: int, environment: str = "", **kw: Any) -> Plan:
    config = shipped_config(environment)
    return decide(request, policy=config.policy, catalog=shipped_catalog(config), aliases=config.aliases,
                  breakers={}, overrides=None, daily_cloud_cost=0.0, now=NOW, rng=random.Random(0),
                  cursor=kw.pop("cursor", 0), limit=limit, **kw)


def test_an_agent_rule_reading_model_rate_limit_approaching_sees_the_real_window():
    a, b = dep("a", requests_per_minute=10), dep("b")
    policy = agent_policy([("not model.rate_limit_approaching", "a")], names=["a", "b"])
    plan = run(req("a"), catalog([a, b], stats={a.key: window(1, rpm=10)}), policy)  # a: 10 % of its minute left
    assert plan.decided_by != "agents.a.routing_rules[0]"
    policy = agent_policy([("model.rate_limit_approaching", "b")], names=["a", "b"])
    b10 = dep("b", requests_per_minute=10)
    plan = run(req("a"), catalog([a, b10], stats={b10.key: window(1, rpm=10)}), policy)
    assert plan.decided_by == "agents.a.routing_rules[0]"


def test_a_per_model_agent_rule_holds_per_deployment():
    cloud_m, local_m, other = dep("m", "cloud", provider="cloudp"), dep("m", "local", provider="localp"), dep("o", "local")
    policy = agent_policy([("model.type == 'local'", "m")], names=["m", "o"])
    for deps in ([cloud_m, local_m, other], [local_m, cloud_m, other]):
        for cursor in range(4):
            plan = run(req("a"), catalog(deps), policy, cursor=cursor)
            assert plan.ordered[0].dep.key == local_m.key, (deps[0].provider, cursor, plan.ordered[0].dep.key)
            assert plan.decided_by == "agents.a.routing_rules[0]"


def test_a_per_model_rule_leaves_the_model_s_other_deployments_in_the_plan():
    # The rule holds for the local deployment of m only: it leads, and the cloud one of the
    # same model stays a fallback (it broke no hard constraint).
    cloud_m, local_m, other = dep("m", "cloud", provider="cloudp"), dep("m", "local", provider="localp"), dep("o", "local")
    policy = agent_policy([("model.type == 'local'", "m")], names=["m", "o"])
    plan = run(req("a"), catalog([cloud_m, local_m, other]), policy)
    assert plan.ordered[0].dep.key == local_m.key
    assert {c.dep.key for c in plan.ordered} == {cloud_m.key, local_m.key, other.key}


def test_decided_by_follows_a_global_rule_that_removes_the_first_choice():
    routing = shipped_routing()
    routing["global_rules"] = routing["global_rules"] + [
        {"name": "no_anthropic", "condition": "model.provider == 'anthropic'", "action": "switch_to_local_only"}]
    policy = policy_of(routing, shipped_agents(), shipped_config().models)
    plan = shipped_run(req("cto_agent", task=Task(complexity=9)), policy=policy)
    assert first(plan) == "gpt-4-turbo" and rejected(plan) == {"claude-3-opus": "no_anthropic"}
    assert plan.decided_by != "agents.cto_agent.routing_rules[1]"
    assert any("no_anthropic" in n for n in plan.notes)


def test_the_verifier_is_scored_whatever_the_limit():
    # quality_assurance: llama answers, gpt-4-turbo (second) verifies; the planner passes max_attempts.
    plan = limited(req("qa_agent", task=Task(type="test_generation", critical=True)), limit=1)
    assert plan.verify_with is not None and plan.verify_with.dep.model == "gpt-4-turbo"
    assert 0.0 <= plan.verify_with.score <= 1.0 and 1 <= plan.verify_with.suitability <= 5


def test_confidence_does_not_depend_on_the_limit():
    request = req("someone", task=Task(critical=True))
    assert limited(request, 1, cursor=3).confidence == limited(request, 0, cursor=3).confidence


@pytest.mark.parametrize("agent, task", [
    ("backend_agent", Task(type="code_generation")),
    ("frontend_agent", Task(type="ui_design", complexity=8)),
    ("cto_agent", Task(type="architecture_decision", critical=True)),
    ("tester", Task(type="chat")),
    ("qa_agent", Task(type="test_generation", critical=True)),  # with a verifier
])
def test_a_plan_explained_later_is_the_plan_explained_at_once(agent, task):
    """``decide(explain=False)`` (the agent's way: the decision is published after the call is
    on its way) leaves scores, suitability and confidence to ``Plan.explain``, which then
    gives exactly what ``decide`` gives at once, and the same order."""
    config = shipped_config()
    request = req(agent, task=task)

    def plan(explain: bool) -> Plan:
        return decide(request, policy=config.policy, catalog=shipped_catalog(config), aliases=config.aliases,
                      breakers={}, overrides=None, daily_cloud_cost=0.0, now=NOW, rng=random.Random(7), cursor=3,
                      limit=3, explain=explain)

    at_once, later = plan(True), plan(False)
    assert later.unexplained is not None and models(later) == models(at_once)
    assert later.explain() is later and later.unexplained is None

    def explanation(p: Plan) -> Any:
        return (p.confidence, [(c.dep.model, c.score, c.suitability) for c in p.ordered],
                p.verify_with and p.verify_with.dep.model, p.notes, p.reason)

    assert explanation(later) == explanation(at_once)
    assert at_once.confidence > 0 and at_once.ordered[0].suitability > 0


@pytest.mark.parametrize("limit", [1, 2])
def test_two_fallback_rules_give_the_same_first_choices_whatever_the_limit(limit):
    """Two per-model switch_to_fallback rules in a row: the first must leave the whole order as
    a full walk would, since the second reads past the limit (found by the property test
    test_a_limit_only_bounds_what_is_worked_out)."""
    a, b, c = dep("a", provider="p0"), dep("b", provider="p1"), dep("c", provider="p2")
    routing = {"default_strategy": "rr", "strategies": {"rr": {"base": "round_robin"}}, "global_rules": [
        {"name": "not_p0", "condition": "model.provider == 'p0'", "action": "switch_to_fallback"},
        {"name": "not_p1", "condition": "model.provider == 'p1'", "action": "switch_to_fallback"}]}
    policy = policy_of(routing, names=["a", "b", "c"])

    def plan(limit: int) -> Plan:
        return decide(req("tester"), policy=policy, catalog=catalog([a, b, c]), aliases={}, breakers={},
                      overrides=None, daily_cloud_cost=0.0, now=NOW, rng=random.Random(0), cursor=0, limit=limit)

    assert models(plan(0)) == ["c", "a", "b"]  # a behind b and c, then b behind c and a
    assert models(plan(limit))[:limit] == ["c", "a"][:limit]
