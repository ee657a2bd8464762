"""Token estimates before a call and the cost arithmetic (prices per 1k tokens)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router_agent.core.cost import (
    DEFAULT_OUTPUT_TOKENS,
    cost_usd,
    estimate_input_tokens,
    estimate_output_tokens,
)
from signals import ChatMessage, LlmRequest, Params


def make_request(*contents: str, max_tokens: int | None = None) -> LlmRequest:
    return LlmRequest(
        request_id="r-1",
        agent_id="tester",
        messages=[ChatMessage(role="user", content=c) for c in contents],
        params=Params(max_tokens=max_tokens),
    )


# --------------------------------------------------------------------------- input estimate


@pytest.mark.parametrize(
    "contents, expected",
    [
        ([""], 4),  # 0 chars // 4 + 3 framing + 1
        (["abc"], 4),  # 3 chars round down to 0 tokens
        (["abcd"], 5),
        (["x" * 400], 104),
        (["abcd", "abcd"], 9),  # 8 // 4 + 2 * 3 + 1
        (["ab", "ab"], 8),  # characters are pooled before dividing: 4 // 4 + 6 + 1
    ],
)
def test_input_estimate_is_chars_over_four_plus_framing(contents, expected):
    assert estimate_input_tokens(make_request(*contents)) == expected


def test_input_estimate_grows_with_content():
    short = estimate_input_tokens(make_request("hello"))
    longer = estimate_input_tokens(make_request("hello" * 100))
    assert longer > short
    assert longer - short == (500 // 4) - (5 // 4)


def test_input_estimate_grows_with_message_count():
    one = estimate_input_tokens(make_request("same"))
    three = estimate_input_tokens(make_request("same", "", ""))
    assert three - one == 2 * 3  # empty messages still cost their framing


def test_input_estimate_ignores_the_output_budget():
    with_budget = estimate_input_tokens(make_request("hi", max_tokens=5000))
    assert with_budget == estimate_input_tokens(make_request("hi"))


@settings(max_examples=60, deadline=None)
@given(
    contents=st.lists(st.text(max_size=200), min_size=1, max_size=6),
    extra=st.text(min_size=1, max_size=50),
)
def test_input_estimate_never_shrinks_when_content_or_messages_are_added(contents, extra):
    base = estimate_input_tokens(make_request(*contents))
    assert estimate_input_tokens(make_request(*contents[:-1], contents[-1] + extra)) >= base
    assert estimate_input_tokens(make_request(*contents, extra)) >= base + 3
    assert estimate_input_tokens(make_request(*contents, extra * 4)) > base + 3


# --------------------------------------------------------------------------- output estimate


def test_output_estimate_uses_max_tokens_when_given():
    assert estimate_output_tokens(make_request("hi", max_tokens=1)) == 1
    assert estimate_output_tokens(make_request("hi", max_tokens=1234)) == 1234


def test_output_estimate_defaults_without_max_tokens():
    assert DEFAULT_OUTPUT_TOKENS == 256
    assert estimate_output_tokens(make_request("hi")) == DEFAULT_OUTPUT_TOKENS


# --------------------------------------------------------------------------- cost arithmetic


@pytest.mark.parametrize(
    "tokens_in, tokens_out, price_in, price_out, expected",
    [
        (0, 0, 3.0, 15.0, 0.0),
        (1000, 0, 2.0, 99.0, 2.0),  # a full 1k of input at 2.0 / 1k
        (0, 1000, 99.0, 8.0, 8.0),
        (500, 250, 1.0, 4.0, 1.5),  # 0.5 + 1.0
        (2000, 4000, 0.25, 0.5, 2.5),  # 0.5 + 2.0
        (1, 1, 0.0, 0.0, 0.0),  # a free local model
        (125, 0, 8.0, 0.0, 1.0),
    ],
)
def test_cost_is_tokens_times_price_per_thousand(
    tokens_in, tokens_out, price_in, price_out, expected
):
    assert cost_usd(tokens_in, tokens_out, price_in, price_out) == expected


def test_cost_with_decimal_prices():
    # 1k input at $0.01 + 500 output at $0.03 per 1k = 0.01 + 0.015
    assert cost_usd(1000, 500, 0.01, 0.03) == pytest.approx(0.025, rel=1e-12)
    assert cost_usd(1_000_000, 0, 0.0025, 0.0) == pytest.approx(2.5, rel=1e-12)


def test_input_and_output_are_priced_separately():
    assert cost_usd(1000, 0, 1.0, 100.0) == 1.0
    assert cost_usd(0, 1000, 1.0, 100.0) == 100.0
