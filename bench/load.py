"""The load generator: lean clients for the bus and for HTTP, and the loops that drive them.

Why it looks like this: on a 2-core machine the generator shares the CPU with the agent,
nats-server and the emulator, so every microsecond it spends per request is taken from
the thing being measured. So:

- Payloads are encoded once (``signals.encode_event``) and split around a placeholder
  request id; a request is ``head + rid + tail``, nothing is encoded per request.
- Answers come back on one wildcard inbox subscription (``<inbox>.*``): the reply
  subject's last token is the request id, a dict maps it to the send time. No future,
  no task and no timer per request. Measured against nats-py's ``request()`` (a future,
  a done-callback and ``asyncio.wait_for`` per request) on this machine, ``request()``
  cost the generator 0.051 CPU s per 1,000 requests at 500 in flight (200 ms upstream)
  and ~0.04 at saturation; this client 0.028 and 0.018 (``python -m bench.clientcost``).
- The closed loop is driven from the reply callback (an answer sends the next request),
  the open loop from one ticker that sends what is due every 2 ms.
- An answer is told ok or error by a byte search for ``"status":"ok"`` instead of a
  decode (the agent's ``LlmResponse`` always carries ``status``).

Latencies are taken with ``time.perf_counter``. A measurement has a warm-up, then a
window: throughput counts the answers that arrive inside the window, percentiles use
their latencies, errors count everything (warm-up, window and drain).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec
import nats
import nats.errors
import psutil

import signals as sig
from router_agent.http import HttpClient as RouterHttpClient

PROMPT = "Summarize in one sentence why a message bus suits a fleet of cooperating agents."
MODEL = "gpt-4-turbo"
AGENT_ID = "bench"
# What the agent's OpenAI adapter sends for that request (gpt-4-turbo's model_id), and the
# headers it sends: the direct-HTTP baseline posts the very same bytes.
UPSTREAM_MODEL_ID = "gpt-4-turbo-preview"
HTTP_HEADERS = {"content-type": "application/json", "accept": "application/json"}
_PLACEHOLDER = "RIDPLACEHOLDER0000"
_OK = b'"status":"ok"'
_CACHED = b'"cached":true'

perf = time.perf_counter


# --------------------------------------------------------------------------- statistics


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (``q`` in 0..100)."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


def summarize_ms(latencies_s: list[float]) -> dict[str, float]:
    values = sorted(latencies_s)
    if not values:
        return {"p50_ms": float("nan"), "p90_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan")}
    return {
        "p50_ms": percentile(values, 50) * 1000,
        "p90_ms": percentile(values, 90) * 1000,
        "p99_ms": percentile(values, 99) * 1000,
        "max_ms": values[-1] * 1000,
    }


SUMMED = frozenset({"errors", "sent", "answered", "unanswered", "shed"})
"""Counts that add up over rounds; every other number is the median over rounds."""


def combine(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over rounds (counts summed, nested dicts combined key by key)."""
    if not rounds:
        return {}
    out: dict[str, Any] = {}
    for key in rounds[0]:
        values = [r[key] for r in rounds if key in r]
        first = values[0]
        if isinstance(first, dict):
            out[key] = combine(values)
            out[key].pop("rounds", None)
        elif isinstance(first, bool) or not isinstance(first, (int, float)):
            out[key] = first
        elif key in SUMMED:
            out[key] = sum(values)
        else:
            clean = [v for v in values if not math.isnan(v)]
            out[key] = statistics.median(clean) if clean else float("nan")
    out["rounds"] = len(rounds)
    return out


