"""Fault injection and the admin endpoint: every fault kind, flips under load, config file and CLI.

Synchronisation is on the emulator's own counters (``Emulator.wait_for``), never on sleeps;
nothing asserts on elapsed time.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from router_agent.emulator import Emulator, FaultSpec, Outage, load_config, start_emulator
from router_agent.emulator.faults import FaultTable
from router_agent.emulator.runtime import Runtime
from router_agent.emulator.server import build_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    emulator = await start_emulator(seed=1)
    try:
        yield emulator
    finally:
        await emulator.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def chat(model: str = "m", stream: bool = False) -> dict[str, Any]:
    return {"model": model, "stream": stream,
            "messages": [{"role": "user", "content": "one two three four five six seven"}]}


STREAMS = {  # vendor -> (path, body) for a streamed request to model "m"
    "openai": ("/v1/chat/completions", chat(stream=True)),
    "anthropic": ("/v1/messages", {**chat(stream=True), "max_tokens": 100}),
    "gemini": ("/v1beta/models/m:streamGenerateContent?alt=sse", {"contents": [{"parts": [{"text": "a b c d e f"}]}]}),
    "ollama": ("/api/chat", chat(stream=True)),
}


async def status_of(http: aiohttp.ClientSession, emu: Emulator, model: str = "m") -> tuple[int, Any]:
    async with http.post(f"{emu.url}/chat/completions", json=chat(model)) as resp:
        return resp.status, resp.headers


# --- the fault table, pure ------------------------------------------------------------


def test_outage_window_status_burst_and_order() -> None:
    table = FaultTable({"m": FaultSpec(outages=[Outage(10, 20, 529)], rate_limit_burst=2, retry_after_s=3)})
    assert table.decide("m", 15, random.random).status == 529  # type: ignore[union-attr]
    burst = [table.decide("m", 5, random.random) for _ in range(3)]
    assert [(f.status, f.retry_after_s, f.cause) if f else None for f in burst] == [
        (429, 3, "burst"), (429, 3, "burst"), None
    ]
    assert table.decide("m", 20, random.random) is None  # the window is half-open
    assert table.decide("other", 15, random.random) is None


def test_wildcard_applies_to_models_without_their_own_entry() -> None:
    table = FaultTable({"*": FaultSpec(status=503), "fine": FaultSpec()})
    assert table.decide("anything", 0, random.random).status == 503  # type: ignore[union-attr]
    assert table.decide("fine", 0, random.random) is None


def test_seeded_draws_give_the_same_faults_in_the_same_order() -> None:
    spec = FaultSpec(error_rates={500: 0.2, 429: 0.1}, malformed_rate=0.1, cut_rate=0.1)

    def run(seed: int) -> list[str]:
        table, rng = FaultTable({"m": spec}), random.Random(seed)
        faults = [table.decide("m", 0, rng.random) for _ in range(200)]
        return [f"{f.kind}{f.status}" if f else "-" for f in faults]

    assert run(3) == run(3)
    assert {"error500", "error429", "malformed0", "cut0", "-"} == set(run(3))


def test_seeded_jitter_is_reproducible_and_bounded() -> None:
    config = build_config(latency_ms=100, seed=5, models={"j": {"ttft_ms": 200, "tokens_per_s": 50, "jitter": 0.5}})
    first, second = Runtime(config), Runtime(config)
    draws = [first.timing("j") for _ in range(50)]
    assert draws == [second.timing("j") for _ in range(50)]
    assert all(0.1 <= ttft <= 0.3 and 0.01 <= per_token <= 0.03 for ttft, per_token in draws)
    assert first.timing("plain") == (0.1, 0.0)
    assert first.timing("plain", ttft_ms=7, tokens_per_s=100) == (0.007, 0.01)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"error_rates": {500: 0.7}, "cut_rate": 0.5}, "add up to"),
        ({"status": 200}, "4xx or 5xx"),
        ({"hang_rate": 1.5}, "hang_rate"),
        ({"outages": [{"start_s": 5, "end_s": 1}]}, "end_s"),
        ({"stauts": 500}, "stauts"),
    ],
)
def test_bad_fault_specs_are_refused_naming_the_problem(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_config(faults={"m": spec})


# --- each fault kind over HTTP ----------------------------------------------------------


async def test_error_rate_one_always_fails_and_429_burst_carries_retry_after(
    emu: Emulator, http: aiohttp.ClientSession
) -> None:
    emu.set_fault("m", {"error_rates": {502: 1.0}})
    assert (await status_of(http, emu))[0] == 502
    emu.set_fault("m", {"rate_limit_burst": 2, "retry_after_s": 0.25})
    for _ in range(2):
        status, headers = await status_of(http, emu)
        assert status == 429
        assert (headers["retry-after"], headers["retry-after-ms"]) == ("1", "250")
    assert (await status_of(http, emu))[0] == 200
    assert emu.stats()["faults"] == {"m": {"error 502": 1, "error 429": 2}}


async def test_outage_in_progress_and_outage_to_come(emu: Emulator, http: aiohttp.ClientSession) -> None:
    emu.set_fault("m", {"outages": [{"start_s": 0, "end_s": 1e9, "status": 529}]})
    assert (await status_of(http, emu))[0] == 529
    emu.set_fault("m", {"outages": [{"start_s": 1e8, "end_s": 1e9}]})
    assert (await status_of(http, emu))[0] == 200


async def test_malformed_body_and_malformed_stream_event(emu: Emulator, http: aiohttp.ClientSession) -> None:
    emu.set_fault("m", {"malformed_rate": 1.0})
    async with http.post(f"{emu.url}/chat/completions", json=chat()) as resp:
        assert resp.status == 200
        with pytest.raises(json.JSONDecodeError):
            json.loads(await resp.read())
    async with http.post(f"{emu.url}/chat/completions", json=chat(stream=True)) as resp:
        lines = [line for line in (await resp.read()).decode().split("\n\n") if line]
    assert lines[-1] == "data: [DONE]"
    broken = []
    for line in lines[:-1]:
        try:
            json.loads(line.removeprefix("data: "))
        except json.JSONDecodeError:
            broken.append(line)
    assert len(broken) == 1


async def test_cut_body_is_incomplete(emu: Emulator, http: aiohttp.ClientSession) -> None:
    emu.set_fault("m", {"cut_rate": 1.0})
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.post(f"{emu.url}/chat/completions", json=chat()) as resp:
            assert resp.status == 200
            await resp.read()


@pytest.mark.parametrize("vendor", sorted(STREAMS))
async def test_stream_cut_midway_delivers_a_part_then_breaks(
    emu: Emulator, http: aiohttp.ClientSession, vendor: str
) -> None:
    path, body = STREAMS[vendor]
    async with http.post(f"{emu.base_url}{path}", json=body) as resp:
        whole = await resp.read()
    emu.set_fault("m", {"cut_rate": 1.0})
    received = b""
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.post(f"{emu.base_url}{path}", json=body) as resp:
            async for data in resp.content.iter_any():
                received += data
    assert received and len(received) < len(whole)


async def test_hang_holds_until_the_client_leaves(emu: Emulator, http: aiohttp.ClientSession) -> None:
    emu.set_fault("m", {"hang_rate": 1.0})
    request = asyncio.create_task(status_of(http, emu))
    await emu.wait_for(lambda r: r.hanging == 1)
    assert not request.done()
    request.cancel()
    await emu.wait_for(lambda r: r.hanging == 0)  # the server-side handler was freed


async def test_hang_ends_with_a_dropped_connection_on_close(http: aiohttp.ClientSession) -> None:
    emu = await start_emulator(faults={"m": {"hang_rate": 1.0}})
    request = asyncio.create_task(status_of(http, emu))
    await emu.wait_for(lambda r: r.hanging == 1)
    await emu.close()
    with pytest.raises(aiohttp.ClientConnectionError):
        await request


async def test_stream_stall_sends_part_then_nothing(http: aiohttp.ClientSession) -> None:
    emu = await start_emulator(faults={"m": {"stall_rate": 1.0}})
    received: list[bytes] = []

    async def read() -> None:
        async with http.post(f"{emu.url}/chat/completions", json=chat(stream=True)) as resp:
            async for data in resp.content.iter_any():
                received.append(data)

    reader = asyncio.create_task(read())
    await emu.wait_for(lambda r: r.hanging == 1)
    await emu.close()
    with pytest.raises(aiohttp.ClientPayloadError):
        await reader
    assert received and b"[DONE]" not in b"".join(received)


# --- the admin endpoint -----------------------------------------------------------------


async def admin(http: aiohttp.ClientSession, emu: Emulator, method: str, path: str, body: Any = None,
                headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with http.request(method, f"{emu.admin_url}{path}", json=body, headers=headers) as resp:
        assert resp.headers["x-emulated"] == "true"
        return resp.status, await resp.json()


async def test_admin_faults_round_trip(emu: Emulator, http: aiohttp.ClientSession) -> None:
    assert await admin(http, emu, "GET", "/faults") == (200, {})
    status, table = await admin(http, emu, "PUT", "/faults", {"a": 503, "b": {"error_rates": {"500": 0.5}}})
    assert status == 200 and table == {"a": {"status": 503}, "b": {"error_rates": {"500": 0.5}}}
    status, table = await admin(http, emu, "PUT", "/faults/org/model-x", {"rate_limit_burst": 3})
    assert table["org/model-x"] == {"rate_limit_burst": 3}
    await status_of(http, emu, "org/model-x")
    assert (await admin(http, emu, "GET", "/faults"))[1]["org/model-x"] == {"rate_limit_burst": 2}
    status, table = await admin(http, emu, "DELETE", "/faults/a")
    assert set(table) == {"b", "org/model-x"}
    assert await admin(http, emu, "DELETE", "/faults") == (200, {})


async def test_admin_refuses_bad_bodies_and_changes_nothing(emu: Emulator, http: aiohttp.ClientSession) -> None:
    emu.set_fault("keep", 500)
    status, body = await admin(http, emu, "PUT", "/faults", {"x": {"cut_rate": 2}})
    assert status == 400 and "cut_rate" in body["error"]
    status, body = await admin(http, emu, "PUT", "/models/x", {"ttft": 1})
    assert status == 400 and "ttft" in body["error"]
    assert (await admin(http, emu, "GET", "/faults"))[1] == {"keep": {"status": 500}}


async def test_admin_models_and_stats(emu: Emulator, http: aiohttp.ClientSession) -> None:
    status, doc = await admin(http, emu, "PUT", "/models/fast", {"ttft_ms": 5, "tokens_per_s": 1000})
    assert status == 200
    assert doc["models"] == {"fast": {"ttft_ms": 5, "tokens_per_s": 1000, "jitter": 0}}
    assert emu.runtime.timing("fast") == (0.005, 0.001)
    status, doc = await admin(http, emu, "PUT", "/models", {"default": {"ttft_ms": 0, "tokens_per_s": 0}})
    assert status == 200
    assert doc["default"] == {"ttft_ms": 0, "tokens_per_s": 0, "jitter": 0} and "fast" in doc["models"]
    await admin(http, emu, "DELETE", "/models/fast")
    await status_of(http, emu, "counted")
    _, stats = await admin(http, emu, "GET", "/stats")
    assert stats["requests"] == {"counted": 1} and stats["hanging"] == 0
    assert (await admin(http, emu, "DELETE", "/stats"))[1]["requests"] == {}


async def test_admin_token(http: aiohttp.ClientSession) -> None:
    async with await start_emulator(admin_token="s3cret") as emu:
        assert (await admin(http, emu, "GET", "/faults"))[0] == 401
        auth = {"Authorization": "Bearer s3cret"}
        assert (await admin(http, emu, "GET", "/faults", headers=auth))[0] == 200
        assert (await status_of(http, emu))[0] == 200  # vendor routes need no admin token


def test_admin_token_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    config = build_config(admin_token_env="EMU_TEST_ADMIN_TOKEN")
    monkeypatch.delenv("EMU_TEST_ADMIN_TOKEN", raising=False)
    with pytest.raises(ValueError, match="EMU_TEST_ADMIN_TOKEN"):
        Runtime(config)
    monkeypatch.setenv("EMU_TEST_ADMIN_TOKEN", "from-env")
    assert Runtime(config).admin_token == "from-env"


async def test_flip_faults_through_admin_under_load(emu: Emulator, http: aiohttp.ClientSession) -> None:
    before, after = 200, 100
    flipped = asyncio.Event()
    results: list[tuple[bool, int]] = []
    gate = asyncio.Semaphore(40)

    async def one(index: int) -> None:
        if index >= before:
            await flipped.wait()
        async with gate:
            sent_after_flip = flipped.is_set()
            status, _ = await status_of(http, emu)
            results.append((sent_after_flip, status))

    load = asyncio.gather(*(one(i) for i in range(before + after)))
    await emu.wait_for(lambda r: r.requests.get("m", 0) >= 100)
    status, _ = await admin(http, emu, "PUT", "/faults/m", {"status": 503})
    assert status == 200
    flipped.set()
    await load
    assert len(results) == before + after
    assert all(s == 503 for late, s in results if late) and sum(late for late, _ in results) >= after
    assert sum(s == 200 for _, s in results) >= 100
    assert {s for _, s in results} == {200, 503}
    await admin(http, emu, "DELETE", "/faults/m")
    assert (await status_of(http, emu))[0] == 200


# --- config file and CLI ----------------------------------------------------------------


def test_the_example_config_loads() -> None:
    config = load_config(ROOT / "config" / "emulator.yaml")
    assert config.host == "127.0.0.1" and config.faults and config.models


def test_a_bad_config_names_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "emu.yaml"
    path.write_text("faults:\n  m:\n    error_rates: {500: 0.5}\n    hang_rat: 0.1\n")
    with pytest.raises(ValueError, match=r"emu\.yaml.*hang_rat"):
        load_config(path)
    path.write_text("latency_ms: -3\n")
    with pytest.raises(ValueError, match="latency_ms"):
        load_config(path)


def test_cli_emulate_reads_the_file_and_flags_win(tmp_path: Path) -> None:
    path = tmp_path / "emu.yaml"
    path.write_text("port: 1\nlatency_ms: 500\nfaults:\n  flaky: 503\nmodels:\n  slow: {ttft_ms: 900}\n")
    process = subprocess.Popen(
        [sys.executable, "-m", "router_agent", "emulate", "--config", str(path), "--port", "0",
         "--latency-ms", "0", "--seed", "4"],
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("emulator ready: http://127.0.0.1:"), line
        assert "latency 0 ms" in line
        admin_url = line.rsplit("admin ", 1)[1].rstrip(")\n")

        async def check() -> None:
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{admin_url}/faults") as resp:
                    assert await resp.json() == {"flaky": {"status": 503}}
                async with http.get(f"{admin_url}/models") as resp:
                    assert (await resp.json())["models"]["slow"]["ttft_ms"] == 900

        asyncio.run(check())
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_fault_spec_short_forms() -> None:
    config = build_config(faults={"a": 429, "b": {"status": 500}, "c": FaultSpec(cut_rate=0.5)})
    assert msgspec.to_builtins(config.faults) == {"a": {"status": 429}, "b": {"status": 500}, "c": {"cut_rate": 0.5}}
