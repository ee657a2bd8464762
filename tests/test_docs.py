"""The committed signal reference and JSON Schemas are exactly what ``signals/`` generates.

Principle 4 of the design: the wire contract is code, and the docs are derived from it. A
change to ``signals/types.py`` without regenerating the docs fails here, with the command.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest

from signals import SIGNAL_TYPES, decode_event, subjects
from signals.schema import (
    REGENERATE,
    all_schemas,
    envelope_schema,
    examples,
    main,
    render_markdown,
    schema_json,
    signal_schema,
)

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "signals.md"
SCHEMAS = REPO / "docs" / "schemas"


def test_signal_reference_is_up_to_date() -> None:
    assert DOC.is_file(), f"{DOC} is missing; generate it with: {REGENERATE}"
    if DOC.read_text(encoding="utf-8") != render_markdown():
        pytest.fail(f"docs/signals.md is stale; regenerate it with: {REGENERATE}", pytrace=False)


def test_schema_files_match_the_types() -> None:
    files = {p.name for p in SCHEMAS.glob("*.json")}
    expected = {f"{name}.schema.json" for name in SIGNAL_TYPES}
    assert files == expected, f"docs/schemas is out of step; regenerate with: {REGENERATE}"
    for name in SIGNAL_TYPES:
        on_disk = json.loads((SCHEMAS / f"{name}.schema.json").read_text(encoding="utf-8"))
        assert on_disk == signal_schema(name), (
            f"docs/schemas/{name}.schema.json is stale; regenerate with: {REGENERATE}"
        )


def test_reference_covers_every_signal_field_and_error_code() -> None:
    """Guards the generator itself: a section or field silently dropped would still 'match'."""
    text = render_markdown()
    for name, cls in SIGNAL_TYPES.items():
        assert f"\n## {name}\n" in text
        assert f"`io.llmrouter.{name}.v1`" in text
        for field in cls.__struct_fields__:
            assert f"| `{field}` |" in text, f"{name}.{field} missing from the reference"
    for code in ("malformed_json", "unsupported_version", "no_candidates", "internal"):
        assert f"- `{code}`" in text
    table = [
        line
        for line in inspect.cleandoc(subjects.__doc__ or "").splitlines()
        if line.startswith("|")
    ]
    assert len(table) > 2 and all(f"\n{line}\n" in text for line in table)
    assert "traceparent" in text


def test_field_docstrings_reach_docs_and_schema() -> None:
    """Attribute docstrings are read from the source; msgspec alone would lose them."""
    doc = "A model name or alias the caller insists on; routing then only picks the provider."
    assert f"| {doc} |" in render_markdown()
    model = signal_schema("llm_request")["$defs"]["LlmRequest"]["properties"]["model"]
    assert model["description"] == doc


def test_shared_types_are_documented_once() -> None:
    text = render_markdown()
    for shared in ("ErrorInfo", "ChatMessage", "CostLine", "Identifier"):
        assert text.count(f"\n### {shared}\n") == 1
    assert "\n### LlmRequest\n" not in text  # signals have their own section


@pytest.mark.parametrize("name", list(examples()))
def test_examples_in_the_docs_are_valid_signals(name: str) -> None:
    _, data = decode_event(examples()[name], name)
    assert type(data) is SIGNAL_TYPES[name]


def test_envelope_schema_pins_version_and_type() -> None:
    schema = envelope_schema("llm_response")
    event = schema["$defs"][schema["$ref"].rsplit("/", 1)[1]]
    assert event["properties"]["specversion"] == {"const": "1.0"}
    assert event["properties"]["type"] == {"const": "io.llmrouter.llm_response.v1"}
    assert "specversion" in event["required"] and "data" in event["required"]
    assert event["properties"]["data"] == {"$ref": "#/$defs/LlmResponse"}


def test_all_schemas_is_every_signal_in_order() -> None:
    assert list(all_schemas()) == list(SIGNAL_TYPES)


def test_unknown_signal_is_a_clear_error() -> None:
    with pytest.raises(KeyError, match="unknown signal 'nope'"):
        signal_schema("nope")


def test_generation_is_deterministic() -> None:
    assert render_markdown() == render_markdown()
    assert schema_json("llm_request") == schema_json("llm_request")


def test_cli_writes_and_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc, schemas = tmp_path / "out" / "signals.md", tmp_path / "schemas"
    assert main(["--docs", str(doc), "--schemas", str(schemas)]) == 0
    assert doc.read_text(encoding="utf-8") == render_markdown()
    assert (schemas / "cost_report.schema.json").read_text(encoding="utf-8") == schema_json(
        "cost_report"
    )
    assert main(["--check", str(doc)]) == 0

    doc.write_text(render_markdown() + "edited by hand\n", encoding="utf-8")
    assert main(["--check", str(doc)]) == 1
    assert REGENERATE in capsys.readouterr().err

    assert main(["--check", str(tmp_path / "absent.md")]) == 1
    assert "is missing" in capsys.readouterr().err


def test_cli_needs_an_action() -> None:
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
