"""Pieces of the canonical request every non-OpenAI wire format needs translated the same way."""

from __future__ import annotations

import mimetypes
from typing import Any

import msgspec

from router_agent.providers.errors import ProviderError
from signals import ChatMessage, ContentPart, TextPart

JSON_OBJECT_INSTRUCTION = "Respond with a single JSON object and nothing else."
"""Added to the system prompt for ``response_format: json_object`` where the wire format has
no JSON mode of its own (Anthropic)."""

_decode = msgspec.json.decode


def untranslatable(message: str) -> ProviderError:
    """The request cannot be said in this wire format; another vendor's may take it."""
    return ProviderError("bad_request", message, False, fallback=True)


def split_data_url(url: str) -> tuple[str, str] | None:
    """``(media_type, base64 data)`` of a base64 data URL, or None for any other URL."""
    if not url.startswith("data:"):
        return None
    header, sep, data = url.partition(",")
    if not sep or not header.endswith(";base64"):
        raise untranslatable("an image data URL must be base64 (data:<type>;base64,<data>)")
    return header[5:-7] or "application/octet-stream", data


def guess_media_type(url: str) -> str:
    """The media type a URL's extension says (``image/jpeg`` when it says none)."""
    path = url.split("?", 1)[0].split("#", 1)[0]
    return mimetypes.guess_type(path)[0] or "image/jpeg"


def text_of(content: str | list[ContentPart] | None, what: str) -> str:
    """A message's text where the wire format takes text only (system prompts, tool results)."""
    if content is None:
        return ""
    if type(content) is str:
        return content
    texts = []
    for part in content:
        if type(part) is not TextPart:
            raise untranslatable(f"{what} can hold text only, not images, in this wire format")
        texts.append(part.text)
    return "\n".join(texts)


def json_arguments(arguments: str) -> Any:
    """Tool-call arguments as the object the wire format wants (the canonical shape keeps
    the model's JSON text)."""
    try:
        value = _decode(arguments) if arguments else {}
    except msgspec.DecodeError:
        raise untranslatable("tool call arguments are not valid JSON; this wire format needs an object") from None
    if not isinstance(value, dict):
        raise untranslatable("tool call arguments must be a JSON object in this wire format")
    return value


def tool_call_names(messages: list[ChatMessage]) -> dict[str, str]:
    """Tool call id -> function name, over the whole conversation (Gemini and Ollama answer a
    call by its function's name; the canonical ``tool`` message names only the id)."""
    names: dict[str, str] = {}
    for message in messages:
        for call in message.tool_calls or ():
            names[call.id] = call.function.name
    return names


def tool_result(content: str | list[ContentPart] | None) -> dict[str, Any]:
    """A tool result as an object (Gemini's ``functionResponse.response``): a JSON object
    result as it is, anything else under ``result``."""
    text = text_of(content, "a tool result")
    try:
        value = _decode(text)
    except msgspec.DecodeError:
        return {"result": text}
    return value if isinstance(value, dict) else {"result": value}
