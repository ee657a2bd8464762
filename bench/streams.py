"""Streaming pieces shared by the harness and its workers: requests, chunk signals, gaps.

Why it looks like this:

- **Which vendor format.** Every wire format is measured through its own adapter:
  ``VENDORS`` maps it to the model the bench asks for (``bench/overlay.yaml`` adds an
  Ollama-native model, since ``models.yaml`` has none). The direct side builds the same
  ``Deployment`` the agent builds (``registry.build_deployment`` over the same config).
- **Is it a chunk or the answer.** Answers on a reply subject are told apart by their
  CloudEvents ``type``: the one terminal ``llm_response`` is ``io.llmrouter.llm_response.v1``;
  anything else before it is a chunk. This needs nothing from the chunk signal's schema,
  so the bench measures streaming the day it lands. While the agent answers ``stream:
  true`` with one final message (and a warning), every streaming figure says "not
  measured: streaming through the bus not available" instead of failing.
- **How long a stream is.** The emulator's reply is ``"[emulated MODEL] "`` + the first
  12 words of the prompt, cut into pieces of at most 12 characters, one token each
  (``router_agent/emulator/content.py``). A prompt of 12 long words makes a long stream:
  ``long_prompt(119)`` gives 123 pieces, 2.5 s at 50 tokens/s.
- **A gap the upstream did not cause.** The emulator sends piece ``k`` of a stream at
  ``first + k / tokens_per_s`` on a fixed schedule. A client that receives the text up to
  piece ``k_i`` at ``t_i`` after piece ``k_{i-1}`` at ``t_{i-1}`` saw a gap of
  ``t_i - t_{i-1}`` of which the upstream caused ``(k_i - k_{i-1}) / tokens_per_s``; the
  rest (``excess``) was added on the way (coalesced chunks carry several pieces and are
  allowed their pieces' time). ``gap_excess`` computes it from a stream's ``(time,
  characters so far)`` record, piece boundaries from the text itself.
"""

from __future__ import annotations

import bisect
import os
import re
from collections.abc import Sequence
from typing import Any

import msgspec

import signals as sig

VENDORS: dict[str, str] = {
    "openai": "gpt-4-turbo",
    "anthropic": "claude-3-opus",
    "gemini": "gemini-1.5-pro",
    "ollama": "bench-ollama",
}
"""Wire format -> the model the bench asks for (each served by a provider of that format)."""

AGENT_ID = "bench"
SHORT_PROMPT = "Summarize in one sentence why a message bus suits a fleet of cooperating agents."
PIECE_CHARS = 12  # router_agent/emulator/content.py: stream pieces are at most this long
NOT_AVAILABLE = "not measured: streaming through the bus not available"
_PLACEHOLDER = "RIDPLACEHOLDER0000"
FINAL_TYPE = b'"type":"' + sig.event_type("llm_response").encode() + b'"'
OK = b'"status":"ok"'


def long_prompt(word_chars: int) -> str:
    """12 words of ``word_chars`` letters: a reply of ``12 * ceil((word_chars + 1) / 12) + 3``
    pieces (letters only, so no PII rule fires)."""
    return " ".join(chr(ord("a") + i) * word_chars for i in range(12))


def pieces_in(prompt_words_chars: int, model_id: str) -> int:
    """How many pieces (tokens) the emulator streams for ``long_prompt(chars)``."""
    return len(pieces(f"[emulated {model_id}] " + " ".join(reversed(long_prompt(prompt_words_chars).split()))))


_PIECE = re.compile(r"\s*\S+|\s+")


def pieces(text: str) -> list[str]:
    """The emulator's cut (``router_agent/emulator/content.pieces``), kept here so the bench
    states its own assumption; ``tests/test_bench_smoke.py`` checks that they agree."""
    out: list[str] = []
    for word in _PIECE.findall(text):
        if len(word) <= PIECE_CHARS:
            out.append(word)
        else:
            out.extend(word[i : i + PIECE_CHARS] for i in range(0, len(word), PIECE_CHARS))
    return out


