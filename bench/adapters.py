"""The adapter layer alone, one process: ``python -m bench.adapters SPEC OUT`` (run by the harness).

For each vendor wire format, ``in_flight`` calls of ``ADAPTERS[api](http).complete(...)``
in a closed loop against an emulator (its own process, a fixed upstream latency), with
the agent's own ``HttpClient`` and the ``Deployment`` the agent builds
(``bench.streams.deployment_for``). The baseline, interleaved in every round (ABBA), is
bare aiohttp replaying the very request the adapter sends (URL, headers, body, captured
from one call) and only reading the answer: the difference is what the adapter costs
(building the body, parsing the answer, classifying failures) at that concurrency.

Each part starts from a pool warmed at that level (``warmup_s`` of the same load first).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from bench.load import CpuProbe, closed_loop_tasks, combine
from bench.streams import canonical_request, deployment_for


class RecordingHttp:
    """An ``HttpClient`` stand-in that remembers the first request and passes it on."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.seen: tuple[str, bytes, dict[str, str]] | None = None

    def posting(self, url: str, body: bytes, headers: dict[str, str]) -> Any:
        if self.seen is None:
            self.seen = (url, body, dict(headers))
        return self.inner.posting(url, body, headers)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    from router_agent.http import HttpClient
    from router_agent.providers import ADAPTERS
    from router_agent.providers.base import ProviderError

    me = psutil.Process()
    emulator = psutil.Process(spec["emulator_pid"])
    request = canonical_request()
    level, warmup_s, window_s = spec["in_flight"], spec["warmup_s"], spec["window_s"]
    out: dict[str, Any] = {}
    for api in spec["apis"]:
        deployment = deployment_for(api, spec["emulator_root"])
        http = HttpClient()
        recorder = RecordingHttp(http)
        adapter = ADAPTERS[api](recorder)  # type: ignore[arg-type]
        await adapter.complete(request, deployment, None)
        assert recorder.seen is not None
        url, body, headers = recorder.seen
        adapter = ADAPTERS[api](http)
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=60),
            timeout=aiohttp.ClientTimeout(total=None), skip_auto_headers=("User-Agent",),
        )

        async def call_adapter(adapter: Any = adapter, deployment: Any = deployment) -> bool:
            try:
                await adapter.complete(request, deployment, None)
                return True
            except ProviderError:
                return False

        async def call_raw(session: aiohttp.ClientSession = session, url: str = url, body: bytes = body,
                           headers: dict[str, str] = headers) -> bool:
            try:
                async with session.post(url, data=body, headers=headers, allow_redirects=False) as response:
                    await response.read()
                    return response.status == 200
            except (aiohttp.ClientError, OSError):
                return False

        calls = {"adapter": call_adapter, "raw": call_raw}
        try:
            for call in calls.values() if spec["warm"] else ():  # warm both pools at this level
                await closed_loop_tasks(call, level, warmup_s, 0.2)
            rounds = []
            for r in range(spec["rounds"]):
                row: dict[str, Any] = {}
                for side in (("adapter", "raw") if r % 2 == 0 else ("raw", "adapter")):
                    probe = CpuProbe({"process": me, "emulator": emulator})
                    res = await closed_loop_tasks(calls[side], level, warmup_s, window_s, probe)
                    res["cpu_pct"] = {k: v / res["window_s"] * 100 for k, v in res.pop("cpu_s").items()}
                    done = res["rps"] * res["window_s"]
                    res["process_cpu_us_per_call"] = (res["cpu_pct"]["process"] / 100 * res["window_s"] / done * 1e6
                                                      if done else float("nan"))
                    row[side] = res
                rounds.append(row)
                print(f"  adapters {api} round {r + 1}: adapter {row['adapter']['rps']:.0f} req/s, "
                      f"raw aiohttp {row['raw']['rps']:.0f} req/s", file=sys.stderr, flush=True)
            out[api] = {"model": deployment.model, "path": url.split("127.0.0.1", 1)[-1].split("/", 1)[-1],
                        **combine(rounds)}
        finally:
            await session.close()
            await http.close()
    return out


def main(argv: list[str]) -> int:
    spec_path, out_path = Path(argv[0]), Path(argv[1])
    spec = json.loads(spec_path.read_text())
    try:
        import uvloop

        result = uvloop.run(run(spec))
    except ImportError:
        result = asyncio.run(run(spec))
    out_path.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
