"""The contract's bounds: numbers a caller sends are finite and in a range the router can
compute with, caller strings copied into signals are bounded, identifiers are what they look
like, and no input makes decoding raise anything but a typed ``SignalError``.

Every refused case below was accepted once (issue "Harden the control plane and the input
path"): a price of 1.7e308 per 1k tokens made costs infinite, which the encoder writes as
``null`` and the project's own ``decode_data`` then refused; a 2**70 seed went upstream;
``"rid\\n"`` passed as an Identifier; 5,000 nested brackets raised ``RecursionError``.

Like ``test_signals.py``, this file imports only ``signals``.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Iterator
from typing import Any

import msgspec.inspect as mi
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from signals import SignalError, decode_data, decode_event, encode_event
from signals.schema import all_schemas
from signals.types import (
    INT64_MAX,
    INT64_MIN,
    MAX_CONTEXT_WINDOW,
    MAX_COST_USD,
    MAX_LATENCY_MS,
    MAX_PRICE_PER_1K_TOKENS_USD,
    MAX_RATE_PER_MINUTE,
    MAX_WEIGHT,
    SIGNAL_TYPES,
    CostLine,
    CostReport,
    LlmResponse,
)

INBOUND = ("llm_request", "provider_register", "provider_update", "provider_health")
"""The signals the router decodes from callers and operators."""

BASE: dict[str, dict[str, Any]] = {
    "llm_request": {"request_id": "r-1", "agent_id": "a", "messages": [{"role": "user", "content": "hi"}]},
    "provider_register": {"provider": "p", "base_url": "http://127.0.0.1:1/v1", "models": [{"name": "m"}]},
    "provider_update": {"provider": "p", "models": [{"name": "m"}]},
    "provider_health": {"provider": "p", "status": "healthy"},
}


def _event(signal: str, data: Any) -> bytes:
    body = {"specversion": "1.0", "id": "e-1", "source": "tests", "type": f"io.llmrouter.{signal}.v1",
            "time": "2026-01-01T00:00:00Z", "data": data}
    return json.dumps(body).encode()


def _set(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``data`` with ``path`` (``a.b[0].c``, creating objects) set to ``value``."""
    data = json.loads(json.dumps(data))
    keys: list[str | int] = [int(k) if k.isdigit() else k for k in re.findall(r"[^.\[\]]+", path)]
    node: Any = data
    for key, following in itertools.pairwise(keys):
        if isinstance(key, str) and key not in node:
            node[key] = [] if isinstance(following, int) else {}
        if isinstance(key, int) and len(node) <= key:
            node.append({"name": "m"})
        node = node[key]
    node[keys[-1]] = value
    return data


def _raw(signal: str, path: str, json_text: str) -> bytes:
    """An event whose field at ``path`` is the JSON text given verbatim (``1e999``, ``NaN``)."""
    marker = "@@value@@"
    payload = _event(signal, _set(BASE[signal], path, marker))
    return payload.replace(json.dumps(marker).encode(), json_text.encode())


def _refused(payload: bytes, signal: str) -> SignalError:
    with pytest.raises(SignalError) as info:
        decode_event(payload, signal)
    return info.value


# --------------------------------------------------------------------------- poisoned numbers

TOO_BIG: list[tuple[str, str, Any]] = [
    ("provider_register", "models[0].cost_per_1k_tokens.input", 1.7e308),
    ("provider_register", "models[0].cost_per_1k_tokens.output", MAX_PRICE_PER_1K_TOKENS_USD + 0.01),
    ("provider_register", "models[0].context_window", 2**64),
    ("provider_register", "models[0].context_window", MAX_CONTEXT_WINDOW + 1),
    ("provider_register", "models[0].rate_limits.requests_per_minute", 2**64),
    ("provider_register", "models[0].rate_limits.tokens_per_minute", MAX_RATE_PER_MINUTE + 1),
    ("provider_register", "weight", 1e300),
    ("provider_register", "weight", MAX_WEIGHT + 1),
    ("provider_update", "weight", 1.7e308),
    ("provider_update", "models[0].cost_per_1k_tokens.input", 1.7e308),
    ("provider_update", "models[0].rate_limits.tokens_per_minute", 2**70),
    ("provider_health", "latency_ms", 1e300),
    ("provider_health", "latency_ms", MAX_LATENCY_MS + 1),
    ("llm_request", "params.seed", 2**70),
    ("llm_request", "params.seed", INT64_MAX + 1),
    ("llm_request", "params.seed", INT64_MIN - 1),
    ("llm_request", "requirements.max_cost_usd", 1e300),
    ("llm_request", "requirements.max_cost_usd", MAX_COST_USD * 2),
    ("llm_request", "requirements.max_latency_ms", 2**64),
    ("llm_request", "requirements.max_latency_ms", MAX_LATENCY_MS + 1),
]


