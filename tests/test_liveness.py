"""A deaf NATS client is noticed within seconds and reconnected.

Finding: one ``HPUB`` on ``llm_request`` whose header block is just ``NATS/1.0`` (no CRLF)
made nats-py 2.16's read loop raise and stop while the connection stayed open; the agent
answered nothing for 348 s. ``bus.Liveness`` checks the read loop every second (and makes a
bounded round trip) and forces a reconnect. The first half drives the real agent over a
real nats-server with that exact frame; the second half checks the watchdog's decisions
against a fake client; the last test keeps the upstream bug report's reproducer honest.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlparse

import pytest

from router_agent.agent import RouterAgent
from router_agent.bus import EmbeddedNats, Liveness, connect
from router_agent.config import NatsConfig

REPO = Path(__file__).resolve().parent.parent
REPRODUCER = REPO / "docs" / "upstream" / "repro_malformed_header.py"


def poison_frame(subject: str) -> bytes:
    """HPUB with an 8-byte header block ``NATS/1.0`` (no CRLF) and a 2-byte payload."""
    return f"HPUB {subject} 8 10\r\nNATS/1.0xx\r\n".encode()


def raw_publish(url: str, frame: bytes) -> None:
    """Send ``frame`` from a bare socket (INFO, CONNECT with headers, frame, PING); return
    once the server's PONG shows it has routed the frame."""
    parsed = urlparse(url)
    with socket.create_connection((parsed.hostname, parsed.port), timeout=5) as sock:
        stream = sock.makefile("rb")
        assert stream.readline().startswith(b"INFO ")
        connect_line = json.dumps({"verbose": False, "pedantic": False, "headers": True})
        sock.sendall(f"CONNECT {connect_line}\r\n".encode() + frame + b"PING\r\n")
        while not (line := stream.readline()).startswith(b"PONG"):
            assert line and not line.startswith(b"-ERR"), line


# --------------------------------------------------------------------------- end to end


