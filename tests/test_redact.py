"""redact(): secrets out of upstream text before it is republished on the bus."""

from __future__ import annotations

import string
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router_agent.core.redact import MARK, MIN_KNOWN_LENGTH, redact

KEY = "sk-live-4f9Qx2LmZ7pR1vT8kW3nB6yH0cJ5dS"

# ------------------------------------------------------------------ known keys


@settings(max_examples=400)
@given(
    before=st.text(max_size=120),
    # A "key" that is part of the marker itself cannot be written out by the marker.
    key=st.text(min_size=MIN_KNOWN_LENGTH, max_size=80).filter(lambda k: k not in MARK),
    after=st.text(max_size=120),
    times=st.integers(min_value=1, max_value=3),
)
def test_a_known_key_never_survives(before: str, key: str, after: str, times: int) -> None:
    text = before + (key + after) * times
    assert key not in redact(text, known=[key])


@settings(max_examples=200)
@given(
    keys=st.lists(st.text(alphabet=string.ascii_letters + string.digits + "-_.", min_size=8, max_size=40),
                  min_size=1, max_size=4),
    words=st.lists(st.text(min_size=0, max_size=12), max_size=8),
)
def test_several_known_keys_never_survive(keys: list[str], words: list[str]) -> None:
    text = " ".join(w + k for w, k in zip(words + [""] * len(keys), keys))
    out = redact(text, known=keys)
    for key in keys:
        assert key not in out


def test_short_or_missing_known_keys_are_ignored() -> None:
    assert redact("the cat sat on the mat", known=["cat", "", None]) == "the cat sat on the mat"


def test_a_key_that_is_a_part_of_another_is_removed_with_it() -> None:
    long, short = "abcdefgh-12345678-zzzz", "abcdefgh-12345678"
    out = redact(f"got {long} and {short}", known=[short, long])
    assert out == f"got {MARK} and {MARK}"


# ------------------------------------------------------------------ shaped like a key

_TAIL = string.ascii_letters + string.digits


def _tail(alphabet: str, low: int, high: int) -> st.SearchStrategy[str]:
    return st.text(alphabet=alphabet, min_size=low, max_size=high)


SHAPED = st.one_of(
    st.builds(lambda t: "sk-" + t, _tail(_TAIL + "-_", 16, 80)),
    st.builds(lambda t: "sk-ant-api03-" + t, _tail(_TAIL + "-_", 16, 95)),
    st.builds(lambda t: "sk-proj-" + t, _tail(_TAIL + "-_", 16, 120)),
    st.builds(lambda t: "AIza" + t, _tail(_TAIL + "-_", 35, 35)),
    st.builds(lambda t: "xai-" + t, _tail(_TAIL, 20, 80)),
    st.builds(lambda t: "gsk_" + t, _tail(_TAIL, 20, 52)),
    st.builds(lambda t: "hf_" + t, _tail(_TAIL, 20, 34)),
    st.builds(lambda p, t: p + t, st.sampled_from(["ghp_", "gho_", "ghu_", "ghs_", "ghr_"]), _tail(_TAIL, 36, 36)),
    st.builds(lambda t: "github_pat_" + t, _tail(_TAIL + "_", 22, 82)),
    st.builds(lambda p, t: p + t, st.sampled_from(["AKIA", "ASIA"]),
              _tail(string.ascii_uppercase + string.digits, 16, 16)),
)

PROSE_WORDS = st.text(alphabet=string.ascii_letters, min_size=1, max_size=12)
NUMBERS = st.integers(min_value=0, max_value=999_999).map(str)
PUNCT = st.sampled_from([" ", ", ", ". ", ": ", " (", ") ", "; ", " - ", "! ", "? ", "\n", " `", "` ", ' "', '" '])


@st.composite
def prose(draw: st.DrawFn, max_words: int = 30) -> str:
    parts = draw(st.lists(st.tuples(st.one_of(PROSE_WORDS, NUMBERS), PUNCT), max_size=max_words))
    return "".join(word + sep for word, sep in parts)


@settings(max_examples=400)
@given(before=prose(), key=SHAPED, after=prose(), sep=st.sampled_from([" ", "\n", ": ", " '", '"', "=", "(", "`"]))
def test_a_key_shaped_token_never_survives_without_being_known(before: str, key: str, after: str, sep: str) -> None:
    out = redact(before + sep + key + sep + after)
    assert key not in out
    assert MARK in out


@settings(max_examples=300)
@given(
    before=prose(),
    token=st.text(alphabet=_TAIL + "-_", min_size=32, max_size=80).filter(
        lambda t: any(c.isdigit() for c in t) and any(c.isalpha() for c in t)
    ),
    after=prose(),
)
def test_a_long_mixed_token_never_survives(before: str, token: str, after: str) -> None:
    assert token not in redact(f"{before} {token} {after}")


