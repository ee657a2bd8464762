"""The error taxonomy of provider calls: every failure becomes one typed ``ProviderError``.

Two flags tell the layers above what to do:

- ``retryable``: the same call to the same deployment may succeed later (after
  ``retry_after_s`` when given);
- ``fallback``: the next candidate may succeed where this one failed. An error that is the
  request's own fault (``bad_request``, ``content_filtered``) is not worth another
  provider's money; one that is this provider's (keys, overload, a smaller context window,
  a model it does not have) is.

| code                      | from                                             | retryable | fallback |
|---------------------------|--------------------------------------------------|-----------|----------|
| rate_limited              | 429 (quota exhausted: not retryable)             | yes       | yes      |
| overloaded                | 503, 529, Anthropic ``overloaded_error``         | yes       | yes      |
| server_error              | other 5xx, 409, an unreadable answer             | yes       | yes      |
| timeout                   | 408, 504, no bytes within the read timeout       | yes       | yes      |
| connection_error          | refused, reset, DNS, endpoint policy             | yes       | yes      |
| auth_error                | 401, 403, Gemini's invalid key                   | no        | yes      |
| not_found                 | 404 (model or path unknown)                      | no        | yes      |
| context_length_exceeded   | 400/413 whose body says the prompt is too long   | no        | yes      |
| content_filtered          | a vendor's safety refusal of the prompt          | no        | no       |
| bad_request               | 4xx saying this model cannot take the request    | no        | yes      |
| bad_request               | other 4xx                                        | no        | no       |
| provider_error            | a redirect (never followed)                      | no        | yes      |

Every message is built from upstream text that ``detail_from_body`` has redacted with the
call's own key; the caller redacts again with every key it knows before anything leaves.
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import msgspec

from router_agent.core.redact import redact
from router_agent.http import endpoint_refusal
from signals import ErrorCode

DETAIL_LIMIT = 200
"""Characters of upstream text kept in an error message."""
DETAIL_SCAN = 1000
"""Characters redacted before the cut to ``DETAIL_LIMIT``: a key across the cut is whole then."""
MAX_RETRY_AFTER_S = 3600.0
"""A Retry-After beyond an hour is taken as an hour (an upstream cannot park us for days)."""


class ProviderError(Exception):
    """A failed provider call; see the module's table for the codes and the flags."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        retryable: bool,
        status: int | None = None,
        *,
        fallback: bool | None = None,
        retry_after_s: float | None = None,
        remaining_requests: int | None = None,
        remaining_tokens: int | None = None,
    ):
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message
        self.retryable = retryable
        self.status = status
        self.fallback = retryable if fallback is None else fallback
        """Whether another candidate is worth trying (defaults to ``retryable``)."""
        self.retry_after_s = retry_after_s
        """How long the provider asked us to wait (Retry-After or its reset headers)."""
        self.remaining_requests = remaining_requests
        self.remaining_tokens = remaining_tokens
        """The provider's remaining quota, from its rate-limit headers, when it sent them."""

    def copy(self) -> ProviderError:
        """A fresh exception with the same fields (one instance raised twice piles up tracebacks)."""
        return ProviderError(
            self.code, self.message, self.retryable, self.status, fallback=self.fallback,
            retry_after_s=self.retry_after_s, remaining_requests=self.remaining_requests,
            remaining_tokens=self.remaining_tokens,
        )


def redirect_error(status: int) -> ProviderError:
    """A 3xx from a provider: not followed (it could point anywhere, past the endpoint
    policy), and not retried (the next attempt would be answered the same way)."""
    return ProviderError(
        "provider_error",
        f"upstream answered with a redirect ({status}); redirects are not followed: "
        "configure the provider's final URL",
        False,
        status,
        fallback=True,
    )