@pytest.mark.parametrize(("signal", "path", "value"), TOO_BIG, ids=[f"{s}.{p}={v!r}" for s, p, v in TOO_BIG])
def test_numbers_beyond_the_contract_are_refused_naming_the_field(signal: str, path: str, value: Any) -> None:
    error = _refused(_event(signal, _set(BASE[signal], path, value)), signal)
    assert error.code == "invalid_request", error.message
    assert error.field == "$.data." + path


@pytest.mark.parametrize("value", [2**70, INT64_MIN - 1, 1.7e308, -1e19])
def test_a_tag_number_beyond_int64_is_refused(value: float) -> None:
    error = _refused(_event("llm_request", _set(BASE["llm_request"], "task.tags", {"n": value})), "llm_request")
    assert (error.code, error.field) == ("invalid_request", "$.data.task.tags[...]")


AT_THE_LIMIT: list[tuple[str, str, Any]] = [
    ("provider_register", "models[0].cost_per_1k_tokens.input", MAX_PRICE_PER_1K_TOKENS_USD),
    ("provider_register", "models[0].context_window", MAX_CONTEXT_WINDOW),
    ("provider_register", "models[0].rate_limits.tokens_per_minute", MAX_RATE_PER_MINUTE),
    ("provider_register", "weight", MAX_WEIGHT),
    ("provider_update", "weight", 0),
    ("provider_health", "latency_ms", MAX_LATENCY_MS),
    ("llm_request", "params.seed", INT64_MAX),
    ("llm_request", "params.seed", INT64_MIN),
    ("llm_request", "requirements.max_cost_usd", MAX_COST_USD),
    ("llm_request", "requirements.max_latency_ms", MAX_LATENCY_MS),
    ("llm_request", "task.tags", {"n": INT64_MIN, "m": INT64_MAX, "f": -9.2e18, "g": 0.5}),
]


@pytest.mark.parametrize(("signal", "path", "value"), AT_THE_LIMIT, ids=[f"{s}.{p}" for s, p, _ in AT_THE_LIMIT])
def test_numbers_at_the_limit_are_accepted(signal: str, path: str, value: Any) -> None:
    decode_data(_event(signal, _set(BASE[signal], path, value)), signal)


FLOAT_FIELDS: list[tuple[str, str]] = [
    ("llm_request", "params.temperature"),
    ("llm_request", "params.top_p"),
    ("llm_request", "params.presence_penalty"),
    ("llm_request", "requirements.max_cost_usd"),
    ("llm_request", "task.tags.x"),
    ("provider_register", "models[0].cost_per_1k_tokens.input"),
    ("provider_register", "weight"),
    ("provider_update", "models[0].cost_per_1k_tokens.output"),
    ("provider_update", "weight"),
    ("provider_health", "latency_ms"),
]


@pytest.mark.parametrize(("signal", "path"), FLOAT_FIELDS)
@pytest.mark.parametrize("text", ["1e999", "-1e999", "1E400"])
def test_a_number_that_overflows_to_infinity_is_refused(signal: str, path: str, text: str) -> None:
    """JSON has no infinity, but some decoders read ``1e999`` as one: msgspec refuses it."""
    error = _refused(_raw(signal, path, text), signal)
    assert error.code == "invalid_request"
    assert error.field is not None and error.field.startswith("$.data.")


@pytest.mark.parametrize(("signal", "path"), FLOAT_FIELDS)
@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity", "nan", "inf"])
def test_nan_and_infinity_literals_are_not_json(signal: str, path: str, text: str) -> None:
    assert _refused(_raw(signal, path, text), signal).code == "malformed_json"


