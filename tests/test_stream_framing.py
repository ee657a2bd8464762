"""``providers.base.stream_events``: a streamed HTTP answer cut into frames, as every adapter reads it.

Real HTTP from a scripted upstream (``tests.upstream``) through the agent's own
``HttpClient``; the parser is a recorder, so each test sees exactly the frames the adapters'
parsers would be fed, whatever way the bytes were split on the wire.
"""

from __future__ import annotations

import pytest

from router_agent.http import HttpClient
from router_agent.providers import base
from router_agent.providers.base import ProviderError, StreamEnd, TextDelta, stream_events
from signals import Usage
from tests.upstream import Reply, Upstream


class Recorder:
    """A parser that keeps every frame; ``done`` once it has seen ``done_on``."""

    def __init__(self, done_on: bytes | None = None):
        self.frames: list[bytes] = []
        self.done = False
        self.done_on = done_on

    def feed(self, frame: bytes) -> list[TextDelta]:
        self.frames.append(frame)
        if frame == self.done_on:
            self.done = True
        return [TextDelta(frame.decode())]

    def end(self) -> StreamEnd:
        return StreamEnd("stop", Usage())


@pytest.fixture
async def http():
    client = HttpClient()
    yield client
    await client.close()


async def frames_of(http: HttpClient, chunks: list[bytes], *, sse: bool, done_on: bytes | None = None,
                    status: int = 200) -> tuple[list[bytes], list[object]]:
    upstream = await Upstream.start([Reply(status=status, chunks=chunks)])
    try:
        parser = Recorder(done_on)
        events = [e async for e in stream_events(parser, http, f"{upstream.url}/stream", b"{}", {}, None, sse=sse)]
    finally:
        await upstream.close()
    return parser.frames, events


async def test_server_sent_events_split_anywhere_on_the_wire_give_the_same_frames(http):
    chunks = [b"data: {\"a\"", b":1}\r\n\r", b"\n: keep-alive\n\nevent: ping\ndata: two\ndata: lines\n\n"]

    frames, events = await frames_of(http, chunks, sse=True)

    assert frames == [b'{"a":1}', b"two\nlines"]
    assert events[:-1] == [TextDelta('{"a":1}'), TextDelta("two\nlines")]
    assert events[-1] == StreamEnd("stop", Usage())


async def test_the_last_event_counts_without_its_blank_line_or_line_end(http):
    frames, _ = await frames_of(http, [b"data: one\n\ndata: last"], sse=True)

    assert frames == [b"one", b"last"]


async def test_ndjson_lines_are_frames_and_the_last_one_counts_without_its_line_end(http):
    frames, _ = await frames_of(http, [b'{"n":1}\n{"n"', b':2}\r\n{"n":3}'], sse=False)

    assert frames == [b'{"n":1}', b'{"n":2}', b'{"n":3}']


async def test_once_the_parser_is_done_nothing_more_is_fed_and_the_end_follows(http):
    frames, events = await frames_of(http, [b"data: a\n\ndata: [DONE]\n\ndata: after\n\n"], sse=True,
                                     done_on=b"[DONE]")

    assert frames == [b"a", b"[DONE]"]
    assert isinstance(events[-1], StreamEnd) and len(events) == 3


async def test_a_line_longer_than_the_limit_fails_the_stream_as_a_server_error(http, monkeypatch):
    monkeypatch.setattr(base, "MAX_LINE_BYTES", 64)

    with pytest.raises(ProviderError) as caught:
        await frames_of(http, [b"data: " + b"x" * 100], sse=True)

    assert caught.value.code == "server_error"


async def test_a_non_200_answer_is_a_typed_error(http):
    with pytest.raises(ProviderError) as caught:
        await frames_of(http, [b'{"error": {"message": "slow down"}}'], sse=True, status=429)

    assert caught.value.code == "rate_limited"
