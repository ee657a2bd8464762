"""JSON Schema export and the signal reference (``docs/signals.md``), generated from the types.

The wire contract lives in ``signals.types`` as msgspec Structs; everything here is derived
from them so that the docs and the schemas cannot drift from the code (a test compares the
committed files with what this module generates). Regenerate both with::

    python -m signals.schema --docs docs/signals.md --schemas docs/schemas

Rules of this file:
- Output is deterministic: no timestamps, JSON keys sorted, sections in ``SIGNAL_TYPES``
  order, shared types sorted by name.
- Nothing about a signal is written by hand here. Field descriptions come from the attribute
  docstrings in the source (Python discards them at run time, and msgspec's schema only
  carries the class docstring), the subject table from ``signals.subjects``' docstring.
- Patterns are written for ECMA-262, the regex dialect of JSON Schema: the types end theirs
  in ``\\Z`` (Python's ``$`` also matches before a final newline), which is written ``$``
  here (in ECMA-262 without the ``m`` flag it matches only at the very end).
"""

from __future__ import annotations

import argparse
import ast
import inspect
import itertools
import json
import sys
import textwrap
import typing
from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import msgspec
import msgspec.inspect as mi

from signals import envelope, subjects, types
from signals.envelope import SPECVERSION, CloudEvent, event_type
from signals.types import SIGNAL_TYPES, ErrorCode, Identifier

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
REGENERATE = "python -m signals.schema --docs docs/signals.md --schemas docs/schemas"

_IDENTIFIER_INFO = mi.type_info(Identifier)
_ERROR_CODES: tuple[str, ...] = typing.get_args(ErrorCode)


# --------------------------------------------------------------------------- JSON Schema


def _struct(name: str) -> type[msgspec.Struct]:
    try:
        return SIGNAL_TYPES[name]
    except KeyError:
        raise KeyError(f"unknown signal {name!r} (known: {sorted(SIGNAL_TYPES)})") from None


def signal_schema(name: str) -> dict[str, Any]:
    """The JSON Schema (2020-12) of the ``data`` of one signal, with field descriptions."""
    schema = msgspec.json.schema(_struct(name))
    _add_field_descriptions(schema)
    _ecma_patterns(schema)
    return {"$schema": JSON_SCHEMA_DIALECT, **schema}


def envelope_schema(name: str) -> dict[str, Any]:
    """The JSON Schema of the whole CloudEvent carrying one signal.

    ``specversion`` and ``type`` are pinned with ``const`` (and ``specversion`` made
    required) because the decoder rejects anything else with ``unsupported_version``;
    msgspec alone would only say "a string with a default".
    """
    cls = _struct(name)
    schema = msgspec.json.schema(CloudEvent[cls])  # type: ignore[valid-type]
    _add_field_descriptions(schema)
    _ecma_patterns(schema)
    event = schema["$defs"][schema["$ref"].rsplit("/", 1)[1]]
    event["properties"]["specversion"] = {"const": SPECVERSION}
    event["properties"]["type"] = {"const": event_type(name)}
    event["required"] = ["specversion", *[k for k in event["required"] if k != "specversion"]]
    return {"$schema": JSON_SCHEMA_DIALECT, **schema}


def all_schemas() -> dict[str, dict[str, Any]]:
    """Signal name -> the schema of its ``data``, in ``SIGNAL_TYPES`` order."""
    return {name: signal_schema(name) for name in SIGNAL_TYPES}


def _add_field_descriptions(schema: dict[str, Any]) -> None:
    """Copy attribute docstrings into ``$defs.<Struct>.properties.<field>.description``."""
    by_name = {cls.__name__: cls for cls in _all_struct_classes()}
    for def_name, definition in schema.get("$defs", {}).items():
        cls = by_name.get(def_name)
        if cls is None:
            continue
        docs = field_docs(cls)
        for field, prop in definition.get("properties", {}).items():
            if field in docs and "description" not in prop:
                prop["description"] = docs[field]


def ecma_pattern(pattern: str) -> str:
    """A Python pattern anchored with ``\\Z`` as the same ECMA-262 pattern (``$``)."""
    if pattern.endswith("\\Z"):
        pattern = pattern[:-2] + "$"
    if "\\Z" in pattern or "\\A" in pattern:
        raise ValueError(f"pattern {pattern!r} has an anchor ECMA-262 lacks: end it in \\Z only")
    return pattern