@settings(max_examples=300)
@given(
    name=st.sampled_from(["Authorization", "authorization", "AUTHORIZATION", "Proxy-Authorization",
                          "x-api-key", "X-Api-Key", "api-key", "api_key", "apikey", "x-goog-api-key"]),
    sep=st.sampled_from([": ", ":", "=", '": "', "': '", " = "]),
    scheme=st.sampled_from(["", "Bearer ", "bearer ", "Basic ", "Token "]),
    secret=st.text(alphabet=_TAIL + "._~+/=-", min_size=1, max_size=60),
    before=prose(10),
    after=prose(10),
)
def test_a_header_echo_loses_its_value(name: str, sep: str, scheme: str, secret: str, before: str, after: str) -> None:
    text = f"{before}{name}{sep}{scheme}{secret}\n{after}"
    out = redact(text)
    assert f"{name}{sep}{scheme}{MARK}" in out


@settings(max_examples=300)
@given(text=prose(60))
def test_ordinary_text_is_unchanged(text: str) -> None:
    assert redact(text, known=["not-in-the-text-#1"]) == text


@pytest.mark.parametrize(
    "text",
    [
        "The model `gpt-4o-mini` does not exist or you do not have access to it.",
        ("Rate limit reached for gpt-4 in organization org-abc on tokens per min (TPM): Limit 30000, "
         "Used 29000, Requested 2000. Please try again in 2.5s. Visit https://platform.openai.com/account/rate-limits"),
        "This model's maximum context length is 8192 tokens. However, your messages resulted in 9001 tokens.",
        ("Incorrect API key provided: sk-proj-********abcd. You can find your API key at "
         "https://platform.openai.com/account/api-keys."),
        "model xai-grok-2-vision-latest not found; try grok-beta or claude-3-5-sonnet-20241022",
        "missing authorization header; a bearer token is required",
        "invalid value for max_tokens: 0 (must be >= 1); temperature=0.7, top_p=1.0",
        "stream=true is not emulated yet",
        "ask-me-anything-later is not a model; task-scheduler-configuration-values too",
        "vllm: The decoder prompt (length 4096) is longer than the maximum model length of 2048.",
    ],
)
def test_real_error_messages_are_unchanged(text: str) -> None:
    assert redact(text) == text


# ------------------------------------------------------------------ examples


@pytest.mark.parametrize(
    "text, expected",
    [
        (f"invalid header Authorization: Bearer {KEY}", f"invalid header Authorization: Bearer {MARK}"),
        ('{"authorization": "Bearer abcdefgh12"}', '{"authorization": "Bearer ' + MARK + '"}'),
        ("x-api-key=abc123; next", f"x-api-key={MARK}; next"),
        ("token was Bearer abcdefghijk.", f"token was Bearer {MARK}"),
        ("key sk-ant-api03-AbCdEfGhIjKlMnOpQrStUv-wx_yz ok", f"key {MARK} ok"),
        ("AKIAIOSFODNN7EXAMPLE in the logs", f"{MARK} in the logs"),
        ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.abc-def_g", f"jwt {MARK}"),
        ("see http://bob:hunter2@db.internal/x", f"see http://{MARK}@db.internal/x"),
        ("id 0123456789abcdef0123456789abcdef.", f"id {MARK}."),
        ("Ünïcode AUTHORIZATION: bearer abcdefghijkl", f"Ünïcode AUTHORIZATION: bearer {MARK}"),
    ],
)
def test_examples(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_an_already_redacted_echo_is_left_as_it_is() -> None:
    assert redact(f"Authorization: Bearer {KEY}", known=[KEY]) == f"Authorization: Bearer {MARK}"


def test_a_key_reformed_around_the_marker_gives_nothing_away() -> None:
    key = "acted][r"  # "[red" + key + "edacted]" re-forms the key once the middle is replaced
    text = "[red" + key + "edacted]" + key
    out = redact(text, known=[key])
    assert key not in out


# ------------------------------------------------------------------ speed (printed, not asserted)


def test_speed_of_a_200_character_message(capsys: pytest.CaptureFixture[str]) -> None:
    texts = {
        "no secret": "The model `gpt-4o-mini` does not exist or you do not have access to it. Please check the "
                     "model name and try again later, or contact support if the problem persists for a while.",
        "echoed key": f"invalid header Authorization: Bearer {KEY} was rejected by the upstream gateway; "
                      "see request id 550e8400-e29b-41d4-a716-446655440000 for the details of it, thanks.",
    }
    for label, text in texts.items():
        assert 170 <= len(text) <= 230
        n = 2000
        started = time.perf_counter()
        for _ in range(n):
            redact(text, known=[KEY])
        per_call_us = (time.perf_counter() - started) / n * 1e6
        with capsys.disabled():
            print(f"\nredact, {len(text)} chars, {label}: {per_call_us:.1f} us")
