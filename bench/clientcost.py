"""``python -m bench.clientcost``: what the load generator's bus client costs per request.

Why: on two cores the generator's CPU is taken from the agent, so the harness uses the
cheaper of two ways to wait for answers. This compares them against a real agent:

- ``request``: nats-py's ``nc.request()`` in N tasks (a future, a done-callback and
  ``asyncio.wait_for`` per request, one task per caller);
- ``inbox``: ``bench.load.BusClient``: one wildcard inbox subscription, a dict of send
  times, the next request sent from the reply callback (no task, future or timer).

It prints req/s and the generator's CPU seconds per 1,000 requests for each, at 500 in
flight against a 200 ms upstream and at 200 in flight against a 0 ms upstream.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nats
import psutil

from bench.load import BusClient, CpuProbe, Recorder, request_template
from bench.procs import Stack


async def _request_loop(url: str, subject: str, concurrency: int, warmup_s: float, window_s: float) -> dict:
    nc = await nats.connect(url, name="bench-clientcost", allow_reconnect=False)
    head, tail = request_template()
    rec = Recorder()
    running = True
    counter = 0
    probe = CpuProbe({"generator": psutil.Process()})

    async def worker() -> None:
        nonlocal counter
        while running:
            counter += 1
            t0 = time.perf_counter()
            try:
                msg = await nc.request(subject, head + f"cc{counter}".encode() + tail, timeout=30)
                ok = b'"status":"ok"' in msg.data
            except Exception:
                ok = False
            now = time.perf_counter()
            rec.record(now, now - t0, ok)

    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    await asyncio.sleep(warmup_s)
    rec.w0 = time.perf_counter()
    rec.w1 = rec.w0 + window_s
    probe.start()
    await asyncio.sleep(window_s)
    probe.stop()
    rec.w1 = time.perf_counter()
    running = False
    await asyncio.wait(tasks, timeout=30)
    await nc.close()
    return rec.result({"cpu_s": probe.seconds})


async def _main(stack: Stack) -> None:
    url = stack.start_nats()
    for latency_ms, concurrency in ((200, 500), (0, 200)):
        emulator = stack.start_emulator(latency_ms)
        agent = stack.start_agent(url, emulator.info["url"], f"cc{latency_ms}")
        subject = f"cc{latency_ms}.llm_request"
        bus = await BusClient.connect(url, subject)
        await bus.closed_loop(concurrency, 0.5, 0.5)  # warm the agent's pool
        for name in ("request", "inbox", "request", "inbox"):
            if name == "request":
                res = await _request_loop(url, subject, concurrency, 1.0, 3.0)
            else:
                res = await bus.closed_loop(concurrency, 1.0, 3.0, probe=CpuProbe({"generator": psutil.Process()}))
            done = res["rps"] * res["window_s"]
            per = res["cpu_s"]["generator"] / done * 1000 if done else float("nan")
            print(f"{concurrency} in flight, {latency_ms} ms upstream, {name:8s}: {res['rps']:7.0f} req/s, "
                  f"generator {per:.3f} CPU s/1000 req, p50 {res['p50_ms']:.1f} ms, {res['errors']} err", flush=True)
        await bus.close()
        stack.stop(agent)
        stack.stop(emulator)


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="router-bench-cc-"))
    stack = Stack(workdir)
    try:
        import uvloop

        uvloop.run(_main(stack))
    finally:
        stack.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