@dataclass
class Recorder:
    """Answers of one measurement; only those inside [w0, w1) count for rate and percentiles."""

    w0: float = float("inf")
    w1: float = float("inf")
    latencies: list[float] = field(default_factory=list)
    ok_in_window: int = 0
    answered: int = 0
    errors: int = 0
    sent: int = 0
    shed: int = 0

    def record(self, now: float, latency: float, ok: bool) -> None:
        self.answered += 1
        if not ok:
            self.errors += 1
        if self.w0 <= now < self.w1:
            self.latencies.append(latency)
            if ok:
                self.ok_in_window += 1

    def result(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        window = self.w1 - self.w0
        out: dict[str, Any] = {
            "rps": self.ok_in_window / window if window > 0 else 0.0,
            **summarize_ms(self.latencies),
            "errors": self.errors,
            "sent": self.sent,
            "answered": self.answered,
            "window_s": window,
        }
        if self.shed:
            out["shed"] = self.shed
        if extra:
            out.update(extra)
        return out


@dataclass
class Tally:
    """Answers by kind over a client's life: ok from a provider, ok from the router's response
    cache (``"cached":true``), errors."""

    ok: int = 0
    cached: int = 0
    errors: int = 0

    def count(self, answer: bytes) -> None:
        if _OK not in answer:
            self.errors += 1
        elif _CACHED in answer:
            self.cached += 1
        else:
            self.ok += 1


class CpuProbe:
    """CPU seconds (user + system) of some processes between two snapshots."""

    def __init__(self, processes: dict[str, psutil.Process]):
        self.processes = processes
        self._start: dict[str, float] = {}
        self.seconds: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        out = {}
        for name, proc in self.processes.items():
            try:
                t = proc.cpu_times()
                out[name] = t.user + t.system
            except psutil.Error:
                out[name] = float("nan")
        return out

    def start(self) -> None:
        self._start = self._now()

    def stop(self) -> None:
        end = self._now()
        self.seconds = {k: end[k] - self._start.get(k, end[k]) for k in end}


# --------------------------------------------------------------------------- payloads


def prompt(unique: bool) -> str:
    """The bench prompt; ``unique``: with the placeholder in it, so each request's id (or
    counter) makes its prompt differ from every other one (a cache miss every time)."""
    return f"{PROMPT} (request {_PLACEHOLDER})" if unique else PROMPT


def request_parts(timeout_ms: int = 30_000, *, unique_prompt: bool = False,
                  temperature: float | None = None) -> list[bytes]:
    """An encoded llm_request cut at the placeholder: ``rid.join(parts)`` is a request whose
    id is ``rid`` (and, with ``unique_prompt``, whose prompt ends with it)."""
    request = sig.LlmRequest(
        request_id=_PLACEHOLDER,
        agent_id=AGENT_ID,
        model=MODEL,
        messages=[sig.ChatMessage(role="user", content=prompt(unique_prompt))],
        params=sig.Params(temperature=temperature),
        timeout_ms=timeout_ms,
    )
    parts = sig.encode_event("llm_request", request, source="bench").split(_PLACEHOLDER.encode())
    assert len(parts) == (3 if unique_prompt else 2)
    return parts


def request_template(timeout_ms: int = 30_000) -> tuple[bytes, bytes]:
    """(head, tail) of an encoded llm_request; ``head + request_id + tail`` is a request."""
    head, tail = request_parts(timeout_ms)
    return head, tail


def upstream_parts(*, unique_prompt: bool = False, temperature: float | None = None) -> list[bytes]:
    """The chat-completions body the agent's OpenAI adapter posts for the bench request, cut
    at the placeholder (``unique_prompt``) like ``request_parts``."""
    body: dict[str, Any] = {"model": UPSTREAM_MODEL_ID, "messages": [{"role": "user", "content": prompt(unique_prompt)}]}
    if temperature is not None:
        body["temperature"] = float(temperature)  # the adapter's field is a float: 0 goes out as 0.0
    return msgspec.json.encode(body).split(_PLACEHOLDER.encode())


def upstream_body() -> bytes:
    """The chat-completions body the agent's OpenAI adapter posts for the bench request."""
    (body,) = upstream_parts()
    return body


_tags = itertools.count(1)


def _new_tag() -> str:
    return f"{os.getpid():x}x{next(_tags):x}y"


# --------------------------------------------------------------------------- the bus client


class BusClient:
    """Sends ``llm_request`` and matches answers on one wildcard inbox subscription."""

    def __init__(self, nc: nats.NATS, subject: str, timeout_ms: int = 30_000, *, unique_prompt: bool = False,
                 temperature: float | None = None, tally: Tally | None = None):
        """``unique_prompt``/``temperature``: see ``request_parts``; ``tally``: count every answer
        by kind (a byte search each, so only the clients that need it pay)."""
        self.nc = nc
        self.subject = subject
        self._parts = request_parts(timeout_ms, unique_prompt=unique_prompt, temperature=temperature)
        self.tally = tally
        self._inbox = f"_BENCH.{os.urandom(6).hex()}."
        self._plen = len(self._inbox)
        self._pending: dict[str, float] = {}
        self._on_answer: Callable[[str, float, float, bool], None] | None = None
        self._tag = _new_tag()
        self._n = 0
        self._sub = None
        self._refill: Recorder | None = None

    @classmethod
    async def connect(cls, url: str, subject: str, timeout_ms: int = 30_000, **options: Any) -> BusClient:
        """``options``: ``unique_prompt``, ``temperature``, ``tally`` (see ``__init__``)."""
        nc = await nats.connect(
            url, name="bench-load", allow_reconnect=False, connect_timeout=5,
            pending_size=64 * 1024 * 1024, skip_subject_validation=True,
        )
        client = cls(nc, subject, timeout_ms, **options)
        client._sub = await nc.subscribe(
            client._inbox + "*", cb=client._on_msg, pending_msgs_limit=1_000_000,
            pending_bytes_limit=1024 * 1024 * 1024,
        )
        await nc.flush()
        return client

    async def close(self) -> None:
        with contextlib.suppress(nats.errors.Error, OSError, asyncio.TimeoutError):
            await self.nc.close()

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def reset(self, on_answer: Callable[[str, float, float, bool], None] | None) -> None:
        """Start a new measurement: forget what is pending (late answers are then ignored)."""
        self._pending = {}
        self._tag = _new_tag()
        self._n = 0
        self._on_answer = on_answer

    async def send(self) -> str:
        self._n += 1
        rid = f"{self._tag}{self._n}"
        self._pending[rid] = perf()
        await self.nc.publish(self.subject, rid.encode().join(self._parts), reply=self._inbox + rid)
        return rid

    async def _on_msg(self, msg: Any) -> None:
        now = perf()
        if self.tally is not None:  # every answer, late ones too: each was served (and billed)
            self.tally.count(msg.data)
        rid = msg.subject[self._plen:]
        t0 = self._pending.pop(rid, None)
        if t0 is None:
            return
        if self._on_answer is not None:
            self._on_answer(rid, now, now - t0, _OK in msg.data)
        refill = self._refill
        if refill is not None:
            refill.sent += 1
            await self.send()

    async def flush(self) -> None:
        await self.nc.flush(timeout=10)

    # -- drivers ------------------------------------------------------------------

    async def sequential(self, count: int, timeout_s: float = 10.0) -> tuple[list[float], int]:
        """One request at a time; (latencies in seconds, errors)."""
        loop = asyncio.get_running_loop()
        latencies: list[float] = []
        errors = 0
        waiter: list[asyncio.Future] = []

        def answered(rid: str, now: float, latency: float, ok: bool) -> None:
            nonlocal errors
            latencies.append(latency)
            if not ok:
                errors += 1
            if waiter and not waiter[0].done():
                waiter[0].set_result(None)

        self.reset(answered)
        for _ in range(count):
            fut = loop.create_future()
            waiter[:] = [fut]
            await self.send()
            try:
                await asyncio.wait_for(fut, timeout_s)
            except TimeoutError:
                errors += 1
        self.reset(None)
        return latencies, errors

    async def closed_loop(
        self, concurrency: int, warmup_s: float, window_s: float, drain_s: float = 30.0,
        probe: CpuProbe | None = None,
    ) -> dict[str, Any]:
        """``concurrency`` requests in flight; the reply callback sends the next one."""
        rec = Recorder()
        self.reset(lambda rid, now, latency, ok: rec.record(now, latency, ok))
        self._refill = rec
        try:
            for _ in range(concurrency):
                await self.send()
            rec.sent += concurrency
            rec, extra = await _windowed(rec, warmup_s, window_s, probe)
        finally:
            self._refill = None
        extra["unanswered"] = await self._drain(drain_s)
        rec.errors += extra["unanswered"]
        self.reset(None)
        return rec.result(extra)

    async def open_loop(
        self, rate: float, warmup_s: float, window_s: float, max_outstanding: int, drain_s: float = 30.0,
        probe: CpuProbe | None = None,
    ) -> dict[str, Any]:
        """A constant arrival rate, whatever the answers do (up to ``max_outstanding``)."""
        rec = Recorder()
        self.reset(lambda rid, now, latency, ok: rec.record(now, latency, ok))
        t0 = perf()
        end = t0 + warmup_s + window_s
        rec.w0, rec.w1 = t0 + warmup_s, end
        started = False
        while True:
            now = perf()
            if probe is not None and not started and now >= rec.w0:
                probe.start()
                started = True
            if now >= end:
                break
            due = int((now - t0) * rate) - rec.sent - rec.shed
            for _ in range(due):
                if len(self._pending) >= max_outstanding:
                    rec.shed += 1
                else:
                    await self.send()
                    rec.sent += 1
            await asyncio.sleep(0.002)
        if probe is not None:
            probe.stop()
        extra: dict[str, Any] = {"offered_rps": rate, "max_outstanding": max_outstanding}
        if probe is not None:
            extra["cpu_s"] = probe.seconds
        extra["unanswered"] = await self._drain(drain_s)
        rec.errors += extra["unanswered"]
        self.reset(None)
        return rec.result(extra)

    async def _drain(self, timeout_s: float) -> int:
        """Wait until every sent request is answered (bounded); return how many were not."""
        await self.flush()
        deadline = perf() + timeout_s
        while self._pending and perf() < deadline:
            await asyncio.sleep(0.01)
        return len(self._pending)

    async def burst(self, count: int) -> None:
        """Send ``count`` requests at once (answers are recorded by the current callback)."""
        for _ in range(count):
            await self.send()
        await self.flush()


async def _windowed(
    rec: Recorder, warmup_s: float, window_s: float, probe: CpuProbe | None
) -> tuple[Recorder, dict[str, Any]]:
    """Wait out the warm-up, then the window, snapshotting CPU at both edges."""
    await asyncio.sleep(warmup_s)
    rec.w0 = perf()
    rec.w1 = rec.w0 + window_s
    if probe is not None:
        probe.start()
    await asyncio.sleep(window_s)
    if probe is not None:
        probe.stop()
    # Answers after w1 do not count; make the window exact.
    rec.w1 = perf()
    extra: dict[str, Any] = {}
    if probe is not None:
        extra["cpu_s"] = probe.seconds
    return rec, extra


# --------------------------------------------------------------------------- the HTTP baseline


class HttpClient:
    """The direct baseline: aiohttp with the agent's own pool settings, the agent's own body."""

    def __init__(self, base_url: str, *, unique_prompt: bool = False, temperature: float | None = None):
        """``unique_prompt``/``temperature``: the body the agent posts for such requests, each
        with its own number in the prompt (as long as the bus client's request ids)."""
        self.url = f"{base_url.rstrip('/')}/chat/completions"
        parts = upstream_parts(unique_prompt=unique_prompt, temperature=temperature)
        self.body = parts[0] if len(parts) == 1 else b""
        self._parts = parts if len(parts) > 1 else None
        self._tag = _new_tag().encode()
        self._n = 0
        self.session: aiohttp.ClientSession | None = None

    def _body(self) -> bytes:
        if self._parts is None:
            return self.body
        self._n += 1
        return (self._tag + str(self._n).encode()).join(self._parts)

    async def open(self) -> HttpClient:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=60)
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=30, sock_connect=10),
            skip_auto_headers=("User-Agent",),
        )
        return self

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def one(self) -> bool:
        assert self.session is not None
        try:
            async with self.session.post(self.url, data=self._body(), headers=HTTP_HEADERS) as response:
                await response.read()
                return response.status == 200
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False

    async def sequential(self, count: int) -> tuple[list[float], int]:
        latencies: list[float] = []
        errors = 0
        for _ in range(count):
            t0 = perf()
            ok = await self.one()
            latencies.append(perf() - t0)
            errors += not ok
        return latencies, errors

    async def closed_loop(
        self, concurrency: int, warmup_s: float, window_s: float, probe: CpuProbe | None = None
    ) -> dict[str, Any]:
        return await closed_loop_tasks(self.one, concurrency, warmup_s, window_s, probe)

    async def open_loop(
        self, rate: float, warmup_s: float, window_s: float, max_outstanding: int, probe: CpuProbe | None = None
    ) -> dict[str, Any]:
        return await open_loop_tasks(self.one, rate, warmup_s, window_s, max_outstanding, probe)


