"""CloudEvents 1.0 structured-JSON envelope around every signal.

A signal on the wire is ``{"specversion": "1.0", "id", "source", "type", "time", "data"}``
with ``type`` = ``io.llmrouter.<signal>.v<N>``. Trace context travels in the NATS
``traceparent`` header, not in the body.

Decoding is two-step on purpose: the envelope first (``data`` kept raw), so that a wrong
``type`` or version gets its own error code (``unsupported_version``) instead of a
confusing field error; then ``data`` against the signal's Struct.

Whatever the bytes, decoding ends in a value or a ``SignalError``, never another exception.
Two inputs need care because msgspec reports them outside its own ``DecodeError``:

- Nesting. msgspec recurses once per ``[`` / ``{`` (also to skip a value it ignores, or to
  find the end of the raw ``data``) and stops with a ``RecursionError`` when it reaches the
  interpreter's recursion limit: a little under 1,000 levels with the default limit and a
  shallow stack, as in a NATS callback. The deepest signal nests 5 levels, so only hostile
  or broken input gets there: it is answered ``malformed_json``. Catching it costs nothing
  on valid input; a pre-scan of the bytes for depth would cost on every message.
- Invalid UTF-8 inside a JSON string raises ``UnicodeDecodeError`` (a ``ValueError``) when
  the string is decoded: ``malformed_json`` too. A string in a field that is skipped (an
  extension attribute the router ignores) is not decoded, so it is not checked.
"""

from __future__ import annotations

import itertools
import os
import re
import time
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import msgspec

from signals.types import SIGNAL_TYPES, ErrorCode

SPECVERSION = "1.0"
TYPE_PREFIX = "io.llmrouter."
VERSION = 1

T = TypeVar("T")


def event_type(signal: str, version: int = VERSION) -> str:
    """``llm_request`` -> ``io.llmrouter.llm_request.v1``."""
    return f"{TYPE_PREFIX}{signal}.v{version}"


class CloudEvent(msgspec.Struct, Generic[T], kw_only=True):
    specversion: str = SPECVERSION
    id: str
    source: str
    type: str
    time: str
    datacontenttype: str = "application/json"
    data: T


class _RawEvent(msgspec.Struct, kw_only=True):
    specversion: str
    id: str
    source: str
    type: str
    time: str | None = None
    datacontenttype: str | None = None
    data: msgspec.Raw


class SignalError(Exception):
    """Bad input, with the typed code and (for field errors) the key path."""

    def __init__(self, code: ErrorCode, message: str, field: str | None = None):
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message
        self.field = field


_encoder = msgspec.json.Encoder()
_raw_decoder = msgspec.json.Decoder(_RawEvent)
_data_decoders: dict[str, msgspec.json.Decoder] = {
    name: msgspec.json.Decoder(cls) for name, cls in SIGNAL_TYPES.items()
}


class EventFactory:
    """Builds envelopes for one source; ids are ``<source-unique>-<counter>`` (cheap, unique)."""

    def __init__(self, source: str):
        self.source = source
        self._prefix = f"{os.getpid():x}{int(datetime.now(UTC).timestamp() * 1000):x}-"
        self._ids = itertools.count(1)

    def encode(self, signal: str, data: Any) -> bytes:
        event = CloudEvent(
            id=f"{self._prefix}{next(self._ids)}",
            source=self.source,
            type=event_type(signal),
            time=_now_iso(),
            data=data,
        )
        return _encoder.encode(event)


_last_s = -1
_last_prefix = ""


def iso_ms(unix_ms: int) -> str:
    """``unix_ms`` (milliseconds since the epoch) as signals write times: ISO 8601, UTC, milliseconds."""
    seconds, millis = divmod(unix_ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def _now_iso() -> str:
    """UTC time to the millisecond (every event needs it): the date and time of day are
    formatted once per second, the milliseconds appended."""
    global _last_s, _last_prefix
    seconds, millis = divmod(time.time_ns() // 1_000_000, 1000)
    if seconds != _last_s:
        _last_prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _last_s = seconds
    return f"{_last_prefix}.{millis:03d}Z"


def encode_event(signal: str, data: Any, source: str = "client", event_id: str | None = None) -> bytes:
    """Encode one signal for publishing (clients and tests; the agent uses EventFactory)."""
    event = CloudEvent(
        id=event_id or os.urandom(8).hex(),
        source=source,
        type=event_type(signal),
        time=_now_iso(),
        data=data,
    )
    return _encoder.encode(event)


TOO_DEEP = "JSON is malformed: nested too deeply"
NOT_UTF8 = "JSON is malformed: a string is not valid UTF-8"


def decode_event(payload: bytes, signal: str) -> tuple[_RawEvent, Any]:
    """Decode a signal expected on a subject; raise SignalError naming what is wrong.

    Raises nothing else, whatever ``payload`` holds (see the module's docstring).
    """
    try:
        raw = _raw_decoder.decode(payload)
    except msgspec.DecodeError as exc:
        text = str(exc)
        if text.startswith(("JSON is malformed", "Input data was truncated")):
            raise SignalError("malformed_json", text) from None
        message, path = _located(text, "$")
        raise SignalError("invalid_request", f"not a CloudEvent: {message}", path) from None
    except RecursionError:
        raise SignalError("malformed_json", TOO_DEEP) from None
    except UnicodeDecodeError as exc:
        raise SignalError("malformed_json", f"{NOT_UTF8} ({exc.reason})") from None
    if raw.specversion != SPECVERSION:
        raise SignalError(
            "unsupported_version", f"specversion {raw.specversion!r} is not supported (want '1.0')"
        )
    expected = event_type(signal)
    if raw.type != expected:
        if raw.type.startswith(f"{TYPE_PREFIX}{signal}.v"):
            raise SignalError(
                "unsupported_version", f"signal type {raw.type!r} is not supported (want {expected!r})"
            )
        raise SignalError("invalid_request", f"signal type {raw.type!r} on a {signal} subject")
    try:
        data = _data_decoders[signal].decode(raw.data)
    except msgspec.ValidationError as exc:
        message, path = _located(str(exc), "$.data")
        raise SignalError("invalid_request", message, path) from None
    except msgspec.DecodeError as exc:
        raise SignalError("malformed_json", str(exc)) from None
    except RecursionError:
        raise SignalError("malformed_json", TOO_DEEP) from None
    except UnicodeDecodeError as exc:
        raise SignalError("malformed_json", f"{NOT_UTF8} ({exc.reason})") from None
    return raw, data


def decode_data(payload: bytes, signal: str) -> Any:
    """Decode just the ``data`` of a signal (for clients reading answers)."""
    return decode_event(payload, signal)[1]


_FIELD = re.compile(r"^Object (?:missing required|contains unknown) field `([^`]+)`")
_KEY = "key` in `"


def _located(text: str, root: str) -> tuple[str, str]:
    """Rewrite msgspec's ``... - at `$.x``` so the path starts at ``root`` and names the field.

    msgspec points at the enclosing object for a missing or unknown field; the caller wants
    the field itself (``$.data.messages``, not ``$.data``).
    """
    head, marker, at = text.rpartition(" - at `")
    if marker:
        # A bad dict key is reported "at `key` in `$.x`": the path is the dict's.
        key = at.startswith(_KEY)
        path = root + at.removeprefix(_KEY).rstrip("`")[1:]
        if key:
            return f"{head} - at a key in `{path}`", path
    else:
        head, path = text, root
    field = _FIELD.match(head)
    if field:
        path = f"{path}.{field.group(1)}"
    return f"{head} - at `{path}`", path
