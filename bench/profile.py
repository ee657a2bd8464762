"""``python -m bench.profile``: where the agent's time goes under a benchmark load.

Starts the same real processes as ``python -m bench`` (nats-server, an emulator, one
agent), drives one load, and samples the agent with py-spy (``pip install py-spy``) for
the load's duration. Prints the top functions by own time and by inclusive time, in
percent of the agent's samples, and keeps py-spy's collapsed stacks (open them with any
flame-graph viewer, or ``py-spy record --format flamegraph`` for an SVG).

    python -m bench.profile --case saturation       zero-latency upstream, 200 in flight
    python -m bench.profile --case in-flight-500    200 ms upstream, 500 in flight
    python -m bench.profile --case in-flight-500 --after 2000
                                                    the same after a 2,000-in-flight burst
    python -m bench.profile --case latency          one request at a time
    python -m bench.profile --memory 5000           what 5,000 requests in flight hold
                                                    (tracemalloc, idle vs in flight)

py-spy leaves out samples where the agent is idle (waiting in epoll), so percentages are
of the agent's busy samples. A sample whose innermost Python frame is the event loop's
``run`` is time spent inside uvloop's C code (I/O, callbacks); ``--native`` splits it up.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.load import BusClient
from bench.procs import Stack

CASES = {
    # name: (upstream latency ms, in flight; 1 = sequential)
    "saturation": (0.0, 200),
    "in-flight-500": (200.0, 500),
    "in-flight-2000": (200.0, 2000),
    "latency": (0.0, 1),
}

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _short(frame: str) -> str:
    """``func (path/to/pkg/mod.py:12)`` -> ``func (pkg/mod.py)``, line numbers dropped."""
    m = _FRAME.match(frame)
    if not m:
        return frame
    parts = Path(m.group("file")).parts
    where = "/".join(parts[-2:]) if len(parts) >= 2 else m.group("file")
    return f"{m.group('func')} ({where})"


def summarize(collapsed: Path, top: int = 20) -> str:
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    files: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_short(f) for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        leaf = frames[-1]
        total += n
        own[leaf] += n
        for frame in set(frames):
            incl[frame] += n
        m = re.search(r"\(([^()]*)\)$", leaf)
        files[m.group(1).split("/")[0] if m else leaf] += n
    if not total:
        return "no samples"
    lines = [f"{total} samples"]
    lines.append(f"\ntop {top} by own time (% of samples):")
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top)]
    lines.append(f"\ntop {top} by inclusive time:")
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in incl.most_common(top)]
    lines.append("\nown time by package/folder:")
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in files.most_common(12)]
    return "\n".join(lines)


async def _drive(stack: Stack, case: str, seconds: float, after: int | None, out: Path, rate: int,
                 native: bool, ledger_cache: bool = False) -> Path:
    latency_ms, in_flight = CASES[case]
    url = stack.start_nats()
    emulator = stack.start_emulator(latency_ms)
    if ledger_cache:  # the agent of ``python -m bench --only ledger_cache``, unique cacheable prompts
        from bench import ledger_cache as lc

        router, extra = lc.overlay()
        agent = stack.start_agent(url, emulator.info["url"], "prof", extra_router=router, extra=extra)
        bus = await BusClient.connect(url, "prof.llm_request", unique_prompt=True, temperature=lc.TEMPERATURE)
    else:
        agent = stack.start_agent(url, emulator.info["url"], "prof")
        bus = await BusClient.connect(url, "prof.llm_request")
    try:
        if after:
            await bus.closed_loop(after, 1.0, 1.0)
        if in_flight == 1:
            await bus.sequential(200)
        else:
            await bus.closed_loop(in_flight, 1.0, 1.0)
        collapsed = out / f"agent-{case}{'-after-' + str(after) if after else ''}.txt"
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        argv = [spy, "record", "--pid", str(agent.pid), "--duration", str(int(seconds)), "--rate", str(rate),
                "--format", "raw", "--output", str(collapsed), "--nonblocking"]
        if native:
            argv.append("--native")
        spy_proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            await asyncio.sleep(0.3)
            if in_flight == 1:
                deadline = time.monotonic() + seconds + 0.5
                while time.monotonic() < deadline:
                    await bus.sequential(200)
            else:
                res = await bus.closed_loop(in_flight, 0.0, seconds + 0.5)
                print(f"load: {res['rps']:.0f} req/s, p50 {res['p50_ms']:.1f} ms, p99 {res['p99_ms']:.1f} ms, "
                      f"{res['errors']} errors", flush=True)
            _, err = spy_proc.communicate(timeout=seconds + 30)
            if spy_proc.returncode != 0:
                raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')[-500:]}")
        finally:
            if spy_proc.poll() is None:
                spy_proc.kill()
                spy_proc.wait()
        return collapsed
    finally:
        await bus.close()


async def _memory(stack: Stack, level: int, latency_ms: float, top: int) -> str:
    """Run the agent under tracemalloc; diff a snapshot taken idle with one at ``level`` in flight."""
    import os
    import signal
    import tracemalloc

    import nats

    snapshots = stack.workdir / "snapshots"
    snapshots.mkdir()
    url = stack.start_nats()
    emulator = stack.start_emulator(latency_ms)
    agent = stack.start_agent(url, emulator.info["url"], "profmem", extra_router={"metrics_interval_s": 0.2},
                              cli=[sys.executable, "-m", "bench.traced_agent"],
                              env={"BENCH_SNAPSHOT_DIR": str(snapshots)})
    proc = agent.ps()
    in_flight: dict[str, int] = {}

    from bench.scenarios import _decode_metrics as decode

    async def on_metrics(msg) -> None:
        stats = decode(msg.data).data.stats
        in_flight[stats.provider] = stats.in_flight

    watcher = await nats.connect(url, allow_reconnect=False)
    await watcher.subscribe("profmem.provider_metrics.>", cb=on_metrics)
    bus = await BusClient.connect(url, "profmem.llm_request", timeout_ms=int(latency_ms * 2))

    async def snapshot(n: int) -> tracemalloc.Snapshot:
        os.kill(agent.pid, signal.SIGUSR1)
        done = snapshots / f"snapshot-{n}.done"
        deadline = time.monotonic() + 120
        while not done.exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        return tracemalloc.Snapshot.load(str(snapshots / f"snapshot-{n}.bin"))

    try:
        await asyncio.sleep(1.0)
        rss_idle = proc.memory_info().rss
        idle = await snapshot(1)
        bus.reset(None)
        await bus.burst(level)
        deadline = time.monotonic() + latency_ms / 1000 * 0.85
        reached = 0
        while reached < level and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            reached = max(reached, sum(in_flight.values()))
        rss_busy = proc.memory_info().rss
        busy = await snapshot(2)
    finally:
        await bus.close()
        await watcher.close()
    filters = [tracemalloc.Filter(False, tracemalloc.__file__)]
    idle, busy = idle.filter_traces(filters), busy.filter_traces(filters)
    if reached < level:
        lines0 = [f"WARNING: only {reached} of {level} in flight when sampled; the rest wait in the agent's "
                  "NATS subscription queue, so per-request figures below are per request sent"]
    else:
        lines0 = []
    lines = [*lines0, f"{level} requests sent, agent reported {reached} in flight",
             f"RSS idle {rss_idle / 2**20:.1f} MB, busy {rss_busy / 2**20:.1f} MB: "
             f"{(rss_busy - rss_idle) / level:,.0f} bytes per request (tracemalloc itself inflates RSS)"]
    total = sum(s.size_diff for s in busy.compare_to(idle, "filename"))
    lines.append(f"Python allocations (tracemalloc) grew {total / level:,.0f} bytes per request")
    lines.append("\nby file (bytes per in-flight request):")
    for stat in busy.compare_to(idle, "filename")[:top]:
        frame = stat.traceback[0]
        lines.append(f"  {stat.size_diff / level:8,.0f}  {stat.count_diff / level:6.1f} blocks  {_tail(frame.filename)}")
    lines.append("\nby line (bytes per in-flight request):")
    for stat in busy.compare_to(idle, "lineno")[:top]:
        frame = stat.traceback[0]
        lines.append(f"  {stat.size_diff / level:8,.0f}  {stat.count_diff / level:6.1f} blocks  "
                     f"{_tail(frame.filename)}:{frame.lineno}")
    lines.append("\nby call site in the agent's own code (first router_agent/signals frame of each trace):")
    own: collections.Counter[str] = collections.Counter()
    for stat in busy.compare_to(idle, "traceback"):
        # Frames run oldest to newest: the innermost agent frame is the last one.
        site = next((f"{_tail(f.filename)}:{f.lineno}" for f in reversed(stat.traceback)
                     if "router_agent" in f.filename or "/signals/" in f.filename), "(no agent frame)")
        own[site] += stat.size_diff
    for site, size in own.most_common(top):
        lines.append(f"  {size / level:8,.0f}  {site}")
    return "\n".join(lines)


def _tail(path: str) -> str:
    parts = Path(path).parts
    return "/".join(parts[-2:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(CASES), default="saturation")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--after", type=int, default=None, help="first run this many in flight for 2 s")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--native", action="store_true", help="include C frames (py-spy --native)")
    parser.add_argument("--out", default=None, help="folder for the collapsed stacks (default: a temp dir)")
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--ledger-cache", action="store_true",
                        help="the agent with the shared ledger, caps and the response cache on (unique prompts)")
    parser.add_argument("--memory", type=int, default=None, metavar="N",
                        help="instead of CPU: tracemalloc diff of the agent idle vs N requests in flight")
    parser.add_argument("--memory-latency-ms", type=float, default=60000,
                        help="upstream latency: long, tracemalloc makes the agent slow to take requests in")
    args = parser.parse_args(argv)
    if args.memory:
        workdir = Path(tempfile.mkdtemp(prefix="router-profile-mem-"))
        stack = Stack(workdir)
        try:
            import uvloop

            print(uvloop.run(_memory(stack, args.memory, args.memory_latency_ms, args.top)))
        finally:
            stack.close()
            shutil.rmtree(workdir, ignore_errors=True)
        return 0
    out = Path(args.out or tempfile.mkdtemp(prefix="router-profile-"))
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="router-profile-run-"))
    stack = Stack(workdir)
    try:
        import uvloop

        collapsed = uvloop.run(_drive(stack, args.case, args.seconds, args.after, out, args.rate, args.native,
                                         args.ledger_cache))
    finally:
        stack.close()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"collapsed stacks: {collapsed}")
    print(summarize(collapsed, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
