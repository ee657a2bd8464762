"""``python -m bench.fuzz``: a hostile-input campaign against a running router agent.

Sends random and mutated signals to all four subjects the agent listens on, each with its
own reply subject, while valid requests flow, then counts what came back:

- every message on ``llm_request``, ``provider_register`` and ``provider_update`` must get
  exactly one answer; ``provider_health`` answers only bad input (zero or one);
- every valid request must be answered ``ok``;
- the agent must log no traceback for input it was sent.

The agent runs in this process (so its log records can be inspected) against the wheel's
nats-server and the emulator, both on 127.0.0.1; everything is bounded and stops by itself.
The mutation engine is driven by a ``random.Random``; the test suite hands it hypothesis'
``st.randoms()`` so failures shrink, the campaign a seeded one so runs repeat.

    python -m bench.fuzz --messages 10000 --seed 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any

SUBJECTS = ("llm_request", "provider_register", "provider_update", "provider_health")
STEADY_PROVIDER = "fuzz-steady"
STEADY_MODEL = "fuzz-steady-model"
"""Valid traffic goes here; hostile control messages never name it (see ``_spare_steady``)."""

# ----------------------------------------------------------------------------- generation


def valid_data(signal: str, rng: random.Random) -> dict[str, Any]:
    """A plausible, valid payload for ``signal`` (the seed that mutations start from)."""
    if signal == "llm_request":
        data: dict[str, Any] = {
            "request_id": f"fz-{rng.randrange(10**9)}",
            "agent_id": rng.choice(["fuzzer", "cto_agent", "qa_agent", "a.b", "a_b"]),
            "messages": [{"role": "user", "content": rng.choice(["hi", "write code", "x" * 200])}],
        }
        if rng.random() < 0.5:
            data["model"] = rng.choice(["gpt-4-turbo", "llama", "claude-3-opus", "nope"])
        if rng.random() < 0.3:
            data["task"] = {"type": "code_generation", "complexity": rng.randint(0, 10),
                            "privacy_level": rng.choice(["low", "normal", "high"])}
        if rng.random() < 0.3:
            data["params"] = {"temperature": rng.uniform(0, 2), "max_tokens": rng.randint(1, 500),
                              "seed": rng.randint(0, 2**31)}
        if rng.random() < 0.2:
            data["timeout_ms"] = rng.randint(1, 3000)
        return data
    if signal == "provider_register":
        return {
            "provider": f"fz{rng.randrange(1000)}",
            "base_url": rng.choice([
                "http://127.0.0.1:9/v1", "http://169.254.169.254/latest", "http://[::a9fe:a9fe]/v1",
                "http://localhost:1/v1", "https://example.invalid/v1", "file:///etc/passwd",
            ]),
            "models": [{"name": f"m{rng.randrange(5)}", "capabilities": ["general_reasoning"]}],
            "type": rng.choice(["local", "cloud"]),
        }
    if signal == "provider_update":
        return {"provider": rng.choice(["openai", "anthropic", "local", "fz1", "nobody"]),
                "weight": rng.uniform(0, 5)}
    return {"provider": rng.choice(["openai", "anthropic", "nobody"]),
            "status": rng.choice(["healthy", "degraded", "unhealthy"]), "detail": "fuzz"}


def _json_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 2**31, 2**63, 2**70, -(2**64), 10**30])
    if kind == 3:
        return rng.choice([0.5, -0.0, 1e308, 1.7e308, -1e-310, 3.4e38])
    if kind == 4:
        return rng.choice(["", "x" * rng.randrange(1, 20_000), "rid\n", "a\u0000b", "\ud7ff\ue000", "ü" * 50,
                           "$(rm -rf /)", "{{7*7}}", "../../etc/passwd", "\n\r\t"])
    if kind == 5:
        return "".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(rng.randrange(0, 40)))
    if kind == 6:
        return [_json_value(rng, depth + 1) for _ in range(rng.randrange(0, 5))]
    if kind == 7:
        return {f"k{rng.randrange(20)}": _json_value(rng, depth + 1) for _ in range(rng.randrange(0, 5))}
    return {"role": "user", "content": _json_value(rng, depth + 1)}


def _mutate(value: Any, rng: random.Random) -> Any:
    """Change one place in a JSON value: a key removed, added or retyped, an item replaced."""
    if isinstance(value, dict) and value and rng.random() < 0.8:
        key = rng.choice(list(value))
        roll = rng.random()
        out = dict(value)
        if roll < 0.2:
            del out[key]
        elif roll < 0.35:
            out[f"unknown_{rng.randrange(100)}"] = _json_value(rng)
        elif roll < 0.7:
            out[key] = _mutate(out[key], rng)
        else:
            out[key] = _json_value(rng)
        return out
    if isinstance(value, list) and value and rng.random() < 0.8:
        out = list(value)
        index = rng.randrange(len(out))
        out[index] = _mutate(out[index], rng) if rng.random() < 0.5 else _json_value(rng)
        return out
    return _json_value(rng)


def _nested(depth: int, rng: random.Random) -> str:
    if rng.random() < 0.5:
        return "[" * depth + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


def hostile_message(rng: random.Random) -> tuple[str, bytes, dict[str, str] | None]:
    """(signal, payload, headers): one hostile message."""
    signal = rng.choice(SUBJECTS)
    roll = rng.random()
    envelope: dict[str, Any] = {"specversion": "1.0", "id": f"f{rng.randrange(10**9)}", "source": "fuzzer",
                                "type": f"io.llmrouter.{signal}.v1", "time": "2026-01-01T00:00:00Z",
                                "data": valid_data(signal, rng)}
    headers = None
    if rng.random() < 0.2:
        headers = {"traceparent": rng.choice(["garbage", "00-" + "0" * 32 + "-" + "0" * 16 + "-00", "x" * 500])}
    if roll < 0.08:
        return signal, rng.randbytes(rng.randrange(0, 300)), headers
    if roll < 0.14:
        return signal, _nested(rng.choice([100, 1000, 5000, 20_000]), rng).encode(), headers
    if roll < 0.55:
        for _ in range(rng.randint(1, 3)):
            envelope["data"] = _mutate(envelope["data"], rng)
    elif roll < 0.65:
        envelope = _mutate(envelope, rng)
    elif roll < 0.72:  # deep nesting where the data should be
        text = json.dumps(envelope)
        cut = text.index('"data"') + 8
        return signal, (text[:cut] + _nested(5000, rng) + "}").encode(), headers
    payload = json.dumps(_spare_steady(signal, envelope), ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
    if rng.random() < 0.1:  # invalid UTF-8 inside a string
        at = payload.find(b'"', payload.find(b'"data"') + 8)
        if at > 0:
            payload = payload[: at + 1] + b"\xff\xfe\xc3" + payload[at + 1 :]
    if rng.random() < 0.05:
        payload = payload[: rng.randrange(len(payload) + 1)]
    return signal, payload, headers


def _spare_steady(signal: str, envelope: Any) -> Any:
    """Hostile control messages must not name the provider valid traffic uses: a valid
    'disable it' would be an operator's right, not a lost request."""
    data = envelope.get("data") if isinstance(envelope, dict) else None
    if signal != "llm_request" and isinstance(data, dict) and data.get("provider") == STEADY_PROVIDER:
        data["provider"] = "spared"
    return envelope