def _ecma_patterns(node: Any) -> None:
    """Rewrite every ``pattern`` keyword in a schema, in place."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "pattern" and isinstance(value, str):
                node[key] = ecma_pattern(value)
            else:
                _ecma_patterns(value)
    elif isinstance(node, list):
        for item in node:
            _ecma_patterns(item)


def _all_struct_classes() -> Iterator[type[msgspec.Struct]]:
    for module in (types, envelope):
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, msgspec.Struct):
                yield obj


# --------------------------------------------------------------------------- docstrings


@cache
def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a class: the string literal right after an annotated field."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    tree = ast.parse(source)
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef))
    return _attribute_docs(node.body)


@cache
def module_docs(module: ModuleType) -> dict[str, str]:
    """Attribute docstrings of module-level names (``Identifier = ...`` then a string)."""
    return _attribute_docs(ast.parse(inspect.getsource(module)).body)


def _attribute_docs(body: Sequence[ast.stmt]) -> dict[str, str]:
    docs: dict[str, str] = {}
    for stmt, following in itertools.pairwise(body):
        target: ast.expr | None = None
        if isinstance(stmt, ast.AnnAssign):
            target = stmt.target
        elif isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
            target = stmt.targets[0]
        if (
            isinstance(target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[target.id] = inspect.cleandoc(following.value.value)
    return docs


def _doc(cls: type) -> str:
    """The class's own docstring, or "" (``__doc__`` lookup would not inherit, but be explicit)."""
    doc = cls.__dict__.get("__doc__")
    return inspect.cleandoc(doc) if isinstance(doc, str) else ""


# --------------------------------------------------------------------------- type rendering


def _anchor(title: str) -> str:
    return "#" + "".join(c for c in title.lower().replace(" ", "-") if c.isalnum() or c in "-_")


def _bounds(info: mi.IntType | mi.FloatType) -> str:
    parts = []
    for attr, symbol in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        value = getattr(info, attr, None)
        if value is not None:
            parts.append(f"{symbol} {value}")
    return f" ({', '.join(parts)})" if parts else ""


def _length(info: Any, unit: str, units: str = "") -> list[str]:
    units = units or f"{unit}s"
    low, high = info.min_length, info.max_length
    if low is not None and high is not None:
        return [f"{low}..{high} {units}"]
    if low is not None:
        return [f"at least {low} {unit if low == 1 else units}"]
    if high is not None:
        return [f"at most {high} {unit if high == 1 else units}"]
    return []


def _string(info: mi.StrType) -> str:
    extra = _length(info, "char")
    if info.pattern is not None:
        extra.append(f"pattern `{ecma_pattern(info.pattern)}`")
    return "string" + (f" ({', '.join(extra)})" if extra else "")


def render_type(info: mi.Type, nested: bool = False) -> str:
    """A short, linked, human type for a field table (JSON vocabulary, not Python's).

    ``nested`` parenthesises anything with spaces so that "array of (string or null)" and
    "(array of string) or null" stay distinct.
    """
    if info == _IDENTIFIER_INFO:
        return "[Identifier](#identifier)"
    if isinstance(info, mi.StrType):
        return _string(info)
    if isinstance(info, mi.BoolType):
        return "boolean"
    if isinstance(info, mi.IntType):
        return "integer" + _bounds(info)
    if isinstance(info, mi.FloatType):
        return "number" + _bounds(info)
    if isinstance(info, mi.NoneType):
        return "null"
    if isinstance(info, mi.AnyType):
        return "any"
    if isinstance(info, mi.LiteralType):
        if set(info.values) == set(_ERROR_CODES):
            return "[ErrorCode](#error-codes)"
        values = ", ".join(f"`{json.dumps(v)}`" for v in info.values)
        if len(info.values) == 1:
            return values
        return f"(one of {values})" if nested else f"one of {values}"
    if isinstance(info, mi.StructType):
        return f"[{info.cls.__name__}]({_anchor(_section_title(info.cls))})"
    if isinstance(info, mi.ListType):
        extra = _length(info, "item")
        text = f"array of {render_type(info.item_type, nested=True)}" + (
            f" ({', '.join(extra)})" if extra else ""
        )
        return f"({text})" if nested else text
    if isinstance(info, mi.DictType):
        extra = _length(info, "entry", "entries")
        if info.key_type != mi.StrType():
            extra.append(f"keys {render_type(info.key_type, nested=True)}")
        text = f"object of {render_type(info.value_type, nested=True)}" + (
            f" ({', '.join(extra)})" if extra else ""
        )
        return f"({text})" if nested else text
    if isinstance(info, mi.UnionType):
        text = " or ".join(render_type(t, nested=True) for t in info.types)
        return f"({text})" if nested else text
    raise TypeError(f"no rendering for {info!r}: extend signals.schema.render_type")


