"""The engine's hard constraints and candidate_models(): constraints remove and name
themselves, round robin orders what is left, and no deployment is lost or counted twice."""

from __future__ import annotations

import random
from collections import Counter
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router_agent.core.breaker import Breaker
from router_agent.core.cost import cost_usd, estimate_input_tokens, estimate_output_tokens
from router_agent.core.engine import Plan, decide
from router_agent.core.model import Deployment
from router_agent.core.observed import DeploymentStats
from router_agent.core.policy import Policy
from router_agent.core.routing import ProviderView, candidate_models
from signals import ChatMessage, LlmRequest, Params, Requirements, Task

NOW = 1_000.0


def make_request(content: str = "hello router", **fields) -> LlmRequest:
    return LlmRequest(
        request_id="r-1",
        agent_id="tester",
        messages=[ChatMessage(role="user", content=content)],
        **fields,
    )


def dep(provider: str, model: str = "m", type: str = "cloud", **fields) -> Deployment:
    return Deployment(
        provider=provider,
        model=model,
        model_id=model,
        api="openai",
        type=type,
        base_url=f"http://127.0.0.1:9/{provider}",
        **fields,
    )


def views(*deps: Deployment, **overrides: ProviderView) -> dict[str, ProviderView]:
    out = {d.provider: ProviderView() for d in deps}
    out.update(overrides)
    return out


def catalog(deps: list[Deployment], providers, stats=None) -> SimpleNamespace:
    by_model: dict[str, list[Deployment]] = {}
    for d in deps:
        by_model.setdefault(d.model, []).append(d)
    return SimpleNamespace(deployments_by_model=by_model, default_pool=list(by_model), views=providers,
                           stats=stats or {})


def run(
    request: LlmRequest,
    deps: list[Deployment],
    providers=None,
    breakers=None,
    cursor: int = 0,
    stats=None,
) -> Plan:
    """The engine with the default policy (round robin, no rules): only the constraints act."""
    return decide(
        request, policy=Policy(), catalog=catalog(deps, providers if providers is not None else views(*deps), stats),
        aliases={}, breakers=breakers or {}, overrides=None, daily_cloud_cost=0.0, now=NOW,
        rng=random.Random(0), cursor=cursor,
    )


def keys(decision: Plan) -> list[tuple[str, str]]:
    return [s.dep.key for s in decision.ordered]


def assert_removed_by(decision: Plan, removed: Deployment, constraint: str) -> None:
    assert removed.key not in keys(decision)
    hits = [
        r for r in decision.rejected if (r.provider, r.model) == (removed.provider, removed.model)
    ]
    assert len(hits) == 1, decision.rejected
    assert hits[0].constraint == constraint
    assert hits[0].detail


# --------------------------------------------------------------------------- each hard constraint


def test_disabled_provider_is_removed_as_disabled():
    off, on = dep("off"), dep("on")
    d = run(make_request(), [off, on], views(off, on, off=ProviderView(enabled=False)))
    assert_removed_by(d, off, "disabled")
    assert keys(d) == [on.key]


def test_provider_missing_from_the_view_is_removed_as_disabled():
    ghost, on = dep("ghost"), dep("on")
    d = run(make_request(), [ghost, on], views(on))
    assert_removed_by(d, ghost, "disabled")
    assert keys(d) == [on.key]


def test_disabled_model_is_removed_as_disabled():
    off, on = dep("p", "off-model", enabled=False), dep("p", "on-model")
    d = run(make_request(), [off, on])
    assert_removed_by(d, off, "disabled")
    assert keys(d) == [on.key]


def test_unhealthy_provider_is_removed_but_degraded_is_kept():
    sick, slow = dep("sick"), dep("slow")
    providers = views(
        sick, slow, sick=ProviderView(health="unhealthy"), slow=ProviderView(health="degraded")
    )
    d = run(make_request(), [sick, slow], providers)
    assert_removed_by(d, sick, "unhealthy")
    assert keys(d) == [slow.key]


def test_high_privacy_keeps_only_local_models():
    cloud, local = dep("cloud", type="cloud"), dep("local", type="local")
    d = run(make_request(task=Task(privacy_level="high")), [cloud, local])
    assert_removed_by(d, cloud, "privacy")
    assert keys(d) == [local.key]