# ----------------------------------------------------------------------------- the campaign


@dataclass
class Report:
    sent: int = 0
    by_subject: Counter = field(default_factory=Counter)
    answered_by_kind: Counter = field(default_factory=Counter)
    unanswered: int = 0
    answered_twice: int = 0
    tracebacks: int = 0
    valid_sent: int = 0
    valid_lost: int = 0
    seconds: float = 0.0
    examples_unanswered: list[str] = field(default_factory=list)

    def table(self) -> str:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.answered_by_kind.items()))
        return "\n".join([
            f"hostile messages sent    {self.sent:,} ({', '.join(f'{k} {v}' for k, v in sorted(self.by_subject.items()))})",
            f"answered, by kind        {kinds}",
            f"unanswered               {self.unanswered}",
            f"answered twice           {self.answered_twice}",
            f"tracebacks logged        {self.tracebacks}",
            f"valid requests sent      {self.valid_sent:,}",
            f"valid requests lost      {self.valid_lost}",
            f"time                     {self.seconds:.1f} s",
        ])


class _TracebackCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0
        self.first: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.count += 1
            if len(self.first) < 3:
                self.first.append(self.format(record))


async def run_campaign(nats_url: str, config: Any, emulator_url: str, messages: list[tuple[str, bytes, Any]],
                       valid_every: int = 10, answer_timeout_s: float = 60.0) -> Report:
    """Start an agent, send ``messages`` with valid requests mixed in, count the answers."""
    import nats

    import signals as sig
    from router_agent.agent import RouterAgent

    report = Report()
    counter = _TracebackCounter()
    router_log = logging.getLogger("router_agent")
    router_log.addHandler(counter)
    agent_nc = await nats.connect(nats_url, name="fuzz-agent")
    agent = RouterAgent(config, agent_nc, emulator_url=emulator_url)
    client = await nats.connect(nats_url, name="fuzz-client")
    started = time.perf_counter()
    try:
        await agent.start()
        subjects = agent.subjects
        registered = await client.request(subjects.provider_register, sig.encode_event("provider_register", sig.ProviderRegister(
            provider=STEADY_PROVIDER, base_url=emulator_url,
            models=[sig.ModelSpec(name=STEADY_MODEL, model_id="good-model")])), timeout=10)
        assert sig.decode_data(registered.data, "provider_registered").accepted, "steady provider refused"

        answers: dict[str, list[str]] = {}
        prefix = f"fuzz.reply.{time.monotonic_ns()}"
        # provider_health answers only bad input; everything else must be answered.
        waiting = {f"{prefix}.{i}" for i, (signal, _, _) in enumerate(messages) if signal != "provider_health"}
        must_answer = set(waiting)
        all_answered = asyncio.Event()
        if not waiting:
            all_answered.set()

        async def on_answer(msg: Any) -> None:
            kind = "undecodable"
            try:
                raw = json.loads(msg.data)
                name = raw["type"].removeprefix("io.llmrouter.").rsplit(".v", 1)[0]
                data = sig.decode_data(msg.data, name)
                error = getattr(data, "error", None) or (data.errors[0] if getattr(data, "errors", None) else None)
                kind = f"{name}:{error.code}" if error else f"{name}:ok"
            except Exception:  # noqa: BLE001 - an answer we cannot read is itself a finding
                kind = "undecodable"
            answers.setdefault(msg.subject, []).append(kind)
            waiting.discard(msg.subject)
            if not waiting:
                all_answered.set()

        await client.subscribe(f"{prefix}.>", cb=on_answer)
        await client.flush()
        valid: list[asyncio.Task[Any]] = []
        steady = sig.encode_event  # local alias for the loop
        for i, (signal, payload, headers) in enumerate(messages):
            reply = f"{prefix}.{i}"
            await client.publish(getattr(subjects, signal), payload, reply=reply, headers=headers)
            report.sent += 1
            report.by_subject[signal] += 1
            if i % valid_every == 0:
                request = sig.LlmRequest(request_id=f"valid-{i}", agent_id="fuzz-valid", model=STEADY_MODEL,
                                         messages=[sig.ChatMessage(role="user", content="a valid question")])
                valid.append(asyncio.ensure_future(client.request(
                    subjects.llm_request, steady("llm_request", request), timeout=answer_timeout_s)))
            if i % 200 == 199:
                await client.flush()
        report.valid_sent = len(valid)
        for outcome in await asyncio.gather(*valid, return_exceptions=True):
            ok = not isinstance(outcome, BaseException) and sig.decode_data(outcome.data, "llm_response").status == "ok"
            report.valid_lost += 0 if ok else 1
        try:
            await asyncio.wait_for(all_answered.wait(), answer_timeout_s)
        except TimeoutError:
            pass  # what is still missing is counted below as unanswered
        # A marker after everything: once the agent answers it, any second answer to an
        # earlier message (sent before this one's) has been delivered too.
        marker = sig.ProviderHealth(provider="nobody-marker", status="healthy")
        await client.request(subjects.provider_health, sig.encode_event("provider_health", marker), timeout=10)
        await client.flush()
        for reply in must_answer:
            got = answers.get(reply, [])
            if not got:
                report.unanswered += 1
                if len(report.examples_unanswered) < 5:
                    index = int(reply.rsplit(".", 1)[1])
                    report.examples_unanswered.append(f"{messages[index][0]}: {messages[index][1][:200]!r}")
        for reply, got in answers.items():
            report.answered_by_kind.update(got)
            if len(got) > 1:
                report.answered_twice += 1
    finally:
        report.seconds = time.perf_counter() - started
        await agent.stop()
        await agent_nc.close()
        await client.close()
        router_log.removeHandler(counter)
    report.tracebacks = counter.count
    if counter.first:
        print("first tracebacks:\n" + "\n---\n".join(counter.first), file=sys.stderr)
    return report


