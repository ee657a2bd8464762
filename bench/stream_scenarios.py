"""The adapter and streaming scenarios: adapters, ttft, relay, streams.

- **adapters**: the adapter layer alone (``bench/adapters.py``, its own process) against a
  200 ms emulator, per vendor format, with bare aiohttp replaying the same request as the
  baseline.
- **ttft**: time to first token through the router (an ``llm_request`` with ``stream: true``
  over NATS, to the first chunk on the reply subject) against the same vendor's adapter
  calling the emulator directly (to its first ``TextDelta``), one at a time, per vendor
  format, from this process.
- **relay**: the agent's CPU per relayed chunk, with ``router.stream_coalesce_ms`` at 0 and at
  its default, against the same requests not streamed (what a request costs without the
  chunks), at a fast upstream (1,000 tokens/s) where coalescing has something to merge.
- **streams**: many concurrent streams at 50 tokens/s through the router, read by several
  reader processes (``bench/streamload.py``), against the same load read straight from the
  emulator through the adapter: the largest chunk gap the upstream did not cause.

The last three need streaming through the bus. Until the agent streams (it answers
``stream: true`` with one final ``llm_response`` and a warning), they print "not measured:
streaming through the bus not available" (``bench.streams.streaming_unavailable``), and
start measuring without a code change the day it does. ``relay`` measures coalescing only
if the agent's config has ``router.stream_coalesce_ms``; else it says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

import nats
import nats.errors

from bench.load import CpuProbe, combine, summarize_ms
from bench.procs import OVERLAY, Child
from bench.streams import (
    FINAL_TYPE,
    NOT_AVAILABLE,
    OK,
    VENDORS,
    UpstreamLag,
    canonical_request,
    chunk_text,
    deployment_for,
    final_summary,
    long_prompt,
    merge_gaps,
    new_tag,
    pieces_in,
    request_template,
    streaming_unavailable,
)

perf = time.perf_counter
COALESCE_SETTING = "stream_coalesce_ms"
FAST_TOKENS_PER_S = 1000.0
"""The ttft/relay upstream's pace: 1 ms between tokens, so chunks arrive within a
coalescing window of a few milliseconds."""
MANY_TTFT_MS = 200.0
"""The streams scenario's upstream time to first token."""


def coalesce_setting() -> tuple[bool, float | None]:
    """(the agent knows ``router.stream_coalesce_ms``, its value with the bench overlay)."""
    from router_agent.config import load_config

    router = load_config(None, None, [OVERLAY]).router
    if COALESCE_SETTING not in type(router).model_fields:
        return False, None
    return True, getattr(router, COALESCE_SETTING)


# --------------------------------------------------------------------------- the bus side


class _Req:
    __slots__ = ("chunks", "end", "final", "first", "keep", "ok", "on_done", "t0", "texts")

    def __init__(self, t0: float, keep: bool, on_done: Any) -> None:
        self.t0 = t0
        self.first: float | None = None
        self.end = 0.0
        self.chunks = 0
        self.ok = False
        self.keep = keep
        self.texts: list[bytes] = []
        self.final = b""
        self.on_done = on_done


