"""The benchmark harness runs end to end: ``python -m bench --quick`` against real processes.

This checks that every scenario runs and reports sane numbers; it asserts nothing about
speed (figures on a shared CI machine mean little, and goals are for ``python3 dev.py bench``).
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 420
pytestmark = pytest.mark.timeout(TIMEOUT_S + 60)

ROW_PREFIXES = [
    "latency:",
    "latency: bare relay on the same stack",
    "throughput: closed loop",
    "throughput: open loop",
    "with ledger and cache on: latency",
    "with ledger and cache on: router's own share",
    "with ledger and cache on: cache HITS",
    "with ledger and cache on: evidence, latency agent",
    "with ledger and cache on: throughput, closed loop",
    "with ledger and cache on: evidence, throughput agent",
    "CPU per request:",
    "memory: agent RSS idle",
    "memory:",
    "adapters: openai",
    "adapters: anthropic",
    "adapters: gemini",
    "adapters: ollama",
    "streaming: time to first token, openai",
    "streaming: time to first token, anthropic",
    "streaming: time to first token, gemini",
    "streaming: time to first token, ollama",
    "streaming: relay",
    "scale-out:",
    "peer:",
]
STREAMS_ROW = re.compile(r"^streaming: (many concurrent streams|[\d,]+ concurrent streams at)")
STREAMING_SCENARIOS = ("ttft", "relay", "streams")
DIFFERENCES = re.compile(r"\.(added|router_share|router_share_vs_wire|bare_relay_share|router_over_bare_relay|plain_added|plain_share|hits_added)\.")
"""Result keys that are differences of two figures: they may be negative by noise."""


def _numbers(value: Any, path: str = "$") -> list[tuple[str, float]]:
    """Every number in a JSON document, with its path."""
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [(path, float(value))]
    if isinstance(value, dict):
        return [n for k, v in value.items() for n in _numbers(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [n for i, v in enumerate(value) for n in _numbers(v, f"{path}[{i}]")]
    return []


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    out = tmp_path_factory.mktemp("bench") / "quick.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "bench", "--quick", "--json", str(out)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # so a timeout can stop the whole group
    )
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            stdout, stderr = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
        pytest.fail(f"python -m bench --quick did not finish in {TIMEOUT_S}s:\n{stderr[-3000:]}")
    assert process.returncode == 0, f"exit {process.returncode}\nstdout:\n{stdout}\nstderr:\n{stderr[-4000:]}"
    return stdout, json.loads(out.read_text())


def test_the_table_has_every_scenario_row(quick_run: tuple[str, dict[str, Any]]) -> None:
    stdout, _ = quick_run
    lines = stdout.splitlines()
    for prefix in ROW_PREFIXES:
        assert any(line.startswith(prefix) for line in lines), f"no row starting {prefix!r} in:\n{stdout}"
    assert any(STREAMS_ROW.match(line) for line in lines), stdout
    # Streaming through the bus is measured, or every streaming figure says why it is not.
    assert "FAILED" not in stdout
    # The run says where it ran and with what.
    for word in ("machine:", "cores", "Python", "versions:", "telemetry", "log level"):
        assert word in stdout
    # Every goal is listed.
    for goal in ("added latency p50", "router's own share", "added latency p99", "throughput", "CPU per request",
                 "memory per in-flight request", "RSS at", "adapter layer alone", "time to first token added",
                 "concurrent streams at 50 tokens/s", "with ledger and cache on: router's own share p50",
                 "with ledger and cache on: throughput at"):
        assert goal in stdout


def test_streaming_figures_are_measured_or_say_why(quick_run: tuple[str, dict[str, Any]]) -> None:
    """Before streaming through the bus lands, ttft/relay/streams print "not measured:
    streaming through the bus not available" instead of failing; after, they measure."""
    stdout, document = quick_run
    results = document["results"]
    measured = {name: results[name]["measured"] for name in STREAMING_SCENARIOS}
    assert len(set(measured.values())) == 1, measured  # one agent: it streams or it does not
    if not measured["ttft"]:
        for name in STREAMING_SCENARIOS:
            assert results[name]["reason"].startswith("not measured:"), results[name]
        assert "not measured: streaming through the bus not available" in stdout
        for vendor in results["ttft"]["vendors"].values():  # the direct side is measured anyway
            assert vendor["direct"]["p50_ms"] > 0 and vendor["direct"]["errors"] == 0
        return
    assert "not measured: streaming through the bus" not in stdout
    for api, vendor in results["ttft"]["vendors"].items():
        assert vendor["router"]["errors"] == 0 and vendor["direct"]["errors"] == 0, api
        assert 0 < vendor["router"]["p50_ms"] <= vendor["router"]["p99_ms"], api
        assert vendor["content_mismatches"] == 0, api  # the chunks spell the final message
    relay = results["relay"]
    for name in ("stream_default", "stream_coalesce_0") if relay["coalesce_setting"] else ("stream_default",):
        assert relay[name]["errors"] == 0 and relay[name]["answered_per_s"] > 0, name
        assert relay[name]["msgs_per_stream"] >= 1, name
        assert relay[name]["cpu_pct"]["agent"] > 0, name
    if relay["coalesce_setting"]:  # coalescing 0 sends one bus message per upstream piece
        assert relay["stream_coalesce_0"]["msgs_per_stream"] == pytest.approx(relay["chunks_per_stream"], rel=0.1)
    for level in results["streams"]["levels"]:
        for side in ("router", "direct"):
            figures = level[side]
            assert figures["errors"] == 0 and figures["completed_per_s"] > 0, side
            assert figures["gaps"]["count"] > 0, side


