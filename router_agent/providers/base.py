"""What every provider adapter promises: one completion, or a typed ProviderError."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from router_agent.core.model import Deployment
from signals import ErrorCode, LlmRequest


@dataclass(slots=True)
class Completion:
    content: str
    finish_reason: str
    input_tokens: int
    output_tokens: int


class ProviderError(Exception):
    """A failed provider call; ``retryable`` says whether another attempt may succeed."""

    def __init__(self, code: ErrorCode, message: str, retryable: bool, status: int | None = None):
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message
        self.retryable = retryable
        self.status = status


class Adapter(Protocol):
    async def complete(self, request: LlmRequest, deployment: Deployment, api_key: str | None) -> Completion: ...

    async def probe(self, base_url: str, api_key: str | None) -> tuple[bool, str, bool]:
        """(reachable, detail, emulated) for a provider endpoint."""
        ...


def redirect_error(status: int) -> ProviderError:
    """A 3xx from a provider: not followed (it could point anywhere, past the endpoint
    policy), and not retried (the next attempt would be answered the same way)."""
    return ProviderError(
        "provider_error",
        f"upstream answered with a redirect ({status}); redirects are not followed: "
        "configure the provider's final URL",
        False,
        status,
    )


def unreachable_error(detail: str) -> ProviderError:
    """No answer from the provider (connection refused, DNS, reset, endpoint policy)."""
    return ProviderError("provider_error", f"cannot reach provider: {detail}", True)


def status_error(status: int, detail: str) -> ProviderError:
    """Map an upstream HTTP status to a typed, retry-aware error.

    ``detail`` is upstream text: the caller has passed it through ``core.redact.redact``."""
    if 300 <= status < 400:
        return redirect_error(status)
    if status == 429:
        return ProviderError("rate_limited", f"upstream rate limited (429): {detail}", True, status)
    if status in (408, 409) or status >= 500:
        return ProviderError("provider_error", f"upstream error {status}: {detail}", True, status)
    if status in (401, 403):
        return ProviderError("provider_error", f"upstream refused credentials ({status})", True, status)
    return ProviderError("provider_error", f"upstream rejected the request ({status}): {detail}", False, status)