def test_the_worst_cost_the_contract_allows_is_finite_and_survives_the_wire() -> None:
    """Cost = tokens / 1000 * price. With the dearest price and the most tokens the contract
    admits, the cost, and a year of such requests summed in a cost report, still encode as
    numbers (not ``null``) and decode again."""
    tokens = MAX_CONTEXT_WINDOW + 1_000_000
    cost = tokens / 1000 * MAX_PRICE_PER_1K_TOKENS_USD * 2
    assert math.isfinite(cost)
    response = LlmResponse(request_id="r", status="ok", cost_usd=cost)
    assert decode_data(encode_event("llm_response", response), "llm_response").cost_usd == cost
    year = cost * 60 * 24 * 365 * MAX_RATE_PER_MINUTE
    report = CostReport(instance_id="i", since="s", total=CostLine(cost_usd=year))
    assert decode_data(encode_event("cost_report", report), "cost_report").total.cost_usd == year


# --------------------------------------------------------------------------- structural guard


def _walk(info: mi.Type, path: str, seen: set[type]) -> Iterator[tuple[str, mi.Type]]:
    yield path, info
    if isinstance(info, mi.StructType):
        if info.cls in seen:
            return
        seen = seen | {info.cls}
        for field in info.fields:
            yield from _walk(field.type, f"{path}.{field.encode_name}", seen)
    elif isinstance(info, mi.ListType):
        yield from _walk(info.item_type, f"{path}[]", seen)
    elif isinstance(info, mi.DictType):
        yield from _walk(info.key_type, f"{path}{{key}}", seen)
        yield from _walk(info.value_type, f"{path}{{value}}", seen)
    elif isinstance(info, mi.UnionType):
        for member in info.types:
            yield from _walk(member, path, seen)


UNBOUNDED_ON_PURPOSE = {
    "llm_request.messages": "the conversation: bounded by the router's max_payload_bytes",
    "llm_request.messages[].content": "the prompt: bounded by the router's max_payload_bytes",
}


def test_every_number_string_and_collection_in_inbound_signals_is_bounded() -> None:
    """A new field must come with a bound (or a reason here): this is how 2**64 got in."""
    unbounded = []
    for signal in INBOUND:
        for path, info in _walk(mi.type_info(SIGNAL_TYPES[signal]), signal, set()):
            if path in UNBOUNDED_ON_PURPOSE:
                continue
            if isinstance(info, (mi.IntType, mi.FloatType)):
                if (info.ge is None and info.gt is None) or (info.le is None and info.lt is None):
                    unbounded.append(path)
            elif isinstance(info, (mi.StrType, mi.ListType, mi.DictType)) and info.max_length is None:
                unbounded.append(path)
    assert unbounded == []


# --------------------------------------------------------------------------- work amplification

LONG = "x" * 5000

TOO_LONG: list[tuple[str, str, Any, str]] = [
    # (signal, path set, value, field the error names)
    ("llm_request", "requirements.capabilities", ["c" * 65], "requirements.capabilities[0]"),
    ("llm_request", "requirements.capabilities", ["has space"], "requirements.capabilities[0]"),
    ("llm_request", "requirements.capabilities", ["vision\n"], "requirements.capabilities[0]"),
    ("llm_request", "requirements.capabilities", [f"c{i}" for i in range(65)], "requirements.capabilities"),
    ("llm_request", "task.type", "t" * 129, "task.type"),
    ("llm_request", "task.tags", {"k" * 65: "v"}, "task.tags"),
    ("llm_request", "task.tags", {"k": "v" * 257}, "task.tags[...]"),
    ("llm_request", "task.tags", {f"k{i}": i for i in range(33)}, "task.tags"),
    ("llm_request", "metadata", {"k" * 129: "v"}, "metadata"),
    ("llm_request", "metadata", {"k": LONG}, "metadata[...]"),
    ("llm_request", "metadata", {f"k{i}": "v" for i in range(65)}, "metadata"),
    ("llm_request", "params.stop", ["s"] * 17, "params.stop"),
    ("llm_request", "params.stop", ["s" * 257], "params.stop[0]"),
    ("llm_request", "messages[0].name", "n" * 129, "messages[0].name"),
    ("provider_health", "detail", "d" * 501, "detail"),
    ("provider_register", "models[0].model_id", "m" * 257, "models[0].model_id"),
    ("provider_register", "models[0].model_id", "my model", "models[0].model_id"),
    ("provider_register", "models[0].model_id", "gpt-4\r\nX-Injected: 1", "models[0].model_id"),
    ("provider_register", "models[0].capabilities", ["c" * 65], "models[0].capabilities[0]"),
    ("provider_register", "models[0].capabilities", [f"c{i}" for i in range(65)], "models[0].capabilities"),
    ("provider_register", "models", [{"name": f"m{i}"} for i in range(257)], "models"),
    ("provider_register", "api_key_env", LONG, "api_key_env"),
    ("provider_register", "api_key_file", LONG, "api_key_file"),
    ("provider_register", "api_key", LONG, "api_key"),
    ("provider_update", "models", [{"name": f"m{i}"} for i in range(257)], "models"),
]