class StreamBus:
    """``llm_request`` with or without ``stream: true``; every message on the reply subject is
    a chunk until the terminal ``llm_response``. One wildcard inbox subscription."""

    def __init__(self, nc: nats.NATS, subject: str):
        self.nc = nc
        self.subject = subject
        self.inbox = f"_BENCHS.{os.urandom(6).hex()}."
        self._plen = len(self.inbox)
        self._pending: dict[str, _Req] = {}
        self._tag = new_tag()
        self._n = 0

    @classmethod
    async def connect(cls, url: str, subject: str) -> StreamBus:
        nc = await nats.connect(url, name="bench-streams", allow_reconnect=False, connect_timeout=5,
                                pending_size=64 * 1024 * 1024, skip_subject_validation=True)
        bus = cls(nc, subject)
        await nc.subscribe(bus.inbox + "*", cb=bus._on_msg, pending_msgs_limit=10_000_000,
                           pending_bytes_limit=1024**3)
        await nc.flush()
        return bus

    async def close(self) -> None:
        with contextlib.suppress(nats.errors.Error, OSError, asyncio.TimeoutError):
            await self.nc.close()

    async def send(self, template: tuple[bytes, bytes], keep: bool = False, on_done: Any = None) -> _Req:
        self._n += 1
        rid = f"{self._tag}{self._n}"
        req = self._pending[rid] = _Req(perf(), keep, on_done)
        await self.nc.publish(self.subject, template[0] + rid.encode() + template[1], reply=self.inbox + rid)
        return req

    async def _on_msg(self, msg: Any) -> None:
        now = perf()
        rid = msg.subject[self._plen:]
        req = self._pending.get(rid)
        if req is None:
            return
        data = msg.data
        if FINAL_TYPE in data:
            del self._pending[rid]
            req.end = now
            req.ok = OK in data
            if req.keep:
                req.final = data
            if req.on_done is not None:
                await req.on_done(req)
            return
        req.chunks += 1
        if req.first is None:
            req.first = now
        if req.keep:
            req.texts.append(data)

    def forget(self) -> None:
        self._pending = {}
        self._tag = new_tag()

    async def one(self, template: tuple[bytes, bytes], keep: bool = True, timeout_s: float = 30.0) -> _Req | None:
        done = asyncio.get_running_loop().create_future()

        async def finished(req: _Req) -> None:
            if not done.done():
                done.set_result(req)

        await self.send(template, keep, finished)
        try:
            return await asyncio.wait_for(done, timeout_s)
        except TimeoutError:
            return None

    async def run_load(self, template: tuple[bytes, bytes], warmup_s: float, window_s: float, *,
                       concurrency: int = 0, rate: float = 0.0, probe: CpuProbe | None = None,
                       drain_s: float = 30.0) -> dict[str, Any]:
        """A closed loop (``concurrency`` in flight, each answer sends the next) or an open
        one (``rate`` requests a second, whatever the answers do): answers, chunk messages
        and time to first chunk inside the window."""
        w = [float("inf"), float("inf")]
        counts = {"answered": 0, "errors": 0, "chunk_msgs": 0}
        ttft: list[float] = []
        running = [True]

        async def finished(req: _Req) -> None:
            if w[0] <= req.end < w[1]:
                counts["answered"] += req.ok
                counts["chunk_msgs"] += req.chunks
                if req.first is not None:
                    ttft.append(req.first - req.t0)
            counts["errors"] += not req.ok
            if running[0] and concurrency:
                await self.send(template, False, finished)

        t0 = perf()
        if concurrency:
            for _ in range(concurrency):
                await self.send(template, False, finished)
            await asyncio.sleep(warmup_s)
        w[0] = t0 + warmup_s
        w[1] = w[0] + window_s
        sent, started = 0, False
        while rate:
            now = perf()
            if probe is not None and not started and now >= w[0]:
                probe.start()
                started = True
            if now >= w[1]:
                break
            for _ in range(int((now - t0) * rate) - sent):
                await self.send(template, False, finished)
                sent += 1
            await asyncio.sleep(0.002)
        if concurrency:
            w[0] = perf()
            w[1] = w[0] + window_s
            if probe is not None:
                probe.start()
            await asyncio.sleep(window_s)
        if probe is not None:
            probe.stop()
        w[1] = perf()
        running[0] = False
        deadline = perf() + drain_s
        while self._pending and perf() < deadline:
            await asyncio.sleep(0.01)
        unanswered = len(self._pending)
        self.forget()
        window = w[1] - w[0]
        out: dict[str, Any] = {
            "answered_per_s": counts["answered"] / window, "chunk_msgs_per_s": counts["chunk_msgs"] / window,
            "errors": counts["errors"] + unanswered, "unanswered": unanswered, "window_s": window,
        }
        if ttft:
            out["ttft"] = summarize_ms(ttft)
        if probe is not None:
            out["cpu_s"] = probe.seconds
        return out