def unreachable_error(exc: BaseException) -> ProviderError:
    """No answer from the provider: a read timeout, or no connection (refused, DNS, reset,
    the endpoint policy). The message names the policy's refusal or the exception's type,
    never its text (it may carry addresses and OS detail)."""
    if isinstance(exc, TimeoutError):  # the client's read and connect timeouts
        return ProviderError("timeout", f"provider did not answer in time ({type(exc).__name__})", True)
    return ProviderError("connection_error", f"cannot reach provider: {unreachable_detail(exc)}", True)


def unreachable_detail(exc: BaseException) -> str:
    refusal = endpoint_refusal(exc)
    return refusal.strerror if refusal is not None else type(exc).__name__


def unreadable_error(exc: BaseException, api_key: str | None) -> ProviderError:
    detail = redact(str(exc)[:DETAIL_SCAN], (api_key,))[:DETAIL_LIMIT]
    return ProviderError("server_error", f"unreadable provider answer: {detail}", True)


# --------------------------------------------------------------------------- error bodies


class _ErrorBody(msgspec.Struct):
    error: Any = None


def parse_error_body(body: bytes) -> tuple[str, str]:
    """``(message, kind)`` from any vendor's error body: OpenAI ``{"error": {"message",
    "type", "code"}}``, Anthropic ``{"type": "error", "error": {"type", "message"}}``, Gemini
    ``{"error": {"code", "message", "status", "details"}}``, Ollama ``{"error": "..."}``.
    ``kind`` joins the vendor's machine-readable codes (for classification, never shown)."""
    try:
        error = msgspec.json.decode(body, type=_ErrorBody).error
    except msgspec.DecodeError:
        return body[:DETAIL_SCAN].decode("utf-8", "replace"), ""
    if isinstance(error, dict):
        kinds = [str(error.get(k) or "") for k in ("code", "type", "status")]
        for detail in error.get("details") or ():
            if isinstance(detail, dict):
                kinds.append(str(detail.get("reason") or ""))
        return str(error.get("message") or ""), " ".join(k for k in kinds if k)
    if isinstance(error, list) and error and isinstance(error[0], dict):  # Gemini streams wrap it
        return parse_error_body(msgspec.json.encode(error[0]))
    return str(error or ""), ""


def detail_from_body(body: bytes, api_key: str | None) -> tuple[str, str]:
    """``(redacted message, kind)``: the upstream's own words, trimmed; never the request."""
    message, kind = parse_error_body(body)
    return redact(message[:DETAIL_SCAN], (api_key,))[:DETAIL_LIMIT], kind


_CONTEXT = re.compile(
    r"context.length|context window|maximum context|prompt is too long|too many tokens|"
    r"exceeds the maximum number of tokens|input token count|input length and `max_tokens` exceed|"
    r"context limit",
    re.IGNORECASE,
)
"""How each vendor says the prompt is too long: OpenAI and vLLM "maximum context length",
code ``context_length_exceeded``; Anthropic "prompt is too long"; Gemini "The input token
count (N) exceeds the maximum number of tokens allowed"; llama.cpp "exceeds the available
context size"."""
_FILTERED = re.compile(r"content_filter|content_policy|safety|responsibleai|blocked", re.IGNORECASE)
_THIS_MODEL = re.compile(r"for this model|not supported (?:by|for|with) (?:this|the) model|model does not support",
                         re.IGNORECASE)
"""A request one model refuses and another takes (Anthropic: "`temperature` is deprecated for
this model"; OpenAI: "... is not supported with this model")."""
_AUTH = re.compile(r"api_key_invalid|api key not valid|authentication|permission|unauthenticated", re.IGNORECASE)


