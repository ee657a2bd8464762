"""``python -m bench``: every benchmark scenario in one go, a table, and JSON.

    python -m bench                      the full run (a few minutes)
    python -m bench --quick              a tiny version of every scenario (seconds; the smoke test)
    python -m bench --only latency,cpu   some scenarios (streaming = ttft,relay,streams)
    python -m bench --json OUT.json      write the JSON there (default: bench/results/latest.json)

Scenarios: latency, throughput, ledger_cache (both with the cost ledger capped and the response
cache on), cpu, memory, adapters, ttft, relay, streams, scale_out, peer (LiteLLM's Router).
It starts its own nats-server, emulators and agents on 127.0.0.1 (free ports), and stops
them all when it ends, also on Ctrl-C or SIGTERM. Progress goes to stderr, the table to
stdout. Figures are printed, never asserted: see bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from bench import report
from bench.ledger_cache import LedgerCache
from bench.procs import Stack
from bench.scenarios import FULL, QUICK, Bench, log_stderr

SCENARIOS = ("latency", "throughput", "ledger_cache", "cpu", "memory", "adapters", "ttft", "relay", "streams",
             "scale_out", "peer")
ALIASES = {"scale-out": "scale_out", "scaleout": "scale_out", "litellm": "peer", "peer_litellm": "peer",
           "ledger-cache": "ledger_cache"}
GROUPS = {"streaming": ("ttft", "relay", "streams")}
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "latest.json"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: every scenario in seconds")
    parser.add_argument("--only", default="", help=f"comma-separated scenarios out of {', '.join(SCENARIOS)}")
    parser.add_argument("--json", default=None, help=f"where to write the JSON (default {DEFAULT_JSON})")
    parser.add_argument("--keep-logs", action="store_true", help="keep the children's logs (path on stderr)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per scenario (default: 3, quick: 1)")
    parser.add_argument("--levels", default=None, help="in-flight levels for throughput (default: 50,500,2000)")
    parser.add_argument("--stream-levels", default=None,
                        help="concurrent streams for the streams scenario (default: 1000; quick: 20)")
    parser.add_argument("--peer-timeout", type=float, default=None, help="seconds the LiteLLM worker may take")
    args = parser.parse_args(argv)
    chosen = []
    for name in filter(None, (part.strip() for part in args.only.split(","))):
        name = ALIASES.get(name, name)
        if name in GROUPS:
            chosen.extend(GROUPS[name])
            continue
        if name not in SCENARIOS:
            parser.error(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}, streaming (= ttft,relay,streams)")
        chosen.append(name)
    args.scenarios = [s for s in SCENARIOS if s in chosen] if chosen else list(SCENARIOS)
    return args


async def run_scenarios(stack: Stack, args: argparse.Namespace, sizes: Any, workdir: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    failed: dict[str, str] = {}
    bench = Bench(stack, sizes, log=log_stderr)
    bench.streaming.plan = set(args.scenarios)
    try:
        log_stderr("bench: starting nats-server, emulators (0 ms, 200 ms) and two agents")
        await bench.start()
        for name in args.scenarios:
            log_stderr(f"bench: {name}")
            started = time.monotonic()
            try:
                if name == "latency":
                    results["latency"] = await bench.latency()
                elif name == "throughput":
                    results["throughput"] = await bench.throughput()
                elif name == "ledger_cache":
                    results["ledger_cache"] = await LedgerCache(bench).run()
                elif name == "cpu":
                    results["cpu"] = await bench.cpu()
                elif name == "memory":
                    results["memory"] = await bench.memory()
                elif name == "adapters":
                    results["adapters"] = await bench.streaming.adapters(workdir)
                elif name == "ttft":
                    results["ttft"] = await bench.streaming.ttft()
                elif name == "relay":
                    results["relay"] = await bench.streaming.relay()
                elif name == "streams":
                    results["streams"] = await bench.streaming.streams(workdir)
                elif name == "scale_out":
                    results["scale_out"] = await bench.scale_out()
                elif name == "peer":
                    timeout = args.peer_timeout or (120 if args.quick else 300)
                    results["peer_litellm"] = await bench.peer_litellm(workdir, timeout)
            except Exception as exc:  # noqa: BLE001 - one scenario's failure is reported, the others still run
                failed[name] = f"{type(exc).__name__}: {exc}"
                traceback.print_exc(file=sys.stderr)
            log_stderr(f"bench: {name} took {time.monotonic() - started:.1f} s")
    finally:
        await bench.close()
    if failed:
        results["failed"] = failed
    return results


def _clean(value: Any) -> Any:
    """JSON without NaN (it is not JSON): NaN becomes null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    sizes = QUICK if args.quick else FULL
    if args.rounds:
        sizes = dataclasses.replace(sizes, rounds=args.rounds, latency_rounds=max(args.rounds, sizes.latency_rounds),
                                    memory_rounds=min(args.rounds, sizes.memory_rounds), stream_rounds=args.rounds)
    if args.levels:
        levels = tuple(int(x) for x in args.levels.split(","))
        sizes = dataclasses.replace(sizes, levels=levels)
    if args.stream_levels:
        sizes = dataclasses.replace(sizes, stream_levels=tuple(int(x) for x in args.stream_levels.split(",")))
    signal.signal(signal.SIGTERM, _on_sigterm)
    workdir = Path(tempfile.mkdtemp(prefix="router-bench-"))
    stack = Stack(workdir)
    started = time.monotonic()
    load_start = report.load_average()
    try:
        try:
            import uvloop

            results = uvloop.run(run_scenarios(stack, args, sizes, workdir))
        except ImportError:
            results = asyncio.run(run_scenarios(stack, args, sizes, workdir))
    finally:
        stack.close()
        if args.keep_logs:
            log_stderr(f"bench: logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    meta = {
        "mode": "quick" if args.quick else "full",
        "scenarios": args.scenarios,
        "duration_s": time.monotonic() - started,
        "sizes": sizes.__dict__,
        "machine": report.machine(),
        "load_average": {"start": load_start, "end": report.load_average()},
        "versions": report.versions(),
        "settings": report.settings(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    table = report.rows(results, sizes)
    for name, error in results.get("failed", {}).items():
        table.append((f"{name}: FAILED", error, "", ""))
    goal_rows = report.goals(results, sizes, quick=args.quick)
    if "peer" in args.scenarios and "peer_litellm" in results:
        meta["versions"]["litellm"] = results["peer_litellm"].get("version", meta["versions"]["litellm"])
    text = report.render(meta, table, goal_rows, results)
    report.print_table(text)

    out = Path(args.json) if args.json else DEFAULT_JSON
    out.parent.mkdir(parents=True, exist_ok=True)
    document = {"meta": meta, "results": results, "goals": goal_rows,
                "table": [list(row) for row in table], "text": text}
    out.write_text(json.dumps(_clean(document), indent=2) + "\n")
    log_stderr(f"bench: JSON written to {out}")
    return 1 if results.get("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