@pytest.mark.parametrize("level", [None, "low", "normal"])
def test_privacy_below_high_keeps_cloud_models(level):
    cloud, local = dep("cloud", type="cloud"), dep("local", type="local")
    d = run(make_request(task=Task(privacy_level=level)), [cloud, local])
    assert keys(d) == [cloud.key, local.key]
    assert d.rejected == []


@settings(max_examples=60, deadline=None)
@given(
    types=st.lists(st.sampled_from(["cloud", "local"]), min_size=1, max_size=8),
    cursor=st.integers(min_value=0, max_value=1_000),
    data=st.data(),
)
def test_high_privacy_never_lets_a_cloud_model_through_whatever_the_order_or_cursor(
    types, cursor, data
):
    deps = [dep(f"p{i}", type=t) for i, t in enumerate(types)]
    deps = data.draw(st.permutations(deps))
    d = run(make_request(task=Task(privacy_level="high")), deps, cursor=cursor)

    assert all(x.dep.type == "local" for x in d.ordered)
    assert sorted(keys(d)) == sorted(x.key for x in deps if x.type == "local")
    assert sorted((r.provider, r.constraint) for r in d.rejected) == sorted(
        (x.provider, "privacy") for x in deps if x.type != "local"
    )


def test_model_type_requirement_removes_the_other_type():
    cloud, local = dep("cloud", type="cloud"), dep("local", type="local")
    d = run(make_request(requirements=Requirements(model_type="cloud")), [cloud, local])
    assert_removed_by(d, local, "model_type")
    assert keys(d) == [cloud.key]


def test_missing_capability_removes_and_names_what_is_missing():
    plain = dep("plain", capabilities=frozenset({"chat"}))
    rich = dep("rich", capabilities=frozenset({"chat", "vision", "tools"}))
    d = run(make_request(requirements=Requirements(capabilities=["vision", "chat"])), [plain, rich])
    assert_removed_by(d, plain, "capability")
    assert "vision" in d.rejected[0].detail
    assert keys(d) == [rich.key]


def test_context_window_too_small_is_removed_and_an_exact_fit_is_kept():
    request = make_request(content="x" * 400, params=Params(max_tokens=100))
    needed = estimate_input_tokens(request) + estimate_output_tokens(request)
    small, exact = dep("small", context_window=needed - 1), dep("exact", context_window=needed)
    unknown = dep("unknown", context_window=None)
    d = run(request, [small, exact, unknown])
    assert_removed_by(d, small, "context_window")
    assert keys(d) == [exact.key, unknown.key]


def test_max_cost_removes_the_too_expensive_and_keeps_an_exact_match():
    # 100 output tokens at 1.0 / 1k tokens = 0.1 exactly; input is free.
    request = make_request(
        params=Params(max_tokens=100), requirements=Requirements(max_cost_usd=0.1)
    )
    at_cap = dep("at-cap", price_in=0.0, price_out=1.0)
    over = dep("over", price_in=0.0, price_out=2.0)
    d = run(request, [over, at_cap])
    assert_removed_by(d, over, "max_cost")
    assert keys(d) == [at_cap.key]


def test_open_circuit_is_removed_and_names_its_state():
    broken, fine = dep("broken"), dep("fine")
    breaker = Breaker(state="open", opened_at=NOW - 1, cooldown_s=30.0, failures=5)
    d = run(make_request(), [broken, fine], breakers={broken.key: breaker})
    assert_removed_by(d, broken, "circuit_open")
    assert "open" in d.rejected[0].detail
    assert keys(d) == [fine.key]


def test_half_open_circuit_with_its_probe_in_flight_is_removed():
    probing, fine = dep("probing"), dep("fine")
    breaker = Breaker(state="half_open", probe_in_flight=True, failures=5)
    d = run(make_request(), [probing, fine], breakers={probing.key: breaker})
    assert_removed_by(d, probing, "circuit_open")
    assert keys(d) == [fine.key]


def test_cooled_down_circuit_is_kept_and_routing_does_not_touch_the_breaker():
    cooled = dep("cooled")
    breaker = Breaker(state="open", opened_at=NOW - 30.0, cooldown_s=30.0, failures=5)
    before = breaker.model_dump()
    d = run(make_request(), [cooled], breakers={cooled.key: breaker})
    assert keys(d) == [cooled.key]
    assert breaker.model_dump() == before  # decide() is pure; the probe is claimed later


