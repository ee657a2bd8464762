"""``python -m bench.chaos``: the agent under mixed provider faults, every answer counted per request id.

    python -m bench.chaos                                   10,000 requests, 200 in flight (~15 s)
    python -m bench.chaos --requests 2000 --concurrency 50 --seed 7
    python -m bench.chaos --no-faults                       the same load, no faults: the baseline
    python -m bench.chaos --json OUT.json                   also write the figures as JSON

It starts nats-server, one emulator (``router-agent emulate``, seeded) and one agent
(``router-agent run`` with ``bench/overlay.yaml`` and a chaos overlay: breaker cooldown 1 s),
each its own process, registers six providers at the emulator over the bus (as an operator
would), and sends the requests in a closed loop. Faults, set through the emulator's admin API
while the load flows:

| provider     | type  | wire      | serves         | fault                                                   |
|--------------|-------|-----------|----------------|---------------------------------------------------------|
| flaky        | cloud | openai    | mix-a, lonely  | 30% answered 500; on mix-a, 5% cut half-way              |
| stormy       | cloud | anthropic | mix-a          | 429 storms: a burst of 429s with Retry-After 1 s, five times |
| steady       | local | openai    | mix-a          | none                                                    |
| sticky       | local | openai    | mix-b          | 10% hang (its ``timeout_ms`` is 500)                     |
| wobbly       | local | ollama    | mix-b          | down (503) from 20% to 50% of the requests sent, then back |
| steady-cloud | cloud | gemini    | mix-b          | none                                                    |

Requests: 45% ``mix-a`` (a fifth of them streamed), 45% ``mix-b``, 10% ``lonely``; one in five
private (half say ``privacy_level: high``, half carry an e-mail address); a third from an
agent whose strategy hedges (``performance_optimized``). A healthy alternative exists for
every ``mix-a`` request and for ``mix-b`` ones that are not private (private ones may only use
sticky and wobbly); ``lonely`` has none. A stream cut after its first chunk is counted apart:
the caller has content, so it cannot fail over (it is answered with what it delivered).

Counting: each answer comes back on one wildcard inbox subscription, filed under its request
id. At the end the agent is stopped with SIGTERM (it drains and exits), so every answer it
ever published has reached the server; one more round trip, and a second answer would have
arrived. Retries, failovers and hedges are read from the answers' ``attempts`` (each says
``retry`` / ``hedge``): the agent's own counters (``metrics.retries`` ...) are not published on
the bus, and ``tests/test_chaos.py`` checks that they equal what the answers list. Shed
requests are ``overloaded`` answers, breaker changes the agent's ``provider_health`` signals
(``origin: router``), injected faults the emulator's ``/admin/stats``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import nats
import yaml

import signals as sig
from bench.load import percentile
from bench.procs import OVERLAY, Child, Stack
from router_agent.bus import free_port, sync_subscriptions

PREFIX = "chaos."
CHUNK_TYPE = b'"type":"io.llmrouter.llm_chunk.'
PII = "(reply to jane.doe@example.com)"
PROVIDERS: list[tuple[str, str, str, dict[str, str], int | None]] = [
    # name, type, wire format, {model: the emulator's model id, which faults key on}, timeout_ms
    ("flaky", "cloud", "openai", {"mix-a": "flaky-a", "lonely": "flaky-lonely"}, None),
    ("stormy", "cloud", "anthropic", {"mix-a": "stormy-a"}, None),
    ("steady", "local", "openai", {"mix-a": "steady-a"}, None),
    ("sticky", "local", "openai", {"mix-b": "sticky-b"}, 500),
    ("wobbly", "local", "ollama", {"mix-b": "wobbly-b"}, None),
    ("steady-cloud", "cloud", "gemini", {"mix-b": "steady-cloud-b"}, None),
]
CLOUD = frozenset(name for name, kind, *_ in PROVIDERS if kind == "cloud")
STEADY_FAULTS: dict[str, Any] = {
    "flaky-a": {"error_rates": {"500": 0.3}, "cut_rate": 0.05},
    "flaky-lonely": {"error_rates": {"500": 0.3}},
    "sticky-b": {"hang_rate": 0.1, "hang_s": 30},
}
STORMS = 5
OUTAGE = (0.2, 0.5)
"""The share of requests sent at which wobbly goes down, and comes back."""
AGENT_OVERLAY: dict[str, Any] = {
    "router": {
        "subject_prefix": PREFIX,
        "circuit_breaker": {"cooldown_s": 1.0, "max_cooldown_s": 5.0},
    },
    "agents": {
        "chaos": {"cache": {"enabled": False}},
        "chaos_hedged": {"strategy": "performance_optimized", "cache": {"enabled": False}},
    },
    # The emulator listens on loopback, which run-time registrations may not reach by default.
    "security": {"endpoints": {"private_networks_allowed": ["127.0.0.0/8"]}},
}


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the requests


@dataclass(slots=True)
class Planned:
    rid: str
    private: bool
    has_alternative: bool
    """Its model group has a deployment without faults that its privacy allows."""
    payload: bytes


def plan_requests(count: int, seed: int, timeout_ms: int) -> list[Planned]:
    """The whole load, encoded before it starts (nothing is encoded while it runs)."""
    rng = random.Random(seed)
    tag = os.urandom(3).hex()
    planned = []
    for i in range(count):
        draw = rng.random()
        model = "mix-a" if draw < 0.45 else "mix-b" if draw < 0.9 else "lonely"
        private = rng.random() < 0.2
        content = "Summarize why a message bus suits a fleet of cooperating agents."
        extra: dict[str, Any] = {}
        if private and i % 2:
            content = f"{content} {PII}"
        elif private:
            extra["task"] = sig.Task(privacy_level="high")
        agent = "chaos_hedged" if rng.random() < 1 / 3 else "chaos"
        stream = model == "mix-a" and rng.random() < 0.2
        rid = f"{tag}-{i}"
        request = sig.LlmRequest(request_id=rid, agent_id=agent, model=model, timeout_ms=timeout_ms, stream=stream,
                                 messages=[sig.ChatMessage(role="user", content=content)], **extra)
        has_alternative = model == "mix-a" or (model == "mix-b" and not private)
        planned.append(Planned(rid, private, has_alternative,
                               sig.encode_event("llm_request", request, source="bench.chaos")))
    return planned


# --------------------------------------------------------------------------- the run


@dataclass
class Run:
    """What came back: raw answers per request id (decoded after the run), and signals."""

    sent_at: dict[str, float] = field(default_factory=dict)
    answers: dict[str, list[tuple[float, bytes]]] = field(default_factory=dict)
    chunks: Counter[str] = field(default_factory=Counter)
    late_chunks: set[str] = field(default_factory=set)
    no_responders: set[str] = field(default_factory=set)
    breaker_changes: Counter[tuple[str, str]] = field(default_factory=Counter)
    started: float = 0.0
    ended: float = 0.0


class Driver:
    """A closed loop: ``concurrency`` requests in flight, each first answer sends the next."""

    def __init__(self, nc: Any, planned: list[Planned], concurrency: int, admin_url: str, faults: bool):
        self.nc = nc
        self.planned = planned
        self.concurrency = concurrency
        self.admin_url = admin_url
        self.faults = faults
        self.run = Run()
        self.inbox = f"_CHAOS.{os.urandom(6).hex()}."
        self.next = 0
        self.settled = 0
        self.all_settled = asyncio.Event()
        self.session: aiohttp.ClientSession | None = None
        self._changes: set[asyncio.Task[None]] = set()
        self._milestones = self._fault_milestones() if faults else {}

    def _fault_milestones(self) -> dict[int, tuple[str, str, Any]]:
        """At how many requests sent the faults change: (method, model, body)."""
        n = len(self.planned)
        burst = {"rate_limit_burst": max(20, self.concurrency // 2), "retry_after_s": 1.0}
        steps: dict[int, tuple[str, str, Any]] = {int(n * OUTAGE[0]): ("PUT", "wobbly-b", 503),
                                                  int(n * OUTAGE[1]): ("DELETE", "wobbly-b", None)}
        for k in range(STORMS):  # at 5%, 25%, ... 85%: clear of the outage's edges
            steps.setdefault(int(n * (k + 0.25) / STORMS), ("PUT", "stormy-a", burst))
        return steps

    async def change_fault(self, method: str, model: str, body: Any) -> None:
        assert self.session is not None
        url = f"{self.admin_url}/faults/{model}" if model else f"{self.admin_url}/faults"
        async with self.session.request(method, url, data=None if body is None else json.dumps(body)) as response:
            response.raise_for_status()

    async def start(self) -> None:
        self.session = aiohttp.ClientSession()
        await self.nc.subscribe(self.inbox + "*", cb=self._on_answer, pending_msgs_limit=1_000_000,
                                pending_bytes_limit=1024**3)
        await self.nc.subscribe(f"{PREFIX}provider_health", cb=self._on_health)
        await sync_subscriptions(self.nc)
        if self.faults:
            await self.change_fault("PUT", "", STEADY_FAULTS)

    async def close(self) -> None:
        if self._changes:
            await asyncio.gather(*self._changes, return_exceptions=True)
        if self.session is not None:
            await self.session.close()

    async def go(self, limit_s: float) -> None:
        """Send everything; return when every request is answered, or after ``limit_s``
        (what is still unanswered then is counted as lost)."""
        self.run.started = time.perf_counter()
        for _ in range(min(self.concurrency, len(self.planned))):
            await self._send_next()
        try:
            await asyncio.wait_for(self.all_settled.wait(), limit_s)
        except TimeoutError:
            log(f"chaos: {len(self.planned) - self.settled} requests unanswered after {limit_s:.0f} s")
        self.run.ended = time.perf_counter()

    async def _send_next(self) -> None:
        if self.next >= len(self.planned):
            return
        request = self.planned[self.next]
        step = self._milestones.get(self.next)
        if step is not None:
            task = asyncio.create_task(self.change_fault(*step))
            self._changes.add(task)
            task.add_done_callback(self._changes.discard)
        self.next += 1
        self.run.sent_at[request.rid] = time.perf_counter()
        await self.nc.publish(f"{PREFIX}llm_request", request.payload, reply=self.inbox + request.rid)

    async def _on_answer(self, msg: Any) -> None:
        now = time.perf_counter()
        rid = msg.subject[len(self.inbox):]
        first = rid not in self.run.answers and rid not in self.run.no_responders
        if msg.data.find(CHUNK_TYPE, 0, 200) >= 0:
            self.run.chunks[rid] += 1
            if rid in self.run.answers:
                self.run.late_chunks.add(rid)
            return
        if not msg.data and msg.headers and msg.headers.get("Status") == "503":
            self.run.no_responders.add(rid)
        else:
            self.run.answers.setdefault(rid, []).append((now, msg.data))
        if first and rid in self.run.sent_at:
            self.settled += 1
            if self.settled == len(self.planned):
                self.all_settled.set()
            await self._send_next()

    async def _on_health(self, msg: Any) -> None:
        health = sig.decode_data(msg.data, "provider_health")
        if health.origin == "router" and health.circuit is not None:
            self.run.breaker_changes[(health.provider, health.circuit)] += 1


# --------------------------------------------------------------------------- the figures


def figures(planned: list[Planned], run: Run, emulator_stats: dict[str, Any]) -> dict[str, Any]:
    latencies: list[float] = []
    codes: Counter[str] = Counter()
    examples: dict[str, str] = {}
    ok: Counter[str] = Counter()
    total: Counter[str] = Counter()
    count = Counter[str]()
    for request in planned:
        if request.rid not in run.sent_at:
            continue
        group = "with" if request.has_alternative else "without"
        count["private"] += request.private
        answers = run.answers.get(request.rid)
        if not answers:
            total[group] += 1
            continue
        at, data = answers[0]
        latencies.append(at - run.sent_at[request.rid])
        response = sig.decode_data(data, "llm_response")
        error = response.error
        codes[error.code if error else "ok"] += 1
        if error is not None:
            examples.setdefault(error.code, error.message[:200])
        if response.streamed is not None:
            count["streams"] += 1
            count["chunks_lost"] += max(0, response.streamed.chunks - run.chunks[request.rid])
            if error is not None and response.streamed.chunks and group == "with":
                group = "cut"  # content had reached the caller: the request could not fail over
        total[group] += 1
        ok[group] += error is None
        # Attempts are listed as they ended (a first attempt may follow its hedge): every
        # plain attempt after the first is a failover. The agent counts the same way.
        tried = [a for a in response.attempts if a.outcome != "skipped"]
        retries, hedges = sum(a.retry and not a.hedge for a in tried), sum(a.hedge for a in tried)
        count["retries"] += retries
        count["hedges"] += hedges
        count["failovers"] += max(0, len(tried) - retries - hedges - 1)
        count["shed"] += error is not None and error.code == "overloaded"
        count["private_to_cloud"] += request.private and any(
            a.provider in CLOUD and a.outcome != "skipped" for a in response.attempts)
    latencies.sort()
    injected: Counter[str] = Counter()
    for kinds in emulator_stats.get("faults", {}).values():
        injected.update(kinds)
    sent = len(run.sent_at)
    answered = sum(1 for answers in run.answers.values() if answers)
    duration = run.ended - run.started
    return {
        "sent": sent,
        "answered": answered,
        "answered_twice": sum(1 for answers in run.answers.values() if len(answers) > 1),
        "no_responders": len(run.no_responders - set(run.answers)),
        "lost": sent - answered - len(run.no_responders - set(run.answers)),
        "ok": codes["ok"],
        "success_rate": _rate(codes["ok"], sent),
        **{f"{group}_alternative": {"sent": total[group], "ok": ok[group], "success_rate": _rate(ok[group], total[group])}
           for group in ("with", "without")},
        "streams": count["streams"],
        "streams_cut_after_content": total["cut"],
        "chunks_lost": count["chunks_lost"],
        "chunks_after_answer": len(run.late_chunks),
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "max_ms": latencies[-1] * 1000 if latencies else float("nan"),
        "duration_s": duration,
        "answers_per_s": answered / duration if duration > 0 else float("nan"),
        **{name: count[name] for name in ("retries", "failovers", "hedges", "shed", "private", "private_to_cloud")},
        "errors_by_code": {code: n for code, n in codes.most_common() if code != "ok"},
        "error_examples": examples,
        "breakers": {f"{provider} {circuit}": n for (provider, circuit), n in sorted(run.breaker_changes.items())},
        "faults_injected": dict(sorted(injected.items())),
    }


def _rate(ok: int, total: int) -> float:
    return ok / total if total else float("nan")


def goals(f: dict[str, Any]) -> list[tuple[str, str, bool]]:
    with_alt = f["with_alternative"]["success_rate"]
    return [
        ("0 lost", str(f["lost"]), f["lost"] == 0),
        ("0 answered twice", str(f["answered_twice"]), f["answered_twice"] == 0),
        ("0 stream chunks lost or after the answer", str(f["chunks_lost"] + f["chunks_after_answer"]),
         f["chunks_lost"] + f["chunks_after_answer"] == 0),
        (">= 99.9% ok where a healthy alternative existed", f"{with_alt:.3%}", with_alt >= 0.999),
        ("0 private requests sent to a cloud model", str(f["private_to_cloud"]), f["private_to_cloud"] == 0),
    ]


def render(f: dict[str, Any], meta: dict[str, Any]) -> str:
    w, wo = f["with_alternative"], f["without_alternative"]
    rows = [
        ("requests sent", f"{f['sent']:,} ({meta['concurrency']} in flight, {meta['mode']})"),
        ("answered", f"{f['answered']:,}"),
        ("answered twice", f"{f['answered_twice']:,}"),
        ("lost (no answer at all)", f"{f['lost']:,}"),
        ("no responders (never reached the agent)", f"{f['no_responders']:,}"),
        ("success rate, all requests", f"{f['success_rate']:.3%}"),
        ("  where a healthy alternative existed", f"{w['success_rate']:.3%} ({w['ok']:,} of {w['sent']:,})"),
        ("  where none did (lonely; private mix-b)", f"{wo['success_rate']:.3%} ({wo['ok']:,} of {wo['sent']:,})"),
        ("  streams cut after content (no failover then)", f"{f['streams_cut_after_content']:,} of {f['streams']:,} streams"),
        ("stream chunks lost / after the answer", f"{f['chunks_lost']:,} / {f['chunks_after_answer']:,}"),
        ("latency p50 / p99 / max", f"{f['p50_ms']:.1f} / {f['p99_ms']:.1f} / {f['max_ms']:.0f} ms"),
        ("answers per second", f"{f['answers_per_s']:,.0f} over {f['duration_s']:.1f} s"),
        ("retries / failovers / hedges", f"{f['retries']:,} / {f['failovers']:,} / {f['hedges']:,}"),
        ("requests shed (overloaded)", f"{f['shed']:,}"),
        ("private requests / sent to a cloud model", f"{f['private']:,} / {f['private_to_cloud']:,}"),
        ("errors by code", ", ".join(f"{c} {n:,}" for c, n in f["errors_by_code"].items()) or "none"),
        ("breaker changes (provider_health)", ", ".join(f"{k} x{n}" for k, n in f["breakers"].items()) or "none"),
        ("faults injected (emulator)", ", ".join(f"{k} x{n:,}" for k, n in f["faults_injected"].items()) or "none"),
    ]
    width = max(len(name) for name, _ in rows)
    head = f"bench.chaos, seed {meta['seed']}, emulator {meta['latency_ms']:g} ms, load average {meta['load_average']}"
    lines = [head, ""]
    lines += [f"{name:<{width}}  {value}" for name, value in rows]
    lines += ["", "goals:"]
    lines += [f"  {'PASS' if ok else 'MISS'}  {name}: {value}" for name, value, ok in goals(f)]
    return "\n".join(lines)


# --------------------------------------------------------------------------- processes and main


def start_processes(stack: Stack, args: argparse.Namespace, workdir: Path) -> tuple[str, Child, Child]:
    nats_url = stack.start_nats()
    port = free_port()
    emulator = stack.spawn_python("emulator", "router_agent", [
        "emulate", "--host", "127.0.0.1", "--port", str(port), "--latency-ms", f"{args.latency_ms:g}",
        "--jitter", "0.3", "--seed", str(args.seed)])
    emulator.info.update(ready_line="emulator ready:", url=f"http://127.0.0.1:{port}/v1",
                         admin=f"http://127.0.0.1:{port}/admin")
    overlay = workdir / "chaos-overlay.yaml"
    overlay.write_text(yaml.safe_dump(AGENT_OVERLAY, sort_keys=False))
    stack.ready(emulator)
    agent = stack.spawn_python("agent", "router_agent", [
        "run", "--nats-url", nats_url, "--emulator-url", emulator.info["url"], "--overlay", str(OVERLAY),
        "--overlay", str(overlay), "--log-level", "WARNING"])
    agent.info["ready_line"] = "router-agent ready:"
    stack.ready(agent)
    return nats_url, emulator, agent


async def register_providers(nc: Any, emulator_url: str) -> None:
    for name, kind, api, models, timeout_ms in PROVIDERS:
        specs = [sig.ModelSpec(name=model, model_id=model_id, capabilities=["general_reasoning"],
                               cost_per_1k_tokens=sig.ModelPrice(input=0.001, output=0.002))
                 for model, model_id in models.items()]
        extra = {"timeout_ms": timeout_ms} if timeout_ms else {}
        register = sig.ProviderRegister(provider=name, type=kind, api=api, base_url=emulator_url, models=specs,
                                        **extra)
        reply = await nc.request(f"{PREFIX}provider_register", sig.encode_event("provider_register", register),
                                 timeout=10)
        answer = sig.decode_data(reply.data, "provider_registered")
        if not answer.accepted:
            raise RuntimeError(f"provider {name} refused: {answer.errors}")


async def drive(stack: Stack, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    nats_url, emulator, agent = await asyncio.to_thread(start_processes, stack, args, workdir)
    nc = await nats.connect(nats_url, name="bench-chaos", allow_reconnect=False, pending_size=64 * 1024**2)
    planned = plan_requests(args.requests, args.seed, args.timeout_ms)
    driver = Driver(nc, planned, args.concurrency, emulator.info["admin"], faults=not args.no_faults)
    try:
        await register_providers(nc, emulator.info["url"])
        await driver.start()
        log(f"chaos: sending {len(planned):,} requests, {args.concurrency} in flight")
        await driver.go(limit_s=args.requests / 20 + args.timeout_ms / 1000 + 60)
        # The agent drains and exits: every answer it published is then at the server, and
        # after one more round trip here, any second answer would have arrived.
        log("chaos: stopping the agent (SIGTERM) to count late answers")
        await asyncio.to_thread(stack.stop, agent)
        await nc.flush(timeout=10)
        assert driver.session is not None
        async with driver.session.get(f"{emulator.info['admin']}/stats") as response:
            emulator_stats = await response.json()
    finally:
        await driver.close()
        await nc.close()
    return figures(planned, driver.run, emulator_stats)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1, help="the load's mix and the emulator's fault draws")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="the emulator's time to an answer")
    parser.add_argument("--timeout-ms", type=int, default=10_000, help="each request's deadline")
    parser.add_argument("--no-faults", action="store_true", help="the same load without faults")
    parser.add_argument("--json", default=None, help="also write the figures here")
    parser.add_argument("--keep-logs", action="store_true", help="keep the children's logs (path on stderr)")
    return parser.parse_args(argv)


def _on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    workdir = Path(tempfile.mkdtemp(prefix="router-chaos-"))
    stack = Stack(workdir)
    try:
        try:
            import uvloop

            result = uvloop.run(drive(stack, args, workdir))
        except ImportError:
            result = asyncio.run(drive(stack, args, workdir))
    finally:
        stack.close()
        if args.keep_logs:
            log(f"chaos: logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    meta = {"seed": args.seed, "concurrency": args.concurrency, "latency_ms": args.latency_ms,
            "mode": "no faults" if args.no_faults else "mixed faults",
            "load_average": [round(x, 2) for x in os.getloadavg()], "when": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    print(render(result, meta), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "figures": result}, indent=2, default=str) + "\n")
    return 0 if all(ok for *_, ok in goals(result)) else 1


if __name__ == "__main__":
    sys.exit(main())