def _section_title(cls: type) -> str:
    """Signals are documented under their signal name, shared types under the class name."""
    for name, signal_cls in SIGNAL_TYPES.items():
        if signal_cls is cls:
            return name
    return cls.__name__


def _default(field: mi.Field) -> str:
    if field.required:
        return "required"
    has_value = field.default is not msgspec.NODEFAULT
    value = field.default if has_value else field.default_factory()
    return f"default `{msgspec.json.encode(value).decode()}`"


def _cell(text: str) -> str:
    return text.replace("\n", " ").replace("|", "\\|")


def field_table(cls: type[msgspec.Struct]) -> list[str]:
    """The Markdown table of a Struct's fields, in declaration (= wire) order."""
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    docs = field_docs(cls)
    lines = ["| field | type | required / default | description |", "|---|---|---|---|"]
    for field in info.fields:
        cells = [
            f"`{field.encode_name}`",
            render_type(field.type),
            _default(field),
            docs.get(field.name, ""),
        ]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines


def _unknown_fields(cls: type[msgspec.Struct]) -> str:
    if cls.__struct_config__.forbid_unknown_fields:
        return "Unknown fields are rejected (`invalid_request`): a typo must not change behaviour."
    return "Unknown fields are ignored, so producers may add fields without breaking consumers."


def _nested_structs(cls: type[msgspec.Struct]) -> set[type[msgspec.Struct]]:
    """Every Struct reachable from a signal's fields (not the signal itself)."""
    found: set[type[msgspec.Struct]] = set()

    def walk(info: mi.Type) -> None:
        if isinstance(info, mi.StructType):
            if info.cls in found:
                return
            found.add(info.cls)
            for field in info.fields:
                walk(field.type)
        elif isinstance(info, mi.ListType):
            walk(info.item_type)
        elif isinstance(info, mi.DictType):
            walk(info.key_type)
            walk(info.value_type)
        elif isinstance(info, mi.UnionType):
            for member in info.types:
                walk(member)

    for field in typing.cast(mi.StructType, mi.type_info(cls)).fields:
        walk(field.type)
    found.discard(cls)
    return found


# --------------------------------------------------------------------------- examples

EXAMPLE_TIME = "2025-01-01T12:00:00.000Z"


def examples() -> dict[str, bytes]:
    """Minimal, valid envelopes for the request/answer pair, as they appear in the docs."""
    request = types.LlmRequest(
        request_id="req-42",
        agent_id="backend_agent",
        messages=[types.ChatMessage(role="user", content="Write a haiku about queues.")],
    )
    response = types.LlmResponse(
        request_id="req-42",
        agent_id="backend_agent",
        status="ok",
        message=types.AssistantMessage(content="Messages wait in line..."),
        model="llama-3-70b",
        provider="local",
        finish_reason="stop",
        usage=types.Usage(input_tokens=14, output_tokens=17),
        latency_ms=412.0,
        attempts=[
            types.Attempt(provider="local", model="llama-3-70b", outcome="ok", latency_ms=410.5)
        ],
    )
    events = {
        "llm_request": CloudEvent(
            id="0f1e2d3c4b5a6978",
            source="backend_agent",
            type=event_type("llm_request"),
            time=EXAMPLE_TIME,
            data=request,
        ),
        "llm_response": CloudEvent(
            id="3a7-1",
            source="router/instance-1",
            type=event_type("llm_response"),
            time=EXAMPLE_TIME,
            data=response,
        ),
    }
    return {name: msgspec.json.encode(event) for name, event in events.items()}


# --------------------------------------------------------------------------- Markdown


def _subject_table() -> list[str]:
    """``signals.subjects``' docstring without its one-line summary."""
    doc = inspect.cleandoc(subjects.__doc__ or "")
    _summary, _, rest = doc.partition("\n\n")
    return rest.strip().splitlines()


def _json_block(text: str) -> list[str]:
    return ["```json", text, "```"]


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


def _signal_section(name: str) -> list[str]:
    cls = SIGNAL_TYPES[name]
    lines = [
        f"## {name}",
        "",
        f"CloudEvent `type`: `{event_type(name)}`. Struct: `signals.{cls.__name__}`.",
        "",
        _doc(cls),
        "",
        _unknown_fields(cls),
        "",
        *field_table(cls),
        "",
        "<details><summary>JSON Schema of <code>data</code></summary>",
        "",
        *_json_block(_pretty(signal_schema(name))),
        "",
        "</details>",
        "",
    ]
    return lines


