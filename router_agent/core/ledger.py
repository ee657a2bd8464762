"""This instance's spend since it started, by agent, model and provider (pure).

The JetStream-backed shared ledger with budgets is a later issue; this in-memory ledger is
what ``cost_report`` publishes today. Composite lookups are by plain names per dimension.
"""

from __future__ import annotations

from signals import CostLine

DIMENSIONS = ("agent", "model", "provider")


class CostLedger:
    def __init__(self) -> None:
        self.total = CostLine()
        self.by: dict[str, dict[str, CostLine]] = {d: {} for d in DIMENSIONS}

    def charge(self, agent: str, model: str, provider: str, tokens_in: int, tokens_out: int, cost: float) -> None:
        _add(self.total, tokens_in, tokens_out, cost)
        for dimension, key in (("agent", agent), ("model", model), ("provider", provider)):
            table = self.by[dimension]
            line = table.get(key)
            if line is None:
                line = table[key] = CostLine()
            _add(line, tokens_in, tokens_out, cost)


def _add(line: CostLine, tokens_in: int, tokens_out: int, cost: float) -> None:
    line.requests += 1
    line.input_tokens += tokens_in
    line.output_tokens += tokens_out
    line.cost_usd += cost


def rounded(line: CostLine) -> CostLine:
    """A copy fit for publishing (floating-point dust trimmed)."""
    return CostLine(
        requests=line.requests,
        input_tokens=line.input_tokens,
        output_tokens=line.output_tokens,
        cost_usd=round(line.cost_usd, 10),
    )
