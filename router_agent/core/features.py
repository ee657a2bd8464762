"""What a request needs of a model, and all the text it carries. Pure; runs on every request.

- ``required_capabilities``: the hard constraint a request's own shape implies. ``tools`` need
  ``tool_calling``; an image part needs ``vision``; a ``json_schema`` response format needs
  ``structured_output``; a ``json_object`` one needs ``json_mode`` (declared per model in
  ``models.yaml`` / ``provider_register``). A model that would ignore or refuse the feature
  is removed instead of being asked and failing (or, worse, answering in prose).
- ``request_texts``: every piece of text the prompt sends upstream (message strings, text
  parts, tool-call names and arguments, tool results, tool definitions, a JSON schema), for
  PII scanning and token estimates. Image data is not text: ``image_count`` counts images.

The plain-string conversation is the common case and stays a tight loop (about a
microsecond for one message).
"""

from __future__ import annotations

import msgspec

from signals import ImagePart, JsonObjectFormat, JsonSchemaFormat, LlmRequest, TextPart

TOOL_CALLING = "tool_calling"
VISION = "vision"
STRUCTURED_OUTPUT = "structured_output"
JSON_MODE = "json_mode"

_NONE: frozenset[str] = frozenset()
_encode = msgspec.json.encode


def required_capabilities(request: LlmRequest) -> frozenset[str]:
    """Capabilities a model must have to serve ``request`` as asked."""
    needed: set[str] | None = None
    if request.tools:
        needed = {TOOL_CALLING}
    fmt = request.response_format
    if fmt is not None:
        if type(fmt) is JsonSchemaFormat:
            needed = (needed or set()) | {STRUCTURED_OUTPUT}
        elif type(fmt) is JsonObjectFormat:
            needed = (needed or set()) | {JSON_MODE}
    for message in request.messages:
        content = message.content
        if type(content) is list and any(type(part) is ImagePart for part in content):
            needed = (needed or set()) | {VISION}
            break
    return frozenset(needed) if needed else _NONE


def request_texts(request: LlmRequest) -> list[str]:
    """All text ``request`` sends upstream, in order; image data excluded."""
    return collect(request)[0]


def image_count(request: LlmRequest) -> int:
    return collect(request)[1]


def collect(request: LlmRequest) -> tuple[list[str], int]:
    texts: list[str] = []
    append = texts.append
    images = 0
    for message in request.messages:
        content = message.content
        if type(content) is str:
            append(content)
        elif content is not None:
            for part in content:
                if type(part) is TextPart:
                    append(part.text)
                else:
                    images += 1
        if message.tool_calls:
            for call in message.tool_calls:
                append(call.function.name)
                append(call.function.arguments)
    if request.tools:
        for tool in request.tools:
            fn = tool.function
            append(fn.name)
            if fn.description:
                append(fn.description)
            if fn.parameters:
                append(_encode(fn.parameters).decode())
    fmt = request.response_format
    if type(fmt) is JsonSchemaFormat:
        append(_encode(fmt.json_schema.schema).decode())
    return texts, images
