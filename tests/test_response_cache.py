"""The response cache's shell against a real nats-server with JetStream: one instance's answer
is another's hit through the shared bucket, the in-process layer keeps an answer only for its
time (injected clocks, never a sleep), oversize answers are kept nowhere, a private answer is
never another agent's, a bad or missing bucket is a miss, and a hit replays as a stream.

Every wait is for something to have happened (a bucket write drained, a chunk received).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec
import nats
import nats.js.errors
import pytest
from nats.js import api

import signals as sig
from router_agent.core.cache import CachedAnswer, cache_key, cached_response
from router_agent.outbox import Outbox
from router_agent.providers.base import StreamAssembler
from router_agent.response_cache import ResponseCache, replay_events
from router_agent.settings import CacheConfig
from router_agent.state import Metrics
from router_agent.store import prefixed_name
from router_agent.streaming import StreamRelay
from signals import ChatMessage, FunctionCall, LlmRequest, Params, ToolCall, Usage

WAIT = 5.0


class FakeClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self, start: float = 1_000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Wall(FakeClock):
    """Unix seconds, moved by the test."""

    def __init__(self, start: float = 1_700_000_000.0):
        super().__init__(start)


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[nats.NATS]:
    conn = await nats.connect(nats_url, name="response-cache-test")
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def nc2(nats_url: str) -> AsyncIterator[nats.NATS]:
    conn = await nats.connect(nats_url, name="response-cache-test-2")
    try:
        yield conn
    finally:
        await conn.close()


def settings(**changes) -> CacheConfig:
    return CacheConfig(**{"ttl_s": 60.0, **changes})


async def started(bus, prefix: str, clock: FakeClock | None = None, wall: Wall | None = None,
                  **changes) -> ResponseCache:
    cache = ResponseCache(bus, settings(**changes), clock or FakeClock(), subject_prefix=prefix,
                          wall=wall or Wall())
    await cache.start()
    return cache


def ask(agent_id: str = "alpha", content: str = "What is a monad?") -> LlmRequest:
    return LlmRequest(request_id="r1", agent_id=agent_id, messages=[ChatMessage(role="user", content=content)],
                      params=Params(temperature=0.0))


def answer(content: str = "A monoid in the category of endofunctors.", **fields) -> CachedAnswer:
    return CachedAnswer(content=content, model="gpt-4-turbo", provider="openai", finish_reason="stop",
                        usage=Usage(input_tokens=12, output_tokens=9), **fields)


def key_of(request: LlmRequest, private: bool = False) -> str:
    return cache_key(request, target="gpt-4-turbo", private=private)


# --------------------------------------------------------------------------- sharing


async def test_one_instances_answer_is_anothers_hit_through_the_bucket(nc, nc2, prefix):
    a, b = await started(nc, prefix), await started(nc2, prefix)
    assert a.shared and b.shared and a.bucket == b.bucket == prefixed_name(prefix, "response_cache")
    key = key_of(ask())
    assert await b.get(key) is None
    assert a.put(key, answer())
    await a.drain()
    await asyncio.wait_for(b.until_known(key), WAIT)  # the write reaches b over the bus

    hit = await b.get(key)
    assert hit is not None and hit.content == answer().content
    assert (b.stats.hits, b.stats.local_hits, b.stats.misses) == (1, 0, 1)
    assert await b.get(key) == hit  # now from b's own layer
    assert (b.stats.hits, b.stats.local_hits) == (2, 1)
    assert b.stats.hit_rate == pytest.approx(2 / 3)

    served = cached_response(hit, ask(agent_id="beta"), latency_ms=0.2)
    assert served.cached and served.cost_usd == 0 and served.usage == Usage() and not served.attempts


async def test_what_the_bucket_holds_is_the_answer_and_nothing_of_the_request(nc, prefix):
    a = await started(nc, prefix)
    key = key_of(ask())
    a.put(key, answer())
    await a.drain()
    entry = await nc.jetstream().key_value(a.bucket)
    stored = (await entry.get(key)).value
    decoded = msgspec.json.decode(stored)
    assert set(decoded) <= set(CachedAnswer.__struct_fields__)
    assert b"r1" not in stored and b"alpha" not in stored and b"monad" not in stored


async def test_a_private_answer_is_never_served_to_another_agent(nc, nc2, prefix):
    a, b = await started(nc, prefix), await started(nc2, prefix)
    a.put(key_of(ask("alpha"), private=True), answer("alpha's secret"))
    await a.drain()
    await asyncio.wait_for(b.until_known(key_of(ask("alpha"), private=True)), WAIT)
    assert await b.get(key_of(ask("beta"), private=True)) is None
    assert await b.get(key_of(ask("beta"))) is None  # nor to a non-private request of anyone
    assert (await b.get(key_of(ask("alpha"), private=True))).content == "alpha's secret"


# --------------------------------------------------------------------------- time and size


async def test_the_local_layer_forgets_an_answer_when_its_time_is_up(prefix):
    clock = FakeClock()
    cache = await started(None, prefix, clock=clock)  # no bus: the in-process layer alone
    assert not cache.shared
    key = key_of(ask())
    cache.put(key, answer())
    clock.advance(59.9)
    assert await cache.get(key) is not None
    clock.advance(0.1)
    assert await cache.get(key) is None
    assert (cache.stats.hits, cache.stats.misses, cache.local.expirations) == (1, 1, 1)


async def test_an_answer_from_the_bucket_is_kept_only_for_the_rest_of_its_time(nc, nc2, prefix):
    wall_a, wall_b, clock_b = Wall(), Wall(), FakeClock()
    a = await started(nc, prefix, wall=wall_a)
    b = await started(nc2, prefix, clock=clock_b, wall=wall_b)
    key = key_of(ask())
    a.put(key, answer())
    await a.drain()
    await asyncio.wait_for(b.until_known(key), WAIT)
    wall_b.advance(50.0)  # b reads it 50 s after it was stored: 10 s are left
    assert await b.get(key) is not None
    clock_b.advance(10.0)
    wall_b.advance(10.0)
    assert await b.get(key) is None  # gone from b's layer, and the bucket's copy is out of time
    assert b.local.expirations == 1


async def test_an_oversize_answer_is_kept_nowhere(nc, nc2, prefix):
    a, b = await started(nc, prefix, max_entry_bytes=512), await started(nc2, prefix, max_entry_bytes=512)
    key = key_of(ask())
    assert a.put(key, answer("x" * 600)) is False
    await a.drain()
    assert a.stats.oversize == 1 and a.stats.stores == 0
    assert await a.get(key) is None and await b.get(key) is None
    assert a.put(key, answer("x" * 100)) is True


async def test_the_bucket_takes_its_limits_from_config_at_every_start(nc, prefix):
    first = await started(nc, prefix, ttl_s=60.0, bucket_max_bytes=1 << 20)
    info = await nc.jetstream().stream_info(f"KV_{first.bucket}")
    assert (info.config.max_age, info.config.max_bytes, info.config.discard) == (60.0, 1 << 20, api.DiscardPolicy.OLD)
    assert info.config.max_msgs_per_subject == 1 and info.config.max_msg_size == first.settings.max_entry_bytes
    await started(nc, prefix, ttl_s=120.0, bucket_max_bytes=2 << 20)
    info = await nc.jetstream().stream_info(f"KV_{first.bucket}")
    assert (info.config.max_age, info.config.max_bytes) == (120.0, 2 << 20)


async def test_a_bucket_the_server_cannot_change_in_place_is_used_as_it_is(nc, prefix, caplog):
    first = await started(nc, prefix, storage="memory")
    second = await started(nc, prefix, storage="file")  # a stream's storage never changes in place
    assert second.shared and "keeps its own settings" in caplog.text
    info = await nc.jetstream().stream_info(f"KV_{first.bucket}")
    assert info.config.storage == api.StorageType.MEMORY
    second.put(key_of(ask()), answer())
    await second.drain()
    await asyncio.wait_for(first.until_known(key_of(ask())), WAIT)
    assert await first.get(key_of(ask())) is not None


# --------------------------------------------------------------------------- failures are misses


async def test_something_in_the_bucket_that_is_not_an_answer_is_a_miss(nc, prefix):
    cache = await started(nc, prefix)
    kv = await nc.jetstream().key_value(cache.bucket)
    await kv.put("deadbeef", b"not an answer")
    await asyncio.wait_for(cache.until_known("deadbeef"), WAIT)
    assert await cache.get("deadbeef") is None
    assert (cache.stats.misses, cache.stats.kv_errors) == (1, 1)


async def test_a_router_without_a_bucket_caches_in_process(nc, prefix):
    cache = await started(nc, prefix, bucket=None)
    assert not cache.shared and cache.bucket is None
    key = key_of(ask())
    cache.put(key, answer())
    assert await cache.get(key) is not None


async def test_a_closed_connection_is_a_miss_not_an_error(nc, nats_url, prefix):
    conn = await nats.connect(nats_url, name="closing")
    cache, other = await started(conn, prefix), await started(nc, prefix)
    other.put(key_of(ask()), answer())
    await other.drain()
    await asyncio.wait_for(cache.until_known(key_of(ask())), WAIT)  # in the bucket: cache would read it
    await conn.close()
    assert await cache.get(key_of(ask())) is None
    assert cache.stats.kv_errors == 1
    cache.put(key_of(ask()), answer())  # the write fails in its task, counted
    await cache.drain()
    assert cache.stats.kv_errors == 2 and await cache.get(key_of(ask())) is not None


async def test_a_key_no_instance_wrote_is_a_miss_without_asking_the_bucket(nats_url, prefix):
    conn = await nats.connect(nats_url, name="closing")
    cache = await started(conn, prefix)
    await conn.close()  # any read of the bucket would fail now, and be counted
    assert await cache.get(key_of(ask())) is None
    assert (cache.stats.misses, cache.stats.kv_errors) == (1, 0)


async def test_an_instance_started_later_knows_what_the_bucket_already_holds(nc, nc2, prefix):
    a = await started(nc, prefix)
    a.put(key_of(ask()), answer())
    await a.drain()
    b = await started(nc2, prefix)  # it lists the bucket's keys as it starts
    assert b.knows(key_of(ask()))
    assert (await b.get(key_of(ask()))).content == answer().content


async def test_the_index_forgets_its_oldest_keys_beyond_its_bound(nc, prefix, monkeypatch):
    monkeypatch.setattr("router_agent.response_cache.INDEX_MAX_KEYS", 2)
    cache = await started(nc, prefix)
    keys = [key_of(ask(content=f"question {i}")) for i in range(3)]
    for key in keys:
        cache.put(key, answer())
    assert [cache.knows(k) for k in keys] == [False, True, True]  # a forgotten key is only a miss
    await cache.drain()


async def test_writes_beyond_the_bound_stay_in_process(nc, prefix):
    cache = await started(nc, prefix, max_pending_writes=1)
    cache.put(key_of(ask(content="one")), answer())
    cache.put(key_of(ask(content="two")), answer())  # the first write has not run yet
    assert cache.stats.kv_writes_dropped == 1
    await cache.drain()


async def test_a_write_the_bucket_refuses_is_counted_and_one_it_takes_is_not(nc, prefix):
    cache = await started(nc, prefix)
    cache.put(key_of(ask(content="taken")), answer())
    await cache.drain()  # returns once JetStream has acknowledged it
    assert cache.stats.kv_errors == 0
    js = nc.jetstream()
    kv = await js.key_value(cache.bucket)
    assert _decoded((await kv.get(key_of(ask(content="taken")))).value).content == answer().content
    info = await js.stream_info(f"KV_{cache.bucket}")
    info.config.max_msg_size = 64  # smaller than any answer
    await js.update_stream(info.config)
    cache.put(key_of(ask(content="refused")), answer())
    await cache.drain()
    assert cache.stats.kv_errors == 1
    with pytest.raises(nats.js.errors.KeyNotFoundError):
        await kv.get(key_of(ask(content="refused")))


async def test_a_write_nobody_acknowledges_is_counted_when_its_time_is_up(nc, prefix, monkeypatch):
    monkeypatch.setattr("router_agent.response_cache.WRITE_ACK_TIMEOUT_S", 0.2)
    cache = await started(nc, prefix, max_pending_writes=1)
    # The index's own subscription still listens on the bucket's subject, so the server
    # answers no "no responders" either: only the time limit ends the wait.
    await nc.jetstream().delete_stream(f"KV_{cache.bucket}")
    cache.put(key_of(ask(content="one")), answer())
    await cache.drain()
    assert (cache.stats.kv_errors, cache.stats.kv_writes_dropped) == (1, 0)
    cache.put(key_of(ask(content="two")), answer())  # the first one's place is free again
    assert cache.stats.kv_writes_dropped == 0
    await cache.drain()


# --------------------------------------------------------------------------- streamed hits


async def test_replayed_events_spell_the_answer():
    stored = answer("A monad is a monoid.", tool_calls=[
        ToolCall(id="c1", function=FunctionCall(name="lookup", arguments='{"term": "monad"}'))])
    assembler = StreamAssembler()
    async for event in replay_events(stored, piece_chars=4):
        assembler.add(event)
    done = assembler.completion()
    assert (done.content, done.tool_calls, done.finish_reason) == (stored.content, stored.tool_calls, "stop")


async def test_a_hit_is_served_as_a_stream_through_the_relay(nc, prefix):
    subjects = sig.Subjects(prefix)
    outbox = Outbox(nc, sig.EventFactory("router-agent/test"), subjects, Metrics())
    request = msgspec.structs.replace(ask(), stream=True)
    inbox = nc.new_inbox()
    received: list[sig.LlmChunk] = []
    got_all = asyncio.Event()
    text = "A monad is a monoid in the category of endofunctors."

    async def on_chunk(msg) -> None:
        received.append(sig.decode_data(msg.data, "llm_chunk"))
        if "".join(c.content for c in received) == text:
            got_all.set()

    await nc.subscribe(inbox, cb=on_chunk)
    relay = StreamRelay.for_request(outbox, request, inbox, 0.0, FakeClock())
    async with asyncio.timeout(WAIT) as scope:
        await relay.attempt(replay_events(answer(text), piece_chars=8), scope, deadline=FakeClock()() + WAIT)
    await asyncio.wait_for(got_all.wait(), WAIT)
    assert [c.seq for c in received] == list(range(len(received))) and len(received) == 7
    assert relay.summary().chars == len(text)


def _decoded(value: bytes | None) -> CachedAnswer:
    return msgspec.json.decode(value or b"", type=CachedAnswer)