class WireHttpClient(HttpClient):
    """The direct call made with the router's own HTTP client (``router_agent.http``): what
    an agent that called providers as cheaply as the router does would pay."""

    async def open(self) -> WireHttpClient:
        self.wire = RouterHttpClient()
        return self

    async def close(self) -> None:
        await self.wire.close()

    async def one(self) -> bool:
        try:
            async with self.wire.posting(self.url, self._body(), HTTP_HEADERS) as response:
                await response.read()
                return response.status == 200
        except OSError:
            return False


async def closed_loop_tasks(
    call: Callable[[], Any], concurrency: int, warmup_s: float, window_s: float,
    probe: CpuProbe | None = None, drain_s: float = 30.0,
) -> dict[str, Any]:
    """Closed loop for clients that need a coroutine per request (HTTP, LiteLLM)."""
    rec = Recorder()
    running = True

    async def worker() -> None:
        while running:
            t0 = perf()
            rec.sent += 1
            ok = await call()
            now = perf()
            rec.record(now, now - t0, ok)

    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    rec, extra = await _windowed(rec, warmup_s, window_s, probe)
    running = False
    done, pending = await asyncio.wait(tasks, timeout=drain_s)
    for task in pending:
        task.cancel()
    extra["unanswered"] = len(pending)
    rec.errors += len(pending)
    for task in done:
        if task.exception() is not None:
            rec.errors += 1
            extra.setdefault("exception", repr(task.exception()))
    return rec.result(extra)


