"""The running emulator's state: profiles, faults, the seeded random source and counters.

Handlers read it on every request (one dict look-up each for timing and faults, one counter
increment); the admin endpoint and :class:`~router_agent.emulator.server.Emulator` change it
while the server runs. Everything runs on one event loop, so there are no locks.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import time
from collections.abc import Callable, Mapping

from aiohttp import web

from router_agent.emulator.faults import Fault, FaultTable
from router_agent.emulator.settings import EmulatorConfig, FaultSpec, ModelProfile

__all__ = ["RUNTIME", "Runtime"]

MAX_COUNTED_MODELS = 1000
"""Counters keep this many model names; the rest count under ``"(other)"`` (bounded memory)."""
_ID_PREFIX = os.urandom(4).hex()
GENERIC_MODELS = ("emulator-small", "emulator-medium", "emulator-large")


class Runtime:
    """Mutable state of one emulator app."""

    def __init__(self, config: EmulatorConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.admin_token = config.resolved_admin_token()
        self.default = config.default_profile
        self.profiles: dict[str, ModelProfile] = dict(config.models)
        self.faults = FaultTable(config.faults)
        self.rng = random.Random(config.seed)
        self.clock = clock
        self.started = clock()
        self.created = int(time.time())
        self.requests: dict[str, int] = {}
        self.fault_counts: dict[str, dict[str, int]] = {}
        self.hanging = 0
        self.closing = asyncio.Event()
        self._timing: dict[str, tuple[float, float, float]] = {}
        self._serial = itertools.count(1)
        self._watchers: list[asyncio.Future[None]] = []

    # --- per request ---------------------------------------------------------------

    def next_id(self) -> str:
        """Unique across requests and across emulator processes (random per-process prefix)."""
        return f"{_ID_PREFIX}{next(self._serial):x}"

    def count(self, model: str) -> None:
        requests = self.requests
        if model not in requests and len(requests) >= MAX_COUNTED_MODELS:
            model = "(other)"
        requests[model] = requests.get(model, 0) + 1
        if self._watchers:
            self._notify()

    def fault(self, model: str) -> Fault | None:
        """The fault this request meets (None almost always); counted by kind."""
        if not self.faults:
            return None
        fault = self.faults.decide(model, self.clock() - self.started, self.rng.random)
        if fault is not None:
            name = model if model in self.requests else "(other)"
            kinds = self.fault_counts.setdefault(name, {})
            kind = f"{fault.kind} {fault.status}" if fault.kind == "error" else fault.kind
            kinds[kind] = kinds.get(kind, 0) + 1
        return fault

    def timing(
        self, model: str, ttft_ms: float | None = None, tokens_per_s: float | None = None
    ) -> tuple[float, float]:
        """(seconds to the first token, seconds per generated token) for one request.

        ``ttft_ms`` / ``tokens_per_s`` override the model's profile (the request headers).
        """
        base = self._timing.get(model)
        if base is None:
            profile = self.profiles.get(model, self.default)
            ttft = profile.ttft_ms if profile.ttft_ms is not None else self.default.ttft_ms
            tps = profile.tokens_per_s
            base = ((ttft or 0.0) / 1000.0, 1.0 / tps if tps > 0 else 0.0, profile.jitter)
            if len(self._timing) < MAX_COUNTED_MODELS:
                self._timing[model] = base
        ttft_s, per_token, jitter = base
        if ttft_ms is not None:
            ttft_s = ttft_ms / 1000.0
        if tokens_per_s is not None:
            per_token = 1.0 / tokens_per_s if tokens_per_s > 0 else 0.0
        if jitter:
            rand = self.rng.random
            ttft_s *= 1.0 + jitter * (2.0 * rand() - 1.0)
            per_token *= 1.0 + jitter * (2.0 * rand() - 1.0)
        return ttft_s, per_token

    async def hang(self, seconds: float) -> None:
        """Wait ``seconds``, or until the emulator closes; counted in ``hanging`` meanwhile."""
        self.hanging += 1
        self._notify()
        try:
            await asyncio.wait_for(self.closing.wait(), seconds)
        except TimeoutError:
            pass
        finally:
            self.hanging -= 1
            self._notify()

    # --- changes (admin endpoint, Emulator methods) ---------------------------------

    def set_profiles(
        self, default: ModelProfile | None = None, models: Mapping[str, ModelProfile] | None = None
    ) -> None:
        """Replace the default profile and/or the per-model table; ``None`` keeps that part."""
        if default is not None:
            if default.ttft_ms is None:
                default = ModelProfile(self.default.ttft_ms, default.tokens_per_s, default.jitter)
            self.default = default
        if models is not None:
            self.profiles = dict(models)
        self._timing.clear()

    def set_profile(self, model: str, profile: ModelProfile | None) -> None:
        if profile is None:
            self.profiles.pop(model, None)
        else:
            self.profiles[model] = profile
        self._timing.clear()

    def set_fault(self, model: str, spec: FaultSpec | None) -> None:
        self.faults.set(model, spec)

    def replace_faults(self, specs: Mapping[str, FaultSpec]) -> None:
        self.faults.replace(specs)

    def reset_stats(self) -> None:
        self.requests.clear()
        self.fault_counts.clear()

    def model_names(self) -> list[str]:
        """Names the listing endpoints show: generic ones, then every model with a profile or
        a fault (generation accepts any name anyway)."""
        extra = (set(self.profiles) | set(self.faults.specs())) - set(GENERIC_MODELS) - {"*"}
        return [*GENERIC_MODELS, *sorted(extra)]

    def stats(self) -> dict[str, object]:
        return {
            "uptime_s": round(self.clock() - self.started, 3),
            "requests": dict(self.requests),
            "faults": {m: dict(k) for m, k in self.fault_counts.items()},
            "hanging": self.hanging,
        }

    # --- waiting on state (tests, chaos drivers) -------------------------------------

    async def until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds; re-checked whenever a counter changes."""
        loop = asyncio.get_running_loop()
        while not predicate():
            future: asyncio.Future[None] = loop.create_future()
            self._watchers.append(future)
            await future

    def _notify(self) -> None:
        watchers, self._watchers = self._watchers, []
        for future in watchers:
            if not future.done():
                future.set_result(None)


RUNTIME = web.AppKey("emulator_runtime", Runtime)
