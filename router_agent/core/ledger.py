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
        self._cloud_day = -1
        self._cloud_today = 0.0

    def charge(self, agent: str, model: str, provider: str, tokens_in: int, tokens_out: int, cost: float,
               *, cloud: bool = False, day: int = 0) -> None:
        """``day``: days since the epoch (UTC) of the charge; cloud spend is kept per day."""
        _add(self.total, tokens_in, tokens_out, cost)
        if cloud:
            if day != self._cloud_day:
                self._cloud_day, self._cloud_today = day, 0.0
            self._cloud_today += cost
        for dimension, key in (("agent", agent), ("model", model), ("provider", provider)):
            table = self.by[dimension]
            line = table.get(key)
            if line is None:
                line = table[key] = CostLine()
            _add(line, tokens_in, tokens_out, cost)


    def cloud_spend(self, day: int) -> float:
        """USD spent on cloud models on ``day`` (the budget figure routing rules read)."""
        return self._cloud_today if day == self._cloud_day else 0.0


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
