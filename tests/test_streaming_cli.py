"""``router-agent request --stream``: the answer printed as it arrives, in a real process."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests import test_cli
from tests.test_cli import CLI, run_cli

agent_process = test_cli.agent_process  # the fixture: `router-agent run` in a child process

pytestmark = pytest.mark.integration


async def test_request_stream_prints_the_answer_once_then_the_summary(agent_process, nats_url, prefix):
    code, out, err = await run_cli(
        "request", "--nats-url", nats_url, "--prefix", prefix, "--model", "gpt-4-turbo", "--stream",
        "Plan the migration",
    )
    assert code == 0, err
    assert out.startswith("decision: ") or "decision: " in out
    assert out.count("[emulated gpt-4-turbo-preview] migration the Plan") == 1  # streamed, not printed again
    assert "streamed: " in out and "response: openai/gpt-4-turbo (EMULATED)" in out


async def test_request_stream_json_prints_one_line_per_chunk_then_the_answer(agent_process, nats_url, prefix):
    code, out, _ = await run_cli(
        "request", "--nats-url", nats_url, "--prefix", prefix, "--model", "claude-3-opus", "--stream", "--json", "hi",
    )
    assert code == 0
    docs = [json.loads(line) for line in out.splitlines()]
    chunks = [d["llm_chunk"] for d in docs if "llm_chunk" in d]
    response = docs[-1]["llm_response"]
    assert chunks and [c["seq"] for c in chunks] == list(range(len(chunks)))
    assert "".join(c.get("content", "") for c in chunks) == response["message"]["content"]
    assert response["streamed"]["chunks"] == len(chunks)


async def test_request_stream_prints_content_before_the_stream_ends_and_then_the_error(
    agent_process, nats_url, prefix, emulator
):
    # The stream stalls half-way for 3 s, then the connection drops: a typed error after content.
    emulator.set_fault("gpt-4-turbo-preview", {"stall_rate": 1.0, "hang_s": 3})
    proc = await asyncio.create_subprocess_exec(
        *CLI, "request", "--nats-url", nats_url, "--prefix", prefix, "--model", "gpt-4-turbo", "--stream",
        "one two three four five six seven eight",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    seen = b""
    async with asyncio.timeout(20):
        while b"[emulated" not in seen:
            piece = await proc.stdout.read(1)
            assert piece, "the CLI ended before printing any content"
            seen += piece
    assert emulator.runtime.hanging == 1  # the stream is still stalled: the content came as it arrived
    async with asyncio.timeout(20):
        rest, err = await proc.communicate()
    out = (seen + rest).decode()
    assert proc.returncode == 1, err
    assert "error: connection_error: the stream ended early" in out and "were delivered" in out
