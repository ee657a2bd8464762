"""Hostile input over a real nats-server while valid traffic flows (hypothesis drives the
mutation engine of ``bench/fuzz.py``; ``python -m bench.fuzz`` runs the long campaign).

Every request-shaped message gets exactly one typed answer, no valid request is lost, and
the agent logs no traceback for input it was sent.
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.fuzz import hostile_message, run_campaign
from router_agent.emulator import start_emulator

pytestmark = pytest.mark.integration


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.large_base_example, HealthCheck.data_too_large, HealthCheck.too_slow])
@given(rng=st.randoms(use_true_random=False))
def test_hostile_messages_each_get_one_typed_answer_and_valid_traffic_survives(nats_url, make_config, rng):
    messages = [hostile_message(rng) for _ in range(60)]

    async def scenario():
        emulator = await start_emulator(latency_ms=0.0)
        try:
            return await run_campaign(nats_url, make_config(), emulator.url, messages, valid_every=5,
                                      answer_timeout_s=20)
        finally:
            await emulator.close()

    report = asyncio.run(scenario())
    assert report.sent == 60
    assert report.unanswered == 0, report.examples_unanswered
    assert report.answered_twice == 0
    assert report.tracebacks == 0
    assert report.valid_lost == 0, report.table()
