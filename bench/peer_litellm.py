"""The peer: the same scenarios through LiteLLM's ``Router``, in a process of its own.

LiteLLM's Router is a library, so "the router" runs inside the caller's process: this
worker is both the load generator and the router, exactly as a user of LiteLLM would run
it. Its baseline is the same aiohttp client the main harness uses, calling the same
emulator directly from this same process. It runs in its own process so that LiteLLM's
import (seconds, hundreds of MB) and its background tasks touch nothing else, and so
that its CPU and RSS can be read on their own.

Nothing here reaches beyond 127.0.0.1: ``LITELLM_LOCAL_MODEL_COST_MAP`` makes LiteLLM
use its bundled price table instead of downloading one, and its telemetry is off.

Run by ``python -m bench``: ``python -m bench.peer_litellm SPEC.json OUT.json``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_LOG", "ERROR")

import psutil

from bench.load import (
    MODEL,
    PROMPT,
    UPSTREAM_MODEL_ID,
    CpuProbe,
    HttpClient,
    closed_loop_tasks,
    combine,
    open_loop_tasks,
    summarize_ms,
)

MESSAGES = [{"role": "user", "content": PROMPT}]


def _router(groups: dict[str, str]):
    """A Router with one deployment per model group (so routing adds nothing).

    Each worker process has exactly one Router with one model group: on LiteLLM 1.106 a
    second Router in the same process took the sequential p50 from ~6 to ~10 ms, and a
    second model group in the same Router from ~6 to ~8.5 ms. So the harness runs one
    worker per upstream (0 ms, 200 ms, slow for memory), each a fresh process."""
    import litellm
    from litellm import Router

    litellm.telemetry = False
    litellm.suppress_debug_info = True
    return Router(
        model_list=[
            {
                "model_name": name,
                "litellm_params": {"model": f"openai/{UPSTREAM_MODEL_ID}", "api_base": url, "api_key": "sk-emulated"},
            }
            for name, url in groups.items()
        ],
        num_retries=0,
        timeout=30,
    )


def _call(router, model: str = MODEL) -> Any:
    async def call() -> bool:
        try:
            response = await router.acompletion(model=model, messages=MESSAGES)
        except Exception:
            return False
        return bool(response.choices)

    return call


async def _sequential(call, count: int) -> tuple[list[float], int]:
    latencies, errors = [], 0
    for _ in range(count):
        t0 = time.perf_counter()
        ok = await call()
        latencies.append(time.perf_counter() - t0)
        errors += not ok
    return latencies, errors


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    from importlib.metadata import version

    me = psutil.Process()
    out: dict[str, Any] = {"available": True, "version": version("litellm")}
    part = spec["part"]
    if part == "memory":
        out["memory"] = await _memory(me, spec["memory"])
        return out
    router = _router({MODEL: spec["url"]})
    litellm_call = _call(router)
    http = await HttpClient(spec["url"]).open()
    try:
        # Warm both paths (first calls build clients and caches).
        await _sequential(litellm_call, 20)
        await http.sequential(20)
        if part == "fast":
            out["latency"] = await _latency(litellm_call, http, spec)
            out["cpu"] = await _cpu(litellm_call, http, spec, me)
        elif part == "slow":
            out.update(await _throughput(litellm_call, http, spec, me))
        else:
            raise ValueError(f"unknown part {part!r}")
    finally:
        await http.close()
    return out


def _sides(r: int) -> tuple[str, str]:
    return ("litellm", "direct") if r % 2 == 0 else ("direct", "litellm")


async def _latency(litellm_call, http: HttpClient, spec: dict[str, Any]) -> dict[str, Any]:
    """Added latency, one call at a time, LiteLLM and direct interleaved in every round."""
    rounds = []
    for r in range(spec["rounds"]):
        row: dict[str, Any] = {}
        for side in _sides(r):
            if side == "litellm":
                lat, err = await _sequential(litellm_call, spec["latency_n"])
            else:
                lat, err = await http.sequential(spec["latency_n"])
            row[side] = {**summarize_ms(lat), "errors": err}
        rounds.append(row)
    return combine(rounds)


async def _throughput(litellm_call, http: HttpClient, spec: dict[str, Any], me: psutil.Process) -> dict[str, Any]:
    """Closed and open loop against the 200 ms upstream (LiteLLM only: the direct baseline
    against the same emulator is the main harness's throughput scenario)."""
    tp = spec["throughput"]
    c, rate = tp["in_flight"], tp["open_rps"]
    closed, opened = [], []
    for _ in range(spec["rounds"]):
        res = await closed_loop_tasks(litellm_call, c, tp["warmup_s"], tp["window_s"], CpuProbe({"process": me}))
        res["cpu_pct"] = {k: v / res["window_s"] * 100 for k, v in res.pop("cpu_s").items()}
        closed.append({"litellm": res})
        res = await open_loop_tasks(litellm_call, rate, tp["warmup_s"], tp["window_s"], 2 * c,
                                    CpuProbe({"process": me}))
        res["cpu_pct"] = {k: v / res["window_s"] * 100 for k, v in res.pop("cpu_s").items()}
        opened.append({"litellm": res})
    return {
        "throughput_closed": {"in_flight": c, **combine(closed)},
        "throughput_open": {"in_flight": c, "offered_rps": rate, **combine(opened)},
    }


async def _cpu(litellm_call, http: HttpClient, spec: dict[str, Any], me: psutil.Process) -> dict[str, Any]:
    """CPU per request at saturation (zero-latency upstream). The process is the router and
    the caller at once; the direct figure shows the caller's (client's) share."""
    cpu = spec["cpu"]
    rounds = []
    for r in range(spec["rounds"]):
        row: dict[str, Any] = {}
        # The direct client's share is small and steady: one round of it is enough.
        for side in (_sides(r) if r == 0 else ("litellm",)):
            call = litellm_call if side == "litellm" else http.one
            res = await closed_loop_tasks(call, cpu["concurrency"], cpu["warmup_s"], cpu["window_s"],
                                          CpuProbe({"process": me}))
            done = res["rps"] * res["window_s"]
            res["cpu_s_per_1000"] = res["cpu_s"]["process"] / done * 1000 if done else float("nan")
            res["cpu_pct"] = res["cpu_s"]["process"] / res["window_s"] * 100
            row[side] = res
        rounds.append(row)
    return {"concurrency": cpu["concurrency"], **combine(rounds)}


def _upstream_connections(me: psutil.Process, port: int) -> int:
    try:
        conns = me.net_connections(kind="tcp")
    except psutil.Error:
        return -1
    return sum(1 for c in conns if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED)


async def _memory(me: psutil.Process, mem: dict[str, Any]) -> dict[str, Any]:
    """RSS with N calls in flight; "in flight" is seen as N open connections to the upstream."""
    from urllib.parse import urlparse

    port = urlparse(mem["url"]).port or 80
    router = _router({MODEL: mem["url"]})
    call = _call(router)
    await call()  # a first call builds the client, as in the other scenarios
    await asyncio.sleep(0.5)
    idle = me.memory_info().rss
    n = mem["in_flight"]
    t0 = time.monotonic()
    tasks = [asyncio.create_task(call()) for _ in range(n)]
    seen = 0
    deadline = t0 + mem["latency_s"] * 0.8
    while time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        seen = max(seen, _upstream_connections(me, port))
        if seen >= n:
            break
    peak = max(me.memory_info().rss for _ in range(3))
    done, pending = await asyncio.wait(tasks, timeout=mem["latency_s"] + 60)
    for task in pending:
        task.cancel()
    errors = sum(1 for t in done if t.cancelled() or t.exception() is not None or not t.result()) + len(pending)
    return {
        "in_flight": n,
        "upstream_connections_seen": seen,
        "dispatch_s": time.monotonic() - t0 if seen >= n else None,
        "idle_rss_mb": idle / 2**20,
        "rss_mb": peak / 2**20,
        "bytes_per_in_flight": (peak - idle) / n,
        "errors": errors,
    }


def main(argv: list[str]) -> int:
    spec_path, out_path = argv
    spec = json.loads(open(spec_path).read())
    try:
        import litellm  # noqa: F401
    except Exception as exc:  # ImportError, or anything its import-time code raises
        result: dict[str, Any] = {"available": False, "reason": f"litellm cannot be imported: {type(exc).__name__}: {exc}"}
    else:
        try:
            import uvloop

            result = uvloop.run(run(spec))
        except ImportError:
            result = asyncio.run(run(spec))
    with open(out_path, "w") as handle:
        json.dump(result, handle)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
