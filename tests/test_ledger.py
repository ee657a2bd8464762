"""What a call costs and how it is booked: exact micro-dollars from each vendor's usage
(streamed and not), the learning estimator, the ledger's lines and breakdowns, days in a time
zone, and ``LedgerService`` on the in-memory store (reserve, settle, release, failover,
refusals, batches). The JetStream side is in ``test_store.py``.
"""

from __future__ import annotations

import json
from datetime import datetime
from zoneinfo import ZoneInfo

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import signals as sig
from router_agent.core.budget import ALL, CLOUD, Refusal
from router_agent.core.cost import MAX_CORRECTION, CostEstimator, cost_micros, micros, usd
from router_agent.core.ledger import Calendar, CostLedger, recent_days
from router_agent.core.model import Deployment
from router_agent.ledger_service import Hold, LedgerService, caps_of
from router_agent.providers import anthropic, gemini, ollama, openai

NOON = datetime(2025, 6, 1, 12, tzinfo=ZoneInfo("UTC")).timestamp()


def dep(provider="openai", model="gpt-4o", type="cloud", price_in=0.0, price_out=0.0, price_cached_in=0.0) -> Deployment:
    return Deployment(provider=provider, model=model, model_id=model, api="openai", type=type,
                      base_url="http://x", price_in=price_in, price_out=price_out, price_cached_in=price_cached_in)


def request(content="hello there", agent="qa", max_tokens=None) -> sig.LlmRequest:
    return sig.LlmRequest(request_id="r1", agent_id=agent, messages=[sig.ChatMessage(role="user", content=content)],
                          params=sig.Params(max_tokens=max_tokens))


# --------------------------------------------------------------------------- each vendor's usage, priced

J = json.dumps
# 1,200 input tokens of which 1,000 were read from the prompt cache, 300 output (50 reasoning).
OPENAI_BODY = J({"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}],
                 "usage": {"prompt_tokens": 1200, "completion_tokens": 300,
                           "prompt_tokens_details": {"cached_tokens": 1000},
                           "completion_tokens_details": {"reasoning_tokens": 50}}})
OPENAI_STREAM = [J({"choices": [{"delta": {"content": "hi"}}]}),
                 J({"choices": [{"delta": {}, "finish_reason": "stop"}]}),
                 J({"choices": [], "usage": {"prompt_tokens": 1200, "completion_tokens": 300,
                                             "prompt_tokens_details": {"cached_tokens": 1000}}}), "[DONE]"]
ANTHROPIC_BODY = J({"content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn",
                    "usage": {"input_tokens": 200, "output_tokens": 300, "cache_read_input_tokens": 1000}})
ANTHROPIC_STREAM = [
    J({"type": "message_start", "message": {"content": [], "usage": {
        "input_tokens": 200, "cache_read_input_tokens": 1000, "output_tokens": 1}}}),
    J({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    J({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}}),
    J({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 300}}),
    J({"type": "message_stop"}),
]
GEMINI_USAGE = {"promptTokenCount": 1200, "candidatesTokenCount": 250, "thoughtsTokenCount": 50,
                "cachedContentTokenCount": 1000}
GEMINI_BODY = J({"candidates": [{"content": {"parts": [{"text": "hi"}]}, "finishReason": "STOP"}],
                 "usageMetadata": GEMINI_USAGE})
GEMINI_STREAM = [J({"candidates": [{"content": {"parts": [{"text": "h"}]}}], "usageMetadata": {"promptTokenCount": 1200}}),
                 J({"candidates": [{"content": {"parts": [{"text": "i"}]}, "finishReason": "STOP"}],
                    "usageMetadata": GEMINI_USAGE})]
OLLAMA_BODY = J({"message": {"content": "hi"}, "done": True, "done_reason": "stop",
                 "prompt_eval_count": 1200, "eval_count": 300})
OLLAMA_STREAM = [J({"message": {"content": "hi"}, "done": False}),
                 J({"message": {"content": ""}, "done": True, "done_reason": "stop",
                    "prompt_eval_count": 1200, "eval_count": 300})]


def _whole(module, body: str) -> sig.Usage:
    req = request()
    if module in (anthropic, ollama):
        return module.parse_response(body.encode(), req).usage()
    return module.parse_response(body.encode()).usage()


def _streamed(module, events: list[str]) -> sig.Usage:
    parser = module.StreamParser(request())
    for event in events:
        parser.feed(event.encode())
    return parser.end().usage