def test_the_bench_cuts_streams_as_the_emulator_does() -> None:
    """bench.streams states the emulator's piece rule to compute which gaps the upstream
    caused; it must be the emulator's."""
    from bench import streams
    from router_agent.emulator import content

    for text in ("[emulated gpt-4-turbo-preview] " + streams.long_prompt(119), "a bb  ccc", "", "x" * 30):
        assert streams.pieces(text) == content.pieces(text)
    assert streams.PIECE_CHARS == content.PIECE_CHARS


def test_gap_excess_takes_out_the_upstream_schedule() -> None:
    from bench.streams import gap_excess

    text = "[emulated m] " + "a" * 11 + " " + "b" * 11  # pieces: "[emulated", " m]", " aaa...", " bbb..."
    ends = [9, 12, 24, 36]
    step = 0.02
    on_time = [(1.0 + i * step, ends[i]) for i in range(4)]
    assert [round(e, 9) for _, e in gap_excess(on_time, text, step)] == [0.0, 0.0, 0.0]
    # One chunk 150 ms late, then two pieces coalesced into one chunk: only the stall counts.
    late = [(1.0, 9), (1.0 + step + 0.15, 12), (1.0 + 3 * step + 0.15, 36)]
    assert [round(e, 9) for _, e in gap_excess(late, text, step)] == [0.15, 0.0]