def request_template(model: str, stream: bool, prompt: str = SHORT_PROMPT,
                     timeout_ms: int = 60_000) -> tuple[bytes, bytes]:
    """(head, tail) of an encoded llm_request; ``head + request_id + tail`` is one."""
    request = sig.LlmRequest(
        request_id=_PLACEHOLDER, agent_id=AGENT_ID, model=model, stream=stream,
        messages=[sig.ChatMessage(role="user", content=prompt)], timeout_ms=timeout_ms,
    )
    payload = sig.encode_event("llm_request", request, source="bench")
    head, sep, tail = payload.partition(_PLACEHOLDER.encode())
    assert sep and _PLACEHOLDER.encode() not in tail
    return head, tail


def canonical_request(prompt: str = SHORT_PROMPT) -> sig.LlmRequest:
    return sig.LlmRequest(request_id="bench", agent_id=AGENT_ID,
                          messages=[sig.ChatMessage(role="user", content=prompt)])


def is_final(data: bytes) -> bool:
    """The terminal ``llm_response`` (anything else on a reply subject is a chunk)."""
    return FINAL_TYPE in data


_decode_any = msgspec.json.Decoder().decode


def chunk_text(data: bytes) -> str | None:
    """The text a chunk signal carries, read loosely (``data.delta.content``,
    ``data.content`` or ``data.text``), or None when it carries none."""
    try:
        body = _decode_any(data).get("data")
    except (msgspec.DecodeError, AttributeError):
        return None
    if not isinstance(body, dict):
        return None
    for holder in (body.get("delta"), body):
        if isinstance(holder, dict):
            for key in ("content", "text"):
                value = holder.get(key)
                if isinstance(value, str):
                    return value
    return None


def final_summary(data: bytes) -> dict[str, Any]:
    """status, content and warnings of a terminal ``llm_response``."""
    try:
        body = _decode_any(data).get("data") or {}
    except (msgspec.DecodeError, AttributeError):
        return {"status": "undecodable", "content": "", "warnings": []}
    message = body.get("message") or {}
    error = body.get("error") or {}
    return {"status": body.get("status", ""), "content": message.get("content") or "",
            "warnings": body.get("warnings") or [], "error": error.get("code", "")}


def streaming_unavailable(first_was_final: bool, summary: dict[str, Any]) -> str | None:
    """Why streaming through the bus is not measurable, from the first streamed request's
    answer: None when chunks came first, else the reason (with the agent's warning)."""
    if not first_was_final:
        return None
    if summary.get("status") != "ok":
        return f"not measured: a stream: true request failed ({summary.get('error') or summary.get('status')})"
    warning = next((w for w in summary.get("warnings", []) if "stream" in w), "")
    return NOT_AVAILABLE + (f" (the agent says: {warning})" if warning else "")


# --------------------------------------------------------------------------- gaps


def gap_excess(record: Sequence[tuple[float, int]], text: str, per_token_s: float) -> list[tuple[float, float]]:
    """``(time, excess_s)`` for every chunk after the first: the part of its gap the upstream's
    schedule does not explain. ``record`` is ``(arrival time, characters received so far)``."""
    ends: list[int] = []
    total = 0
    for piece in pieces(text):
        total += len(piece)
        ends.append(total)
    out: list[tuple[float, float]] = []
    prev_t = prev_k = None
    for t, chars in record:
        k = bisect.bisect_left(ends, chars)  # index of the last piece delivered (whole)
        if prev_t is not None:
            out.append((t, (t - prev_t) - (k - prev_k) * per_token_s))
        prev_t, prev_k = t, k
    return out


