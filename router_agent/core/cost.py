"""Token and cost estimates before a call, and the cost of a call after it."""

from __future__ import annotations

from router_agent.core.features import collect
from signals import LlmRequest

DEFAULT_OUTPUT_TOKENS = 256
"""Output assumed for estimates when the caller sets no max_tokens."""

IMAGE_TOKENS = 765
"""Tokens counted per image part: what OpenAI bills a 1024x1024 image at high detail
(85 + 4 tiles x 170). Vendors differ (Anthropic ~1,600 for that size, Gemini 258): an
estimate, used for budgets and rate limits before the call, never for the bill."""


def estimate_input_tokens(request: LlmRequest) -> int:
    """About four characters a token, plus the per-message framing chat formats add, plus
    ``IMAGE_TOKENS`` per image."""
    texts, images = collect(request)
    chars = 0
    for text in texts:
        chars += len(text)
    return chars // 4 + 3 * len(request.messages) + 1 + images * IMAGE_TOKENS


def estimate_output_tokens(request: LlmRequest) -> int:
    return request.params.max_tokens or DEFAULT_OUTPUT_TOKENS


def cost_usd(input_tokens: int, output_tokens: int, price_in_per_1k: float, price_out_per_1k: float) -> float:
    return (input_tokens * price_in_per_1k + output_tokens * price_out_per_1k) / 1000.0
