"""The ledger_cache bench scenario's pure parts: the agent configuration it runs, the requests
it sends (cacheable, unique, the direct baseline posting what the agent posts), how it reads
the answers, the evidence check and the goals. The scenario itself runs in
``test_bench_smoke.py`` (``python -m bench --quick``)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

import signals as sig
from bench import ledger_cache as lc
from bench.load import (
    AGENT_ID,
    UPSTREAM_MODEL_ID,
    Tally,
    request_parts,
    request_template,
    upstream_body,
    upstream_parts,
)
from bench.procs import OVERLAY
from router_agent.config import load_config
from router_agent.core.budget import CLOUD
from router_agent.core.cache import cache_key, eligibility
from router_agent.core.cost import micros
from router_agent.ledger_service import caps_of
from router_agent.providers.openai import build_request


def _decode(payload: bytes) -> sig.LlmRequest:
    return sig.decode_data(payload, "llm_request")


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The agent under test's config: the bundled files, the bench overlay, the scenario's."""
    router, extra = lc.overlay()
    path = tmp_path_factory.mktemp("overlay") / "ledger_cache.yaml"
    path.write_text(yaml.safe_dump({"router": {"subject_prefix": lc.PREFIX_0MS, **router}, **extra}))
    return load_config(None, None, [OVERLAY, Path(path)])


def test_the_agent_runs_the_production_ledger_with_caps_and_the_cache_on(config: Any) -> None:
    budgets = config.router.budgets
    assert budgets.store == "jetstream"
    caps = caps_of(config)
    assert caps[CLOUD] == micros(lc.CAP_USD)
    assert caps[("agent", AGENT_ID)] == micros(lc.CAP_USD)
    assert set(caps) == lc.expected_caps()  # what problems() looks for in the cost report
    assert config.router.cache.enabled and config.router.cache.bucket
    assert config.agents[AGENT_ID].cache is not None and config.agents[AGENT_ID].cache.enabled


def test_every_request_is_cacheable_and_unique(config: Any) -> None:
    parts = request_parts(unique_prompt=True, temperature=lc.TEMPERATURE)
    first, second = (_decode(rid.join(parts)) for rid in (b"a1x1y1", b"a1x1y2"))
    assert first.request_id == "a1x1y1" and first.messages[0].content.endswith("(request a1x1y1)")
    agent_cache = config.agents[AGENT_ID].cache
    for request in (first, second):
        assert request.params.temperature == 0
        assert eligibility(request, agent_cache, False) is None
    keys = {cache_key(r, target="gpt-4-turbo", private=False) for r in (first, second)}
    assert len(keys) == 2  # a miss and a store each, never a hit


def test_the_hits_side_repeats_one_prompt(config: Any) -> None:
    parts = request_parts(temperature=lc.TEMPERATURE)
    requests = [_decode(rid.join(parts)) for rid in (b"r1", b"r2")]
    assert eligibility(requests[0], config.agents[AGENT_ID].cache, False) is None
    assert len({cache_key(r, target="gpt-4-turbo", private=False) for r in requests}) == 1


def test_the_default_request_is_unchanged() -> None:
    head, tail = request_template()
    request = _decode(head + b"x1" + tail)
    assert request.params == sig.Params() and "(request" not in request.messages[0].content
    assert upstream_body() == build_request(request, UPSTREAM_MODEL_ID)


def test_the_direct_baseline_posts_what_the_agent_posts() -> None:
    body = upstream_parts(unique_prompt=True, temperature=lc.TEMPERATURE)
    request = _decode(b"t7x3y42".join(request_parts(unique_prompt=True, temperature=lc.TEMPERATURE)))
    assert b"t7x3y42".join(body) == build_request(request, UPSTREAM_MODEL_ID)


def _answer(*, cached: bool = False, ok: bool = True) -> bytes:
    if ok:
        data = sig.LlmResponse(request_id="r", status="ok", agent_id=AGENT_ID, cached=cached,
                               message=sig.AssistantMessage(content="hi"), model="gpt-4-turbo", provider="openai")
    else:
        data = sig.LlmResponse(request_id="r", status="error", agent_id=AGENT_ID,
                               error=sig.ErrorInfo(code="timeout", message="late"))
    return sig.encode_event("llm_response", data, source="test")


def test_the_tally_reads_the_cached_flag_as_the_agent_encodes_it() -> None:
    tally = Tally()
    for answer in (_answer(), _answer(cached=True), _answer(cached=True), _answer(ok=False)):
        tally.count(answer)
    assert (tally.ok, tally.cached, tally.errors) == (1, 2, 1)