# USD per 1k: input 0.0025, cached input 0.00125, output 0.01 -> micros per token 2.5, 1.25, 10.
PRICED = {"price_in": 0.0025, "price_out": 0.01, "price_cached_in": 0.00125}
CACHED_BILL = 200 * 2.5 + 1000 * 1.25 + 300 * 10  # 4,750


@pytest.mark.parametrize("module, body, events", [
    (openai, OPENAI_BODY, OPENAI_STREAM),
    (anthropic, ANTHROPIC_BODY, ANTHROPIC_STREAM),
    (gemini, GEMINI_BODY, GEMINI_STREAM),
], ids=["openai", "anthropic", "gemini"])
def test_each_cloud_vendor_is_billed_exactly_with_cached_input_streamed_or_not(module, body, events):
    for usage in (_whole(module, body), _streamed(module, events)):
        assert (usage.input_tokens, usage.cached_input_tokens, usage.output_tokens, usage.estimated) == (
            1200, 1000, 300, False)
        assert cost_micros(usage, dep(**PRICED)) == CACHED_BILL
        # Without a cached price, cached tokens cost the input price.
        assert cost_micros(usage, dep(price_in=0.0025, price_out=0.01)) == 1200 * 2.5 + 300 * 10


def test_a_local_model_costs_its_configured_price_and_nothing_by_default():
    for usage in (_whole(ollama, OLLAMA_BODY), _streamed(ollama, OLLAMA_STREAM)):
        assert (usage.input_tokens, usage.output_tokens) == (1200, 300)
        assert cost_micros(usage, dep(provider="local", type="local")) == 0
        assert cost_micros(usage, dep(provider="local", type="local", price_in=0.0001, price_out=0.0002)) == 180


@pytest.mark.parametrize("usage, expected", [
    (sig.Usage(input_tokens=1000, output_tokens=500), 10_000 + 15_000),  # $0.01 + $0.015
    (sig.Usage(input_tokens=1, output_tokens=0), 10),
    (sig.Usage(input_tokens=0, output_tokens=0), 0),
    (sig.Usage(input_tokens=10, cached_input_tokens=99), 10 * 5),  # cached never above input
])
def test_cost_micros_is_exact_for_known_prices(usage, expected):
    assert cost_micros(usage, dep(price_in=0.01, price_out=0.03, price_cached_in=0.005)) == expected


def test_micro_dollar_conversions():
    assert micros(500.0) == 500_000_000 and usd(1_500_000) == 1.5 and micros(0.1 + 0.2) == 300_000


# --------------------------------------------------------------------------- the estimator


def test_the_estimator_learns_a_per_model_correction_and_keeps_under_max_tokens():
    est = CostEstimator(alpha=0.5)
    d, other = dep(price_in=0.01, price_out=0.03), dep(model="other", price_in=0.01, price_out=0.03)
    req = request("x" * 400, max_tokens=1000)  # 100 chars/4 + 3 + 1 = 104 input, 1000 output
    assert est.tokens(req, d) == (104, 1000)
    for _ in range(20):
        est.learn(d.key, 1000, 250, estimated_in=104, actual_in=208)
    tokens_in, tokens_out = est.tokens(req, d)
    assert tokens_in == pytest.approx(208, abs=1) and tokens_out == pytest.approx(250, abs=1)
    assert est.tokens(req, other) == (104, 1000)  # per model
    assert est.estimate_micros(req, d) == cost_micros(sig.Usage(input_tokens=tokens_in, output_tokens=tokens_out), d)
    for _ in range(50):
        est.learn(d.key, 10, 10_000)  # a runaway answer: the correction is clamped...
    assert est.correction(d.key)[1] == pytest.approx(MAX_CORRECTION)
    assert est.tokens(req, d)[1] == 1000  # ...and never above max_tokens


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 5000), st.integers(0, 50_000)), max_size=30))
def test_corrections_stay_within_their_bounds(samples):
    est = CostEstimator()
    for estimated, actual in samples:
        est.learn(("p", "m"), estimated, actual, estimated_in=estimated, actual_in=actual)
    assert all(0.05 - 1e-9 <= c <= MAX_CORRECTION + 1e-9 for c in est.correction(("p", "m")))


# --------------------------------------------------------------------------- the ledger