async def open_loop_tasks(
    call: Callable[[], Any], rate: float, warmup_s: float, window_s: float, max_outstanding: int,
    probe: CpuProbe | None = None, drain_s: float = 30.0,
) -> dict[str, Any]:
    rec = Recorder()
    outstanding: set[asyncio.Task] = set()

    async def one() -> None:
        t0 = perf()
        try:
            ok = await call()
        except Exception:  # noqa: BLE001 - any failure of a call is an error answer, counted
            ok = False
        now = perf()
        rec.record(now, now - t0, ok)

    t0 = perf()
    end = t0 + warmup_s + window_s
    rec.w0, rec.w1 = t0 + warmup_s, end
    started = False
    while True:
        now = perf()
        if probe is not None and not started and now >= rec.w0:
            probe.start()
            started = True
        if now >= end:
            break
        due = int((now - t0) * rate) - rec.sent - rec.shed
        for _ in range(due):
            if len(outstanding) >= max_outstanding:
                rec.shed += 1
                continue
            task = asyncio.create_task(one())
            outstanding.add(task)
            task.add_done_callback(outstanding.discard)
            rec.sent += 1
        await asyncio.sleep(0.002)
    if probe is not None:
        probe.stop()
    extra: dict[str, Any] = {"offered_rps": rate, "max_outstanding": max_outstanding}
    if probe is not None:
        extra["cpu_s"] = probe.seconds
    if outstanding:
        _, pending = await asyncio.wait(set(outstanding), timeout=drain_s)
        for task in pending:
            task.cancel()
        extra["unanswered"] = len(pending)
        rec.errors += len(pending)
    else:
        extra["unanswered"] = 0
    return rec.result(extra)
