"""What the emulator answers: pure functions of the request, no I/O, no clock, no randomness.

Every vendor module decodes its wire format into one :class:`Prompt` and renders one
:class:`Answer` back, so the rules below hold for every format alike:

- Text: ``"[emulated MODEL] "`` + the first 12 words of the last user message, reversed
  (``"(empty prompt)"`` when it has none). The marker makes emulated output impossible to
  mistake for a real model's.
- JSON mode (OpenAI ``response_format``, Gemini ``responseMimeType: application/json``,
  Anthropic ``output_config.format``, Ollama ``format``): the content is valid JSON. With a
  schema it is :func:`example_from_schema`; without one, ``{"emulated": true, "model": M,
  "reply": <the text reply without the marker>}``.
- Tool calls: see :func:`pick_tool` (the trigger rule) and :func:`example_from_schema`
  (the arguments).
- Usage: tokens are ``ceil(chars / 4)``; the prompt adds 3 per message, 85 per image and the
  encoded tool definitions. ``max_tokens`` cuts the content to ``4 * max_tokens`` characters
  (finish ``length``); a stop sequence cuts it before the sequence (finish ``stop``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import msgspec

REPLY_WORDS = 12
CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 3
TOKENS_PER_IMAGE = 85
PIECE_CHARS = 12
"""Stream pieces longer than this (a JSON reply has no spaces) are split into this many characters."""
SCHEMA_DEPTH = 8
"""Nested schemas deeper than this (or recursive ``$ref`` chains) are answered with ``null``."""

_encode = msgspec.json.Encoder().encode


@dataclass(slots=True)
class Tool:
    """A function the caller offers: its name and the JSON schema of its arguments."""

    name: str
    schema: dict[str, Any] | None = None


@dataclass(slots=True)
class Prompt:
    """One request, whatever its wire format, as the answer rules read it."""

    model: str
    texts: list[str]
    """The text of every message, in order (a system prompt counts as one message)."""
    last_user: str
    """The text of the last user message (tool results are not user text)."""
    ends_with_tool_result: bool = False
    """The conversation's last turn hands back tool results: answer in text, unless forced."""
    images: int = 0
    tools: list[Tool] = field(default_factory=list)
    tool_chars: int = 0
    """Length of the encoded tool definitions, counted as prompt."""
    tool_choice: str = "auto"
    """``auto``, ``none``, ``required`` (call one), or ``force`` (call :attr:`forced_tool`)."""
    forced_tool: str | None = None
    json_mode: bool = False
    schema: dict[str, Any] | None = None
    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False
    """OpenAI ``stream_options.include_usage``: a last chunk carries usage."""


@dataclass(slots=True)
class ToolCall:
    name: str
    arguments: Any
    arguments_json: str


@dataclass(slots=True)
class Answer:
    text: str
    tool_calls: list[ToolCall]
    finish: str
    """``stop``, ``length`` or ``tool_calls``; vendors map it to their own names."""
    stop_sequence: str | None
    prompt_tokens: int
    completion_tokens: int


def estimate_tokens(chars: int) -> int:
    return math.ceil(chars / CHARS_PER_TOKEN)


def reply_words(last_user: str) -> str:
    words = last_user.split()[:REPLY_WORDS]
    return " ".join(reversed(words)) or "(empty prompt)"


@lru_cache(maxsize=1024)
def _mention(name: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])", re.IGNORECASE)


def pick_tool(prompt: Prompt) -> Tool | None:
    """The trigger rule: which offered tool, if any, the answer calls.

    - no tools offered, or ``tool_choice`` none: no call;
    - a forced function (OpenAI ``{"type":"function",...}``, Anthropic ``{"type":"tool"}``,
      Gemini ``ANY`` with one allowed name): that function, always;
    - ``required`` (OpenAI ``required``, Anthropic ``any``, Gemini ``ANY``): the first
      offered tool named in the last user message, else the first offered tool;
    - ``auto``: the first offered tool whose name appears as a word (case-insensitive) in the
      last user message, unless the conversation ends with tool results (then text).
    """
    if not prompt.tools or prompt.tool_choice == "none":
        return None
    if prompt.tool_choice == "force":
        name = prompt.forced_tool or prompt.tools[0].name
        return next((t for t in prompt.tools if t.name == name), Tool(name))
    mentioned = next((t for t in prompt.tools if _mention(t.name).search(prompt.last_user)), None)
    if prompt.tool_choice == "required":
        return mentioned or prompt.tools[0]
    return None if prompt.ends_with_tool_result else mentioned


def count_prompt_tokens(prompt: Prompt) -> int:
    prompt_chars = sum(map(len, prompt.texts)) + prompt.tool_chars
    return (
        estimate_tokens(prompt_chars)
        + TOKENS_PER_MESSAGE * len(prompt.texts)
        + TOKENS_PER_IMAGE * prompt.images
    )


