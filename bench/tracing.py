"""``python -m bench.tracing``: what traces and metrics cost the agent, in requests per second.

    python -m bench.tracing                          a small run (about half a minute)
    python -m bench.tracing --in-flight 500 --window 5 --rounds 3

One nats-server, one emulator answering at once (0 ms: the agent's own CPU is the bound, so
its telemetry cost shows), and one agent per mode, each with its own subject prefix and
only these variables different:

| mode    | OTEL_* given to the agent                                                   |
|---------|-----------------------------------------------------------------------------|
| off     | none (the default: no OpenTelemetry module is even imported)                |
| on      | OTEL_TRACES_EXPORTER=otlp, OTEL_TRACES_SAMPLER=always_on                    |
| sampled | OTEL_TRACES_EXPORTER=otlp, OTEL_TRACES_SAMPLER=parentbased_traceidratio, ARG=0.1 |
| full    | as on, plus OTEL_METRICS_EXPORTER=otlp,prometheus (1 s export, a /metrics endpoint) |

OTLP goes over HTTP to a sink (this module, ``--sink``) that decodes every export and counts
spans by kind per agent, so the table says what each mode actually exported. The load
sends no ``traceparent``: every request starts its trace at the agent, so ``sampled`` keeps
about one in ten (a caller's sampled flag would be followed instead). Modes are measured
one after another, in reversed order every other round; figures are medians over rounds.
The sink decodes on the same cores, so req/s overstates what exporting costs the agent;
"agent CPU ms/req" is the agent's own share. Printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import timeit
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from bench.load import BusClient, CpuProbe, combine
from bench.procs import Child, Stack
from router_agent.bus import free_port

MODES = ("off", "on", "sampled", "full")
KINDS = ("SPAN_KIND_CONSUMER", "SPAN_KIND_INTERNAL", "SPAN_KIND_CLIENT", "SPAN_KIND_PRODUCER")


def mode_env(mode: str, sink_url: str, prometheus_port: int) -> dict[str, str]:
    if mode == "off":
        return {}
    env = {"OTEL_SERVICE_NAME": f"bench-{mode}", "OTEL_TRACES_EXPORTER": "otlp",
           "OTEL_EXPORTER_OTLP_ENDPOINT": sink_url, "OTEL_TRACES_SAMPLER": "always_on",
           "OTEL_BSP_SCHEDULE_DELAY": "500"}
    if mode == "sampled":
        env.update(OTEL_TRACES_SAMPLER="parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG="0.1")
    if mode == "full":
        env.update(OTEL_METRICS_EXPORTER="otlp,prometheus", OTEL_METRIC_EXPORT_INTERVAL="1000",
                   OTEL_EXPORTER_PROMETHEUS_HOST="127.0.0.1", OTEL_EXPORTER_PROMETHEUS_PORT=str(prometheus_port))
    return env


# ------------------------------------------------------------------ the OTLP sink (a child process)


def run_sink(port: int) -> None:
    """Accept OTLP/HTTP exports, count spans by (service, kind) and metric points by service."""
    from aiohttp import web
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
    )
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.trace.v1.trace_pb2 import Span

    spans: Counter[str] = Counter()
    metric_names: dict[str, set[str]] = {}

    def service(resource: Any) -> str:
        return next((a.value.string_value for a in resource.attributes if a.key == "service.name"), "?")

    async def traces(request: web.Request) -> web.Response:
        export = ExportTraceServiceRequest.FromString(await request.read())
        for rs in export.resource_spans:
            name = service(rs.resource)
            for ss in rs.scope_spans:
                for span in ss.spans:
                    spans[f"{name} {Span.SpanKind.Name(span.kind)}"] += 1
        return web.Response(content_type="application/x-protobuf", body=b"")

    async def metrics(request: web.Request) -> web.Response:
        export = ExportMetricsServiceRequest.FromString(await request.read())
        for rm in export.resource_metrics:
            names = metric_names.setdefault(service(rm.resource), set())
            names.update(m.name for sm in rm.scope_metrics for m in sm.metrics)
        return web.Response(content_type="application/x-protobuf", body=b"")

    async def counts(_request: web.Request) -> web.Response:
        return web.json_response({"spans": spans, "metrics": {k: sorted(v) for k, v in metric_names.items()}})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.add_routes([web.post("/v1/traces", traces), web.post("/v1/metrics", metrics), web.get("/counts", counts)])
    print(f"sink ready: http://127.0.0.1:{port}", flush=True)
    web.run_app(app, host="127.0.0.1", port=port, print=None)


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return answer.read().decode()


# ------------------------------------------------------------------ the run


def off_cost_ns() -> dict[str, float]:
    """What the hooks cost per call when telemetry is off (the agent calls them per request)."""
    from router_agent.config import TelemetryConfig
    from router_agent.core.model import Deployment
    from router_agent.telemetry import Telemetry

    off = Telemetry(TelemetryConfig())
    dep = Deployment("openai", "gpt-4-turbo", "gpt-4-turbo-preview", "openai", "cloud", "http://127.0.0.1/v1")
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    calls = {
        "start + end (request span)": lambda: off.end(off.start("llm_request", tp, {})[0], {}),
        "attempt_start + attempt_end": lambda: off.attempt_end(off.attempt_start(dep, tp)[0], "m", 1, 2),
        "request_done": lambda: off.request_done("a", "openai", "gpt-4-turbo", "ok", 0.1, None, 1, 2, 0.001),
    }
    n = 200_000
    return {name: min(timeit.repeat(call, number=n, repeat=3)) / n * 1e9 for name, call in calls.items()}


async def measure(args: argparse.Namespace, stack: Stack, workdir: Path) -> dict[str, Any]:
    nats_url = stack.start_nats()
    emulator = stack.start_emulator(0)
    sink_port = free_port()
    sink = stack.spawn_python("otlp-sink", "bench.tracing", ["--sink", "--port", str(sink_port)])
    sink.wait_for_line("sink ready:", 20)
    sink_url = f"http://127.0.0.1:{sink_port}"
    prometheus_port = free_port()
    agents: dict[str, Child] = {
        mode: stack.start_agent(nats_url, emulator.info["url"], f"trace{mode}", env=mode_env(mode, sink_url,
                                                                                             prometheus_port),
                                wait=False)
        for mode in MODES
    }
    for child in agents.values():
        stack.ready(child)
    clients = {mode: await BusClient.connect(nats_url, f"trace{mode}.llm_request") for mode in MODES}
    sent = Counter[str]()
    rounds: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    try:
        for mode, client in clients.items():  # warm every agent the same way (imports, pools, caches)
            await client.sequential(50)
            warm = await client.closed_loop(args.in_flight, 0.3, 0.3)
            sent[mode] += 50 + warm["answered"]
        for r in range(args.rounds):
            for mode in MODES if r % 2 == 0 else tuple(reversed(MODES)):
                latencies, errors = await clients[mode].sequential(args.sequential)
                probe = CpuProbe({"agent": agents[mode].ps()})
                res = await clients[mode].closed_loop(args.in_flight, args.warmup, args.window, probe=probe)
                done = res["rps"] * res["window_s"]
                res["agent_cpu_ms_per_request"] = res.pop("cpu_s")["agent"] / done * 1000 if done else float("nan")
                res["sequential_p50_ms"] = sorted(latencies)[len(latencies) // 2] * 1000 if latencies else float("nan")
                res["errors"] += errors
                sent[mode] += len(latencies) + res["answered"]
                rounds[mode].append(res)
                print(f"  round {r + 1} {mode:<8} {res['rps']:8.0f} req/s", file=sys.stderr)
        metrics_text = fetch(f"http://127.0.0.1:{prometheus_port}/metrics")
    finally:
        for client in clients.values():
            await client.close()
        for child in agents.values():  # SIGTERM: the agent stops, exporting what it holds
            stack.stop(child)
    counts = json.loads(fetch(f"{sink_url}/counts"))
    return {"modes": {mode: combine(rounds[mode]) for mode in MODES}, "sent": dict(sent), "counts": counts,
            "prometheus_families": sorted({line.split()[2] for line in metrics_text.splitlines()
                                           if line.startswith("# TYPE ")})}


def render(result: dict[str, Any], off_ns: dict[str, float], args: argparse.Namespace) -> str:
    modes, spans = result["modes"], result["counts"]["spans"]
    base = modes["off"]["rps"]
    lines = [
        (f"tracing cost: {args.in_flight} in flight, 0 ms upstream, {args.window:g} s windows, "
         f"{args.rounds} round(s); sequential p50 over {args.sequential} requests"),
        "",
        (f"{'mode':<8} {'req/s':>8} {'vs off':>7} {'p50 ms':>7} {'p99 ms':>7} {'seq p50':>8} "
         f"{'agent CPU ms/req':>16} {'errors':>6}   spans per request (consumer/internal/client/producer)"),
    ]
    for mode in MODES:
        m = modes[mode]
        per = [spans.get(f"bench-{mode} {kind}", 0) / max(result["sent"][mode], 1) for kind in KINDS]
        lines.append(
            f"{mode:<8} {m['rps']:8.0f} {(m['rps'] / base - 1) * 100 if base else 0:+6.1f}% {m['p50_ms']:7.2f} "
            f"{m['p99_ms']:7.2f} {m['sequential_p50_ms']:8.3f} {m['agent_cpu_ms_per_request']:16.3f} "
            f"{m['errors']:6d}   " + ("-" if mode == "off" else " / ".join(f"{p:.2f}" for p in per))
        )
    lines.append("")
    if not any(spans.get(f"bench-{mode} SPAN_KIND_CLIENT") for mode in MODES):
        lines.append("note: no GenAI client spans (chat <model>): requests.py does not call "
                     "telemetry.attempt_start/attempt_end yet, so 'on' and 'full' cost less than they will.")
    exported = result["counts"]["metrics"].get("bench-full", [])
    families = result["prometheus_families"]
    lines.append(f"full: {len(exported)} metric names exported over OTLP ({', '.join(exported) or '-'}); "
                 f"Prometheus /metrics served {len(families)} families ({', '.join(families) or '-'})")
    if not exported:
        lines.append("note: no metrics recorded: requests.py / agent.py do not call telemetry.request_done, "
                     "attempt_end or observe yet, so 'full' measures the SDK idling beside the traces.")
    lines.append("off: what the hooks cost per call, in this process: "
                 + "; ".join(f"{name} {ns:.0f} ns" for name, ns in off_ns.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tracing", description=__doc__.splitlines()[0])
    parser.add_argument("--in-flight", type=int, default=50)
    parser.add_argument("--window", type=float, default=2.0, help="seconds measured per mode and round")
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--sequential", type=int, default=200, help="one-at-a-time requests per mode and round")
    parser.add_argument("--sink", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sink:
        run_sink(args.port)
        return 0
    off_ns = off_cost_ns()
    workdir = Path(tempfile.mkdtemp(prefix="router-bench-tracing-"))
    stack = Stack(workdir)
    try:
        try:
            import uvloop

            result = uvloop.run(measure(args, stack, workdir))
        except ImportError:
            result = asyncio.run(measure(args, stack, workdir))
    finally:
        stack.close()
        shutil.rmtree(workdir, ignore_errors=True)
    print(render(result, off_ns, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
