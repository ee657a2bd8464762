"""The benchmark harness runs end to end: ``python -m bench --quick`` against real processes.

This checks that every scenario runs and reports sane numbers; it asserts nothing about
speed (figures on a shared CI machine mean little, and goals are for ``python3 dev.py bench``).
"""

from __future__ import annotations

import json
import math
import os
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
    "throughput: closed loop",
    "throughput: open loop",
    "CPU per request:",
    "memory: agent RSS idle",
    "memory:",
    "streaming: time to first token",
    "scale-out:",
    "peer:",
]


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
    assert "not measured: streaming not implemented" in stdout
    assert "FAILED" not in stdout
    # The run says where it ran and with what.
    for word in ("machine:", "cores", "Python", "versions:", "telemetry", "log level"):
        assert word in stdout
    # Every goal is listed.
    for goal in ("added latency p50", "router's own share", "added latency p99", "throughput", "CPU per request",
                 "memory per in-flight request", "RSS at"):
        assert goal in stdout


def test_the_json_has_sane_numbers(quick_run: tuple[str, dict[str, Any]]) -> None:
    _, document = quick_run
    results = document["results"]
    assert "failed" not in results
    assert set(results) >= {"latency", "throughput", "cpu", "memory", "streaming", "scale_out", "peer_litellm"}

    for path, number in _numbers(results):
        assert not math.isnan(number), path
        if ".added." in path or ".router_share." in path:  # a difference may be negative by noise
            continue
        assert number >= 0, f"{path} = {number}"

    latency = results["latency"]
    assert latency["router"]["errors"] == 0 and latency["direct"]["errors"] == 0
    for side in ("router", "direct"):
        assert 0 < latency[side]["p50_ms"] <= latency[side]["p90_ms"] <= latency[side]["p99_ms"]

    assert len(results["throughput"]) >= 2
    for row in results["throughput"]:
        for side in ("router", "direct"):
            figures = row[side]
            assert figures["rps"] > 0, (row["mode"], row["in_flight"], side)
            assert figures["p50_ms"] <= figures["p99_ms"]
            assert figures["answered"] <= figures["sent"]

    cpu = results["cpu"]
    assert cpu["router"]["rps"] > 0
    assert cpu["router"]["cpu_s_per_1000"]["agent"] > 0

    memory = results["memory"]
    assert memory["idle_rss_mb"] > 0
    for level in memory["levels"]:
        assert memory[str(level)]["rss_mb"] > 0
        assert memory[str(level)]["reached_in_flight"] > 0

    assert results["streaming"]["measured"] is False

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
