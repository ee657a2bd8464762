"""The response cache on the request path: look up before the attempt chain, store after.

Writes ``metrics.cache_hits`` / ``metrics.cache_misses``; the cache itself is
``response_cache.py`` (in-process layer + shared JetStream bucket), the rules in
``core/cache.py``. A request is looked up only when it is eligible (its agent, or its
strategy's ``cache_responses``, opted in; ``temperature`` 0 unless the agent accepts sampled
answers). The key names the plan's first model and, for a private request (privacy level
high, or personal data found), the agent: another agent can never be served it. A hit is
answered ``cached``, free, with no attempt; a streamed request gets it as a stream.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from router_agent.config import Config
from router_agent.core.cache import cache_key, cached_response, eligibility, storable, to_cached
from router_agent.planner import Planned
from router_agent.response_cache import ResponseCache, replay_events
from router_agent.state import Metrics
from router_agent.streaming import StreamRelay
from signals import LlmRequest, LlmResponse


class CacheGate:
    def __init__(self, config: Config, cache: ResponseCache, metrics: Metrics, clock: Callable[[], float]):
        self.config = config
        self.cache = cache
        self.metrics = metrics
        self.clock = clock

    async def lookup(self, request: LlmRequest, planned: Planned, started: float, deadline: float,
                     relay: StreamRelay | None) -> tuple[str | None, LlmResponse | None]:
        """(the key to store the answer under, or None; the cached answer, or None)."""
        agent = self.config.agents.get(request.agent_id)
        agent_cache = agent.cache if agent is not None else None
        reason = eligibility(request, agent_cache, planned.cache)
        if reason is not None:
            self.cache.stats.bypass(reason)
            return None, None
        key = cache_key(request, target=planned.ordered[0].model, private=planned.private,
                        shared=agent_cache.shared if agent_cache is not None else True)
        hit = await self.cache.get(key)
        if hit is None:
            self.metrics.cache_misses += 1
            return key, None
        self.metrics.cache_hits += 1
        if relay is not None:
            async with asyncio.timeout(max(0.0, deadline - self.clock())) as scope:
                await relay.attempt(replay_events(hit, self.config.router.cache.replay_piece_chars), scope, deadline)
        return None, cached_response(hit, request, round((self.clock() - started) * 1000, 3))

    def store(self, key: str, response: LlmResponse) -> None:
        if storable(response) is None:
            self.cache.put(key, to_cached(response, time.time()))