def test_lines_are_keyed_by_tuples_and_break_down_by_each_dimension():
    ledger = CostLedger()
    ledger.book("2025-06-01", "a.b", "openai", "gpt", cloud=True, micros=1_500, input_tokens=10, output_tokens=5,
                cached_input_tokens=4)
    ledger.book("2025-06-01", "a", "b.openai", "gpt", cloud=True, micros=500)  # no collision with a joined key
    ledger.book("2025-06-02", "a", "local", "llama", cloud=False, micros=0, requests=2)
    assert len(ledger) == 3
    assert ledger.breakdown("agent") == {
        "a": sig.CostLine(requests=3, cost_micros=500, cost_usd=0.0005),
        "a.b": sig.CostLine(requests=1, input_tokens=10, output_tokens=5, cached_input_tokens=4,
                            cost_micros=1_500, cost_usd=0.0015)}
    assert set(ledger.breakdown("day")) == {"2025-06-01", "2025-06-02"}
    assert ledger.spent("2025-06-01", cloud_only=True) == 2_000 and ledger.spent("2025-06-02") == 0
    assert ledger.total().requests == 4 and ledger.total().cost_micros == 2_000


def test_merge_take_and_entries_add_up():
    a, b = CostLedger(), CostLedger()
    a.book("d", "x", "p", "m", cloud=True, micros=10)
    b.book("d", "x", "p", "m", cloud=True, micros=5, output_tokens=3)
    b.book("e", "y", "p", "m", cloud=False, micros=1)
    a.merge(b)
    assert a.lines["d", "x", "p", "m"].micros == 15 and a.lines["d", "x", "p", "m"].requests == 2
    rebuilt = CostLedger()
    for day in a.days():
        rebuilt.add_entries(day, msgspec.json.decode(msgspec.json.encode(a.entries(day)), type=list[sig.CostEntry]))
    assert rebuilt == a
    taken = a.take()
    assert len(a) == 0 and len(taken) == 2 and taken.only(["e"]).days() == {"e"}


def test_days_roll_over_at_midnight_of_the_configured_zone():
    paris = Calendar(ZoneInfo("Europe/Paris"))
    late = datetime(2025, 6, 1, 21, 59, tzinfo=ZoneInfo("UTC")).timestamp()  # 23:59 in Paris
    assert paris.day(late) == "2025-06-01" and paris.day(late + 60) == "2025-06-02"
    assert Calendar(ZoneInfo("UTC")).day(late + 60) == "2025-06-01"
    spring = datetime(2025, 3, 30, 12, tzinfo=ZoneInfo("Europe/Paris")).timestamp()
    paris.day(spring)
    assert paris.end - paris.start == 23 * 3600  # clocks moved forward
    assert recent_days("2025-03-01", 3) == ["2025-03-01", "2025-02-28", "2025-02-27"]


def test_projection_extrapolates_today_and_counts_at_least_an_hour():
    utc = Calendar(ZoneInfo("UTC"))
    assert utc.projected(1_000, NOON) == 2_000  # half the day gone
    assert utc.projected(1_000, NOON - 12 * 3600 + 60) == 24_000  # one minute in counts as an hour


# --------------------------------------------------------------------------- the service, in memory


def service(make_config, budgets=None, wall=lambda: NOON, clock=lambda: 0.0, **router) -> LedgerService:
    config = make_config({"router": {"budgets": {"store": "memory", **(budgets or {})}, **router}})
    return LedgerService(config, "i-1", clock=clock, wall=wall)


async def test_a_failed_over_request_counts_the_billed_attempt_and_not_the_unbilled_one(make_config):
    ledger = service(make_config)
    await ledger.start()
    cloud, backup, broken = dep(price_in=0.01, price_out=0.03), dep("anthropic", "claude", price_in=0.003), dep("x", "y")
    req = request()
    first = ledger.reserve(req, cloud)  # billed, then its stream broke: the router failed over
    assert isinstance(first, Hold)
    assert ledger.settle(first, sig.Usage(input_tokens=100, output_tokens=20, estimated=True)) == 1_600
    unbilled = ledger.reserve(req, broken)  # refused the connection: nothing billed
    ledger.release(unbilled)
    answer = ledger.reserve(req, backup)
    assert ledger.settle(answer, sig.Usage(input_tokens=1000, output_tokens=0)) == 3_000
    report = ledger.report()
    assert report.total.requests == 2 and report.total.cost_micros == 4_600
    assert report.by_provider["openai"].cost_micros == 1_600 and "x" not in report.by_provider
    assert report.day == "2025-06-01" and report.by_day["2025-06-01"].cost_micros == 4_600
    assert ledger.budget.accounts[CLOUD].settled == 4_600 and not ledger.budget.outstanding
    assert ledger.estimator.correction(cloud.key) == (1.0, 1.0)  # estimated usage teaches nothing
    assert ledger.estimator.correction(backup.key) != (1.0, 1.0)
    await ledger.stop()