def test_the_json_has_sane_numbers(quick_run: tuple[str, dict[str, Any]]) -> None:
    _, document = quick_run
    results = document["results"]
    assert "failed" not in results
    assert set(results) >= {"latency", "throughput", "ledger_cache", "cpu", "memory", "adapters", "ttft", "relay",
                            "streams", "scale_out", "peer_litellm"}

    for path, number in _numbers(results):
        assert not math.isnan(number), path
        # A difference may be negative by noise.
        if DIFFERENCES.search(path) or path.endswith(".relay_us_per_chunk"):
            continue
        assert number >= 0, f"{path} = {number}"

    latency = results["latency"]
    assert latency["router"]["errors"] == 0 and latency["direct"]["errors"] == 0
    assert latency["bare_relay"]["errors"] == 0 and latency["echo"]["errors"] == 0
    for side in ("router", "direct", "bare_relay"):
        assert 0 < latency[side]["p50_ms"] <= latency[side]["p90_ms"] <= latency[side]["p99_ms"]

    assert len(results["throughput"]) >= 2
    for row in results["throughput"]:
        for side in ("router", "direct"):
            figures = row[side]
            assert figures["rps"] > 0, (row["mode"], row["in_flight"], side)
            assert figures["p50_ms"] <= figures["p99_ms"]
            assert figures["answered"] <= figures["sent"]

    _check_ledger_cache(results["ledger_cache"])

    cpu = results["cpu"]
    assert cpu["router"]["rps"] > 0
    assert cpu["router"]["cpu_s_per_1000"]["agent"] > 0

    memory = results["memory"]
    assert memory["idle_rss_mb"] > 0
    for level in memory["levels"]:
        assert memory[str(level)]["rss_mb"] > 0
        assert memory[str(level)]["reached_in_flight"] > 0

    adapters = results["adapters"]
    assert set(adapters["vendors"]) == {"openai", "anthropic", "gemini", "ollama"}
    for api, figures in adapters["vendors"].items():
        for side in ("adapter", "raw"):
            assert figures[side]["rps"] > 0 and figures[side]["errors"] == 0, (api, side)

    for case in results["scale_out"].values():
        assert case["one"]["rps"] > 0 and case["two"]["rps"] > 0

    peer = results["peer_litellm"]
    if peer["available"]:
        assert peer["latency"]["litellm"]["p50_ms"] > 0
        assert peer["throughput_closed"]["litellm"]["rps"] > 0
    else:
        assert peer["reason"]

    meta = document["meta"]
    assert meta["machine"]["cores"] >= 1
    assert meta["settings"]["telemetry"] in ("on", "off")
    assert {g["result"] for g in document["goals"]} <= {"n/a (quick)", "not run", "PASS", "MISS"}


def _check_ledger_cache(result: dict[str, Any]) -> None:
    """The agent under test answered every request, with the ledger and the cache on (the
    scenario itself fails when its evidence says otherwise: here, that it was gathered)."""
    from bench.ledger_cache import problems

    latency = result["latency"]
    for side in ("ledger_cache", "plain", "direct", "hits", "echo"):
        assert latency[side]["errors"] == 0, side
        assert 0 < latency[side]["p50_ms"] <= latency[side]["p99_ms"], side
    throughput = result["throughput"]
    for side in ("ledger_cache", "plain", "direct"):
        assert throughput[side]["rps"] > 0 and throughput[side]["errors"] == 0, side
    assert throughput["pct_of_direct"]["ledger_cache"] > 0
    for evidence in (latency["evidence"], throughput["evidence"]):
        assert problems(evidence) == []
        assert evidence["billed_attempts"] >= evidence["answered"]["provider"] > 0
        assert evidence["cache_entries"] > 0 and evidence["answered"]["cache"] == 0
    assert latency["evidence"]["hits_answered"]["cache"] > 0


def test_the_paired_comparison_reports_each_round_and_the_blocks_interval():
    from bench.ab import paired

    result = paired([1.0, 2.0, 3.0, 4.0], [1.5, 2.5, 3.0, 4.2], per_round=2)
    assert result["median"] == pytest.approx(0.35) and result["mean"] == pytest.approx(0.3)
    assert result["low"] < result["mean"] < result["high"]
    assert result["rounds"] == pytest.approx([0.5, 0.1])


@pytest.mark.parametrize("b", [[], ["--b-relay"]], ids=["two-agents", "agent-and-relay"])
def test_bench_ab_runs_two_sides_in_paired_blocks(b: list[str]):
    """``python -m bench.ab`` end to end, tiny: both sides answer (every request is checked
    ``ok``: an error stops the run), the three lines are printed."""
    done = subprocess.run([sys.executable, "-m", "bench.ab", "--rounds", "2", "--blocks", "1", "--block", "5", *b],
                          check=False, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("sequential p50 over 2 x 1 blocks of 5: A ")
    assert re.match(r"router's own share \(router - direct - echo\): A [+-]\d", lines[1])
    assert re.match(r"B - A per block: median [+-]\d.* per round [+-]\d\.\d{4}, [+-]\d\.\d{4} ms$", lines[2])


def test_bench_ab_refuses_an_environment_for_the_relay():
    done = subprocess.run([sys.executable, "-m", "bench.ab", "--b-relay", "--b-env", "X=1"],
                          check=False, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--b-relay replaces agent B" in done.stderr