async def _main(args: argparse.Namespace) -> int:
    from router_agent.bus import EmbeddedNats
    from router_agent.config import load_config
    from router_agent.emulator import start_emulator

    rng = random.Random(args.seed)
    messages = [hostile_message(rng) for _ in range(args.messages)]
    with tempfile.TemporaryDirectory() as tmp, EmbeddedNats(tmp, port=0) as server:
        emulator = await start_emulator(latency_ms=0.0)
        try:
            overlay = Path(tmp) / "overlay.json"
            overlay.write_text(json.dumps({"emulation": {"mode": "always"}, "logging": {"level": "WARNING"},
                                           "router": {"metrics_interval_s": 3600, "cost_report_interval_s": 3600}}))
            config = load_config(environment="development", overlays=[overlay])
            report = await run_campaign(server.url, config, emulator.url, messages)
        finally:
            await emulator.close()
    print(report.table())
    for example in report.examples_unanswered:
        print(f"  unanswered: {example}")
    failed = report.unanswered or report.answered_twice or report.tracebacks or report.valid_lost
    goal = "PASS" if not failed and report.sent >= 10_000 else ("MISS" if not failed else "FAIL")
    print(f"goal: >= 10,000 hostile messages, 0 unanswered, 0 tracebacks, 0 valid lost: {goal}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.CRITICAL)  # the agent's own log is counted, not printed
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    return asyncio.run(_main(args))


if __name__ == "__main__":
    sys.exit(main())
