"""``python -m bench.ledger``: what the cost ledger adds to one request, and what a flush costs.

    python -m bench.ledger                   in-process figures, then the flush over JetStream
    python -m bench.ledger --number 20000

Per request the request path calls ``LedgerService.reserve`` before an attempt and
``settle`` after it (``release`` when nothing was billed): plain arithmetic, no I/O. The rows
time that pair with no cap (only the overall and cloud scopes tracked) and with a cloud, an
agent and a provider cap (four scopes, leased). ``admit`` adds a round trip only when this
instance's lease is short; the flush (every ``flush_interval_s``, off the request path)
costs one lease read, maybe a compare-and-set, one stream publish and one record update,
timed here against an embedded nats-server. Best of ``--repeat`` runs, in µs. Figures are
printed, never asserted (bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from typing import Any

import nats

import signals as sig
from router_agent.bus import EmbeddedNats
from router_agent.config import load_config
from router_agent.core.model import Deployment
from router_agent.ledger_service import LedgerService

DEP = Deployment(provider="openai", model="gpt-4o", model_id="gpt-4o", api="openai", type="cloud",
                 base_url="http://x", price_in=0.0025, price_out=0.01, price_cached_in=0.00125)
REQUEST = sig.LlmRequest(request_id="r", agent_id="qa", params=sig.Params(max_tokens=256),
                         messages=[sig.ChatMessage(role="user", content="Write a haiku about queues. " * 8)])
USAGE = sig.Usage(input_tokens=70, output_tokens=40, cached_input_tokens=20)


def config(capped: bool, store: str = "memory") -> Any:
    budgets: dict[str, Any] = {"store": store, "flush_interval_s": 60}
    if capped:
        budgets.update(cloud_daily_usd=1e6, per_agent_usd={"qa": 1e6}, per_provider_usd={"openai": 1e6})
    base = load_config()
    return base.model_copy(update={"router": base.router.model_copy(
        update={"budgets": base.router.budgets.model_validate(budgets)})})


async def request_path(capped: bool, number: int, repeat: int) -> float:
    ledger = LedgerService(config(capped), "bench")
    await ledger.start()
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for _ in range(number):
            ledger.settle(ledger.reserve(REQUEST, DEP), USAGE)  # type: ignore[arg-type]
        best = min(best, (time.perf_counter() - started) / number)
        ledger.pending.take()  # what the flush would have shipped
    await ledger.stop()
    return best * 1e6


async def flush_over_jetstream(rounds: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as data, EmbeddedNats(data, port=0) as server:
        nc = await nats.connect(server.url)
        ledger = LedgerService(config(True, "jetstream"), "bench")
        await ledger.start(nc)
        times = []
        for _ in range(rounds):
            for _ in range(50):
                ledger.settle(ledger.reserve(REQUEST, DEP), USAGE)  # type: ignore[arg-type]
            started = time.perf_counter()
            await ledger.flush()
            times.append(time.perf_counter() - started)
        started = time.perf_counter()
        await ledger.refresh()
        refresh = time.perf_counter() - started
        await ledger.stop()
        await nc.close()
    times.sort()
    return times[len(times) // 2] * 1e6, refresh * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ledger", description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=100, help="flushes timed over JetStream")
    args = parser.parse_args(argv)
    for capped in (False, True):
        us = asyncio.run(request_path(capped, args.number, args.repeat))
        label = "cloud, agent and provider caps" if capped else "no cap"
        print(f"ledger: reserve + settle, {label:<31} {us:7.2f} µs per request")
    flush, refresh = asyncio.run(flush_over_jetstream(args.rounds))
    print(f"ledger: flush of 50 calls over JetStream (median) {flush:9.0f} µs, off the request path")
    print(f"ledger: refresh of the others' records            {refresh:9.0f} µs, off the request path")


if __name__ == "__main__":
    main()
