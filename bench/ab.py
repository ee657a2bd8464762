"""``python -m bench.ab``: two agents measured against each other in one run, in paired blocks.

    python -m bench.ab --b-env NAME=VALUE                  the same code, B with an environment
    python -m bench.ab --b-cli ../other/.venv/bin/router-agent   another checkout's agent as B
    python -m bench.ab --b-relay                           the bare relay (bench/relay.py) as B
    python -m bench.ab --rounds 4 --blocks 15 --block 200  the defaults (~35 s)

Why: the latency scenario's "router's own share" moves by about +-0.05 ms from one run to
the next on this machine (the machine's speed drifts over seconds), while one change to the
request path moves it by 0.01 ms or less. Here agent A (this environment's ``router-agent``,
or ``--a-cli``) and agent B run side by side on one nats-server and one 0 ms emulator, with
the direct call and the bare NATS echo; each block sends ``--block`` sequential requests to
each of the four, in an order that rotates every block. Both agents then see the same
drift, and the per-block difference B - A cancels it. Two processes of the same code also
differ by a steady ~0.01-0.02 ms (where each landed: addresses, hash seed, core), so each
round starts a fresh pair, A first and B first in turn, and the rounds' means are printed
too: a change is real when they agree in sign, not only when the blocks' interval excludes 0.

Prints the overall p50 of each, each agent's own share (router - direct - echo, as the
latency scenario computes it), and B - A: per block (median, mean, 95% interval) and per
round (means). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.load import BusClient, HttpClient
from bench.procs import Stack

Z95 = 1.96


def paired(a: list[float], b: list[float], per_round: int) -> dict[str, Any]:
    """B - A per block: median, mean, the mean's 95% interval (normal approximation), and
    the mean of each round's ``per_round`` blocks."""
    diff = [y - x for x, y in zip(a, b, strict=True)]
    mean = statistics.fmean(diff)
    half = Z95 * statistics.stdev(diff) / math.sqrt(len(diff)) if len(diff) > 1 else math.inf
    rounds = [statistics.fmean(diff[i:i + per_round]) for i in range(0, len(diff), per_round)]
    return {"median": statistics.median(diff), "mean": mean, "low": mean - half, "high": mean + half,
            "rounds": rounds}


def own_share(router: float, direct: float, echo: float) -> float:
    return router - direct - echo


async def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-ab-"))
    stack = Stack(workdir)
    clients: dict[str, Any] = {}
    try:
        url = stack.start_nats()
        emulator = stack.start_emulator(0)
        env_b = dict(item.split("=", 1) for item in args.b_env)
        clis = {"A": [args.a_cli] if args.a_cli else None, "B": [args.b_cli] if args.b_cli else None}
        envs = {"A": None, "B": env_b}
        echo = stack.spawn_python("echo", "bench.echo", ["--nats", url, "--subject", "bench.echo"])
        echo.wait_for_line("echo ready:", 20)
        clients = {"direct": await HttpClient(emulator.info["url"]).open(),
                   "echo": await BusClient.connect(url, "bench.echo")}
        block_p50: dict[str, list[float]] = {name: [] for name in ("A", "B", *clients)}
        every: dict[str, list[float]] = {name: [] for name in block_p50}
        for r in range(args.rounds):
            # Fresh agents each round, started in turn A first and B first: a process's own
            # luck (addresses, hash seed, which core it lands on) is a round's, not a side's.
            agents = {}
            for side in ("A", "B") if r % 2 == 0 else ("B", "A"):
                if side == "B" and args.b_relay:
                    agents[side] = stack.spawn_python("relay", "bench.relay", [
                        "--nats", url, "--subject", f"bench{side}{r}.llm_request", "--upstream", emulator.info["url"]])
                    agents[side].wait_for_line("relay ready:", 20)
                else:
                    agents[side] = stack.start_agent(url, emulator.info["url"], f"bench{side}{r}", cli=clis[side],
                                                     env=envs[side])
                clients[side] = await BusClient.connect(url, f"bench{side}{r}.llm_request")
            for client in clients.values():  # warm every path (imports, pools, first-call caches)
                await client.sequential(args.block)
            order = ["A", "direct", "B", "echo"]
            for n in range(args.blocks):
                order = order[1:] + order[:1]
                for name in order:
                    latencies, errors = await clients[name].sequential(args.block)
                    if errors:
                        raise RuntimeError(f"{name}: {errors} error(s) in round {r + 1}, block {n + 1}")
                    block_p50[name].append(statistics.median(latencies) * 1000)
                    every[name].extend(latencies)
                print(f"  round {r + 1}/{args.rounds}, block {n + 1}/{args.blocks}", file=sys.stderr, end="\r")
            for side in ("A", "B"):
                await clients.pop(side).close()
                stack.stop(agents[side])
        print(file=sys.stderr)
        p50 = {name: statistics.median(values) * 1000 for name, values in every.items()}
        return {
            "p50_ms": p50,
            "share_ms": {side: own_share(p50[side], p50["direct"], p50["echo"]) for side in ("A", "B")},
            "b_minus_a_ms": paired(block_p50["A"], block_p50["B"], args.blocks),
            "rounds": args.rounds, "blocks": args.blocks, "block": args.block,
        }
    finally:
        for client in clients.values():
            await client.close()
        stack.close()
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n")[0])
    ap.add_argument("--a-cli", help="agent A's router-agent command (default: this environment's)")
    ap.add_argument("--b-cli", help="agent B's router-agent command (default: this environment's)")
    ap.add_argument("--b-env", action="append", default=[], metavar="NAME=VALUE",
                    help="an environment variable for agent B (repeatable)")
    ap.add_argument("--b-relay", action="store_true",
                    help="B is the bare relay (bench/relay.py), not an agent: B - A is minus the product's own work")
    ap.add_argument("--rounds", type=int, default=4, help="fresh pairs of agents, started in turn")
    ap.add_argument("--blocks", type=int, default=15, help="blocks per round")
    ap.add_argument("--block", type=int, default=200, help="sequential requests per side per block")
    args = ap.parse_args(argv)
    if args.b_relay and (args.b_cli or args.b_env):
        ap.error("--b-relay replaces agent B: no --b-cli or --b-env with it")
    for item in args.b_env:
        if "=" not in item:
            ap.error(f"--b-env {item!r}: expected NAME=VALUE")
    if args.rounds < 1 or args.blocks < 1 or args.rounds * args.blocks < 2 or args.block < 1:
        ap.error("--rounds, --blocks and --block must be at least 1, with two blocks in all")
    try:
        import uvloop  # as the agent and the latency scenario's clients
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    out = asyncio.run(run(args))
    p50, share, diff = out["p50_ms"], out["share_ms"], out["b_minus_a_ms"]
    print(f"sequential p50 over {out['rounds']} x {out['blocks']} blocks of {out['block']}: "
          + ", ".join(f"{name} {value:.3f} ms" for name, value in p50.items()))
    print(f"router's own share (router - direct - echo): A {share['A']:+.3f} ms, B {share['B']:+.3f} ms")
    print(f"B - A per block: median {diff['median']:+.4f} ms, mean {diff['mean']:+.4f} ms "
          f"(95% interval {diff['low']:+.4f} .. {diff['high']:+.4f}); per round "
          + ", ".join(f"{m:+.4f}" for m in diff["rounds"]) + " ms")


if __name__ == "__main__":
    main()