@pytest.mark.parametrize(("signal", "path", "value", "field"), TOO_LONG,
                         ids=[f"{s}.{p}#{i}" for i, (s, p, _, _) in enumerate(TOO_LONG)])
def test_caller_strings_and_lists_are_bounded(signal: str, path: str, value: Any, field: str) -> None:
    error = _refused(_event(signal, _set(BASE[signal], path, value)), signal)
    assert error.code == "invalid_request", error.message
    assert error.field == "$.data." + field
    assert f"`$.data.{field}`" in error.message


def test_the_largest_values_a_user_would_send_are_accepted() -> None:
    request = _set(BASE["llm_request"], "requirements.capabilities", [f"c{i:02}" + "x" * 61 for i in range(64)])
    request = _set(request, "task.tags", {f"{i:02}" + "k" * 62: "v" * 256 for i in range(32)})
    request = _set(request, "metadata", {f"{i:02}" + "k" * 126: "v" * 2048 for i in range(64)})
    request = _set(request, "params.stop", ["s" * 256] * 16)
    request = _set(request, "task.type", "t" * 128)
    decode_data(_event("llm_request", request), "llm_request")
    models = [{"name": f"m{i}", "model_id": "org/" + "m" * 252, "capabilities": ["c" * 64] * 64} for i in range(256)]
    register = _set(BASE["provider_register"], "models", models)
    decode_data(_event("provider_register", register), "provider_register")
    decode_data(_event("provider_health", _set(BASE["provider_health"], "detail", "d" * 500)), "provider_health")


@pytest.mark.parametrize("model_id", ["mistralai/Mistral-7B-Instruct-v0.2", "llama3:8b", "ft:gpt-4o:org:x:id",
                                      "/models/llama-3-8b.Q4_K_M.gguf", "arn:aws:bedrock:us-east-1:1:model/x"])
def test_real_model_ids_are_accepted(model_id: str) -> None:
    data = _set(BASE["provider_register"], "models[0].model_id", model_id)
    assert decode_data(_event("provider_register", data), "provider_register").models[0].model_id == model_id


# --------------------------------------------------------------------------- identifiers


IDENTIFIER_FIELDS: list[tuple[str, str]] = [
    ("llm_request", "request_id"),
    ("llm_request", "agent_id"),
    ("llm_request", "model"),
    ("provider_register", "provider"),
    ("provider_register", "models[0].name"),
    ("provider_update", "provider"),
    ("provider_update", "models[0].name"),
    ("provider_health", "provider"),
]


@pytest.mark.parametrize(("signal", "path"), IDENTIFIER_FIELDS)
@pytest.mark.parametrize("value", ["rid\n", "rid\r\n", "\nrid", "r\nid", "openai\n2026-01-01 INFO forged line"])
def test_an_identifier_cannot_carry_a_newline(signal: str, path: str, value: str) -> None:
    """``$`` in a Python regex also matches before a final newline: ``"rid\\n"`` passed."""
    error = _refused(_event(signal, _set(BASE[signal], path, value)), signal)
    assert (error.code, error.field) == ("invalid_request", "$.data." + path)


