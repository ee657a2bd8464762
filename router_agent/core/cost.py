"""Token and cost estimates before a call, and the cost of a call after it."""

from __future__ import annotations

from signals import LlmRequest

DEFAULT_OUTPUT_TOKENS = 256
"""Output assumed for estimates when the caller sets no max_tokens."""


def estimate_input_tokens(request: LlmRequest) -> int:
    """About four characters a token, plus the per-message framing chat formats add."""
    chars = 0
    for message in request.messages:
        chars += len(message.content)
    return chars // 4 + 3 * len(request.messages) + 1


def estimate_output_tokens(request: LlmRequest) -> int:
    return request.params.max_tokens or DEFAULT_OUTPUT_TOKENS


def cost_usd(input_tokens: int, output_tokens: int, price_in_per_1k: float, price_out_per_1k: float) -> float:
    return (input_tokens * price_in_per_1k + output_tokens * price_out_per_1k) / 1000.0