def classify(kind: str, message: str, status: int | None) -> tuple[ErrorCode, bool, bool]:
    """``(code, retryable, fallback)`` for an error the upstream described (``status``
    None: an error event inside a stream)."""
    text = f"{kind} {message}"
    if status is not None and (status in (401, 403)):
        return "auth_error", False, True
    if "overloaded" in kind or status in (503, 529):
        return "overloaded", True, True
    if "rate_limit" in kind or "resource_exhausted" in kind.lower() or status == 429:
        if "insufficient_quota" in kind:  # OpenAI: billing, not a burst
            return "rate_limited", False, True
        return "rate_limited", True, True
    if status in (408, 504) or "timeout" in kind:
        return "timeout", True, True
    if status == 404 or "not_found" in kind:
        return "not_found", False, True
    if (status is None or 400 <= status < 500) and _CONTEXT.search(text):
        return "context_length_exceeded", False, True
    if (status is None or 400 <= status < 500) and _FILTERED.search(kind):
        return "content_filtered", False, False
    if (status is None or 400 <= status < 500) and _AUTH.search(kind):
        return "auth_error", False, True
    if (status is None or 400 <= status < 500) and _THIS_MODEL.search(message):
        return "bad_request", False, True  # the request is fine; this model cannot take it
    if status is not None and 400 <= status < 500 and status != 409:
        return "bad_request", False, False
    return "server_error", True, True


def status_error(
    status: int, body: bytes, api_key: str | None, headers: Mapping[str, str] | None = None
) -> ProviderError:
    """Map an upstream HTTP error answer to a typed, retry-aware error."""
    if 300 <= status < 400:
        return redirect_error(status)
    detail, kind = detail_from_body(body, api_key)
    code, retryable, fallback = classify(kind, detail, status)
    if code == "auth_error":
        message = f"upstream refused credentials ({status})"  # never echo what auth said
    else:
        message = f"upstream {code.replace('_', ' ')} ({status}): {detail}"
    error = ProviderError(code, message, retryable, status, fallback=fallback)
    if headers is not None:
        read_quota(error, headers)
    return error


def stream_error(body: bytes, api_key: str | None) -> ProviderError:
    """An error event inside a stream (the HTTP status was already 200)."""
    detail, kind = detail_from_body(body, api_key)
    code, retryable, fallback = classify(kind, detail, None)
    return ProviderError(code, f"upstream {code.replace('_', ' ')} mid-stream: {detail}", retryable,
                         fallback=fallback)


# --------------------------------------------------------------------------- rate-limit headers

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After value: a number of seconds, or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def parse_duration(value: str | None) -> float | None:
    """OpenAI's reset headers: ``"1s"``, ``"6m0s"``, ``"20ms"``, ``"1h2m3.5s"``."""
    if not value:
        return None
    parts = _DURATION.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value.strip():
        return None
    return min(sum(float(n) * _UNIT_S[u] for n, u in parts), MAX_RETRY_AFTER_S)


def parse_instant(value: str | None, now: float | None = None) -> float | None:
    """Seconds until an RFC 3339 instant (Anthropic's ``anthropic-ratelimit-*-reset``)."""
    if not value:
        return None
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if when.tzinfo is None:
        return None
    seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def read_quota(error: ProviderError, headers: Mapping[str, str]) -> None:
    """Fill ``retry_after_s`` and the remaining quota from the vendor's headers: Retry-After
    (every vendor), OpenAI's ``x-ratelimit-remaining-*`` / ``x-ratelimit-reset-*``,
    Anthropic's ``anthropic-ratelimit-{requests,tokens}-{remaining,reset}``."""
    get = headers.get
    error.remaining_requests = _int(get("x-ratelimit-remaining-requests") or get("anthropic-ratelimit-requests-remaining"))
    error.remaining_tokens = _int(get("x-ratelimit-remaining-tokens") or get("anthropic-ratelimit-tokens-remaining"))
    retry_after = parse_retry_after(get("retry-after"))
    if retry_after is None:
        # No Retry-After: wait for the reset of whichever quota is exhausted.
        resets = []
        if error.remaining_requests == 0:
            resets.append(parse_duration(get("x-ratelimit-reset-requests"))
                          or parse_instant(get("anthropic-ratelimit-requests-reset")))
        if error.remaining_tokens == 0:
            resets.append(parse_duration(get("x-ratelimit-reset-tokens"))
                          or parse_instant(get("anthropic-ratelimit-tokens-reset")))
        known = [r for r in resets if r is not None]
        retry_after = max(known) if known else None
    error.retry_after_s = retry_after
