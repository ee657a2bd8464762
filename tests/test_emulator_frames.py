"""A stream's bytes and their schedule: stamped frames, and the timer-driven pacer.

Frames: the wire modules encode a per-token frame once, with a marker in place of the text,
and put each piece's JSON string between the bytes around it (``respond.stamp``). The
oracles here build every frame the plain way, one Struct or dict encoded per frame, as the
wire modules did before; any difference in escaping, key order or framing shows up as
unequal bytes.

Pacing: ``respond.stream_writes`` and ``respond._Pacer`` replace a loop that slept once per token and
wrote through aiohttp's response. That loop is kept below as the oracle and both run on a
virtual clock whose timers fire late by drawn amounts: the writes (their bytes, how they
are grouped into chunks, and their times) must be the same, faults included.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router_agent.emulator import anthropic_wire as an
from router_agent.emulator import gemini_wire as ge
from router_agent.emulator import ollama_wire as ol
from router_agent.emulator import openai_wire as oa
from router_agent.emulator.content import Answer, Prompt, Tool, answer, fragments, pieces
from router_agent.emulator.faults import Fault
from router_agent.emulator.respond import _MARKER, Ctx, Frame, _Pacer, stamp, stream_writes

_encode = msgspec.json.encode
FIXED_NOW = "2024-01-01T00:00:00.000000Z"

# --- oracles: one plain encoding per frame ---------------------------------------------


def openai_frames(prompt: Prompt, result: Answer, ctx: Ctx) -> list[tuple[bytes, int]]:
    cid = f"chatcmpl-emu-{ctx.serial}"

    def event(delta: oa.Delta, finish: str | None = None, tokens: int = 0) -> tuple[bytes, int]:
        chunk = oa.Chunk(cid, prompt.model, ctx.created, [oa.ChunkChoice(0, delta, finish)])
        return b"data: " + _encode(chunk) + b"\n\n", tokens

    out = [event(oa.Delta(role="assistant", content="" if not result.tool_calls else None))]
    for index, call in enumerate(result.tool_calls):
        head = oa.DeltaToolCall(index, oa.DeltaFunction(call.name, ""), f"call_emu{ctx.serial}_{index}", "function")
        out.append(event(oa.Delta(tool_calls=[head]), tokens=1))
        out.extend(event(oa.Delta(tool_calls=[oa.DeltaToolCall(index, oa.DeltaFunction(arguments=part))]), tokens=1)
                   for part in fragments(call.arguments_json))
    out.extend(event(oa.Delta(content=piece), tokens=1) for piece in pieces(result.text))
    out.append(event(oa.Delta(), result.finish))
    if prompt.include_usage:
        usage = oa.Usage(result.prompt_tokens, result.completion_tokens, result.prompt_tokens + result.completion_tokens)
        out.append((b"data: " + _encode(oa.Chunk(cid, prompt.model, ctx.created, [], usage)) + b"\n\n", 0))
    out.append((b"data: [DONE]\n\n", 0))
    return out


def anthropic_frames(prompt: Prompt, result: Answer, ctx: Ctx) -> list[tuple[bytes, int]]:
    def event(name: bytes, payload: dict[str, Any], tokens: int = 0) -> tuple[bytes, int]:
        return b"event: " + name + b"\ndata: " + _encode(payload) + b"\n\n", tokens

    start = an.MessageOut(f"msg_emu{ctx.serial}", prompt.model, [], None, None, an.Usage(result.prompt_tokens, 1))
    out = [event(b"message_start", {"type": "message_start", "message": start}), event(b"ping", {"type": "ping"})]
    blocks: list[tuple[Any, list[dict[str, Any]]]]
    if result.tool_calls:
        blocks = [(an.ToolUseBlock(f"toolu_emu{ctx.serial}_{i}", c.name, {}),
                   [{"type": "input_json_delta", "partial_json": p} for p in fragments(_encode(c.arguments).decode())])
                  for i, c in enumerate(result.tool_calls)]
    else:
        blocks = [(an.TextBlock(""), [{"type": "text_delta", "text": p} for p in pieces(result.text)])]
    for index, (opening, deltas) in enumerate(blocks):
        out.append(event(b"content_block_start", {"type": "content_block_start", "index": index,
                                                  "content_block": opening}))
        out.extend(event(b"content_block_delta", {"type": "content_block_delta", "index": index, "delta": d}, 1)
                   for d in deltas)
        out.append(event(b"content_block_stop", {"type": "content_block_stop", "index": index}))
    stop = "stop_sequence" if result.stop_sequence is not None else {
        "stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}[result.finish]
    out.append(event(b"message_delta", {"type": "message_delta",
                                        "delta": {"stop_reason": stop, "stop_sequence": result.stop_sequence},
                                        "usage": {"output_tokens": result.completion_tokens}}))
    out.append(event(b"message_stop", {"type": "message_stop"}))
    return out


def gemini_chunks(prompt: Prompt, result: Answer, ctx: Ctx) -> list[tuple[bytes, int]]:
    def response(parts: list[dict[str, Any]], final: bool) -> bytes:
        candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
        usage = {"promptTokenCount": result.prompt_tokens, "totalTokenCount": result.prompt_tokens}
        if final:
            candidate["finishReason"] = "MAX_TOKENS" if result.finish == "length" else "STOP"
            usage = {"promptTokenCount": result.prompt_tokens, "candidatesTokenCount": result.completion_tokens,
                     "totalTokenCount": result.prompt_tokens + result.completion_tokens}
        return _encode({"candidates": [candidate], "usageMetadata": usage,
                        "modelVersion": prompt.model, "responseId": f"emu{ctx.serial}"})

    if result.tool_calls:
        calls = [{"functionCall": {"id": f"call_emu{ctx.serial}_{i}", "name": c.name, "args": c.arguments}}
                 for i, c in enumerate(result.tool_calls)]
        return [(response(calls, True), result.completion_tokens)]
    texts = pieces(result.text) or [""]
    return [(response([{"text": t}], i == len(texts) - 1), 1) for i, t in enumerate(texts)]


def gemini_sse_frames(prompt: Prompt, result: Answer, ctx: Ctx) -> list[tuple[bytes, int]]:
    return [(b"data: " + data + b"\r\n\r\n", tokens) for data, tokens in gemini_chunks(prompt, result, ctx)]


def gemini_array_frames(prompt: Prompt, result: Answer, ctx: Ctx) -> list[tuple[bytes, int]]:
    chunks = gemini_chunks(prompt, result, ctx)
    return [((b"[" if i == 0 else b",\r\n") + data, tokens) for i, (data, tokens) in enumerate(chunks)] + [(b"]", 0)]


def ollama_frames(prompt: Prompt, result: Answer, ctx: Ctx) -> list[tuple[bytes, int]]:
    out = []
    if result.tool_calls:
        message = {"role": "assistant", "content": "",
                   "tool_calls": [{"function": {"name": c.name, "arguments": c.arguments}} for c in result.tool_calls]}
        line = {"model": prompt.model, "created_at": FIXED_NOW, "message": message, "done": False}
        out.append((_encode(line) + b"\n", result.completion_tokens))
    for piece in pieces(result.text):
        line = {"model": prompt.model, "created_at": FIXED_NOW,
                "message": {"role": "assistant", "content": piece}, "done": False}
        out.append((_encode(line) + b"\n", 1))
    prompt_ns = round(ctx.ttft_s * 1e9)
    eval_ns = round(ctx.per_token_s * result.completion_tokens * 1e9)
    last = {"model": prompt.model, "created_at": FIXED_NOW, "message": {"role": "assistant", "content": ""},
            "done": True, "done_reason": "length" if result.finish == "length" else "stop",
            "total_duration": prompt_ns + eval_ns, "load_duration": 0, "prompt_eval_count": result.prompt_tokens,
            "prompt_eval_duration": prompt_ns, "eval_count": result.completion_tokens, "eval_duration": eval_ns}
    out.append((_encode(last) + b"\n", 0))
    return out


Wires = list[tuple[str, Callable[[Prompt, Answer, Ctx], list[Frame]], Callable[..., list[tuple[bytes, int]]]]]
WIRES: Wires = [
    ("openai", oa.frames, openai_frames),
    ("anthropic", an.frames, anthropic_frames),
    ("gemini-sse", ge.frames, gemini_sse_frames),
    ("gemini-array", ge.array_frames, gemini_array_frames),
    ("ollama", ol.frames, ollama_frames),
]


@contextmanager
def fixed_clock() -> Iterator[None]:
    """Ollama stamps ``created_at`` from the wall clock; both sides read the same value here."""
    saved = ol._now
    ol._now = lambda: FIXED_NOW
    try:
        yield
    finally:
        ol._now = saved


def assert_same_frames(prompt: Prompt) -> None:
    result = answer(prompt)
    ctx = Ctx("ab12cd", 1_700_000_000, 0.2, 0.02)
    with fixed_clock():
        for name, frames, oracle in WIRES:
            got = [(f.data, f.tokens) for f in frames(prompt, result, ctx)]
            assert got == oracle(prompt, result, ctx), name


# --- the prompts -------------------------------------------------------------------------

AWKWARD = [
    'say "hi" and \\ back\\slash \\" both',
    "line one\nline two\r\n\ttabbed \x00 nul \x1f unit \x7f del",
    "naïve café Ünïcödé ümlaut ß 中文字符 日本語のテキスト",
    "emoji 😀🎉👍🏽 family 👨‍👩‍👧‍👦 flag 🇫🇷 zwj",
    "line\u2028separator\u2029paragraph </script> & <b> 'single'",
    "averyveryverylongwordwithoutspacesthatiscutintoruns" * 3,
    "",
    "   ",
]
TOOL = Tool("lookup", {"type": "object", "properties": {
    "query": {"type": "string", "enum": ['a "quoted" \\ value\n😀']},
    "limit": {"type": "integer"}, "when": {"type": "string", "format": "date-time"}}})


def prompt(text: str, model: str = "m", **fields: Any) -> Prompt:
    return Prompt(model, ["system words", text], text, **fields)


@pytest.mark.parametrize("text", AWKWARD)
def test_text_streams(text: str) -> None:
    assert_same_frames(prompt(text))
    assert_same_frames(prompt(text, include_usage=True, model='model "with" \\ quotes ✨'))


@pytest.mark.parametrize("text", AWKWARD[:4])
def test_cut_streams(text: str) -> None:
    assert_same_frames(prompt(text, max_tokens=3))
    assert_same_frames(prompt(text, stop=["o"]))


@pytest.mark.parametrize("text", ["use lookup now", 'call LOOKUP with "quotes" ✨'])
def test_tool_call_streams(text: str) -> None:
    assert_same_frames(prompt(text, tools=[TOOL]))
    assert_same_frames(prompt("no name here", tools=[TOOL, Tool("other")], tool_choice="required"))
    assert_same_frames(prompt(text, tools=[Tool("bare")], tool_choice="force", forced_tool="bare"))


@pytest.mark.parametrize("text", AWKWARD[:5])
def test_json_mode_streams(text: str) -> None:
    assert_same_frames(prompt(text, json_mode=True))
    schema = {"type": "object", "properties": {"note": {"type": "string", "const": text}, "n": {"type": "number"}}}
    assert_same_frames(prompt(text, json_mode=True, schema=schema))


def test_a_model_named_like_the_marker_takes_the_plain_path() -> None:
    assert_same_frames(prompt("one two three", model=_MARKER))
    assert_same_frames(prompt("one two three", model=f"x{_MARKER}y{_MARKER}"))


@settings(max_examples=60, deadline=None)
@given(text=st.text(max_size=120), model=st.text(min_size=1, max_size=20), usage=st.booleans(),
       json_mode=st.booleans())
def test_any_text_and_model(text: str, model: str, usage: bool, json_mode: bool) -> None:
    assert_same_frames(prompt(text, model=model, include_usage=usage, json_mode=json_mode))


@given(st.lists(st.text(max_size=20), max_size=8))
@settings(max_examples=60, deadline=None)
def test_stamp_is_the_plain_encoding(texts: list[str]) -> None:
    def encode(text: str) -> bytes:
        return b"data: " + _encode({"a": [1, {"t": text}], "b": "tail"}) + b"\n\n"

    assert stamp(encode, texts) == [encode(t) for t in texts]


# --- pacing: the writes and the pacer against the loop they replace --------------------------

EOF = b"0\r\n\r\n"
Writes = list[tuple[float, bytes]]


def chunk(data: bytes) -> bytes:
    """aiohttp's chunked framing of one write."""
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def broken(data: bytes) -> bytes:
    return data[: len(data) // 2] + b"\n\n"


def sleeping_loop(frames: list[Frame], per_token_s: float, kind: str | None, late: list[float]) -> Writes:
    """The stream loop as it was (a sleep per token, a write per flush) on a virtual clock
    where the k-th sleep ends ``late[k]`` after it was due: what it wrote, and when."""
    now, wakes, out = 0.0, 0, []
    strike = max(1, len(frames) // 2) if kind is not None else -1
    if per_token_s <= 0 and strike < 0:
        return [(now, chunk(b"".join(f.data for f in frames))), (now, EOF)]
    due = now
    pending: list[bytes] = []
    first_token = True
    for index, frame in enumerate(frames):
        if index == strike:
            if pending:
                out.append((now, chunk(b"".join(pending))))
                pending = []
            if kind in ("cut", "stall"):
                return out
            pending.append(broken(frame.data))
            continue
        if frame.tokens and per_token_s > 0:
            if first_token:
                first_token = False
            else:
                due += frame.tokens * per_token_s
                if due - now > 0:
                    if pending:
                        out.append((now, chunk(b"".join(pending))))
                        pending = []
                    now, wakes = due + late[wakes % len(late)], wakes + 1
        pending.append(frame.data)
    if pending:
        out.append((now, chunk(b"".join(pending))))
    return [*out, (now, EOF)]


class VirtualLoop:
    """The part of an event loop the pacer uses, on a clock that moves only when a timer fires."""

    def __init__(self, late: list[float]) -> None:
        self.now = 0.0
        self.late = late
        self.wakes = 0
        self.timers: list[tuple[float, int, asyncio.TimerHandle]] = []

    def time(self) -> float:
        return self.now

    def get_debug(self) -> bool:
        return False

    def create_future(self) -> asyncio.Future[Any]:
        return asyncio.Future(loop=self)  # type: ignore[arg-type]

    def call_at(self, when: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        handle = asyncio.TimerHandle(when, callback, (), self)  # type: ignore[arg-type]
        heapq.heappush(self.timers, (when, len(self.timers) + self.wakes, handle))
        return handle

    def sleep_until(self, when: float) -> None:
        self.now, self.wakes = when + self.late[self.wakes % len(self.late)], self.wakes + 1

    def run_until_done(self, future: asyncio.Future[Any]) -> None:
        while not future.done():
            when, _, handle = heapq.heappop(self.timers)
            if not handle.cancelled():
                self.sleep_until(when)
                handle._run()

    def _timer_handle_cancelled(self, handle: asyncio.TimerHandle) -> None:
        pass


class Recorder:
    """A transport and a chunked writer in one: every write, with the virtual time it happened."""

    chunked = True
    output_size = 0

    def __init__(self, loop: VirtualLoop, unsent: Callable[[], int] = lambda: 0) -> None:
        self.loop = loop
        self.writes: Writes = []
        self.unsent = unsent

    def write(self, data: bytes) -> None:
        self.writes.append((self.loop.now, data))

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return self.unsent()


def paced(frames: list[Frame], per_token_s: float, kind: str | None, late: list[float],
          unsent: Callable[[], int] = lambda: 0) -> Writes:
    """The pacer, and what ``respond._stream`` does around it, on the virtual clock. The end
    of the stream is recorded as two writes; ``write_eof`` makes them one, with the same bytes."""
    loop = VirtualLoop(late)
    sink = Recorder(loop, unsent)
    writes = stream_writes(frames, per_token_s, Fault(kind) if kind else None, broken)
    pacer = _Pacer(sink, sink, writes, per_token_s, loop=loop)  # type: ignore[arg-type]
    future = pacer.run()
    while True:
        loop.run_until_done(future)
        first = future.result()
        if first is not None:
            break
        future = pacer.resume()  # the client drained at once
    if pacer.due - loop.now > 0:
        loop.sleep_until(pacer.due)
    sink.write(chunk(b"".join(writes.data[first:])))
    if writes.ends:
        sink.write(EOF)
    return sink.writes


frame_lists = st.lists(st.integers(min_value=0, max_value=2), min_size=1, max_size=30).map(
    lambda tokens: [Frame(b"frame %d;" % i, t) for i, t in enumerate(tokens)])
paces = st.sampled_from([0.0, 0.02, 1 / 30])
faults = st.sampled_from([None, "cut", "stall", "malformed"])
lateness = st.lists(st.sampled_from([0.0, 0.0, 0.0004, 0.01, 0.03, 0.2]), min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@given(frames=frame_lists, per_token_s=paces, kind=faults, late=lateness)
def test_the_pacer_writes_what_the_sleeping_loop_wrote_when_it_wrote_it(
    frames: list[Frame], per_token_s: float, kind: str | None, late: list[float]
) -> None:
    assert paced(frames, per_token_s, kind, late) == sleeping_loop(frames, per_token_s, kind, late)


def test_an_on_time_stream_is_a_write_per_token() -> None:
    frames = [Frame(b"role;"), *(Frame(b"t%d;" % i, 1) for i in range(5)), Frame(b"finish;"), Frame(b"done;")]
    writes = paced(frames, 0.02, None, [0.0])
    assert [data for _, data in writes] == [chunk(b"role;t0;"), chunk(b"t1;"), chunk(b"t2;"), chunk(b"t3;"),
                                            chunk(b"t4;finish;done;"), EOF]
    assert [round(t, 9) for t, _ in writes] == [0.0, 0.02, 0.04, 0.06, 0.08, 0.08]


@settings(max_examples=100, deadline=None)
@given(frames=frame_lists, kind=faults, late=lateness, full=st.lists(st.booleans(), min_size=1, max_size=7))
def test_waiting_for_a_slow_reader_keeps_the_schedule(
    frames: list[Frame], kind: str | None, late: list[float], full: list[bool]
) -> None:
    """The client drains at once here, so the next write is still due when it was."""
    calls = iter(range(10**6))
    writes = paced(frames, 0.02, kind, late, unsent=lambda: 1 << 20 if full[next(calls) % len(full)] else 0)
    assert writes == sleeping_loop(frames, 0.02, kind, late)
