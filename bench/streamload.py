"""A stream reader process for the many-streams scenario: ``python -m bench.streamload SPEC OUT``.

It keeps ``streams`` streams open (each that ends starts the next, the first ones spread
over ``ramp_s`` so their tokens do not all fall on the same millisecond), either through
the router (``llm_request`` with ``stream: true`` over NATS, chunks on the reply subject)
or straight to the emulator through the agent's own adapter (the baseline). For each
chunk inside the window it computes the gap the upstream did not cause
(``bench.streams.gap_excess``) and, beside it, how late this process's own event loop was
at that moment (``LoopLag``): a reader that cannot keep up makes gaps of its own, which
are not the router's. The harness runs two or more of these so that one Python process
reading 1,000 streams is not the bottleneck (one was: gaps up to 245 ms), and reports both
the raw gaps and the gaps minus the reader's lag.

Why the readers are lean: every chunk costs a ``perf_counter`` and, through the router, a
byte search (is it the final answer?) and a loose decode of its text; the per-stream gap
arithmetic runs once, when the stream ends.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench.streams import (
    OK,
    GapStats,
    LoopLag,
    canonical_request,
    chunk_text,
    deployment_for,
    gap_excess,
    is_final,
    long_prompt,
    new_tag,
    request_template,
)

perf = time.perf_counter


class Reader:
    def __init__(self, spec: dict[str, Any]):
        self.spec = spec
        self.per_token_s = 1.0 / spec["tokens_per_s"]
        self.prompt = long_prompt(spec["prompt_chars"])
        self.lag = LoopLag()
        self.gaps = GapStats()
        self.ttft: list[float] = []
        self.started = self.completed = self.errors = self.chunks = self.mismatched = 0
        self.running = True
        self.in_flight = 0
        self.w0 = self.w1 = float("inf")

    # -- per stream -----------------------------------------------------------------

    def finish(self, t0: float, record: list[tuple[float, int]], text: str, ok: bool) -> None:
        """A stream ended: count it, and its gaps inside the window."""
        self.in_flight -= 1
        w0, w1 = self.w0, self.w1
        if not ok or not record:
            if w0 <= perf() < w1 + 5:
                self.errors += 1
            return
        if w0 <= t0 < w1:
            self.ttft.append(record[0][0] - t0)
        if w0 <= record[-1][0] < w1:
            self.completed += 1
        lag = self.lag.lag_during
        for (t, excess), (t_prev, _) in zip(gap_excess(record, text, self.per_token_s), record):
            if w0 <= t < w1:
                self.chunks += 1
                self.gaps.add(excess, lag(t_prev, t) if excess > 0.01 else 0.0, t_prev, t)

    # -- the two ways in ------------------------------------------------------------

    async def prepare_router(self) -> Any:
        import nats

        spec = self.spec
        nc = await nats.connect(spec["nats_url"], name="bench-streamload", allow_reconnect=False,
                                pending_size=64 * 1024 * 1024, skip_subject_validation=True)

        async def run(until_new: float) -> None:
            await self.run_router(nc, until_new)

        return run

    async def run_router(self, nc: Any, until_new: float) -> None:
        spec = self.spec
        inbox = f"_BENCHS.{os.urandom(6).hex()}."
        plen = len(inbox)
        head, tail = request_template(spec["model"], True, self.prompt)
        tag, counter = new_tag(), [0]
        state: dict[str, tuple[float, list[tuple[float, int]], list[str]]] = {}
        subject = spec["subject"]

        async def send() -> None:
            counter[0] += 1
            rid = f"{tag}{counter[0]}"
            state[rid] = (perf(), [], [])
            self.started += 1
            self.in_flight += 1
            await nc.publish(subject, head + rid.encode() + tail, reply=inbox + rid)

        async def on_msg(msg: Any) -> None:
            now = perf()
            entry = state.get(msg.subject[plen:])
            if entry is None:
                return
            data = msg.data
            if is_final(data):
                del state[msg.subject[plen:]]
                t0, record, texts = entry
                self.finish(t0, record, "".join(texts), OK in data and bool(record))
                if self.running and perf() < until_new:
                    await send()
                return
            text = chunk_text(data)
            if text:
                entry[2].append(text)
                record = entry[1]
                record.append((now, (record[-1][1] if record else 0) + len(text)))

        await nc.subscribe(inbox + "*", cb=on_msg, pending_msgs_limit=10_000_000,
                           pending_bytes_limit=2 * 1024**3)
        await nc.flush()
        try:
            await self._ramp(send)
            await self._drain(until_new)
        finally:
            await nc.close()

    async def prepare_direct(self) -> Any:
        from router_agent.http import HttpClient
        from router_agent.providers import ADAPTERS

        spec = self.spec
        http = HttpClient()
        adapter = ADAPTERS[spec["api"]](http)
        deployment = deployment_for(spec["api"], spec["emulator_root"])

        async def run(until_new: float) -> None:
            await self.run_direct(http, adapter, deployment, until_new)

        return run

    async def run_direct(self, http: Any, adapter: Any, deployment: Any, until_new: float) -> None:
        from router_agent.providers.base import ProviderError, StreamEnd, TextDelta

        request = canonical_request(self.prompt)

        async def one() -> None:
            while self.running and perf() < until_new:
                self.started += 1
                self.in_flight += 1
                t0 = perf()
                record: list[tuple[float, int]] = []
                texts: list[str] = []
                chars = 0
                ok = False
                try:
                    async for event in adapter.stream(request, deployment, None):
                        if type(event) is TextDelta and event.text:
                            chars += len(event.text)
                            record.append((perf(), chars))
                            texts.append(event.text)
                        elif type(event) is StreamEnd:
                            ok = True
                except ProviderError:
                    ok = False
                self.finish(t0, record, "".join(texts), ok)

        tasks: list[asyncio.Task] = []

        async def start() -> None:
            tasks.append(asyncio.create_task(one()))

        try:
            await self._ramp(start)
            await self._drain(until_new)
            await asyncio.wait(tasks, timeout=5) if tasks else None
        finally:
            for task in tasks:
                task.cancel()
            await http.close()

    async def _ramp(self, start) -> None:
        n, ramp = self.spec["streams"], self.spec["ramp_s"]
        t_start = perf()
        for i in range(n):
            wait = t_start + ramp * i / n - perf()
            if wait > 0:
                await asyncio.sleep(wait)
            await start()

    async def _drain(self, until_new: float) -> None:
        """Wait out the window, then for the streams still open (bounded)."""
        await asyncio.sleep(max(0.0, until_new - perf()))
        self.running = False
        deadline = perf() + self.spec["drain_s"]
        while self.in_flight > 0 and perf() < deadline:
            await asyncio.sleep(0.02)

    async def main(self) -> dict[str, Any]:
        spec = self.spec
        # Imports, config and connections first: the readers start together at start_at.
        run = await (self.prepare_router() if spec["mode"] == "router" else self.prepare_direct())
        print("streamload ready", flush=True)
        go = Path(spec["go_file"])
        while not go.exists():  # the harness writes the start time once every reader is ready
            await asyncio.sleep(0.01)
        start_at = float(go.read_text())
        delay = start_at - time.time()
        late = -delay
        if delay > 0:
            await asyncio.sleep(delay)
        t_start = perf()
        self.w0 = t_start + spec["ramp_s"] + spec["warmup_s"]
        self.w1 = self.w0 + spec["window_s"]
        lagger = asyncio.create_task(self.lag.run(self.w1 + spec["drain_s"]))
        await run(self.w1)
        lagger.cancel()
        ttft = sorted(self.ttft)
        return {
            "mode": spec["mode"], "streams": spec["streams"], "started": self.started,
            "started_late_s": max(0.0, late),
            "completed_in_window": self.completed, "chunks_in_window": self.chunks,
            "errors": self.errors, "left_open": self.in_flight, "window_s": spec["window_s"],
            "ttft_p50_ms": ttft[len(ttft) // 2] * 1000 if ttft else float("nan"),
            "ttft_p99_ms": ttft[int(len(ttft) * 0.99)] * 1000 if ttft else float("nan"),
            "loop_lag": self.lag.summary(self.w0, self.w1),
            "gaps": self.gaps.to_json(),
        }


async def probe(spec: dict[str, Any]) -> dict[str, Any]:
    """Mode ``probe``: ``GET /health`` on the emulator, one at a time on one connection, the
    next ``interval_s`` after the last was sent (at once if it took longer): ``(sent, round
    trip)`` of each. One at a time, so that a busy emulator is measured by how late its loop
    answers, not by how long it takes to accept a pile of new connections; back to back, so
    that every moment of the run is inside some probe."""
    import aiohttp

    url = spec["emulator_root"] + "/health"
    out: list[tuple[float, float]] = []
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def one() -> None:
            t0 = perf()
            try:
                async with session.get(url) as response:
                    await response.read()
            except (aiohttp.ClientError, OSError):
                return
            out.append((t0, perf() - t0))

        for _ in range(20):  # open a few connections before the run
            await one()
        out.clear()
        print("streamload ready", flush=True)
        go = Path(spec["go_file"])
        while not go.exists():
            await asyncio.sleep(0.01)
        await asyncio.sleep(max(0.0, float(go.read_text()) - time.time()))
        end = perf() + spec["duration_s"]
        while perf() < end:
            t0 = perf()
            await one()
            await asyncio.sleep(max(0.0, t0 + spec["interval_s"] - perf()))
    return {"mode": "probe", "probes": out}


def main(argv: list[str]) -> int:
    spec_path, out_path = Path(argv[0]), Path(argv[1])
    spec = json.loads(spec_path.read_text())
    run = probe(spec) if spec["mode"] == "probe" else Reader(spec).main()
    try:
        import uvloop

        result = uvloop.run(run)
    except ImportError:
        result = asyncio.run(run)
    tmp = out_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(out_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