def test_breakers_are_looked_up_per_deployment_not_per_provider():
    bad, good = dep("p", "bad"), dep("p", "good")
    breaker = Breaker(state="open", opened_at=NOW, failures=5)
    d = run(make_request(), [bad, good], breakers={bad.key: breaker})
    assert_removed_by(d, bad, "circuit_open")
    assert keys(d) == [good.key]


# --------------------------------------------------------------------------- round robin


def test_round_robin_chooses_each_kept_candidate_exactly_once_over_n_cursors():
    kept = [dep(f"k{i}") for i in range(4)]
    removed = dep("removed", enabled=False)
    deps = [kept[0], removed, kept[1], kept[2], kept[3]]  # a rejected one in the middle
    kept_keys = [k.key for k in kept]
    n = len(kept)

    chosen = []
    for cursor in range(n):
        d = run(make_request(), deps, cursor=cursor)
        assert keys(d) == kept_keys[cursor:] + kept_keys[:cursor]  # fallbacks: the rest, rotated
        assert d.reason
        chosen.append(keys(d)[0])
    assert sorted(chosen) == sorted(kept_keys)

    for cursor in range(n):  # the cursor wraps around
        wrapped = run(make_request(), deps, cursor=cursor + 7 * n)
        assert keys(wrapped) == keys(run(make_request(), deps, cursor=cursor))


def test_provider_weights_share_first_choices_in_proportion():
    heavy, light, spare = dep("heavy"), dep("light"), dep("spare")
    providers = views(heavy, light, spare, heavy=ProviderView(weight=3.0), light=ProviderView(weight=1.0),
                      spare=ProviderView(weight=0.0))
    firsts = Counter(keys(run(make_request(), [heavy, light, spare], providers, cursor=c))[0] for c in range(4000))
    assert spare.key not in firsts  # weight 0: a fallback only
    assert firsts[heavy.key] / 4000 == pytest.approx(0.75, abs=0.01)
    d = run(make_request(), [heavy, light, spare], providers, cursor=0)
    assert sorted(keys(d)) == sorted([heavy.key, light.key, spare.key])  # all still in the chain


def test_max_latency_removes_deployments_observed_slower_and_keeps_unobserved():
    slow, fast, new = dep("slow"), dep("fast"), dep("new")
    stats = {slow.key: DeploymentStats(latency_ms=900.0), fast.key: DeploymentStats(latency_ms=120.0)}
    d = run(make_request(requirements=Requirements(max_latency_ms=500)), [slow, fast, new], stats=stats)
    assert_removed_by(d, slow, "max_latency")
    assert "900 ms exceeds 500 ms" in d.rejected[0].detail
    assert sorted(keys(d)) == sorted([fast.key, new.key])


def test_estimates_follow_the_rotation_and_feed_the_candidates():
    request = make_request(content="y" * 80, params=Params(max_tokens=50))
    deps = [dep("a", price_in=1.0, price_out=2.0), dep("b", price_in=0.5, price_out=0.25), dep("c")]
    d = run(request, deps, cursor=1)
    est_in, est_out = estimate_input_tokens(request), estimate_output_tokens(request)
    expected = [cost_usd(est_in, est_out, x.dep.price_in, x.dep.price_out) for x in d.ordered]
    assert [x.estimate for x in d.ordered] == expected
    assert keys(d) == [("b", "m"), ("c", "m"), ("a", "m")]


def test_nothing_left_gives_an_empty_order_and_a_reason():
    deps = [dep("a", enabled=False), dep("b", type="cloud")]
    d = run(make_request(task=Task(privacy_level="high")), deps)
    assert d.ordered == []
    assert "hard constraints" in d.reason
    assert [r.constraint for r in d.rejected] == ["disabled", "privacy"]


def test_no_deployments_gives_an_empty_order_and_a_reason():
    d = run(make_request(), [])
    assert d.ordered == [] and d.rejected == []
    assert d.reason


# ------------------------------------------------------------- every deployment accounted for


CAPS = ["chat", "vision", "tools"]