@pytest.fixture
async def production_agent(nats_url, emulator, make_config, monkeypatch) -> AsyncIterator[RouterAgent]:
    """The agent on a connection made as ``router-agent run`` makes it (``bus.connect``)."""
    for name in ("NATS_USER", "NATS_PASSWORD", "NATS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    config = make_config()
    nc = await connect(nats_url, config.nats, name="router-agent-liveness")
    agent = RouterAgent(config, nc, emulator_url=emulator.url)
    await agent.start()
    try:
        yield agent
    finally:
        await agent.stop()
        await nc.close()


@pytest.mark.integration
async def test_agent_answers_again_within_seconds_after_a_malformed_header_frame(
    production_agent, client, subjects, nats_url
):
    agent = production_agent
    assert (await client.ask(client.new_request(), timeout=5)).status == "ok"

    timeout_s, gap_s = 3.0, 0.02
    outcomes: list[tuple[float, bool]] = []  # (sent at, answered)

    async def one(sent: float) -> None:
        try:
            response = await client.ask(client.new_request(), timeout=timeout_s)
            outcomes.append((sent, response.status == "ok"))
        except Exception:  # noqa: BLE001 - timeout or no responders: not answered
            outcomes.append((sent, False))

    tasks: list[asyncio.Task[None]] = []

    async def send_for(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            tasks.append(asyncio.create_task(one(time.monotonic())))
            await asyncio.sleep(gap_s)

    await send_for(0.6)
    poisoned_at = time.monotonic()
    await asyncio.to_thread(raw_publish, nats_url, poison_frame(subjects.llm_request))
    await send_for(3.0)
    async with asyncio.timeout(timeout_s + 5):
        await asyncio.gather(*tasks)

    before = [ok for sent, ok in outcomes if sent < poisoned_at]
    after = sorted((sent - poisoned_at, ok) for sent, ok in outcomes if sent >= poisoned_at)
    lost = [round(at, 3) for at, ok in after if not ok]
    # The read loop's end is seen at once (a done-callback), the reconnect takes a few ms
    # (up to nats-py's reconnect_time_wait, 0.5 s from bus.connect, if the last connection
    # was that recent). Before the watchdog, nothing after the frame was answered for
    # about six minutes.
    recovery_bound_s = 1.0
    assert before and all(before)
    assert after[-1][0] > recovery_bound_s + 1  # requests were sent well past the bound
    late = [ok for at, ok in after if at >= recovery_bound_s]
    assert late and all(late), f"unanswered, in seconds after the frame: {lost}"
    assert agent.liveness.reconnects == 1
    assert agent.snapshot()["metrics"]["bus_reconnects"] == 1
    assert agent.liveness.last_reason == "the client's read loop has stopped"
    assert agent.nc.is_connected and not agent.nc._reading_task.done()


@pytest.mark.integration
async def test_connect_passes_the_configured_ping_settings(nats_url):
    nc = await connect(nats_url, NatsConfig(user_env=None, password_env=None, token_env=None,
                                            ping_interval_s=2.5, max_outstanding_pings=4), name="test")
    try:
        assert nc.options["ping_interval"] == 2.5
        assert nc.options["max_outstanding_pings"] == 4
    finally:
        await nc.close()


def test_ping_and_liveness_defaults_notice_a_dead_connection_in_seconds():
    cfg = NatsConfig()
    assert cfg.liveness_interval_s <= 1
    assert cfg.ping_interval_s * (cfg.max_outstanding_pings + 1) <= 30


# --------------------------------------------------------------------------- the watchdog alone


def read_task(done: bool = False) -> asyncio.Future[None]:
    """Stands in for nats-py's read loop task: done() and add_done_callback()."""
    task = asyncio.get_running_loop().create_future()
    if done:
        task.set_result(None)
    return task


class FakeClient:
    """The part of nats-py's Client the watchdog reads; force_reconnect behaves like
    nats-py's (the client is reconnecting afterwards, not connected)."""

    def __init__(self, read_loop_done: bool = False, pong_delay_s: float = 0.0):
        self.is_connected = True
        self._reading_task = read_task(read_loop_done)
        self.stats = {"reconnects": 0}
        self.pong_delay_s = pong_delay_s
        self.force_reconnect_calls = 0
        self.flushes = 0
        self.reconnected = asyncio.Event()

    async def flush(self, timeout: float = 10) -> None:
        self.flushes += 1
        async with asyncio.timeout(timeout):
            await asyncio.sleep(self.pong_delay_s)

    async def force_reconnect(self) -> None:
        self.force_reconnect_calls += 1
        self.is_connected = False
        self.reconnected.set()


async def started(watchdog: Liveness) -> asyncio.Task[None]:
    """Start the watch loop; return once it has hooked the read loop (it does so before
    its first await, so one turn of the event loop is enough)."""
    task = asyncio.create_task(watchdog.run())
    await asyncio.sleep(0)  # one scheduling turn, not a timed wait
    assert watchdog._hooked is not None
    return task


async def wakeups_done(watchdog: Liveness) -> None:
    """Wait for the checks a read-loop end scheduled (its callback runs on the next turn)."""
    await asyncio.sleep(0)  # one scheduling turn: the done-callback fires
    if watchdog._wakeups:
        await asyncio.wait(set(watchdog._wakeups), timeout=5)


async def test_dead_read_loop_forces_exactly_one_reconnect():
    nc = FakeClient(read_loop_done=True)
    watchdog = Liveness(nc, interval_s=0.01, timeout_s=1)
    assert await watchdog.tick() is True
    for _ in range(3):  # reconnecting now: not the watchdog's business
        assert await watchdog.tick() is False
    assert nc.force_reconnect_calls == 1
    assert watchdog.reconnects == 1
    assert nc.flushes == 0  # the read loop check needs no round trip


async def test_healthy_client_is_never_reconnected():
    nc = FakeClient()
    watchdog = Liveness(nc, interval_s=0.01, timeout_s=1)
    for _ in range(5):
        assert await watchdog.tick() is False
    assert nc.force_reconnect_calls == 0 and watchdog.reconnects == 0
    assert nc.flushes == 5


async def test_run_loop_reconnects_at_once_when_the_read_loop_ends():
    nc = FakeClient()
    watchdog = Liveness(nc, interval_s=30, timeout_s=1)  # no periodic tick within the test
    task = await started(watchdog)
    try:
        assert nc.force_reconnect_calls == 0
        nc._reading_task.set_result(None)  # the loop ends; the client still says connected
        await wakeups_done(watchdog)
        assert nc.reconnected.is_set()
        assert nc.force_reconnect_calls == 1 and watchdog.reconnects == 1
    finally:
        task.cancel()


async def test_periodic_tick_catches_a_read_loop_replaced_and_dead_before_it_was_hooked():
    nc = FakeClient()
    watchdog = Liveness(nc, interval_s=0.01, timeout_s=1)
    task = await started(watchdog)
    try:
        nc._reading_task = read_task(done=True)  # e.g. a reconnect, then a bad frame
        async with asyncio.timeout(5):
            await nc.reconnected.wait()  # the next periodic tick finds it
        assert nc.force_reconnect_calls == 1
    finally:
        task.cancel()


async def test_an_orderly_end_of_the_read_loop_is_not_a_failure():
    nc = FakeClient()
    watchdog = Liveness(nc, interval_s=30, timeout_s=1)
    task = await started(watchdog)
    try:
        nc.is_connected = False  # closing or reconnecting: nats-py ends the loop itself
        nc._reading_task.set_result(None)
        await wakeups_done(watchdog)  # the check the end triggered has run...
        assert nc.force_reconnect_calls == 0  # ...and decided it was not a failure
    finally:
        task.cancel()


async def test_a_round_trip_slower_than_the_timeout_forces_a_reconnect():
    nc = FakeClient(pong_delay_s=1.0)
    watchdog = Liveness(nc, interval_s=0.01, timeout_s=0.05)
    assert await watchdog.tick() is True
    assert nc.force_reconnect_calls == 1
    assert watchdog.last_reason == "no PONG within 0.05 s"


async def test_a_slow_round_trip_during_a_reconnect_is_not_counted():
    nc = FakeClient(pong_delay_s=1.0)

    async def flush(timeout: float = 10) -> None:
        nc.stats["reconnects"] += 1  # nats-py reconnected on its own meanwhile
        raise TimeoutError

    nc.flush = flush
    assert await Liveness(nc, interval_s=0.01, timeout_s=0.05).tick() is False
    assert nc.force_reconnect_calls == 0


async def test_round_trip_off_checks_only_the_read_loop():
    nc = FakeClient(pong_delay_s=1.0)
    assert await Liveness(nc, interval_s=0.01, timeout_s=0).tick() is False
    assert nc.flushes == 0


async def test_a_connection_without_force_reconnect_is_left_alone():
    class Plain:
        is_connected = True

    watchdog = Liveness(Plain(), interval_s=0.01)
    assert not watchdog.supported
    async with asyncio.timeout(1):
        await watchdog.run()  # returns at once instead of polling forever


async def test_interval_zero_switches_the_watchdog_off():
    nc = FakeClient(read_loop_done=True)
    async with asyncio.timeout(1):
        await Liveness(nc, interval_s=0).run()
    assert nc.force_reconnect_calls == 0


async def test_repeated_incidents_warn_once_per_window_and_count_every_one(caplog):
    now = [0.0]
    nc = FakeClient(read_loop_done=True)
    watchdog = Liveness(nc, interval_s=0.01, timeout_s=0, warn_every_s=60, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="router_agent.bus"):
        for step in range(3):
            now[0] = step * 10.0
            nc.is_connected = True  # reconnected, then deaf again
            assert await watchdog.tick() is True
        now[0] = 100.0
        nc.is_connected = True
        assert await watchdog.tick() is True
    assert watchdog.reconnects == 4 and nc.force_reconnect_calls == 4
    warnings = [r.getMessage() for r in caplog.records if r.name == "router_agent.bus"]
    assert len(warnings) == 2
    assert "read loop has stopped" in warnings[0]
    assert "2 more since the last warning" in warnings[1]


# --------------------------------------------------------------------------- the upstream report


@pytest.mark.integration
def test_upstream_reproducer_still_reproduces_the_bug(tmp_path: Path):
    """docs/upstream/nats-py-malformed-header.md says nats-py 2.16 goes deaf; this keeps it
    true. If it fails because nats-py fixed the bug, update the report (and consider the
    watchdog's round trip the remaining guard)."""
    with EmbeddedNats(tmp_path / "nats") as server:
        result = subprocess.run(
            [sys.executable, str(REPRODUCER), server.url], check=False, capture_output=True, text=True,
            timeout=60,
        )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "BUG REPRODUCED" in result.stdout
    assert "IndexError" in result.stderr  # nats-py's own log of the exception that ended the loop
