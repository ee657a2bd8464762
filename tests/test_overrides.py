"""core/overrides.py: the routing override table, with time passed in."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router_agent.core.overrides import (
    ForcedModel,
    OverrideEntry,
    PrimaryOverride,
    RoutingOverrides,
    StrategyOverride,
)
from router_agent.state import RouterState

T0 = 1_000.0


@pytest.fixture
def table() -> RoutingOverrides:
    return RoutingOverrides()


# --------------------------------------------------------------------------- reads of an empty table


def test_an_empty_table_answers_none_for_everything(table):
    assert table.strategy_for("cto_agent", T0) is None
    assert table.primary_for("cto_agent", T0) is None
    assert table.forced_for("task-1", T0) is None
    assert table.forced_for(None, T0) is None
    assert table.table(T0) == []
    assert len(table) == 0


# --------------------------------------------------------------------------- expiry


def test_a_strategy_override_reverts_exactly_at_its_expiry(table):
    entry = table.set_strategy(None, "privacy_first", 7200, "audit", T0)
    assert entry == StrategyOverride(strategy="privacy_first", scope=None, reason="audit", expires_at=T0 + 7200)
    assert table.strategy_for("cto_agent", T0) is entry
    assert table.strategy_for("cto_agent", T0 + 7200 - 1e-6) is entry
    assert table.strategy_for("cto_agent", T0 + 7200) is None  # the boundary counts as expired
    assert table.global_strategy is None  # pruned by the read


def test_primary_and_forced_expire_at_the_boundary(table):
    table.set_primary("cto_agent", "llama-3-70b", "cost", T0, duration_s=60)
    table.force_model("task-1", "gpt-4-turbo", 30, "repro", T0)
    assert table.primary_for("cto_agent", T0 + 59.999) == PrimaryOverride("llama-3-70b", "cost", T0 + 60)
    assert table.forced_for("task-1", T0 + 29.999) == ForcedModel("gpt-4-turbo", "repro", T0 + 30)
    assert table.forced_for("task-1", T0 + 30) is None
    assert table.primary_for("cto_agent", T0 + 60) is None
    assert table.primary == {} and table.forced == {}


def test_without_a_duration_an_override_lasts_until_cleared(table):
    table.set_primary("cto_agent", "llama-3-70b", "cost", T0)
    table.set_strategy("qa_agent", "cost_optimized", None, "budget", T0)
    table.force_model("task-1", "gpt-4-turbo", None, "repro", T0)
    far = T0 + 10 * 365 * 86400
    assert table.primary_for("cto_agent", far).model == "llama-3-70b"
    assert table.strategy_for("qa_agent", far).strategy == "cost_optimized"
    assert table.forced_for("task-1", far).model == "gpt-4-turbo"
    assert table.clear("primary", "cto_agent") is True
    assert table.primary_for("cto_agent", far) is None


# --------------------------------------------------------------------------- agent over global


def test_an_agent_override_wins_over_the_global_one_and_the_global_shows_when_it_expires(table):
    glob = table.set_strategy(None, "privacy_first", 100, "audit", T0)
    own = table.set_strategy("qa_agent", "cost_optimized", 10, "budget", T0)
    assert table.strategy_for("qa_agent", T0) is own
    assert table.strategy_for("cto_agent", T0) is glob  # other agents get the global one
    assert table.strategy_for("qa_agent", T0 + 10) is glob  # own expired: the global shows again
    assert table.strategy_for("qa_agent", T0 + 100) is None  # both expired: config decides


def test_clearing_the_global_override_leaves_agent_overrides(table):
    table.set_strategy(None, "privacy_first", None, "audit", T0)
    own = table.set_strategy("qa_agent", "cost_optimized", None, "budget", T0)
    assert table.clear("strategy", None) is True
    assert table.strategy_for("cto_agent", T0) is None
    assert table.strategy_for("qa_agent", T0) is own
    assert table.clear("strategy", None) is False  # nothing left to clear


def test_setting_again_replaces_the_entry(table):
    table.set_primary("cto_agent", "llama-3-70b", "cost", T0, duration_s=10)
    table.set_primary("cto_agent", "gpt-4-turbo", "quality", T0 + 5)
    assert table.primary_for("cto_agent", T0 + 20) == PrimaryOverride("gpt-4-turbo", "quality", None)
    assert len(table) == 1


# --------------------------------------------------------------------------- clear


@pytest.mark.parametrize("kind", ["primary", "strategy", "forced"])
def test_clear_removes_one_entry_and_says_whether_there_was_one(table, kind):
    table.set_primary("a", "m", "r", T0)
    table.set_strategy("a", "s", None, "r", T0)
    table.force_model("a", "m", None, "r", T0)
    assert table.clear(kind, "a") is True
    assert table.clear(kind, "a") is False
    assert len(table) == 2


def test_clear_refuses_an_unknown_kind_and_a_missing_key(table):
    with pytest.raises(ValueError, match="kind"):
        table.clear("weights", "a")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="key"):
        table.clear("primary", None)


# --------------------------------------------------------------------------- pruning and the snapshot


def test_prune_removes_every_expired_entry_and_keeps_live_ones(table):
    table.set_primary("a", "m", "r", T0, duration_s=5)
    table.set_strategy("a", "s", 5, "r", T0)
    table.set_strategy(None, "s", 5, "r", T0)
    table.force_model("t1", "m", 5, "r", T0)
    table.force_model("t2", "m", 50, "r", T0)
    assert len(table) == 5
    assert table.prune(T0 + 5) == 4
    assert len(table) == 1 and list(table.forced) == ["t2"]


def test_table_lists_live_entries_with_the_time_left(table):
    table.set_primary("cto_agent", "llama-3-70b", "cost", T0, duration_s=60)
    table.set_strategy("qa_agent", "cost_optimized", None, "budget", T0)
    table.set_strategy(None, "privacy_first", 7200, "audit", T0)
    table.force_model("task-1", "gpt-4-turbo", 30, "repro", T0)
    table.force_model("task-0", "gpt-4-turbo", 1, "gone soon", T0)
    assert table.table(T0 + 10) == [
        OverrideEntry("primary", "cto_agent", "llama-3-70b", None, "cost", 50.0),
        OverrideEntry("strategy", None, None, "privacy_first", "audit", 7190.0),
        OverrideEntry("strategy", "qa_agent", None, "cost_optimized", "budget", None),
        OverrideEntry("forced", "task-1", "gpt-4-turbo", None, "repro", 20.0),
    ]
    assert "task-0" not in table.forced  # pruned


def test_get_reads_one_exact_entry_without_falling_back(table):
    table.set_strategy(None, "privacy_first", None, "audit", T0)
    assert table.get("strategy", "qa_agent", T0) is None
    assert table.get("strategy", None, T0).strategy == "privacy_first"
    table.force_model("t", "m", 1, "r", T0)
    assert table.get("forced", "t", T0 + 1) is None


# --------------------------------------------------------------------------- nonsense raises, changes nothing


@pytest.mark.parametrize("duration", [0, -1, math.inf, math.nan, True, "60"])
def test_a_duration_must_be_finite_and_positive(table, duration):
    with pytest.raises(ValueError, match="duration_s"):
        table.set_strategy(None, "privacy_first", duration, "r", T0)
    with pytest.raises(ValueError, match="duration_s"):
        table.force_model("t", "m", duration, "r", T0)
    with pytest.raises(ValueError, match="duration_s"):
        table.set_primary("a", "m", "r", T0, duration_s=duration)
    assert len(table) == 0


@pytest.mark.parametrize(
    "call",
    [
        lambda t: t.set_primary("", "m", "r", T0),
        lambda t: t.set_primary("a", "", "r", T0),
        lambda t: t.set_primary("a", None, "r", T0),
        lambda t: t.set_strategy("", "s", None, "r", T0),
        lambda t: t.set_strategy("a", "", None, "r", T0),
        lambda t: t.force_model("", "m", None, "r", T0),
        lambda t: t.force_model("t", "m", None, None, T0),
        lambda t: t.set_strategy(None, "s", 5, "r", math.nan),
        lambda t: t.prune(math.inf),
    ],
)
def test_empty_names_and_a_bad_clock_raise_and_change_nothing(table, call):
    with pytest.raises(ValueError):
        call(table)
    assert len(table) == 0


# --------------------------------------------------------------------------- in the agent's state


def test_the_table_survives_the_state_snapshot():
    state = RouterState()
    overrides = state.routing_overrides
    overrides.set_primary("cto_agent", "llama-3-70b", "cost", T0, duration_s=60)
    overrides.set_strategy(None, "privacy_first", None, "audit", T0)
    overrides.set_strategy("qa_agent", "cost_optimized", 10, "budget", T0)
    overrides.force_model("task-1", "gpt-4-turbo", None, "repro", T0)
    dumped = state.model_dump(mode="json")["routing_overrides"]
    assert dumped["global_strategy"]["strategy"] == "privacy_first"
    restored = RouterState.model_validate(state.model_dump()).routing_overrides
    assert restored == overrides
    assert restored.strategy_for("qa_agent", T0 + 10).strategy == "privacy_first"


# --------------------------------------------------------------------------- properties


@settings(max_examples=200, deadline=None)
@given(
    duration=st.one_of(st.none(), st.floats(min_value=1e-3, max_value=30 * 86400)),
    glob=st.one_of(st.none(), st.floats(min_value=1e-3, max_value=30 * 86400)),
    elapsed=st.floats(min_value=0, max_value=60 * 86400),
)
def test_strategy_for_is_the_live_agent_entry_else_the_live_global_one(duration, glob, elapsed):
    table = RoutingOverrides()
    table.set_strategy(None, "global", glob, "", T0)
    table.set_strategy("a", "own", duration, "", T0)
    now = T0 + elapsed
    own_live = duration is None or now < T0 + duration
    glob_live = glob is None or now < T0 + glob
    found = table.strategy_for("a", now)
    expected = "own" if own_live else "global" if glob_live else None
    assert (found.strategy if found else None) == expected