# --------------------------------------------------------------------------- the scenarios


class StreamScenarios:
    """The four scenarios; ``bench`` is the running ``scenarios.Bench`` (stack, sizes, log)."""

    def __init__(self, bench: Any):
        self.bench = bench
        self.fast: Child | None = None
        self.agent: Child | None = None
        self.agent0: Child | None = None
        self.bus: StreamBus | None = None
        self.bus0: StreamBus | None = None
        self.unavailable: str | None = None
        self.checked = False
        self.plan: set[str] = {"ttft", "relay", "streams"}
        """The streaming scenarios this run will measure: their processes start together."""
        self.slow: Child | None = None
        self.many: Child | None = None

    async def close(self) -> None:
        for bus in (self.bus, self.bus0):
            if bus is not None:
                await bus.close()

    @staticmethod
    def _state(child: Child | None) -> str:
        if child is None:
            return "not started"
        code = child.process.poll()
        return "running" if code is None else f"exited with {code}: {child.log_tail(3)!r}"

    async def _fast_stack(self) -> None:
        """Once: a 0 ms, 1,000 tokens/s emulator and an agent with the default coalescing
        (ttft, relay), one with coalescing off (relay), a 200 ms, 50 tokens/s emulator and its
        agent (streams), all started at the same time; then is streaming through the bus
        there at all?"""
        b, s = self.bench, self.bench.sizes
        if self.fast is None:
            stack = b.stack
            self.fast = stack.start_emulator(0, name="emulator-stream-fast", tokens_per_s=FAST_TOKENS_PER_S, wait=False)
            if "streams" in self.plan:
                self.slow = stack.start_emulator(MANY_TTFT_MS, name="emulator-streams",
                                                 tokens_per_s=s.stream_tokens_per_s, wait=False)
            for child in (self.fast, self.slow):
                if child is not None:
                    stack.ready(child)
            self.agent = stack.start_agent(b.nats_url, self.fast.info["url"], "benchstream", wait=False)
            if "relay" in self.plan and coalesce_setting()[0]:
                self.agent0 = stack.start_agent(b.nats_url, self.fast.info["url"], "benchstream0",
                                                extra_router={COALESCE_SETTING: 0}, wait=False)
            if self.slow is not None:
                self.many = stack.start_agent(b.nats_url, self.slow.info["url"], "benchmany", wait=False)
            for child in (self.agent, self.agent0, self.many):
                if child is not None:
                    stack.ready(child)
            self.bus = await StreamBus.connect(b.nats_url, "benchstream.llm_request")
            if self.agent0 is not None:
                self.bus0 = await StreamBus.connect(b.nats_url, "benchstream0.llm_request")
        if not self.checked:
            assert self.bus is not None
            req = await self.bus.one(request_template(VENDORS["openai"], True), keep=True)
            if req is None:
                self.unavailable = "not measured: a stream: true request got no answer within 30 s"
            else:
                self.unavailable = streaming_unavailable(req.first is None, final_summary(req.final))
            self.checked = True
            if self.unavailable:
                b.log(f"  streaming: {self.unavailable}")

    # -- adapters ---------------------------------------------------------------------

    async def adapters(self, workdir: Path, timeout_s: float = 600) -> dict[str, Any]:
        b, s = self.bench, self.bench.sizes
        upstream_ms = s.adapter_upstream_ms
        emulator = b.stack.start_emulator(upstream_ms, name=f"emulator-adapters-{upstream_ms:g}ms")
        spec = {"emulator_root": emulator.info["root"], "emulator_pid": emulator.pid, "apis": list(VENDORS),
                "in_flight": s.adapter_in_flight, "warmup_s": s.adapter_warmup_s, "window_s": s.adapter_window_s,
                "rounds": s.rounds, "warm": s.adapter_warm}
        spec_path, out_path = workdir / "adapters-spec.json", workdir / "adapters-out.json"
        spec_path.write_text(json.dumps(spec))
        worker = b.stack.spawn_python("adapters", "bench.adapters", [str(spec_path), str(out_path)])
        try:
            deadline = time.monotonic() + timeout_s
            while worker.process.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            if worker.process.poll() is None or worker.process.returncode != 0 or not out_path.exists():
                tail = worker.log_tail(8).replace("\n", " | ")
                raise RuntimeError(f"bench.adapters failed ({worker.process.returncode}): {tail}")
            for line in worker.log_tail(100).splitlines():
                if line.startswith("  adapters"):
                    b.log(line)
            vendors = json.loads(out_path.read_text())
        finally:
            b.stack.stop(worker)
            b.stack.stop(emulator)
        return {"in_flight": s.adapter_in_flight, "upstream_ms": upstream_ms,
                "ideal_rps": s.adapter_in_flight / (upstream_ms / 1000), "vendors": vendors}

    # -- ttft -------------------------------------------------------------------------

    async def ttft(self) -> dict[str, Any]:
        from router_agent.http import HttpClient
        from router_agent.providers import ADAPTERS
        from router_agent.providers.base import ProviderError, TextDelta

        b, s = self.bench, self.bench.sizes
        await self._fast_stack()
        assert self.fast is not None and self.bus is not None
        measured = self.unavailable is None
        http = HttpClient()
        request = canonical_request()
        direct = {api: (ADAPTERS[api](http), deployment_for(api, self.fast.info["root"])) for api in VENDORS}
        templates = {api: request_template(model, True) for api, model in VENDORS.items()}
        mismatched = {api: 0 for api in VENDORS}

        async def router_side(api: str, n: int) -> dict[str, Any]:
            values, errors = [], 0
            for _ in range(n):
                req = await self.bus.one(templates[api], keep=True, timeout_s=10)
                if req is None:  # a dead agent must not cost n x the timeout
                    raise RuntimeError(f"ttft: no answer within 10 s (agent {self._state(self.agent)})")
                if not req.ok or req.first is None:
                    errors += 1
                    continue
                values.append(req.first - req.t0)
                text = "".join(chunk_text(c) or "" for c in req.texts)
                if text != final_summary(req.final)["content"]:
                    mismatched[api] += 1
            return {**summarize_ms(values), "errors": errors, "n": n}

        async def direct_side(api: str, n: int) -> dict[str, Any]:
            adapter, deployment = direct[api]
            values, errors = [], 0
            for _ in range(n):
                t0 = perf()
                first = None
                try:
                    async for event in adapter.stream(request, deployment, None):
                        if first is None and type(event) is TextDelta and event.text:
                            first = perf()
                except ProviderError:
                    first = None
                if first is None:
                    errors += 1
                else:
                    values.append(first - t0)
            return {**summarize_ms(values), "errors": errors, "n": n}

        try:
            for api in VENDORS:  # warm both paths (first-call imports, pools)
                await direct_side(api, 5)
                if measured:
                    await router_side(api, 5)
            mismatched.update({api: 0 for api in VENDORS})
            rounds = []
            for r in range(s.rounds):
                row: dict[str, Any] = {}
                for api in VENDORS:
                    sides = ("router", "direct") if (r + list(VENDORS).index(api)) % 2 == 0 else ("direct", "router")
                    row[api] = {}
                    for side in sides:
                        if side == "router" and not measured:
                            continue
                        row[api][side] = await (router_side(api, s.ttft_n) if side == "router"
                                                else direct_side(api, s.ttft_n))
                    b.log(f"  ttft {api} round {r + 1}: "
                          + (f"router p50 {row[api]['router']['p50_ms']:.3f} ms, " if measured else "")
                          + f"direct p50 {row[api]['direct']['p50_ms']:.3f} ms")
                rounds.append(row)
        finally:
            await http.close()
        vendors = combine(rounds)
        vendors.pop("rounds", None)
        for api, v in vendors.items():
            v["model"] = VENDORS[api]
            if measured:
                v["added"] = {k: v["router"][k] - v["direct"][k] for k in ("p50_ms", "p90_ms", "p99_ms")}
                v["content_mismatches"] = mismatched[api]
        return {"measured": measured, "reason": self.unavailable or "", "n": s.ttft_n, "rounds": len(rounds),
                "upstream": {"ttft_ms": 0.0, "tokens_per_s": FAST_TOKENS_PER_S}, "vendors": vendors}

    # -- relay ------------------------------------------------------------------------

    async def relay(self) -> dict[str, Any]:
        b, s = self.bench, self.bench.sizes
        await self._fast_stack()
        if self.unavailable:
            return {"measured": False, "reason": self.unavailable}
        assert self.fast is not None and self.agent is not None and self.bus is not None
        known, default = coalesce_setting()
        prompt = long_prompt(s.relay_prompt_chars)
        model = VENDORS["openai"]
        chunks_per_stream = pieces_in(s.relay_prompt_chars, deployment_for("openai", self.fast.info["root"]).model_id)
        variants: dict[str, tuple[StreamBus, Child, bool]] = {"stream_default": (self.bus, self.agent, True)}
        if known:
            assert self.bus0 is not None and self.agent0 is not None
            variants["stream_coalesce_0"] = (self.bus0, self.agent0, True)
        variants["not_streamed"] = (self.bus, self.agent, False)
        templates = {True: request_template(model, True, prompt), False: request_template(model, False, prompt)}
        for bus, _, stream in variants.values():  # warm
            await bus.run_load(templates[stream], 0.1, 0.1, rate=s.relay_rate)
        names = list(variants)
        rounds = []
        for r in range(s.rounds):
            row: dict[str, Any] = {}
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                bus, agent, stream = variants[name]
                probe = CpuProbe({"agent": agent.ps(), "emulator": self.fast.ps(), "nats": b.nats_proc,
                                  "generator": b.me})
                res = await bus.run_load(templates[stream], s.warmup_s, s.window_s, rate=s.relay_rate, probe=probe)
                cpu_s = res.pop("cpu_s")
                res["cpu_pct"] = {k: v / res["window_s"] * 100 for k, v in cpu_s.items()}
                done = res["answered_per_s"] * res["window_s"]
                res["agent_cpu_us_per_request"] = cpu_s["agent"] / done * 1e6 if done else float("nan")
                if stream:
                    res["upstream_chunks_per_s"] = res["answered_per_s"] * chunks_per_stream
                    res["msgs_per_stream"] = res["chunk_msgs_per_s"] / res["answered_per_s"] if done else float("nan")
                    res["agent_cpu_us_per_chunk"] = res["agent_cpu_us_per_request"] / chunks_per_stream
                    msgs = res["chunk_msgs_per_s"] * res["window_s"]
                    res["agent_cpu_us_per_msg"] = cpu_s["agent"] / msgs * 1e6 if msgs else float("nan")
                row[name] = res
            rounds.append(row)
            b.log(f"  relay round {r + 1}: " + ", ".join(
                f"{n} {row[n]['answered_per_s']:.0f}/s agent {row[n]['cpu_pct']['agent']:.0f}%" for n in names))
        for row in rounds:  # same arrival rate: the difference is what the chunks cost
            base = row["not_streamed"]["agent_cpu_us_per_request"]
            for name in names:
                if name != "not_streamed":
                    row[name]["relay_us_per_chunk"] = (row[name]["agent_cpu_us_per_request"] - base) / chunks_per_stream
        out = combine(rounds)
        if self.agent0 is not None:  # not needed any more: free its memory and sockets
            await self.bus0.close()
            self.bus0 = None
            b.stack.stop(self.agent0)
            self.agent0 = None
        return {"measured": True, "reason": "", "rate": s.relay_rate, "chunks_per_stream": chunks_per_stream,
                "upstream": {"ttft_ms": 0.0, "tokens_per_s": FAST_TOKENS_PER_S},
                "coalesce_setting": known, "coalesce_default_ms": default,
                "coalesce_note": "" if known else f"router.{COALESCE_SETTING} does not exist in this agent's config: "
                                                  "coalescing not measured",
                **out}

    # -- many streams -------------------------------------------------------------------

    async def streams(self, workdir: Path) -> dict[str, Any]:
        b, s = self.bench, self.bench.sizes
        await self._fast_stack()
        if self.unavailable:
            return {"measured": False, "reason": self.unavailable}
        if self.slow is None:
            self.slow = b.stack.start_emulator(MANY_TTFT_MS, name="emulator-streams", tokens_per_s=s.stream_tokens_per_s)
        if self.many is None:
            self.many = b.stack.start_agent(b.nats_url, self.slow.info["url"], "benchmany")
        emulator, agent = self.slow, self.many
        chunks = pieces_in(s.stream_prompt_chars, deployment_for("openai", emulator.info["root"]).model_id)
        stream_s = MANY_TTFT_MS / 1000 + chunks / s.stream_tokens_per_s
        levels = []
        try:
            for level in s.stream_levels:
                rounds = []
                for r in range(s.stream_rounds):
                    row = {}
                    for side in (("router", "direct") if r % 2 == 0 else ("direct", "router")):
                        row[side] = await self._streams_side(workdir, side, level, emulator, agent, stream_s, r)
                        g = row[side]["gaps"]
                        b.log(f"  streams {level} {side} round {r + 1}: {row[side]['completed_per_s']:.0f} streams/s, "
                              f"excess gap max {g['max_ms']:.0f} ms, minus reader lag {g['corrected_max_ms']:.0f} ms, "
                              f"minus that and upstream lag {g['router_max_ms']:.0f} ms; reader loop lag max "
                              f"{row[side]['loop_lag_max_ms']:.0f} ms, emulator lag max "
                              f"{row[side]['upstream_lag']['max_ms']:.0f} ms")
                    rounds.append(row)
                levels.append({"streams": level, **_combine_streams(rounds)})
        finally:
            b.stack.stop(agent)
            b.stack.stop(emulator)
            self.slow = self.many = None
        return {"measured": True, "reason": "", "readers": s.stream_readers, "chunks_per_stream": chunks,
                "stream_s": stream_s, "upstream": {"ttft_ms": MANY_TTFT_MS, "tokens_per_s": s.stream_tokens_per_s},
                "levels": levels}

    async def _streams_side(self, workdir: Path, side: str, level: int, emulator: Child, agent: Child,
                            stream_s: float, r: int) -> dict[str, Any]:
        b, s = self.bench, self.bench.sizes
        n = s.stream_readers
        ramp_s, warmup_s, window_s = stream_s, s.stream_warmup_s, s.stream_window_s
        go_file = workdir / f"streams-{level}-{side}-{r}-go"
        workers = []
        for i in range(n):
            spec = {"mode": side, "nats_url": b.nats_url, "subject": "benchmany.llm_request",
                    "model": VENDORS["openai"], "api": "openai", "emulator_root": emulator.info["root"],
                    "streams": level // n + (1 if i < level % n else 0), "prompt_chars": s.stream_prompt_chars,
                    "tokens_per_s": s.stream_tokens_per_s, "go_file": str(go_file), "ramp_s": ramp_s,
                    "warmup_s": warmup_s, "window_s": window_s, "drain_s": stream_s + 5}
            spec_path = workdir / f"streams-{level}-{side}-{r}-{i}-spec.json"
            out_path = spec_path.with_name(spec_path.name.replace("-spec", "-out"))
            spec_path.write_text(json.dumps(spec))
            workers.append((b.stack.spawn_python(f"streamload-{side}-{i}", "bench.streamload",
                                                 [str(spec_path), str(out_path)]), out_path))
        # The upstream's own lateness, seen from a process that does nothing else.
        probe_spec = workdir / f"streams-{level}-{side}-{r}-probe-spec.json"
        probe_out = probe_spec.with_name(probe_spec.name.replace("-spec", "-out"))
        probe_spec.write_text(json.dumps({"mode": "probe", "emulator_root": emulator.info["root"],
                                          "go_file": str(go_file), "interval_s": 0.005,
                                          "duration_s": ramp_s + warmup_s + window_s + stream_s}))
        workers.append((b.stack.spawn_python(f"streamload-probe-{side}", "bench.streamload",
                                             [str(probe_spec), str(probe_out)]), probe_out))
        procs = {"agent": agent.ps(), "emulator": emulator.ps(), "nats": b.nats_proc}
        try:
            for w, _ in workers:  # imports, config, connections: then all start together
                deadline = time.monotonic() + 30
                while "streamload ready" not in w.log_tail(5):
                    if w.process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"bench.streamload ({side}) did not start: {w.log_tail(8)!r}")
                    await asyncio.sleep(0.02)
            start_at = time.time() + 0.05
            tmp = go_file.with_suffix(".tmp")
            tmp.write_text(repr(start_at))
            tmp.replace(go_file)
            await asyncio.sleep(max(0.0, start_at + ramp_s + warmup_s - time.time()))
            readers = {f"reader{i}": w.ps() for i, (w, _) in enumerate(workers[:n]) if w.process.poll() is None}
            probe = CpuProbe({**procs, **readers})
            probe.start()
            await asyncio.sleep(window_s)
            probe.stop()
            deadline = time.monotonic() + stream_s + 30
            while any(w.process.poll() is None for w, _ in workers) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            parts = []
            for w, out_path in workers:
                if w.process.returncode != 0 or not out_path.exists():
                    tail = w.log_tail(8).replace("\n", " | ")
                    raise RuntimeError(f"bench.streamload ({side}) failed ({w.process.returncode}): {tail}")
                parts.append(json.loads(out_path.read_text()))
        finally:
            for w, _ in workers:
                b.stack.stop(w)
        upstream = UpstreamLag(parts.pop()["probes"])
        cpu = {k: v / window_s * 100 for k, v in probe.seconds.items()}
        readers_cpu = sum(v for k, v in cpu.items() if k.startswith("reader"))
        return {
            "completed_per_s": sum(p["completed_in_window"] for p in parts) / window_s,
            "chunks_per_s": sum(p["chunks_in_window"] for p in parts) / window_s,
            "errors": sum(p["errors"] for p in parts), "left_open": sum(p["left_open"] for p in parts),
            "readers_started_late_s": max(p["started_late_s"] for p in parts),
            "ttft_p50_ms": max(p["ttft_p50_ms"] for p in parts), "ttft_p99_ms": max(p["ttft_p99_ms"] for p in parts),
            "loop_lag_p99_ms": max(p["loop_lag"]["p99_ms"] for p in parts),
            "loop_lag_max_ms": max(p["loop_lag"]["max_ms"] for p in parts),
            "gaps": merge_gaps([p["gaps"] for p in parts], upstream),
            "upstream_lag": upstream.summary(),
            "cpu_pct": {"agent": cpu.get("agent", float("nan")), "emulator": cpu.get("emulator", float("nan")),
                        "nats": cpu.get("nats", float("nan")), "readers": readers_cpu},
        }


def _combine_streams(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over rounds, except the worst gaps: those are the worst of any round."""
    out = combine(rounds)
    for side in ("router", "direct"):
        worst = [r[side]["gaps"] for r in rounds]
        g = out[side]["gaps"]
        for key in ("max_ms", "corrected_max_ms", "over_100ms", "corrected_over_100ms", "over_50ms",
                    "corrected_over_50ms", "router_max_ms", "router_over_100ms", "router_over_50ms"):
            g[key] = max(w[key] for w in worst)
        g["top"] = sorted((t for w in worst for t in w["top"]), reverse=True)[:5]
        out[side]["loop_lag_max_ms"] = max(r[side]["loop_lag_max_ms"] for r in rounds)
        out[side]["upstream_lag"]["max_ms"] = max(r[side]["upstream_lag"]["max_ms"] for r in rounds)
    return out


__all__ = ["NOT_AVAILABLE", "StreamBus", "StreamScenarios", "coalesce_setting"]