class LoopLag:
    """How late this process's event loop wakes up: a ticker every ``interval_s``.

    ``lag_during(t0, t1)`` is the largest lateness of a tick that woke in ``[t0, t1 + interval]``:
    a chunk that reached the socket while the loop was busy was read that much late, by the
    client, not by the router."""

    def __init__(self, interval_s: float = 0.005):
        self.interval_s = interval_s
        self.times: list[float] = []
        self.lags: list[float] = []

    async def run(self, until: float) -> None:
        import asyncio
        import time

        perf = time.perf_counter
        interval = self.interval_s
        expected = perf() + interval
        while expected < until:
            await asyncio.sleep(interval)
            now = perf()
            self.times.append(now)
            self.lags.append(max(0.0, now - expected))
            expected = now + interval

    def lag_during(self, t0: float, t1: float) -> float:
        lo = bisect.bisect_left(self.times, t0)
        hi = bisect.bisect_right(self.times, t1 + self.interval_s)
        return max(self.lags[lo:hi], default=0.0)

    def summary(self, w0: float, w1: float) -> dict[str, float]:
        lo, hi = bisect.bisect_left(self.times, w0), bisect.bisect_right(self.times, w1)
        values = sorted(self.lags[lo:hi])
        if not values:
            return {"p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan"), "ticks": 0}
        return {"p50_ms": values[len(values) // 2] * 1000, "p99_ms": values[int(len(values) * 0.99)] * 1000,
                "max_ms": values[-1] * 1000, "ticks": len(values)}


class GapStats:
    """Excess gaps inside a window: a 1 ms histogram (mergeable across processes), the
    largest ones, and the same after taking out the client's own event-loop lag."""

    BINS = 5000

    BIG_S = 0.005
    """Gaps above this are also kept one by one, ``(t_prev, t, excess, client_lag)``, so the
    harness can take out the upstream's own lateness (``upstream_lag``) afterwards."""
    MAX_BIG = 300_000

    def __init__(self) -> None:
        self.big: list[tuple[float, float, float, float]] = []
        self.hist = [0] * (self.BINS + 1)
        self.hist_corrected = [0] * (self.BINS + 1)
        self.max_s = 0.0
        self.max_corrected_s = 0.0
        self.top: list[tuple[float, float, float]] = []  # (excess, client lag, corrected)
        self.count = 0

    def add(self, excess: float, client_lag: float, t_prev: float = 0.0, t: float = 0.0) -> None:
        corrected = max(0.0, excess - client_lag)
        if excess > self.BIG_S and len(self.big) < self.MAX_BIG:
            self.big.append((t_prev, t, excess, client_lag))
        self.count += 1
        self.hist[min(self.BINS, max(0, int(excess * 1000)))] += 1
        self.hist_corrected[min(self.BINS, int(corrected * 1000))] += 1
        self.max_s = max(self.max_s, excess)
        self.max_corrected_s = max(self.max_corrected_s, corrected)
        if excess > 0.02:
            self.top.append((excess, client_lag, corrected))
            if len(self.top) > 200:
                self.top.sort(reverse=True)
                del self.top[50:]

    def to_json(self) -> dict[str, Any]:
        self.top.sort(reverse=True)
        return {"hist": self.hist, "hist_corrected": self.hist_corrected, "max_ms": self.max_s * 1000, "big": self.big,
                "max_corrected_ms": self.max_corrected_s * 1000, "count": self.count,
                "top": [[round(a * 1000, 2), round(b * 1000, 2), round(c * 1000, 2)] for a, b, c in self.top[:20]]}


class UpstreamLag:
    """How late the emulator answered ``GET /health`` probes sent every few milliseconds by a
    process of their own (``bench.streamload`` mode ``probe``): while the emulator's event
    loop is busy, a probe waits, and so do the stream pieces due then. A gap overlapping a
    probe that took ``rtt`` (beyond the idle round trip) may owe up to that much to the
    upstream."""

    def __init__(self, probes: Sequence[tuple[float, float]]):
        ordered = sorted(probes)
        self.sent = [p[0] for p in ordered]
        rtts = sorted(p[1] for p in ordered)
        base = rtts[len(rtts) // 10] if rtts else 0.0  # the idle round trip
        self.late = [max(0.0, p[1] - base) for p in ordered]
        self.answered = [p[0] + p[1] for p in ordered]
        self.longest = max((p[1] for p in ordered), default=0.0)

    def during(self, t0: float, t1: float) -> float:
        """Largest lateness of a probe in flight at some moment of ``[t0, t1]``."""
        lo = bisect.bisect_left(self.sent, t0 - self.longest)
        hi = bisect.bisect_right(self.sent, t1)
        best = 0.0
        for i in range(lo, hi):
            if self.answered[i] >= t0 and self.late[i] > best:
                best = self.late[i]
        return best

    def summary(self) -> dict[str, float]:
        values = sorted(self.late)
        if not values:
            return {"probes": 0, "p99_ms": float("nan"), "max_ms": float("nan")}
        return {"probes": len(values), "p99_ms": values[int(len(values) * 0.99)] * 1000, "max_ms": values[-1] * 1000}


def merge_gaps(parts: list[dict[str, Any]], upstream: UpstreamLag | None = None) -> dict[str, Any]:
    """Gap statistics of several reader processes as one; with ``upstream``, also the gaps
    minus the reader's lag and the upstream's (``router_*``: what is left for the router)."""
    if not parts:
        return {}
    hist = [sum(col) for col in zip(*(p["hist"] for p in parts))]
    corrected = [sum(col) for col in zip(*(p["hist_corrected"] for p in parts))]
    count = sum(hist)

    def q(h: list[int], frac: float) -> float:
        if not count:
            return float("nan")
        target, seen = frac * count, 0
        for ms, n in enumerate(h):
            seen += n
            if seen >= target:
                return float(ms)
        return float(len(h) - 1)

    top = sorted((tuple(t) for p in parts for t in p["top"]), reverse=True)[:10]
    left: dict[str, Any] = {}
    if upstream is not None:
        rest = [max(0.0, excess - client - upstream.during(t0, t1)) for p in parts for t0, t1, excess, client in p["big"]]
        # Gaps not kept one by one were at most BIG_S beyond the schedule: bound them by that.
        small = min(max(p["max_corrected_ms"] for p in parts) / 1000, GapStats.BIG_S)
        left = {"router_max_ms": max(rest + [small]) * 1000, "router_over_100ms": sum(x > 0.1 for x in rest),
                "router_over_50ms": sum(x > 0.05 for x in rest)}
    return {**left,
        "count": count,
        "p50_ms": q(hist, 0.5), "p99_ms": q(hist, 0.99), "p999_ms": q(hist, 0.999),
        "max_ms": max(p["max_ms"] for p in parts),
        "over_100ms": sum(hist[101:]), "over_50ms": sum(hist[51:]),
        "corrected_p99_ms": q(corrected, 0.99), "corrected_max_ms": max(p["max_corrected_ms"] for p in parts),
        "corrected_over_100ms": sum(corrected[101:]), "corrected_over_50ms": sum(corrected[51:]),
        "top": [list(t) for t in top],
    }


def new_tag() -> str:
    return f"{os.getpid():x}s{os.urandom(3).hex()}x"


def deployment_for(api: str, emulator_root: str) -> Any:
    """The ``Deployment`` the agent builds for ``VENDORS[api]`` in emulation, built the same
    way (``registry.build_deployment`` over the same config and overlay)."""
    from bench.procs import OVERLAY
    from router_agent.config import load_config
    from router_agent.registry import build_deployment, emulated_base_url

    config = load_config(None, None, [OVERLAY])
    name = VENDORS[api]
    spec = config.models[name]
    provider = config.providers[spec.provider]
    assert provider.api == api, (name, provider.api, api)
    return build_deployment(spec.provider, name, spec, api=api, type=spec.type,
                            base_url=emulated_base_url(emulator_root, api))