def answer(prompt: Prompt) -> Answer:
    """The deterministic answer to a prompt."""
    prompt_tokens = count_prompt_tokens(prompt)
    tool = pick_tool(prompt)
    if tool is not None:
        arguments = example_from_schema(tool.schema or {"type": "object"})
        encoded = _encode(arguments).decode()
        call = ToolCall(tool.name, arguments, encoded)
        completion = estimate_tokens(len(tool.name) + len(encoded))
        return Answer("", [call], "tool_calls", None, prompt_tokens, completion)
    if prompt.json_mode:
        if prompt.schema is not None:
            text = _encode(example_from_schema(prompt.schema)).decode()
        else:
            reply = {"emulated": True, "model": prompt.model,
                     "reply": reply_words(prompt.last_user)}
            text = _encode(reply).decode()
    else:
        text = f"[emulated {prompt.model}] " + reply_words(prompt.last_user)
    finish, stop_sequence = "stop", None
    for seq in prompt.stop:
        at = text.find(seq) if seq else -1
        if at >= 0:
            text, stop_sequence = text[:at], seq
    completion_tokens = estimate_tokens(len(text))
    cap = prompt.max_tokens
    if cap is not None and completion_tokens > cap:
        text = text[: cap * CHARS_PER_TOKEN]
        completion_tokens, finish, stop_sequence = cap, "length", None
    return Answer(text, [], finish, stop_sequence, prompt_tokens, completion_tokens)


_PIECE = re.compile(r"\s*\S+|\s+")


def pieces(text: str) -> list[str]:
    """A reply cut the way a model streams it: word by word, long words in short runs."""
    out: list[str] = []
    for word in _PIECE.findall(text):
        if len(word) <= PIECE_CHARS:
            out.append(word)
        else:
            out.extend(word[i : i + PIECE_CHARS] for i in range(0, len(word), PIECE_CHARS))
    return out


def fragments(text: str) -> list[str]:
    """Tool-call arguments cut into short runs, as vendors stream them."""
    return [text[i : i + PIECE_CHARS] for i in range(0, len(text), PIECE_CHARS)] or [""]


# --- arguments and JSON replies from a schema --------------------------------------

_FORMATS = {
    "date": "2024-01-01",
    "date-time": "2024-01-01T00:00:00Z",
    "time": "00:00:00",
    "email": "user@example.com",
    "uri": "https://example.com/",
    "url": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
}


def example_from_schema(schema: Any, root: Any = None, depth: int = 0, key: str = "value") -> Any:
    """A deterministic value that satisfies the common parts of a JSON schema.

    Reads JSON Schema and Gemini's OpenAPI-style schema (``"type": "OBJECT"``): ``type`` (a
    list picks its first non-null entry), ``enum`` / ``const`` (first value), ``properties``
    with ``required`` (only the required ones are filled; all of them when ``required`` is
    absent), ``items`` with ``minItems`` (one item, or ``minItems`` of them), ``anyOf`` /
    ``oneOf`` / ``allOf`` (the first), local ``$ref`` into ``$defs`` / ``definitions``,
    ``minimum``, and a few string ``format`` values. Strings are ``"emulated <key>"``.
    """
    root = schema if root is None else root
    if depth > SCHEMA_DEPTH or not isinstance(schema, dict):
        return None
    ref = schema.get("$ref")
    if isinstance(ref, str) and (ref == "#" or ref.startswith("#/")):
        target: Any = root
        for part in ref[2:].split("/") if ref != "#" else ():
            target = target.get(part) if isinstance(target, dict) else None
        return example_from_schema(target, root, depth + 1, key)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for combinator in ("anyOf", "oneOf", "allOf"):
        options = schema.get(combinator)
        if isinstance(options, list) and options:
            usable = [o for o in options if not (isinstance(o, dict) and _type(o) == "null")]
            return example_from_schema((usable or options)[0], root, depth + 1, key)
    kind = _type(schema)
    if kind == "object" or (kind is None and "properties" in schema):
        props = schema.get("properties") or {}
        required = schema.get("required")
        names = [n for n in props if n in required] if isinstance(required, list) else list(props)
        return {n: example_from_schema(props[n], root, depth + 1, n) for n in names}
    if kind == "array":
        count = max(1, int(schema.get("minItems") or 1))
        item = example_from_schema(schema.get("items") or {"type": "string"}, root, depth + 1, key)
        return [item] * count
    if kind == "integer":
        return int(schema.get("minimum", 1))
    if kind == "number":
        return float(schema.get("minimum", 1.5))
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    fmt = schema.get("format")
    return _FORMATS.get(fmt, f"emulated {key}") if isinstance(fmt, str) else f"emulated {key}"


def _type(schema: dict[str, Any]) -> str | None:
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if isinstance(k, str) and k.lower() != "null"), None)
    return kind.lower() if isinstance(kind, str) else None
