"""Token and cost estimates before a call, and the cost of a call after it.

Money that is accounted (the ledger, budgets) is integer micro-dollars: ``cost_micros`` is
the bill of one call from the usage the provider reported, ``CostEstimator`` the expected
cost before it, corrected per deployment from real usage. ``cost_usd`` is the float
arithmetic routing ranks candidates with.
"""

from __future__ import annotations

from router_agent.core.features import collect
from router_agent.core.model import Deployment, DeploymentKey
from signals import LlmRequest, Usage

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


# --------------------------------------------------------------------------- integer micro-dollars

MICROS_PER_USD = 1_000_000


def usd(micros: int) -> float:
    """Micro-dollars as USD, for signals and the engine (money is *accounted* in micros)."""
    return micros / MICROS_PER_USD


def micros(amount_usd: float) -> int:
    """USD (a config cap, a price) as whole micro-dollars, rounded to the nearest."""
    return round(amount_usd * MICROS_PER_USD)


def cost_micros(usage: Usage, dep: Deployment) -> int:
    """What a call cost, in micro-dollars, from the usage the provider reported.

    ``usage.input_tokens`` counts every input token (the adapters normalise each vendor's
    split); of them, ``cached_input_tokens`` are priced at the model's cached-input price
    when it has one (``price_cached_in`` above 0), else at the input price. Tokens written to
    a prompt cache (Anthropic's ``cache_creation_input_tokens``) are priced as input: the
    config has no cache-write price. The sum is rounded once, to the nearest micro-dollar,
    so a call cheaper than half a micro-dollar is free.
    """
    return tokens_micros(dep, usage.input_tokens, usage.output_tokens, usage.cached_input_tokens)


def tokens_micros(dep: Deployment, input_tokens: int, output_tokens: int, cached_input_tokens: int = 0) -> int:
    """``cost_micros`` of token counts (no ``Usage`` to build on the request path)."""
    cached = min(cached_input_tokens, input_tokens)
    cached_price = dep.price_cached_in if dep.price_cached_in > 0 else dep.price_in
    per_1k = (input_tokens - cached) * dep.price_in + cached * cached_price + output_tokens * dep.price_out
    # USD per 1k tokens x 1000 = micro-dollars per token.
    return round(per_1k * (MICROS_PER_USD / 1000))


# --------------------------------------------------------------------------- the learning estimator

MIN_CORRECTION = 0.05
MAX_CORRECTION = 8.0
"""Bounds of a learned correction: one absurd usage report (0 tokens, or a runaway answer
without max_tokens) moves an estimate at most this far."""


class CostEstimator:
    """Estimates before a call, corrected per deployment from what calls really used.

    The raw estimates (``estimate_input_tokens``: about four characters a token;
    ``estimate_output_tokens``: ``max_tokens`` or 256) are often far off: most answers stop
    well before ``max_tokens``, and tokenizers differ from model to model. For each
    deployment the estimator keeps an exponentially weighted mean of ``actual / estimated``
    for input and for output (weight ``alpha`` on the newest call, clamped to
    [``MIN_CORRECTION``, ``MAX_CORRECTION``]) and multiplies the raw estimate by it. The
    output estimate never exceeds ``max_tokens``, which the provider cannot exceed either.
    Pure: the caller feeds it every call's usage through ``learn``.
    """

    def __init__(self, alpha: float = 0.2):
        if not 0 < alpha <= 1:
            raise ValueError("alpha must be within (0, 1]")
        self.alpha = alpha
        self.corrections: dict[DeploymentKey, list[float]] = {}
        """Deployment -> ``[input correction, output correction]``; absent: 1.0 each."""

    def correction(self, key: DeploymentKey) -> tuple[float, float]:
        c = self.corrections.get(key)
        return (c[0], c[1]) if c is not None else (1.0, 1.0)

    def tokens(self, request: LlmRequest, dep: Deployment) -> tuple[int, int]:
        """Corrected ``(input, output)`` token estimates of ``request`` on ``dep``."""
        return self.corrected(dep, estimate_input_tokens(request), estimate_output_tokens(request),
                              request.params.max_tokens)

    def corrected(self, dep: Deployment, est_in: int, est_out: int, max_tokens: int | None) -> tuple[int, int]:
        c = self.corrections.get(dep.key)
        if c is None:
            return est_in, est_out
        out = round(est_out * c[1])
        return round(est_in * c[0]), min(out, max_tokens) if max_tokens else out

    def estimate_micros(self, request: LlmRequest, dep: Deployment) -> int:
        """The expected cost of ``request`` on ``dep`` (no cached-input discount assumed)."""
        return tokens_micros(dep, *self.tokens(request, dep))

    def learn(self, key: DeploymentKey, estimated_out: int, actual_out: int, *,
              estimated_in: int = 0, actual_in: int = 0) -> None:
        """Fold one call's real usage in. Raw (uncorrected) estimates; a side whose estimate
        is 0 is not learned from."""
        c = self.corrections.get(key)
        if c is None:
            c = self.corrections[key] = [1.0, 1.0]
        a = self.alpha
        if estimated_in > 0:
            c[0] += a * (_clamp(actual_in / estimated_in) - c[0])
        if estimated_out > 0:
            c[1] += a * (_clamp(actual_out / estimated_out) - c[1])


def _clamp(ratio: float) -> float:
    return min(MAX_CORRECTION, max(MIN_CORRECTION, ratio))
