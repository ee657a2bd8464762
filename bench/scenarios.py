"""The scenarios: each runs its rounds against real processes and returns plain data.

Every scenario interleaves the router and its baseline inside each round, alternating
which goes first (ABBA), and reports medians over rounds (counts are summed). The
baseline of a router figure is always measured in the same run, by the same load
generator, against the same emulator: "direct" means the generator posts the very
request body the agent would post, with the agent's own aiohttp pool settings.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import nats
import psutil

from bench.load import BusClient, CpuProbe, HttpClient, WireHttpClient, combine, summarize_ms
from bench.procs import Child, Stack
from bench.stream_scenarios import StreamScenarios

UPSTREAM_LATENCY_MS = 200.0


@dataclass(frozen=True)
class Sizes:
    """How big each scenario is; ``FULL`` is the real benchmark, ``QUICK`` the smoke version."""

    rounds: int
    latency_rounds: int
    latency_n: int
    levels: tuple[int, ...]
    warmup_s: float
    window_s: float
    open_load: float  # open-loop arrival rate as a fraction of the ideal (in-flight / latency)
    cpu_concurrency: int
    memory_levels: tuple[int, ...]
    memory_latency_ms: float
    memory_rounds: int
    scale_in_flight: int
    peer_latency_n: int
    peer_in_flight: int
    peer_cpu_concurrency: int
    peer_memory_in_flight: int
    peer_memory_latency_ms: float  # LiteLLM needs seconds of CPU just to dispatch 500 calls
    goal_in_flight: int  # the throughput level the goal speaks of
    goal_memory_level: int
    adapter_in_flight: int  # the adapter layer alone, per vendor format
    adapter_upstream_ms: float
    adapter_warm: bool  # warm each side's pool at the level before the first round
    adapter_warmup_s: float
    adapter_window_s: float
    ttft_n: int  # streamed requests one at a time, per vendor, side and round
    relay_rate: float  # streams a second (open loop) at 1,000 tokens/s for the relay cost
    relay_prompt_chars: int  # word length of the relay prompt (12 words): the stream's length
    stream_levels: tuple[int, ...]  # concurrent streams at stream_tokens_per_s
    stream_tokens_per_s: float
    stream_prompt_chars: int
    stream_readers: int  # reader processes the streams are spread over
    stream_warmup_s: float  # after the ramp (one stream's duration)
    stream_window_s: float
    stream_rounds: int
    goal_streams: int  # the level the "no gap above 100 ms" goal speaks of


FULL = Sizes(
    rounds=3, latency_rounds=5, latency_n=2000, levels=(50, 500, 2000), warmup_s=1.0, window_s=2.5,
    open_load=0.8, cpu_concurrency=200, memory_levels=(500, 5000), memory_latency_ms=6000,
    memory_rounds=2, scale_in_flight=500, peer_latency_n=300, peer_in_flight=500,
    peer_cpu_concurrency=50, peer_memory_in_flight=500, peer_memory_latency_ms=15000, goal_in_flight=500, goal_memory_level=5000,
    adapter_in_flight=500, adapter_upstream_ms=200.0, adapter_warm=True, adapter_warmup_s=0.8,
    adapter_window_s=2.0, ttft_n=100, relay_rate=50.0, relay_prompt_chars=119, stream_levels=(250, 1000),
    stream_tokens_per_s=50.0, stream_prompt_chars=119, stream_readers=2, stream_warmup_s=1.0, stream_window_s=5.0,
    stream_rounds=2, goal_streams=1000,
)
QUICK = Sizes(
    rounds=1, latency_rounds=2, latency_n=100, levels=(20, 100, 200), warmup_s=0.3, window_s=0.6,
    open_load=0.8, cpu_concurrency=50, memory_levels=(50, 200), memory_latency_ms=2000,
    memory_rounds=1, scale_in_flight=100, peer_latency_n=30, peer_in_flight=100,
    peer_cpu_concurrency=20, peer_memory_in_flight=100, peer_memory_latency_ms=2500, goal_in_flight=100, goal_memory_level=200,
    adapter_in_flight=50, adapter_upstream_ms=50.0, adapter_warm=False, adapter_warmup_s=0.2,
    adapter_window_s=0.3, ttft_n=10, relay_rate=50.0, relay_prompt_chars=23, stream_levels=(20,),
    stream_tokens_per_s=50.0, stream_prompt_chars=11, stream_readers=2, stream_warmup_s=0.1, stream_window_s=0.6,
    stream_rounds=1, goal_streams=20,
)


class _Stats(msgspec.Struct):
    provider: str
    in_flight: int = 0  # omitted on the wire when 0 (omit_defaults)


class _MetricsData(msgspec.Struct):
    stats: _Stats


class _MetricsEvent(msgspec.Struct):
    data: _MetricsData


_decode_metrics = msgspec.json.Decoder(_MetricsEvent).decode
"""Just the in-flight gauge of a ``provider_metrics`` signal."""


def _order(r: int, a: str, b: str) -> tuple[str, str]:
    return (a, b) if r % 2 == 0 else (b, a)


def _procs(**children: Child | psutil.Process | None) -> dict[str, psutil.Process]:
    out = {}
    for name, child in children.items():
        if child is None:
            continue
        out[name] = child.ps() if isinstance(child, Child) else child
    return out


def _ms_per_request(cpu_s: float, res: dict[str, Any]) -> float:
    done = res["rps"] * res["window_s"]
    return cpu_s / done * 1000 if done else float("nan")


class Bench:
    """The long-lived parts of a run (bus, emulators, agents, clients) and the scenarios."""

    def __init__(self, stack: Stack, sizes: Sizes, log=print):
        self.stack = stack
        self.sizes = sizes
        self.log = log
        self.nats_url = ""
        self.e0: Child | None = None
        self.e200: Child | None = None
        self.a0: Child | None = None
        self.a200: Child | None = None
        self.bus0: BusClient | None = None
        self.bus200: BusClient | None = None
        self.http0: HttpClient | None = None
        self.wire0: WireHttpClient | None = None
        self.http200: HttpClient | None = None
        self.echo: Child | None = None
        self.bus_echo: BusClient | None = None
        self.bare_relay: Child | None = None
        self.bus_bare_relay: BusClient | None = None
        self.me = psutil.Process()
        self.streaming = StreamScenarios(self)

    async def start(self) -> None:
        self.nats_url = self.stack.start_nats()
        self.e0 = self.stack.start_emulator(0)
        self.a0 = self.stack.start_agent(self.nats_url, self.e0.info["url"], "bench0")
        self.bus0 = await BusClient.connect(self.nats_url, "bench0.llm_request")
        self.http0 = await HttpClient(self.e0.info["url"]).open()
        self.wire0 = await WireHttpClient(self.e0.info["url"]).open()
        await self.wire0.sequential(50)
        self.echo = self.stack.spawn_python("echo", "bench.echo", ["--nats", self.nats_url, "--subject", "bench.echo"])
        self.echo.wait_for_line("echo ready:", 20)
        self.bus_echo = await BusClient.connect(self.nats_url, "bench.echo")
        await self.bus_echo.sequential(50)
        self.bare_relay = self.stack.spawn_python("relay", "bench.relay", ["--nats", self.nats_url, "--subject", "bench.relay",
                                                                     "--upstream", self.e0.info["url"]])
        self.bare_relay.wait_for_line("relay ready:", 20)
        self.bus_bare_relay = await BusClient.connect(self.nats_url, "bench.relay")
        await self.bus_bare_relay.sequential(50)
        # Warm the zero-latency paths once (lazy imports, first-call caches, pools).
        await self.bus0.sequential(50)
        await self.http0.sequential(50)
        await self.bus0.closed_loop(self.sizes.cpu_concurrency, 0.3, 0.3)
        await self.http0.closed_loop(self.sizes.cpu_concurrency, 0.3, 0.3)
        await self.fresh_200(min(self.sizes.levels))

    async def fresh_200(self, level: int) -> None:
        """A new 200 ms emulator, agent and direct client, warmed at ``level`` in flight.

        Why fresh: the agent's aiohttp pool keeps every connection it ever opened for 60 s
        (keepalive) and hands them out oldest-first, so after a 2,000-in-flight run the
        500-in-flight figures came out ~20% lower than from a fresh agent. Each level is
        measured from the state a steady load at that level would leave.
        """
        for client in (self.bus200, self.http200):
            if client is not None:
                await client.close()
        for child in (self.a200, self.e200):
            if child is not None:
                self.stack.stop(child)
        self.e200 = self.stack.start_emulator(UPSTREAM_LATENCY_MS)
        self.a200 = self.stack.start_agent(self.nats_url, self.e200.info["url"], "bench200")
        self.bus200 = await BusClient.connect(self.nats_url, "bench200.llm_request")
        self.http200 = await HttpClient(self.e200.info["url"]).open()
        await self.bus200.closed_loop(level, 0.6, 0.4)
        await self.http200.closed_loop(level, 0.6, 0.4)

    async def close(self) -> None:
        for client in (self.bus0, self.bus200, self.http0, self.wire0, self.http200, self.bus_echo,
                       self.bus_bare_relay):
            if client is not None:
                await client.close()
        await self.streaming.close()

    @property
    def nats_proc(self) -> psutil.Process | None:
        pid = self.stack.nats_pid
        return psutil.Process(pid) if pid else None

    # ------------------------------------------------------------------ latency

    async def latency(self) -> dict[str, Any]:
        """One request at a time through the agent vs straight to the emulator (0 ms), and a
        bare nats-py request/reply echo: the floor any agent on NATS pays. The router's own
        share is what it adds over direct minus that floor. ``direct_wire`` is the direct
        call made with the router's own HTTP client, for the share against that baseline;
        ``bare_relay`` a bare relay on the same stack (``bench/relay.py``): ``router - it`` is
        what the product's own work costs, ``bare_relay_share`` what the stack alone takes."""
        s = self.sizes
        rounds = []
        clients = {"router": self.bus0, "direct": self.http0, "direct_wire": self.wire0, "echo": self.bus_echo,
                   "bare_relay": self.bus_bare_relay}
        for r in range(s.latency_rounds):
            row: dict[str, Any] = {}
            for side in _order(r, "router", "direct") + ("direct_wire", "echo", "bare_relay"):
                client = clients[side]
                latencies, errors = await client.sequential(s.latency_n)
                row[side] = {**summarize_ms(latencies), "errors": errors, "n": s.latency_n}
            rounds.append(row)
            self.log(f"  latency round {r + 1}: router p50 {row['router']['p50_ms']:.3f} ms, "
                     f"direct p50 {row['direct']['p50_ms']:.3f} ms")
        out = combine(rounds)
        out["added"] = {k: out["router"][k] - out["direct"][k] for k in ("p50_ms", "p90_ms", "p99_ms")}
        out["router_share"] = {k: out["added"][k] - out["echo"][k] for k in ("p50_ms", "p90_ms", "p99_ms")}
        out["router_share_vs_wire"] = {k: out["router"][k] - out["direct_wire"][k] - out["echo"][k]
                                       for k in ("p50_ms", "p90_ms", "p99_ms")}
        out["bare_relay_share"] = {k: out["bare_relay"][k] - out["direct"][k] - out["echo"][k]
                                   for k in ("p50_ms", "p90_ms", "p99_ms")}
        out["router_over_bare_relay"] = {k: out["router"][k] - out["bare_relay"][k] for k in ("p50_ms", "p90_ms", "p99_ms")}
        return out

    # ------------------------------------------------------------------ throughput

    async def throughput(self) -> list[dict[str, Any]]:
        """Closed and open loop at each in-flight level against a 200 ms upstream."""
        s = self.sizes
        out = []
        latency_s = UPSTREAM_LATENCY_MS / 1000
        for level in s.levels:
            await self.fresh_200(level)
            ideal = level / latency_s
            rate = ideal * s.open_load
            for mode in ("closed", "open"):
                rounds = []
                for r in range(s.rounds):
                    row: dict[str, Any] = {}
                    for side in _order(r, "router", "direct"):
                        probe = CpuProbe(_procs(agent=self.a200, emulator=self.e200, nats=self.nats_proc,
                                                generator=self.me))
                        if side == "router":
                            client: Any = self.bus200
                        else:
                            client = self.http200
                        if mode == "closed":
                            res = await client.closed_loop(level, s.warmup_s, s.window_s, probe=probe)
                        else:
                            res = await client.open_loop(rate, s.warmup_s, s.window_s, 2 * level, probe=probe)
                        res["cpu_pct"] = {k: v / res["window_s"] * 100 for k, v in res.pop("cpu_s").items()}
                        row[side] = res
                    rounds.append(row)
                    self.log(f"  throughput {mode} {level} in flight, round {r + 1}: "
                             f"router {row['router']['rps']:.0f} req/s, direct {row['direct']['rps']:.0f} req/s")
                out.append({"mode": mode, "in_flight": level, "upstream_ms": UPSTREAM_LATENCY_MS,
                            "ideal_rps": ideal, "offered_rps": rate if mode == "open" else None,
                            **combine(rounds)})
        return out

    # ------------------------------------------------------------------ cpu

    async def cpu(self) -> dict[str, Any]:
        """Zero-latency upstream, enough in flight to saturate the agent: CPU per request."""
        s = self.sizes
        rounds = []
        for r in range(s.rounds):
            row: dict[str, Any] = {}
            for side in _order(r, "router", "direct"):
                probe = CpuProbe(_procs(agent=self.a0, emulator=self.e0, nats=self.nats_proc, generator=self.me))
                client: Any = self.bus0 if side == "router" else self.http0
                res = await client.closed_loop(s.cpu_concurrency, s.warmup_s, s.window_s, probe=probe)
                cpu_s = res.pop("cpu_s")
                res["cpu_s_per_1000"] = {k: _ms_per_request(v, res) for k, v in cpu_s.items()}
                res["cpu_pct"] = {k: v / res["window_s"] * 100 for k, v in cpu_s.items()}
                row[side] = res
            rounds.append(row)
            self.log(f"  cpu round {r + 1}: router {row['router']['rps']:.0f} req/s, agent "
                     f"{row['router']['cpu_s_per_1000']['agent']:.3f} CPU s/1000 req")
        return {"concurrency": s.cpu_concurrency, **combine(rounds)}

    # ------------------------------------------------------------------ memory

    async def memory(self) -> dict[str, Any]:
        """A fresh agent's RSS idle and with N requests held in flight by a slow upstream."""
        s = self.sizes
        emulator = self.stack.start_emulator(s.memory_latency_ms, name="emulator-memory")
        try:
            rounds = [await self._memory_round(emulator, r) for r in range(s.memory_rounds)]
        finally:
            self.stack.stop(emulator)
        return {"upstream_ms": s.memory_latency_ms, "levels": list(s.memory_levels), **combine(rounds)}

    async def _memory_round(self, emulator: Child, r: int) -> dict[str, Any]:
        s = self.sizes
        prefix = "benchmem"
        agent = self.stack.start_agent(self.nats_url, emulator.info["url"], prefix, name=f"agent-memory-{r + 1}",
                                       extra_router={"metrics_interval_s": 0.2})
        watcher = await nats.connect(self.nats_url, name="bench-metrics", allow_reconnect=False)
        bus = await BusClient.connect(self.nats_url, f"{prefix}.llm_request")
        in_flight: dict[str, int] = {}

        decode = _decode_metrics
        async def on_metrics(msg: Any) -> None:
            stats = decode(msg.data).data.stats
            in_flight[stats.provider] = stats.in_flight

        try:
            await watcher.subscribe(f"{prefix}.provider_metrics.>", cb=on_metrics)
            await watcher.flush()
            proc = agent.ps()
            await asyncio.sleep(1.0)
            idle = proc.memory_info().rss
            row: dict[str, Any] = {"idle_rss_mb": idle / 2**20}
            latency_s = s.memory_latency_ms / 1000
            for level in s.memory_levels:
                answered = errors = 0

                def on_answer(rid: str, now: float, latency: float, ok: bool) -> None:
                    nonlocal answered, errors
                    answered += 1
                    errors += not ok

                bus.reset(on_answer)
                t0 = time.monotonic()
                await bus.burst(level)
                reached = 0
                deadline = t0 + latency_s * 0.85
                while time.monotonic() < deadline:
                    reached = max(reached, sum(in_flight.values()))
                    if reached >= level:
                        break
                    await asyncio.sleep(0.05)
                samples = []
                for _ in range(3):
                    samples.append(proc.memory_info().rss)
                    await asyncio.sleep(0.05)
                rss = max(samples)
                reached = max(reached, sum(in_flight.values()))
                end = time.monotonic() + latency_s + 30
                while answered < level and time.monotonic() < end:
                    await asyncio.sleep(0.05)
                errors += level - answered
                row[str(level)] = {
                    "in_flight": level,
                    "reached_in_flight": reached,
                    "rss_mb": rss / 2**20,
                    "bytes_per_in_flight": (rss - idle) / level,
                    "errors": errors,
                }
                self.log(f"  memory round {r + 1}: {level} in flight (agent saw {reached}): "
                         f"RSS {rss / 2**20:.1f} MB, {(rss - idle) / level / 1024:.1f} KB each")
                # Let the agent's in-flight gauge fall back before the next level.
                in_flight.clear()
            return row
        finally:
            bus.reset(None)
            await bus.close()
            await watcher.close()
            self.stack.stop(agent)

    # ------------------------------------------------------------------ scale-out

    async def scale_out(self) -> dict[str, Any]:
        """One agent process vs two in the same queue group, at 200 ms and at saturation."""
        s = self.sizes
        await self.fresh_200(s.scale_in_flight)
        cases = [
            ("in_flight_200ms", self.bus200, self.e200, self.a200, s.scale_in_flight),
            ("saturation_0ms", self.bus0, self.e0, self.a0, s.cpu_concurrency),
        ]
        out: dict[str, Any] = {}
        for key, bus, emulator, agent, level in cases:
            assert bus is not None and emulator is not None and agent is not None
            rounds = []
            for r in range(s.rounds):
                row: dict[str, Any] = {}
                for side in _order(r, "one", "two"):
                    extra = None
                    if side == "two":
                        extra = self.stack.start_agent(self.nats_url, emulator.info["url"], agent.info["prefix"],
                                                       name=f"agent-{agent.info['prefix']}-second")
                    try:
                        if extra is not None:
                            await bus.closed_loop(min(level, 200), 0.2, 0.3)  # warm the second agent
                        probe = CpuProbe(_procs(agent=agent, agent2=extra, emulator=emulator,
                                                nats=self.nats_proc, generator=self.me))
                        res = await bus.closed_loop(level, s.warmup_s, s.window_s, probe=probe)
                    finally:
                        if extra is not None:
                            self.stack.stop(extra)
                    cpu_s = res.pop("cpu_s")
                    res["cpu_pct"] = {k: v / res["window_s"] * 100 for k, v in cpu_s.items()}
                    res["agents_cpu_pct"] = res["cpu_pct"]["agent"] + res["cpu_pct"].get("agent2", 0.0)
                    res["total_cpu_pct"] = sum(res["cpu_pct"].values())
                    row[side] = res
                rounds.append(row)
                self.log(f"  scale-out {key} round {r + 1}: one agent {row['one']['rps']:.0f} req/s, "
                         f"two agents {row['two']['rps']:.0f} req/s")
            out[key] = {"in_flight": level, **combine(rounds)}
        return out

    # ------------------------------------------------------------------ peer

    async def peer_litellm(self, workdir: Path, timeout_s: float) -> dict[str, Any]:
        """The same scenarios through LiteLLM's Router, each part in a fresh worker process
        with one Router and one deployment (see bench/peer_litellm.py for why)."""
        s = self.sizes
        assert self.e0 is not None and self.e200 is not None
        common = {"rounds": s.rounds, "latency_n": s.peer_latency_n}
        out = await self._peer_worker(workdir, "fast", {
            **common, "part": "fast", "url": self.e0.info["url"],
            "cpu": {"concurrency": s.peer_cpu_concurrency, "warmup_s": s.warmup_s, "window_s": s.window_s},
        }, timeout_s)
        if not out.get("available"):
            return out
        slow = await self._peer_worker(workdir, "slow", {
            **common, "part": "slow", "url": self.e200.info["url"],
            "throughput": {"in_flight": s.peer_in_flight, "open_rps": s.peer_in_flight / 0.2 * s.open_load,
                           "warmup_s": s.warmup_s, "window_s": s.window_s},
        }, timeout_s)
        if not slow.get("available"):
            return slow
        out.update({k: v for k, v in slow.items() if k.startswith("throughput")})
        memory_emulator = self.stack.start_emulator(s.peer_memory_latency_ms, name="emulator-peer-memory")
        try:
            mem = await self._peer_worker(workdir, "memory", {"part": "memory", "memory": {
                "url": memory_emulator.info["url"], "in_flight": s.peer_memory_in_flight,
                "latency_s": s.peer_memory_latency_ms / 1000}}, timeout_s)
        finally:
            self.stack.stop(memory_emulator)
        if mem.get("available"):
            out["memory"] = {"upstream_ms": s.peer_memory_latency_ms, **mem["memory"]}
        else:
            out["memory_error"] = mem.get("reason")
        return out

    async def _peer_worker(self, workdir: Path, part: str, spec: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        spec_path, out_path = workdir / f"peer-{part}-spec.json", workdir / f"peer-{part}-out.json"
        spec_path.write_text(json.dumps(spec))
        worker = self.stack.spawn_python(f"peer-litellm-{part}", "bench.peer_litellm", [str(spec_path), str(out_path)])
        try:
            deadline = time.monotonic() + timeout_s
            while worker.process.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            if worker.process.poll() is None:
                return {"available": False, "reason": f"the LiteLLM worker did not finish within {timeout_s:.0f}s"}
            if worker.process.returncode != 0 or not out_path.exists():
                tail = worker.log_tail(5).replace("\n", " | ")
                return {"available": False, "reason": f"the LiteLLM worker failed ({worker.process.returncode}): {tail}"}
            return json.loads(out_path.read_text())
        finally:
            self.stack.stop(worker)


def log_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