def _shared_section() -> list[str]:
    shared: set[type[msgspec.Struct]] = set()
    for cls in SIGNAL_TYPES.values():
        shared |= _nested_structs(cls)
    shared -= set(SIGNAL_TYPES.values())
    identifier_doc = module_docs(types).get("Identifier", "")
    lines = [
        "## Shared types",
        "",
        "Values and Structs nested inside the signals, documented once and linked from the "
        "field tables above.",
        "",
        "### Identifier",
        "",
        f"{identifier_doc} Type: {_string(typing.cast(mi.StrType, _IDENTIFIER_INFO))}.",
        "",
    ]
    for cls in sorted(shared, key=lambda c: c.__name__):
        lines += [f"### {cls.__name__}", ""]
        if _doc(cls):
            lines += [_doc(cls), ""]
        lines += [_unknown_fields(cls), "", *field_table(cls), ""]
    return lines


def render_markdown() -> str:
    """The whole of ``docs/signals.md``."""
    prefix = envelope.TYPE_PREFIX
    lines = [
        "# Signal reference",
        "",
        f"<!-- Generated from signals/ by `{REGENERATE}`. Do not edit by hand. -->",
        "",
        "Every message on the bus is a [CloudEvents 1.0](https://cloudevents.io) event in "
        "structured JSON mode: the envelope below with the signal's payload in `data`. "
        f"The `type` is `{prefix}<signal>.v{envelope.VERSION}`; a different version is refused "
        "with `unsupported_version`. Trace context travels in the W3C `traceparent` NATS "
        "header, not in the body. Subjects are the signal names, optionally under a prefix "
        '(`Subjects("acme")` gives `acme.llm_request`; set `router.subject_prefix` in '
        "`config/router.yaml`). Import `signals` to get these types without the router.",
        "",
        "## Envelope",
        "",
        *field_table(CloudEvent),
        "",
        "## Subjects",
        "",
        *_subject_table(),
        "",
        "## Signals",
        "",
        "| signal | struct | summary |",
        "|---|---|---|",
    ]
    for name, cls in SIGNAL_TYPES.items():
        summary = _doc(cls).split("\n\n")[0]
        lines.append(f"| [`{name}`]({_anchor(name)}) | `{cls.__name__}` | {_cell(summary)} |")
    lines.append("")
    for name in SIGNAL_TYPES:
        lines += _signal_section(name)
    lines += _shared_section()
    lines += [
        "## Error codes",
        "",
        "The `code` of an [ErrorInfo](#errorinfo) (in failed answers and `router_error`):",
        "",
        *[f"- `{code}`" for code in _ERROR_CODES],
        "",
        "## Examples",
        "",
    ]
    for name, payload in examples().items():
        # Wire order, not sorted keys: the envelope reads best as it is sent.
        pretty = msgspec.json.format(payload, indent=2).decode()
        lines += [f"A minimal `{name}`:", "", *_json_block(pretty), ""]
    text = "\n".join(lines)
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text.rstrip("\n") + "\n"


# --------------------------------------------------------------------------- command line


def schema_json(name: str) -> str:
    """The text of ``<signal>.schema.json``: pretty, sorted keys, final newline."""
    return _pretty(signal_schema(name)) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m signals.schema",
        description="Generate the signal reference and JSON Schemas from signals.types.",
    )
    parser.add_argument("--docs", type=Path, metavar="FILE", help="write the Markdown reference")
    parser.add_argument(
        "--schemas", type=Path, metavar="DIR", help="write <signal>.schema.json files"
    )
    parser.add_argument("--check", type=Path, metavar="FILE", help="exit 1 if FILE is stale")
    args = parser.parse_args(argv)
    if not (args.docs or args.schemas or args.check):
        parser.error("give at least one of --docs, --schemas, --check")

    if args.docs:
        args.docs.parent.mkdir(parents=True, exist_ok=True)
        args.docs.write_text(render_markdown(), encoding="utf-8", newline="\n")
    if args.schemas:
        args.schemas.mkdir(parents=True, exist_ok=True)
        for name in SIGNAL_TYPES:
            target = args.schemas / f"{name}.schema.json"
            target.write_text(schema_json(name), encoding="utf-8", newline="\n")
    if args.check:
        try:
            current = args.check.read_text(encoding="utf-8")
        except FileNotFoundError:
            current = None
        if current != render_markdown():
            state = "is missing" if current is None else "is out of date with signals/"
            print(f"{args.check} {state}; regenerate it with: {REGENERATE}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
