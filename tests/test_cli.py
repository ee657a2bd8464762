"""The CLI as a user scripts it: real processes, a real nats-server, real HTTP."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "router_agent"]


async def run_cli(*args: str, timeout: float = 30) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *CLI, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(timeout):
        out, err = await proc.communicate()
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def agent_process(nats_url, emulator, prefix, tmp_path: Path):
    """``router-agent run`` in a child process; yields once it printed its ready line."""
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({
        "router": {"subject_prefix": prefix, "metrics_interval_s": 0.2, "cost_report_interval_s": 0.2},
        "emulation": {"mode": "always"},
        # The emulator listens on loopback, closed to runtime registrations by default.
        "security": {"endpoints": {"private_networks_allowed": ["127.0.0.0/8", "::1/128"]}},
    }))
    proc = await asyncio.create_subprocess_exec(
        *CLI, "run", "--nats-url", nats_url, "--emulator-url", emulator.url, "--overlay", str(overlay),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    lines: list[str] = []
    async with asyncio.timeout(30):
        while True:
            line = (await proc.stdout.readline()).decode()
            assert line, f"agent exited early: {''.join(lines)}"
            lines.append(line)
            if line.startswith("router-agent ready:"):
                break
    try:
        yield proc, lines
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_run_prints_its_nats_url_the_emulated_providers_and_a_ready_line(agent_process, nats_url):
    _, lines = agent_process
    text = "".join(lines)
    assert f"NATS: {nats_url}" in text
    assert "EMULATED" in text and "openai" in text
    assert lines[-1].startswith("router-agent ready:")


async def test_request_prints_decision_and_response_and_exits_zero(agent_process, nats_url, prefix):
    code, out, err = await run_cli(
        "request", "--nats-url", nats_url, "--prefix", prefix, "--agent", "cto_agent", "Plan the migration"
    )
    assert code == 0, err
    assert out.startswith("decision: ")
    assert "response: " in out and "(EMULATED)" in out
    assert "[emulated " in out


async def test_request_json_output_and_nonzero_exit_on_error(agent_process, nats_url, prefix):
    code, out, _ = await run_cli(
        "request", "--nats-url", nats_url, "--prefix", prefix, "--model", "nope", "--json", "hello"
    )
    assert code == 1
    docs = [json.loads(line) for line in out.splitlines()]
    response = docs[-1]["llm_response"]
    assert response["status"] == "error" and response["error"]["code"] == "no_candidates"
    assert docs[0]["routing_decision"].get("chosen") is None


async def test_register_then_request_routes_to_the_new_provider(agent_process, nats_url, prefix, emulator, tmp_path):
    spec = tmp_path / "provider.yaml"
    spec.write_text(yaml.safe_dump({
        "provider": "ollama-lab", "base_url": emulator.url, "type": "local",
        "models": [{"name": "phi-3", "capabilities": ["general_reasoning"]}],
    }))
    code, out, err = await run_cli("register", "--nats-url", nats_url, "--prefix", prefix, str(spec))
    assert code == 0, out + err
    assert "registered ollama-lab" in out
    code, out, _ = await run_cli("request", "--nats-url", nats_url, "--prefix", prefix, "--model", "phi-3", "--json", "hi")
    assert code == 0
    response = json.loads(out.splitlines()[-1])["llm_response"]
    assert (response["provider"], response["model"]) == ("ollama-lab", "phi-3")


async def test_register_rejection_exits_nonzero_and_says_why(agent_process, nats_url, prefix):
    code, out, _ = await run_cli(
        "register", "--nats-url", nats_url, "--prefix", prefix,
        "--provider", "imds", "--base-url", "http://169.254.169.254/v1", "--model", "m",
    )
    assert code == 1
    assert "endpoint_not_allowed" in out


async def test_watch_prints_signals_as_they_pass(agent_process, nats_url, prefix):
    watcher = await asyncio.create_subprocess_exec(
        *CLI, "watch", "--nats-url", nats_url, "--prefix", prefix, "cost_report", "--count", "1", "--timeout", "20",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        out, _ = await watcher.communicate()
    assert watcher.returncode == 0
    subject, payload = out.decode().splitlines()[0].split(" ", 1)
    assert subject == f"{prefix}cost_report"
    assert json.loads(payload)["type"] == "io.llmrouter.cost_report.v1"


async def test_request_without_a_router_exits_2(nats_url):
    code, _, err = await run_cli("request", "--nats-url", nats_url, "--prefix", "nobody-home.", "--timeout", "1", "hi")
    assert code == 2
    assert "request failed" in err or "no answer" in err


async def test_unreachable_bus_exits_3_with_a_clear_message():
    code, _, err = await run_cli("request", "--nats-url", "nats://127.0.0.1:1", "hi")
    assert code == 3
    assert "cannot connect to NATS" in err


async def test_sigterm_stops_gracefully(agent_process):
    proc, _ = agent_process
    proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(20):
        rest = (await proc.stdout.read()).decode()
        code = await proc.wait()
    assert code == 0
    assert "router-agent stopping" in rest and "router-agent stopped" in rest


async def test_invalid_config_fails_at_start_with_file_and_key(tmp_path):
    overlay = tmp_path / "bad.yaml"
    overlay.write_text("router:\n  max_attempts: 99\n")
    code, _, err = await run_cli("run", "--overlay", str(overlay), "--nats-url", "nats://127.0.0.1:1")
    assert code == 2
    assert "router.max_attempts" in err and "bad.yaml" in err