def _patterns(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "pattern" and isinstance(value, str):
                yield value
            else:
                yield from _patterns(value)
    elif isinstance(node, list):
        for item in node:
            yield from _patterns(item)


def test_exported_patterns_are_ecma_regexes_that_mean_the_same() -> None:
    """JSON Schema patterns are ECMA-262: ``\\Z`` is not one; there ``$`` already means the end."""
    patterns = {p for schema in all_schemas().values() for p in _patterns(schema)}
    assert patterns, "no patterns exported"
    for pattern in patterns:
        assert "\\Z" not in pattern and "\\A" not in pattern, pattern
        assert pattern.startswith("^") and pattern.endswith("$"), pattern


# --------------------------------------------------------------------------- hostile bytes

DEPTH = 5_000


def _nested(kind: str, depth: int = DEPTH) -> str:
    return "[" * depth + "]" * depth if kind == "array" else '{"a":' * depth + "1" + "}" * depth


PLACEMENTS: list[tuple[str, str]] = [
    ("llm_request", "messages[0].content"),
    ("llm_request", "metadata.k"),
    ("llm_request", "request_id"),
    ("llm_request", "task.tags.k"),
    ("llm_request", "unknown_field"),
    ("provider_register", "models[0].capabilities"),
    ("provider_update", "models[0].cost_per_1k_tokens"),
    ("provider_health", "detail"),
]


@pytest.mark.parametrize("kind", ["array", "object"])
@pytest.mark.parametrize(("signal", "path"), PLACEMENTS)
def test_deep_nesting_anywhere_in_data_is_malformed_json(signal: str, path: str, kind: str) -> None:
    assert _refused(_raw(signal, path, _nested(kind)), signal).code == "malformed_json"


@pytest.mark.parametrize("kind", ["array", "object"])
def test_deep_nesting_as_data_in_an_extension_or_at_the_top(kind: str) -> None:
    event = json.loads(_event("llm_request", BASE["llm_request"]))
    for where in ("data", "extension"):
        payload = json.dumps({**event, where: "@@"}).encode().replace(b'"@@"', _nested(kind).encode())
        assert _refused(payload, "llm_request").code == "malformed_json", where
    top = _nested(kind).encode()
    assert _refused(top, "llm_request").code in {"malformed_json", "invalid_request"}


def test_moderate_nesting_in_an_ignored_extension_is_still_accepted() -> None:
    """The limit is about hostile input, not about extension attributes a sender may add."""
    event = json.loads(_event("llm_request", BASE["llm_request"]))
    payload = json.dumps({**event, "ext": "@@"}).encode().replace(b'"@@"', _nested("array", 100).encode())
    assert decode_data(payload, "llm_request").request_id == "r-1"


INVALID_UTF8: list[tuple[str, str]] = [
    ("llm_request", "messages[0].content"),
    ("llm_request", "request_id"),
    ("llm_request", "metadata.k"),
    ("provider_register", "base_url"),
    ("provider_health", "detail"),
]


@pytest.mark.parametrize(("signal", "path"), INVALID_UTF8)
@pytest.mark.parametrize("raw", [b"\xff\xfe", b"\xc3", b"ok\xed\xa0\x80", b"\xc0\xaf"])
def test_invalid_utf8_inside_a_string_is_malformed_json(signal: str, path: str, raw: bytes) -> None:
    payload = _raw(signal, path, '"@@bytes@@"').replace(b"@@bytes@@", raw)
    assert _refused(payload, signal).code == "malformed_json"


def test_invalid_utf8_in_an_envelope_field_is_malformed_json() -> None:
    payload = _event("llm_request", BASE["llm_request"]).replace(b'"e-1"', b'"e-\xff"')
    assert _refused(payload, "llm_request").code == "malformed_json"


_valid = _event("llm_request", {**BASE["llm_request"], "metadata": {"k": "v"}, "task": {"tags": {"n": 1}}})


@settings(max_examples=300, deadline=None)
@given(
    position=st.integers(0, len(_valid)),
    cut=st.integers(0, 8),
    insert=st.sampled_from([b"[" * DEPTH, b'{"a":' * DEPTH, b"\xff", b"\xc3", b"1e999", b"NaN", b'"\\ud800"',
                            b"\x00", b"\n", b'"', b"}", b"]", b",", b"-", b"9" * 400])
    | st.binary(max_size=16),
)
def test_any_mutation_of_a_valid_event_is_decoded_or_refused_with_a_signal_error(
    position: int, cut: int, insert: bytes
) -> None:
    payload = _valid[:position] + insert + _valid[position + cut:]
    try:
        decode_event(payload, "llm_request")
    except SignalError as error:
        assert error.code in {"malformed_json", "invalid_request", "unsupported_version"}
        assert error.message
