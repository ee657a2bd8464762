"""The request lifecycle: every legal path, every illegal (phase, event) pair, and the rule
that a request is answered exactly once."""

from __future__ import annotations

import itertools
from typing import get_args

import pytest

from router_agent.core import lifecycle as lifecycle_module
from router_agent.core.lifecycle import TRANSITIONS, LifecycleError, Phase, RequestLifecycle

PHASES: tuple[str, ...] = get_args(Phase)
EVENTS = sorted({event for _, event in TRANSITIONS})
ILLEGAL = sorted(set(itertools.product(PHASES, EVENTS)) - set(TRANSITIONS))


def fire(lc: RequestLifecycle, event: str) -> None:
    if event == "plan":
        lc.process_plan()
    elif event == "attempt":
        lc.process_attempt()
    elif event == "answer":
        lc.process_answer("timeout")
    else:  # pragma: no cover - a new event needs a branch here
        raise AssertionError(f"no way to fire {event!r}")


def in_phase(phase: str) -> RequestLifecycle:
    lc = RequestLifecycle()
    if phase in ("attempting", "answered"):
        lc.process_plan()
        lc.process_attempt()
    if phase == "answered":
        lc.process_answer("ok")
    assert lc.phase == phase
    return lc


def snapshot(lc: RequestLifecycle) -> tuple:
    return (lc.phase, lc.attempts, lc.outcome)


# --------------------------------------------------------------------------- the table


def test_docstring_table_is_exactly_the_transitions_table():
    rows = set()
    for line in (lifecycle_module.__doc__ or "").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.lstrip().startswith("|") and len(cells) == 4 and cells[0] in PHASES:
            rows.add((cells[0], cells[1], cells[2]))
    assert rows == {(phase, event, nxt) for (phase, event), nxt in TRANSITIONS.items()}


def test_table_uses_known_phases_and_answered_is_final():
    for (phase, _), nxt in TRANSITIONS.items():
        assert phase in PHASES and nxt in PHASES
    assert not [key for key in TRANSITIONS if key[0] == "answered"]
    assert ILLEGAL  # the derivation below is not vacuous


@pytest.mark.parametrize("row", list(TRANSITIONS), ids=[f"{p}-{e}" for p, e in TRANSITIONS])
def test_each_row_moves_to_its_next_phase(row):
    lc = in_phase(row[0])
    fire(lc, row[1])
    assert lc.phase == TRANSITIONS[row]


# --------------------------------------------------------------------------- legal paths


def test_fresh_lifecycle_is_routing_and_unanswered():
    lc = RequestLifecycle()
    assert snapshot(lc) == ("routing", 0, "")
    assert not lc.answered


@pytest.mark.parametrize("code", ["no_candidates", "invalid_request", "shutting_down"])
def test_refused_before_any_attempt(code):
    lc = RequestLifecycle()
    lc.process_answer(code)
    assert snapshot(lc) == ("answered", 0, code)
    assert lc.answered


def test_first_choice_succeeds():
    lc = RequestLifecycle()
    lc.process_plan()
    assert snapshot(lc) == ("attempting", 0, "")
    lc.process_attempt()
    lc.process_answer("ok")
    assert snapshot(lc) == ("answered", 1, "ok")
    assert lc.answered


def test_fallbacks_are_counted_then_the_error_is_the_answer():
    lc = RequestLifecycle()
    lc.process_plan()
    for _ in range(3):
        lc.process_attempt()
        assert not lc.answered
    lc.process_answer("all_providers_failed")
    assert snapshot(lc) == ("answered", 3, "all_providers_failed")


def test_deadline_before_the_first_attempt_is_answered_from_attempting():
    lc = RequestLifecycle()
    lc.process_plan()
    lc.process_answer("timeout")
    assert snapshot(lc) == ("answered", 0, "timeout")


# --------------------------------------------------------------------------- illegal events


@pytest.mark.parametrize("pair", ILLEGAL, ids=[f"{p}-{e}" for p, e in ILLEGAL])
def test_every_illegal_pair_raises_and_changes_nothing(pair):
    phase, event = pair
    lc = in_phase(phase)
    before = snapshot(lc)
    with pytest.raises(LifecycleError, match=repr(event)):
        fire(lc, event)
    assert snapshot(lc) == before


def test_illegal_set_is_what_the_rules_say():
    assert set(ILLEGAL) == {
        ("routing", "attempt"),
        ("attempting", "plan"),
        ("answered", "plan"),
        ("answered", "attempt"),
        ("answered", "answer"),
    }


@pytest.mark.parametrize("first", ["ok", "timeout", "no_candidates"])
@pytest.mark.parametrize("second", ["ok", "timeout"])
def test_second_answer_raises_naming_the_first_and_keeps_it(first, second):
    lc = RequestLifecycle()
    if first != "no_candidates":
        lc.process_plan()
        lc.process_attempt()
    lc.process_answer(first)
    before = snapshot(lc)

    with pytest.raises(LifecycleError, match=f"already answered '{first}'"):
        lc.process_answer(second)

    assert snapshot(lc) == before
    assert lc.outcome == first


def test_an_answer_needs_an_outcome():
    lc = in_phase("attempting")
    with pytest.raises(LifecycleError):
        lc.process_answer("")
    assert snapshot(lc) == ("attempting", 1, "")


def test_the_table_decides_the_next_phase(monkeypatch):
    monkeypatch.delitem(TRANSITIONS, ("routing", "answer"))
    with pytest.raises(LifecycleError):
        RequestLifecycle().process_answer("no_candidates")


def test_is_a_cheap_slots_object():
    lc = RequestLifecycle()
    assert not hasattr(lc, "__dict__")
    with pytest.raises(AttributeError):
        lc.extra = 1  # type: ignore[attr-defined]
