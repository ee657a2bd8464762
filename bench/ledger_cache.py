"""The ledger_cache scenario: what the router adds with the cost ledger and the response cache
on the request path, against a direct call and the bare NATS echo measured in the same run.

The agents of the other scenarios run the ledger with its defaults (no cap) and no cache (no
agent opts in). This one starts agents configured as production would run them (``overlay``):

- the ledger on its real store, the JetStream key-value bucket and ``cost_event`` stream of the
  bench's own nats-server (``store: jetstream``), with a cloud and a per-agent daily cap
  (``CAP_USD`` each, which no run comes near), so every request's reservation is checked
  against two leased budgets;
- the response cache on (in-process layer + the shared JetStream bucket) for agent ``bench``.

Every request is cacheable (temperature 0) and unique (its id is in its prompt), so each one
pays a cache lookup that misses (its key hashed, the in-process layer and the index of the
bucket's keys asked; no instance wrote it, so the bucket is not read) and a store (a
background bucket write, whose echo feeds the index), and never a hit: the cost of having the
cache on the path, not the speed of hits. One informative side repeats one prompt: the latency of hits.

- **latency**: 1 in flight, 0 ms upstream. In every round, in alternating order: the agent
  under test, the bench's default agent (``bench0``, same unique requests, no cap, no cache),
  the direct call (the same body straight to the emulator), the hits; then the echo. Added =
  router - direct; the router's own share = added - echo, as in the latency scenario.
- **throughput**: closed loop at ``goal_in_flight`` (500) against a fresh 200 ms emulator:
  the agent under test, the default agent and the direct call, alternating in each round;
  router / direct is taken per round, the median printed.

Evidence, read after each part from the agent and the bus (``evidence``), fails the scenario
when it says the ledger or the cache was off (``problems``): the agent's own ``cost_report``
(``router_control.cost_report``: billed attempts, shared ledger, the caps and their state), the
``cost_event`` batches in the stream, the answers stored in the cache bucket, and the
``cached`` flag of every answer the generator got. The agent publishes no cache hit or miss
counter on the bus, so misses are shown as the answers stored in the bucket.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import nats
import nats.errors
import nats.js.errors

import signals as sig
from bench.load import AGENT_ID, BusClient, CpuProbe, HttpClient, Tally, combine, summarize_ms
from bench.procs import OVERLAY, Child
from bench.scenarios import UPSTREAM_LATENCY_MS, Bench, _procs
from router_agent.store import prefixed_name

LABEL = "with ledger and cache on"
PREFIX_0MS, PREFIX_200MS = "benchlc0", "benchlc200"
CAP_USD = 10_000.0
"""Each daily cap: a full run books tens of dollars; the first lease alone (10%) covers it."""
TEMPERATURE = 0.0
LATENCY_SIDES = ("ledger_cache", "plain", "direct", "hits")
THROUGHPUT_SIDES = ("ledger_cache", "plain", "direct")
TRIO = ("p50_ms", "p90_ms", "p99_ms")
GOAL_SHARE_MS = 0.10
GOAL_PCT_OF_DIRECT = 97.0


def overlay() -> tuple[dict[str, Any], dict[str, Any]]:
    """(``router:`` settings, other sections) of the agent under test."""
    router = {
        "budgets": {"store": "jetstream", "cloud_daily_usd": CAP_USD, "per_agent_usd": {AGENT_ID: CAP_USD}},
        "cache": {"enabled": True},
    }
    return router, {"agents": {AGENT_ID: {"cache": {"enabled": True}}}}


def expected_caps() -> set[tuple[str, str]]:
    """The (scope, name) of every cap ``overlay`` sets, as ``cost_report`` names them."""
    return {("cloud", ""), ("agent", AGENT_ID)}


def _minus(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
    return {k: a[k] - b[k] for k in TRIO}


class LedgerCache:
    def __init__(self, bench: Bench):
        self.bench = bench

    async def run(self) -> dict[str, Any]:
        out: dict[str, Any] = {"cap_usd": CAP_USD, "temperature": TEMPERATURE}
        out["latency"] = await self.latency()
        out["throughput"] = await self.throughput()
        return out

    def _start_agent(self, emulator: Child, prefix: str) -> Child:
        router, extra = overlay()
        return self.bench.stack.start_agent(self.bench.nats_url, emulator.info["url"], prefix,
                                            extra_router=router, extra=extra)

    async def _unique(self, prefix: str, tally: Tally | None = None) -> BusClient:
        return await BusClient.connect(self.bench.nats_url, f"{prefix}.llm_request", unique_prompt=True,
                                       temperature=TEMPERATURE, tally=tally)

    @contextlib.asynccontextmanager
    async def _agent_and_clients(self, emulator: Child, prefix: str) -> AsyncIterator[tuple[Child, dict[str, Any]]]:
        """The agent under test and a dict for the clients; on the way out every client is
        closed and the agent stopped."""
        agent = self._start_agent(emulator, prefix)
        clients: dict[str, Any] = {}
        try:
            yield agent, clients
        finally:
            for client in clients.values():
                await client.close()
            self.bench.stack.stop(agent)

    # ------------------------------------------------------------------ latency

    async def latency(self) -> dict[str, Any]:
        b, s = self.bench, self.bench.sizes
        assert b.e0 is not None and b.a0 is not None and b.bus_echo is not None
        unique, hits = Tally(), Tally()
        async with self._agent_and_clients(b.e0, PREFIX_0MS) as (_, clients):
            clients["ledger_cache"] = await self._unique(PREFIX_0MS, unique)
            clients["plain"] = await self._unique(b.a0.info["prefix"])
            clients["direct"] = await HttpClient(b.e0.info["url"], unique_prompt=True, temperature=TEMPERATURE).open()
            clients["hits"] = await BusClient.connect(b.nats_url, f"{PREFIX_0MS}.llm_request",
                                                      temperature=TEMPERATURE, tally=hits)
            for client in clients.values():  # the hits side's first request is its one miss
                await client.sequential(50)
            rounds = []
            for r in range(s.latency_rounds):
                row: dict[str, Any] = {}
                sides = LATENCY_SIDES if r % 2 == 0 else LATENCY_SIDES[::-1]
                for side, client in [(x, clients[x]) for x in sides] + [("echo", b.bus_echo)]:
                    latencies, errors = await client.sequential(s.latency_n)
                    row[side] = {**summarize_ms(latencies), "errors": errors, "n": s.latency_n}
                rounds.append(row)
                b.log(f"  {LABEL}, latency round {r + 1}: p50 {row['ledger_cache']['p50_ms']:.3f} ms, default agent "
                      f"{row['plain']['p50_ms']:.3f}, direct {row['direct']['p50_ms']:.3f}, hits "
                      f"{row['hits']['p50_ms']:.3f}")
            out = combine(rounds)
            out["added"] = _minus(out["ledger_cache"], out["direct"])
            out["router_share"] = _minus(out["added"], out["echo"])
            out["plain_added"] = _minus(out["plain"], out["direct"])
            out["plain_share"] = _minus(out["plain_added"], out["echo"])
            out["hits_added"] = _minus(out["hits"], out["direct"])
            out["evidence"] = await self.evidence(PREFIX_0MS, unique, hits)
        _fail_on(out["evidence"])
        return out

    # ------------------------------------------------------------------ throughput

    async def throughput(self) -> dict[str, Any]:
        b, s = self.bench, self.bench.sizes
        level = s.goal_in_flight
        await b.fresh_200(level)  # a fresh emulator and default agent, as the throughput scenario measures
        assert b.e200 is not None and b.a200 is not None
        unique = Tally()
        async with self._agent_and_clients(b.e200, PREFIX_200MS) as (agent, clients):
            agents = {"ledger_cache": agent, "plain": b.a200, "direct": agent}
            clients["ledger_cache"] = await self._unique(PREFIX_200MS, unique)
            clients["plain"] = await self._unique(b.a200.info["prefix"])
            clients["direct"] = await HttpClient(b.e200.info["url"], unique_prompt=True,
                                                 temperature=TEMPERATURE).open()
            for client in clients.values():  # each pool warmed at the level, as fresh_200 does
                await client.closed_loop(level, 0.6, 0.4)
            rounds = []
            for r in range(s.rounds):
                row: dict[str, Any] = {}
                sides = THROUGHPUT_SIDES if r % 2 == 0 else THROUGHPUT_SIDES[::-1]
                for side in sides:
                    probe = CpuProbe(_procs(agent=agents[side], emulator=b.e200, nats=b.nats_proc, generator=b.me))
                    res = await clients[side].closed_loop(level, s.warmup_s, s.window_s, probe=probe)
                    res["cpu_pct"] = {k: v / res["window_s"] * 100 for k, v in res.pop("cpu_s").items()}
                    row[side] = res
                direct = row["direct"]["rps"]
                row["pct_of_direct"] = {side: row[side]["rps"] / direct * 100 if direct else float("nan")
                                        for side in ("ledger_cache", "plain")}
                rounds.append(row)
                b.log(f"  {LABEL}, throughput {level} in flight, round {r + 1}: {row['ledger_cache']['rps']:.0f} "
                      f"req/s, default agent {row['plain']['rps']:.0f}, direct {direct:.0f}")
            out = {"in_flight": level, "upstream_ms": UPSTREAM_LATENCY_MS, "ideal_rps": level / UPSTREAM_LATENCY_MS
                   * 1000, **combine(rounds)}
            out["evidence"] = await self.evidence(PREFIX_200MS, unique, None)
        _fail_on(out["evidence"])
        return out

    # ------------------------------------------------------------------ evidence

    async def evidence(self, prefix: str, unique: Tally, hits: Tally | None) -> dict[str, Any]:
        """What the agent and the bus say was on: the agent's cost report, the cost_event
        batches, the answers stored in the cache bucket; and what the answers said."""
        from router_agent.config import load_config

        settings = load_config(None, None, [OVERLAY]).router
        nc = await nats.connect(self.bench.nats_url, name="bench-evidence", allow_reconnect=False)
        try:
            reply = await nc.request(
                f"{sig.Subjects(prefix).router_control}.cost_report",
                sig.encode_event("cost_query", sig.CostQuery(refresh=True), source="bench"), timeout=10)
            report = sig.decode_data(reply.data, "cost_report")
            js = nc.jetstream(timeout=10)
            batches = await _messages(js, prefixed_name(prefix, settings.budgets.stream))
            cache_bucket = prefixed_name(prefix, settings.cache.bucket or "")
            stored = await _messages(js, f"KV_{cache_bucket}") if settings.cache.bucket else 0
        finally:
            with contextlib.suppress(nats.errors.Error, OSError):
                await nc.close()
        out: dict[str, Any] = {
            "agent": prefix,
            "shared_ledger": report.shared,
            "billed_attempts": report.total.requests,
            "cost_usd": report.total.cost_usd,
            "cost_event_batches": batches,
            "cache_entries": stored,
            "answered": {"provider": unique.ok, "cache": unique.cached, "errors": unique.errors},
            "caps": [{"scope": c.scope, "name": c.name, "limit_usd": c.limit_usd, "used_usd": c.used_usd,
                      "state": c.state} for c in report.budgets],
        }
        if hits is not None:
            out["hits_answered"] = {"provider": hits.ok, "cache": hits.cached, "errors": hits.errors}
        return out


async def _messages(js: Any, stream: str) -> int:
    """Messages a stream holds; 0 when there is no such stream (nothing was ever written)."""
    try:
        info = await js.stream_info(stream)
    except nats.js.errors.NotFoundError:
        return 0
    return int(info.state.messages)


def problems(evidence: dict[str, Any]) -> list[str]:
    """What in the evidence says the ledger or the cache was not on the path as configured."""
    out = []
    answered = evidence["answered"]
    hits = evidence.get("hits_answered", {"provider": 0, "cache": 0})
    provider_answers = answered["provider"] + hits["provider"]
    if not evidence["shared_ledger"]:
        out.append("the ledger was not on JetStream (cost_report says shared: false)")
    if evidence["billed_attempts"] < max(1, provider_answers):
        out.append(f"the ledger booked {evidence['billed_attempts']} attempt(s) for {provider_answers} answers "
                   "from a provider")
    caps = {(c["scope"], c["name"]): c for c in evidence["caps"]}
    missing = sorted(expected_caps() - set(caps))
    if missing:
        out.append(f"caps missing from the cost report: {missing}")
    reached = [f"{scope} {name}".strip() for (scope, name), c in sorted(caps.items()) if c["state"] != "ok"]
    if reached:
        out.append(f"a cap was reached ({', '.join(reached)}): the run must stay below every cap")
    if answered["cache"]:
        out.append(f"{answered['cache']} unique-prompt request(s) were answered from the cache: not unique")
    if evidence["cache_entries"] < 1:
        out.append("no answer was stored in the cache bucket: the cache was off, or in-process only")
    if "hits_answered" in evidence and hits["cache"] < 1:
        out.append("a repeated prompt was never answered from the cache")
    return out


class EvidenceError(RuntimeError):
    """The run did not have the ledger and the cache on as configured."""


def _fail_on(evidence: dict[str, Any]) -> None:
    found = problems(evidence)
    if found:
        raise EvidenceError(f"{LABEL} ({evidence['agent']}): " + "; ".join(found))


# --------------------------------------------------------------------------- table and goals


def _ms(value: float) -> str:
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def _trio(d: dict[str, Any], sign: bool = False) -> str:
    return " / ".join(("+" if sign and d[k] >= 0 else "") + _ms(d[k]) for k in TRIO) + " ms"


def _load(d: dict[str, Any]) -> str:
    return f"{d['rps']:,.0f} req/s, p50 {_ms(d['p50_ms'])} / p99 {_ms(d['p99_ms'])} ms, {d['errors']} err"


def _evidence_cells(e: dict[str, Any]) -> tuple[str, str]:
    caps = ", ".join(f"{c['scope']} {c['name']}".strip() + f" ${c['used_usd']:,.2f} of ${c['limit_usd']:,.0f} "
                     f"[{c['state']}]" for c in e["caps"])
    ledger = (f"ledger ({'JetStream, shared' if e['shared_ledger'] else 'NOT shared'}): {e['billed_attempts']:,} "
              f"billed attempts, ${e['cost_usd']:,.2f}, {e['cost_event_batches']:,} cost_event batches; caps: {caps}")
    a = e["answered"]
    cache = (f"cache: {e['cache_entries']:,} answers stored in the bucket (misses); unique prompts answered "
             f"{a['provider']:,} by the provider, {a['cache']:,} from the cache, {a['errors']:,} errors")
    if "hits_answered" in e:
        h = e["hits_answered"]
        cache += f"; repeated prompt: {h['cache']:,} hits, {h['provider']:,} miss(es)"
    return ledger, cache


def rows(result: dict[str, Any] | None) -> list[tuple[str, str, str, str]]:
    if not result:
        return []
    out = []
    lat = result["latency"]
    n = f"{int(lat['ledger_cache']['n']):,} req x {lat['rounds']}"
    out.append((
        (f"{LABEL}: latency, 1 in flight, 0 ms upstream, unique prompts (a cache miss + store each), "
         f"p50/p90/p99 ({n})"),
        _trio(lat["ledger_cache"]),
        "direct " + _trio(lat["direct"]),
        (f"added {_trio(lat['added'], sign=True)} (default agent: {_trio(lat['plain_added'], sign=True)}); "
         f"errors {lat['ledger_cache']['errors']}/{lat['direct']['errors']}"),
    ))
    out.append((
        f"{LABEL}: router's own share (added - bare NATS echo), p50/p90/p99",
        _trio(lat["router_share"], sign=True),
        "echo " + _trio(lat["echo"]),
        (f"default agent's share {_trio(lat['plain_share'], sign=True)}: ledger caps + cache cost "
         f"{lat['router_share']['p50_ms'] - lat['plain_share']['p50_ms']:+.3f} ms p50"),
    ))
    out.append((
        f"{LABEL}: cache HITS (one prompt repeated), 1 in flight, p50/p90/p99 (informative)",
        _trio(lat["hits"]),
        "direct " + _trio(lat["direct"]),
        f"added {_trio(lat['hits_added'], sign=True)}; errors {lat['hits']['errors']}",
    ))
    out.append((f"{LABEL}: evidence, latency agent ({lat['evidence']['agent']})", *_evidence_cells(lat["evidence"]),
                ""))
    tp = result["throughput"]
    lc, plain, direct = tp["ledger_cache"], tp["plain"], tp["direct"]
    out.append((
        (f"{LABEL}: throughput, closed loop, {tp['in_flight']:,} in flight, {tp['upstream_ms']:g} ms upstream, "
         "unique prompts"),
        f"{_load(lc)}, agent CPU {lc['cpu_pct']['agent']:.0f}%",
        "direct " + _load(direct),
        (f"router/direct {tp['pct_of_direct']['ledger_cache']:.1f}% (median of rounds); default agent "
         f"{plain['rps']:,.0f} req/s ({tp['pct_of_direct']['plain']:.1f}%, agent CPU "
         f"{plain['cpu_pct']['agent']:.0f}%); ideal {tp['ideal_rps']:,.0f}"),
    ))
    out.append((f"{LABEL}: evidence, throughput agent ({tp['evidence']['agent']})", *_evidence_cells(tp["evidence"]),
                ""))
    return out


def goals(result: dict[str, Any] | None, sizes: Any) -> list[tuple[str, str, str | None, bool | None]]:
    """(goal, target, measured, passed) for ``report.goals``; None: not run."""
    level = sizes.goal_in_flight
    share_goal = f"{LABEL}: router's own share p50 (added - nats echo)"
    tp_goal = f"{LABEL}: throughput at {level:,} in flight, 200 ms upstream, vs direct (same run)"
    tp_target = f">= {GOAL_PCT_OF_DIRECT:g}% of direct, 0 errors"
    if not result:
        return [(share_goal, f"<= {GOAL_SHARE_MS:.2f} ms", None, None), (tp_goal, tp_target, None, None)]
    share = result["latency"]["router_share"]["p50_ms"]
    tp = result["throughput"]
    pct, errors = tp["pct_of_direct"]["ledger_cache"], tp["ledger_cache"]["errors"]
    return [
        (share_goal, f"<= {GOAL_SHARE_MS:.2f} ms", f"{share:.3f} ms", share <= GOAL_SHARE_MS),
        (tp_goal, tp_target,
         f"{pct:.1f}% ({tp['ledger_cache']['rps']:,.0f} vs {tp['direct']['rps']:,.0f} req/s), {errors} errors",
         pct >= GOAL_PCT_OF_DIRECT and errors == 0),
    ]