async def test_flushes_ship_batches_once_and_keep_the_record_cumulative(make_config, prefix):
    ledger = service(make_config)
    await ledger.start()
    d = dep(price_in=0.01)
    ledger.charge("qa", d, sig.Usage(input_tokens=100))
    await ledger.flush()
    ledger.charge("qa", d, sig.Usage(input_tokens=50))
    await ledger.flush()
    await ledger.flush()  # nothing new: nothing sent
    events = [sig.decode_data(p, "cost_event") for _, p in ledger.events.messages]
    assert [sum(e.cost_micros for e in ev.entries) for ev in events] == [1_000, 500]
    assert {s for s, _ in ledger.events.messages} == {f"{prefix}cost_event.i-1"}
    record = msgspec.json.decode(ledger.kv.data["spend.2025-06-01.i-1"][0], type=sig.CostEvent)
    assert record.entries[0].requests == 2 and record.entries[0].cost_micros == 1_500
    assert record.batch == events[-1].batch
    await ledger.stop()


async def test_at_the_cloud_cap_cloud_calls_are_refused_and_local_ones_served(make_config):
    ledger = service(make_config, {"cloud_daily_usd": 0.01, "lease_share": 1.0, "local_only_share": 0.5})
    await ledger.start()
    cloud, local = dep(price_in=0.01), dep("local", "llama", type="local")
    held = ledger.reserve(request("x" * 3600, max_tokens=1), cloud)  # 904 tokens: $0.00904
    assert isinstance(held, Hold)
    ledger.settle(held, sig.Usage(input_tokens=900))
    assert ledger.daily_cloud_cost() == pytest.approx(0.009)
    assert "cloud spend $0.01 reached 50%" in ledger.local_only("qa")
    refused = await ledger.admit(request("x" * 400), cloud)
    assert isinstance(refused, Refusal) and refused.reason == "cap" and refused.scope == CLOUD
    assert "cloud daily budget of $0.01 is spent" in refused.message()
    assert isinstance(ledger.reserve(request("x" * 400), local), Hold)
    status = ledger.report().budgets[0]
    assert (status.scope, status.limit_usd, status.used_usd, status.state) == ("cloud", 0.01, 0.009, "local_only")
    await ledger.stop()


async def test_admit_renews_a_short_lease_and_asks_again(make_config):
    ledger = service(make_config, {"daily_usd": 1.0, "lease_share": 0.001, "lease_min_usd": 0})
    await ledger.start()
    assert ledger.budget.accounts[ALL].granted == 1_000  # a thousandth of $1
    big = request("x" * 40_000)  # ~10,000 input tokens at $0.01/1k = $0.1
    d = dep(price_in=0.01)
    assert ledger.reserve(big, d).reason == "lease"
    held = await ledger.admit(big, d)
    assert isinstance(held, Hold) and ledger.budget.accounts[ALL].granted >= held.reservation.micros
    ledger.release(held)
    await ledger.stop()


async def test_the_day_rolls_over_in_the_configured_zone(make_config):
    now = [datetime(2025, 6, 1, 21, 59, tzinfo=ZoneInfo("UTC")).timestamp()]  # 23:59 in Paris
    ledger = service(make_config, {"time_zone": "Europe/Paris"}, wall=lambda: now[0])
    await ledger.start()
    d = dep(price_in=0.01)
    held = ledger.reserve(request(), d)
    now[0] += 120  # midnight passes while the call is in flight: it settles into the new day
    ledger.settle(held, sig.Usage(input_tokens=100))
    ledger.charge("qa", d, sig.Usage(input_tokens=100))
    report = ledger.report()
    assert report.day == "2025-06-02" and report.time_zone == "Europe/Paris"
    assert report.by_day["2025-06-02"].requests == 2
    assert ledger.budget.day == "2025-06-02" and ledger.budget.accounts[ALL].settled == 2_000
    await ledger.stop()


def test_caps_take_the_lower_cloud_cap_and_are_micro_dollars(make_config):
    config = make_config({"router": {"budgets": {"cloud_daily_usd": 700, "daily_usd": 1000,
                                                 "per_agent_usd": {"qa": 5}, "per_provider_usd": {"openai": 2.5}}},
                          "routing": {"global_overrides": {"max_cloud_spend_per_day": 500}}})
    assert caps_of(config) == {ALL: 1_000_000_000, CLOUD: 500_000_000, ("agent", "qa"): 5_000_000,
                               ("provider", "openai"): 2_500_000}