GOOD: dict[str, Any] = {
    "agent": "benchlc0", "shared_ledger": True, "billed_attempts": 1001, "cost_usd": 1.0, "cost_event_batches": 9,
    "cache_entries": 1001, "answered": {"provider": 1000, "cache": 0, "errors": 0},
    "hits_answered": {"provider": 1, "cache": 99, "errors": 0},
    "caps": [{"scope": "cloud", "name": "", "limit_usd": 1e4, "used_usd": 1.0, "state": "ok"},
             {"scope": "agent", "name": AGENT_ID, "limit_usd": 1e4, "used_usd": 1.0, "state": "ok"}],
}


def _with(**changes: Any) -> dict[str, Any]:
    evidence = copy.deepcopy(GOOD)
    evidence.update(changes)
    return evidence


def test_evidence_of_a_run_with_both_on_passes() -> None:
    assert lc.problems(GOOD) == []
    without_hits = _with()
    del without_hits["hits_answered"]  # the throughput agent sends no repeated prompt
    assert lc.problems(without_hits) == []


@pytest.mark.parametrize(("evidence", "says"), [
    (_with(shared_ledger=False), "not on JetStream"),
    (_with(billed_attempts=0), "booked 0 attempt(s) for 1001"),
    (_with(billed_attempts=900), "booked 900"),
    (_with(caps=GOOD["caps"][:1]), "caps missing"),
    (_with(caps=[{**c, "state": "exceeded"} for c in GOOD["caps"]]), "a cap was reached"),
    (_with(answered={"provider": 900, "cache": 100, "errors": 0}), "not unique"),
    (_with(cache_entries=0), "no answer was stored"),
    (_with(hits_answered={"provider": 100, "cache": 0, "errors": 0}), "never answered from the cache"),
])
def test_evidence_that_either_was_off_fails_the_scenario(evidence: dict[str, Any], says: str) -> None:
    found = lc.problems(evidence)
    assert any(says in p for p in found), found
    with pytest.raises(lc.EvidenceError, match="with ledger and cache on"):
        lc._fail_on(evidence)


class _Sizes:
    goal_in_flight = 500


def _result(share_ms: float, pct: float, errors: int = 0) -> dict[str, Any]:
    trio = {"p50_ms": 1.0, "p90_ms": 1.2, "p99_ms": 2.0, "max_ms": 3.0, "errors": 0, "n": 100}
    diff = {"p50_ms": share_ms, "p90_ms": share_ms, "p99_ms": share_ms}
    load = {"rps": 2000.0, "p50_ms": 210.0, "p99_ms": 260.0, "errors": errors, "cpu_pct": {"agent": 50.0}}
    return {
        "latency": {"rounds": 2, "ledger_cache": trio, "plain": trio, "direct": trio, "hits": trio, "echo": trio,
                    "added": diff, "router_share": diff, "plain_added": diff, "plain_share": diff,
                    "hits_added": diff, "evidence": GOOD},
        "throughput": {"in_flight": 500, "upstream_ms": 200.0, "ideal_rps": 2500.0, "rounds": 2,
                       "ledger_cache": load, "plain": load, "direct": load,
                       "pct_of_direct": {"ledger_cache": pct, "plain": 99.0},
                       "evidence": {k: v for k, v in GOOD.items() if k != "hits_answered"}},
    }


@pytest.mark.parametrize(("share", "pct", "errors", "passed"), [
    (0.05, 98.0, 0, (True, True)),
    (0.10, 97.0, 0, (True, True)),
    (0.11, 96.9, 0, (False, False)),
    (0.05, 99.0, 3, (True, False)),
])
def test_goals_are_computed_from_the_figures(share: float, pct: float, errors: int, passed: tuple) -> None:
    rows = lc.goals(_result(share, pct, errors), _Sizes())
    assert tuple(row[3] for row in rows) == passed
    assert all(row[0].startswith("with ledger and cache on:") for row in rows)
    assert "500 in flight" in rows[1][0]


def test_goals_not_run_say_so_and_rows_render() -> None:
    assert [row[2:] for row in lc.goals(None, _Sizes())] == [(None, None), (None, None)]
    assert lc.rows(None) == []
    table = lc.rows(_result(0.05, 98.0))
    assert len(table) == 6 and all(len(row) == 4 for row in table)
    assert "1,001 answers stored in the bucket" in " ".join(table[3])