@st.composite
def routing_case(draw):
    n = draw(st.integers(0, 8))
    deps, providers, breakers = [], {}, {}
    for i in range(n):
        provider = f"p{draw(st.integers(0, 3))}"
        d = dep(
            provider,
            f"m{i}",
            type=draw(st.sampled_from(["cloud", "local"])),
            capabilities=frozenset(draw(st.lists(st.sampled_from(CAPS), max_size=3))),
            price_in=draw(st.sampled_from([0.0, 0.5, 3.0])),
            price_out=draw(st.sampled_from([0.0, 1.0, 15.0])),
            context_window=draw(st.sampled_from([None, 8, 64, 100_000])),
            enabled=draw(st.booleans()),
        )
        deps.append(d)
        if provider not in providers and draw(st.integers(0, 5)) > 0:  # sometimes missing
            providers[provider] = ProviderView(
                enabled=draw(st.booleans()),
                health=draw(st.sampled_from(["healthy", "degraded", "unhealthy"])),
            )
        if draw(st.booleans()):
            breakers[d.key] = Breaker(
                state=draw(st.sampled_from(["closed", "open", "half_open"])),
                opened_at=NOW - draw(st.sampled_from([0.0, 10.0, 30.0, 90.0])),
                probe_in_flight=draw(st.booleans()),
                cooldown_s=30.0,
            )
    request = make_request(
        content="z" * draw(st.integers(0, 300)),
        params=Params(max_tokens=draw(st.sampled_from([None, 1, 40]))),
        task=Task(privacy_level=draw(st.sampled_from([None, "normal", "high"]))),
        requirements=Requirements(
            capabilities=draw(st.lists(st.sampled_from(CAPS), max_size=2)),
            max_cost_usd=draw(st.sampled_from([None, 0.0, 0.001, 1.0])),
            model_type=draw(st.sampled_from([None, "cloud", "local"])),
        ),
    )
    return request, deps, providers, breakers, draw(st.integers(0, 50))


@settings(max_examples=80, deadline=None)
@given(case=routing_case())
def test_every_deployment_is_either_ordered_or_rejected_exactly_once(case):
    request, deps, providers, breakers, cursor = case
    snapshot = {k: b.model_dump() for k, b in breakers.items()}

    d = run(request, deps, providers, breakers, cursor)

    ordered = Counter(keys(d))
    rejected = Counter((r.provider, r.model) for r in d.rejected)
    assert not (set(ordered) & set(rejected))
    assert ordered + rejected == Counter(x.key for x in deps)
    # Kept candidates are a rotation of the survivors in input order, each with its estimate.
    survivors = [x.key for x in deps if x.key in ordered]
    if survivors:
        shift = cursor % len(survivors)
        assert keys(d) == survivors[shift:] + survivors[:shift]
    if not d.ordered and deps:
        assert "hard constraints" in d.reason
    assert {k: b.model_dump() for k, b in breakers.items()} == snapshot


# --------------------------------------------------------------------------- candidate_models

NAMES = ["gpt-4o", "gpt-4o-mini", "claude-sonnet", "llama-local"]
ALIASES = {"fast": "gpt-4o-mini", "smart": "claude-sonnet"}


def test_an_explicit_known_model_is_the_only_candidate_even_with_preferences():
    request = make_request(model="llama-local")
    models, why = candidate_models(request, NAMES, ALIASES, ["gpt-4o"])
    assert models == ["llama-local"]
    assert "llama-local" in why


def test_an_alias_resolves_to_its_model():
    models, why = candidate_models(make_request(model="fast"), NAMES, ALIASES, None)
    assert models == ["gpt-4o-mini"]
    assert "gpt-4o-mini" in why


def test_an_unknown_model_gives_no_candidates_and_says_so():
    models, why = candidate_models(make_request(model="no-such-model"), NAMES, ALIASES, None)
    assert models == []
    assert "no-such-model" in why and "not known" in why


def test_agent_preferences_are_ordered_deduplicated_and_drop_unknown_names():
    prefs = ["claude-sonnet", "unknown-model", "gpt-4o", "claude-sonnet"]
    models, why = candidate_models(make_request(), NAMES, ALIASES, prefs)
    assert models == ["claude-sonnet", "gpt-4o"]
    assert "tester" in why and "preferences" in why


def test_preferences_naming_only_unknown_models_fall_back_to_all_models():
    models, why = candidate_models(make_request(), NAMES, ALIASES, ["gone"])
    assert models == NAMES
    assert "all models" in why


@pytest.mark.parametrize("prefs", [None, []], ids=["no-agent", "no-preferences"])
def test_no_preferences_means_all_models_in_their_order(prefs):
    models, why = candidate_models(make_request(), NAMES, ALIASES, prefs)
    assert models == NAMES
    assert models is not NAMES  # a copy: the caller's list is not handed out
    assert "all models" in why
