"""The in-memory bus behaves like nats-py on a nats-server where the agent can tell.

Tests taking the ``bus`` fixture run twice: on ``MemoryNats`` and on a real nats-server
(marked ``integration``), so every claim in ``tests/membus.py``'s docstring that can be
observed over the wire is checked against the real thing. The rest are memory-only.

Nothing waits on time: a test waits for an event or future set by a callback, bounded by
``asyncio.timeout``. To show a message did *not* arrive, the sender publishes a sentinel
to another subscription on the receiving connection afterwards; once that arrives, the
receiving connection has been handed every earlier message from that sender (one
publisher's messages reach a connection in order), so ``sub.delivered`` is final.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
from collections.abc import AsyncIterator
from typing import Any

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from tests.membus import MemoryConnection, MemoryNats, SubscriptionStopped, subject_matches

WAIT_S = 5.0


# --------------------------------------------------------------------------- fixtures


class Bus:
    """Connections to one bus, memory or real, with the few helpers the tests need."""

    def __init__(self, kind: str, prefix: str, url: str | None = None):
        self.kind = kind
        self.prefix = prefix
        self.url = url
        self.memory = MemoryNats() if kind == "memory" else None
        self.conns: list[Any] = []
        self._errors: dict[int, list[Exception]] = {}
        self._sentinels = itertools.count()

    def s(self, subject: str) -> str:
        """A subject private to this test (the real server is shared by the session)."""
        return self.prefix + subject

    async def connect(self, name: str = "test", **options: Any) -> Any:
        if self.memory is not None:
            conn = self.memory.connect(name, **options)
            self._errors[id(conn)] = conn.errors
        else:
            errors: list[Exception] = []

            async def error_cb(exc: Exception) -> None:
                errors.append(exc)

            conn = await nats.connect(self.url, name=name, error_cb=error_cb, **options)
            self._errors[id(conn)] = errors
        self.conns.append(conn)
        return conn

    def errors(self, conn: Any) -> list[Exception]:
        """The async errors the connection's error callback received."""
        return self._errors[id(conn)]

    async def sync(self, *conns: Any) -> None:
        """Return once the server has every subscription made so far on ``conns``.

        Two flushes, as ``router_agent.bus.sync_subscriptions`` explains for nats-py 2.16.
        """
        for conn in conns:
            await conn.flush()
            await conn.flush()

    async def barrier(self, sender: Any, receiver: Any) -> None:
        """Return once ``receiver`` has been handed everything ``sender`` published so far."""
        subject = self.s(f"sentinel.{next(self._sentinels)}")
        arrived: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def on_sentinel(msg: Msg) -> None:
            if not arrived.done():
                arrived.set_result(None)

        sub = await receiver.subscribe(subject, cb=on_sentinel)
        await self.sync(receiver)
        await sender.publish(subject, b"")
        async with asyncio.timeout(WAIT_S):
            await arrived
        await sub.unsubscribe()

    async def close(self) -> None:
        for conn in self.conns:
            if not conn.is_closed:
                await conn.close()


@pytest.fixture(params=["memory", pytest.param("nats", marks=pytest.mark.integration)])
async def bus(request: pytest.FixtureRequest, prefix: str) -> AsyncIterator[Bus]:
    url = request.getfixturevalue("nats_url") if request.param == "nats" else None
    b = Bus(request.param, prefix, url)
    try:
        yield b
    finally:
        await b.close()


@pytest.fixture
async def mem() -> AsyncIterator[MemoryNats]:
    server = MemoryNats()
    try:
        yield server
    finally:
        for conn in server.connections:
            await conn.close()


class Recorder:
    """A subscription callback that records messages; with a gate, each one waits for it."""

    def __init__(self, gate: asyncio.Event | None = None, raise_on: set[bytes] | None = None):
        self.msgs: list[Msg] = []
        self.gate = gate
        self.raise_on = raise_on or set()
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.active = 0
        self.max_active = 0
        self._changed = asyncio.Event()

    async def cb(self, msg: Msg) -> None:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        self.started.set()
        try:
            if self.gate is not None:
                await self.gate.wait()
            if msg.data in self.raise_on:
                raise ValueError(f"boom on {msg.data!r}")
            self.msgs.append(msg)
            self._changed.set()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        finally:
            self.active -= 1

    @property
    def data(self) -> list[bytes]:
        return [m.data for m in self.msgs]

    @property
    def subjects(self) -> list[str]:
        return [m.subject for m in self.msgs]

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(WAIT_S):
            while len(self.msgs) < count:
                self._changed.clear()
                await self._changed.wait()


async def wait(event: asyncio.Event) -> None:
    async with asyncio.timeout(WAIT_S):
        await event.wait()


# --------------------------------------------------------------------------- subjects


@pytest.mark.parametrize(
    ("pattern", "subject", "expected"),
    [
        ("a.b", "a.b", True),
        ("a.b", "a.c", False),
        ("a.b", "a.b.c", False),
        ("a.*", "a.b", True),
        ("a.*", "a", False),
        ("a.*", "a.b.c", False),
        ("*.b", "x.b", True),
        ("*", "a", True),
        ("*", "a.b", False),
        ("a.>", "a.b", True),
        ("a.>", "a.b.c.d", True),
        ("a.>", "a", False),
        (">", "a", True),
        (">", "a.b.c", True),
        ("a.*.c.>", "a.x.c.d", True),
        ("a.*.c.>", "a.x.c", False),
        ("a.b.c", "a.b", False),
    ],
)
def test_subject_matching(pattern: str, subject: str, expected: bool) -> None:
    assert subject_matches(pattern, subject) is expected


async def test_wildcards_route_like_the_server(bus: Bus) -> None:
    a, b = await bus.connect("a"), await bus.connect("b")
    patterns = ["a.b", "a.*", "a.>", "*.b", "a.b.>"]
    recorders = {p: Recorder() for p in patterns}
    subs = {p: await b.subscribe(bus.s(p), cb=recorders[p].cb) for p in patterns}
    await bus.sync(b)
    for subject in ["a.b", "a.b.c", "a", "x.b"]:
        await a.publish(bus.s(subject), subject.encode())
    await bus.barrier(a, b)
    expected = {
        "a.b": ["a.b"],
        "a.*": ["a.b"],
        "a.>": ["a.b", "a.b.c"],
        "*.b": ["a.b", "x.b"],
        "a.b.>": ["a.b.c"],
    }
    for pattern, subjects in expected.items():
        await recorders[pattern].wait_for(len(subjects))
        assert recorders[pattern].subjects == [bus.s(s) for s in subjects], pattern
        assert subs[pattern].delivered == len(subjects), pattern


@pytest.mark.parametrize("subject", ["", "a b", "a.>.b", "a.b*", "a..b", "a.>x", "a.\r\nb"])
async def test_subscribe_rejects_malformed_subjects(bus: Bus, subject: str) -> None:
    conn = await bus.connect()

    async def cb(msg: Msg) -> None:
        pass

    with pytest.raises(nats.errors.BadSubjectError):
        await conn.subscribe(subject, cb=cb)


@pytest.mark.parametrize("subject", ["", "a b", "a.\r\nb"])
async def test_publish_rejects_malformed_subjects(bus: Bus, subject: str) -> None:
    conn = await bus.connect()
    with pytest.raises(nats.errors.BadSubjectError):
        await conn.publish(subject, b"x")


async def test_a_callback_must_be_a_coroutine_function(bus: Bus) -> None:
    conn = await bus.connect()
    with pytest.raises(nats.errors.Error, match="coroutine"):
        await conn.subscribe(bus.s("x"), cb=lambda msg: None)


# --------------------------------------------------------------------------- queue groups


async def test_queue_group_members_share_messages_exactly_once(bus: Bus) -> None:
    a, b, c = await bus.connect("a"), await bus.connect("b"), await bus.connect("c")
    subject = bus.s("work")
    handled: list[tuple[int, bytes]] = []
    all_handled = asyncio.Event()

    def worker(index: int):
        async def cb(msg: Msg) -> None:
            handled.append((index, msg.data))
            if len(handled) == 30:
                all_handled.set()

        return cb

    members = [
        await b.subscribe(subject, queue="workers", cb=worker(0)),
        await b.subscribe(subject, queue="workers", cb=worker(1)),
        await c.subscribe(bus.s("*"), queue="workers", cb=worker(2)),  # same group, other pattern
    ]
    audit, plain = Recorder(), Recorder()
    await c.subscribe(subject, queue="audit", cb=audit.cb)
    await b.subscribe(subject, cb=plain.cb)
    await bus.sync(b, c)

    sent = [str(i).encode() for i in range(30)]
    for payload in sent:
        await a.publish(subject, payload)
    await bus.barrier(a, b)
    await bus.barrier(a, c)
    await audit.wait_for(30)
    await plain.wait_for(30)
    await wait(all_handled)
    assert sum(m.delivered for m in members) == 30  # final: the barriers passed
    assert sorted(data for _, data in handled) == sorted(sent)  # each message to exactly one member
    assert sorted(audit.data) == sorted(sent)  # every group gets each message
    assert plain.data == sent  # plain subscribers each get a copy
    if bus.kind == "memory":
        assert [m.delivered for m in members] == [10, 10, 10]  # round robin


# --------------------------------------------------------------------------- delivery


async def test_callbacks_of_one_subscription_run_one_at_a_time_in_order(bus: Bus) -> None:
    a, b = await bus.connect("a"), await bus.connect("b")
    seen: list[int] = []
    active = 0
    max_active = 0
    done = asyncio.Event()

    async def cb(msg: Msg) -> None:
        nonlocal active, max_active
        active += 1
        max_active = max(max_active, active)
        n = int(msg.data)
        for _ in range(n % 3):  # uneven work: yields, so an overlap would show
            await asyncio.sleep(0)
        seen.append(n)
        active -= 1
        if len(seen) == 200:
            done.set()

    await b.subscribe(bus.s("seq"), cb=cb)
    await bus.sync(b)
    for i in range(200):
        await a.publish(bus.s("seq"), str(i).encode())
    await wait(done)
    assert seen == list(range(200))
    assert max_active == 1


async def test_different_subscriptions_run_concurrently(bus: Bus) -> None:
    a, b = await bus.connect("a"), await bus.connect("b")
    b_seen = asyncio.Event()
    a_done = asyncio.Event()

    async def on_first(msg: Msg) -> None:
        await b_seen.wait()  # only another subscription's callback can set this
        a_done.set()

    async def on_second(msg: Msg) -> None:
        b_seen.set()

    await b.subscribe(bus.s("first"), cb=on_first)
    await b.subscribe(bus.s("second"), cb=on_second)
    await bus.sync(b)
    await a.publish(bus.s("first"), b"1")
    await a.publish(bus.s("second"), b"2")
    await wait(a_done)


async def test_a_raising_callback_is_reported_and_delivery_goes_on(bus: Bus) -> None:
    a, b = await bus.connect("a"), await bus.connect("b")
    rec = Recorder(raise_on={b"bad"})
    await b.subscribe(bus.s("x"), cb=rec.cb)
    await bus.sync(b)
    for payload in (b"bad", b"good", b"bad", b"fine"):
        await a.publish(bus.s("x"), payload)
    await rec.wait_for(2)
    assert rec.data == [b"good", b"fine"]
    # Both report an error before the next message reaches the callback.
    assert [type(e) for e in bus.errors(b)] == [ValueError, ValueError]
    if bus.kind == "memory":
        assert [str(e) for e in b.callback_errors] == ["boom on b'bad'", "boom on b'bad'"]


async def test_a_callback_leaking_cancelled_error_ends_the_subscription(bus: Bus) -> None:
    """nats-py's delivery loop stops on CancelledError from a callback; later messages wait forever."""
    a, b = await bus.connect("a"), await bus.connect("b")
    calls = 0

    async def cb(msg: Msg) -> None:
        nonlocal calls
        calls += 1
        raise asyncio.CancelledError

    sub = await b.subscribe(bus.s("x"), cb=cb)
    await bus.sync(b)
    await a.publish(bus.s("x"), b"1")
    await a.publish(bus.s("x"), b"2")
    await bus.barrier(a, b)
    assert calls == 1
    assert sub.pending_msgs == 1
    if bus.kind == "memory":
        assert [type(e) for e in b.callback_errors] == [SubscriptionStopped]


# --------------------------------------------------------------------------- unsubscribe and drain


async def test_unsubscribe_cancels_the_running_callback_and_drops_queued_messages(bus: Bus) -> None:
    a, b = await bus.connect("a"), await bus.connect("b")
    rec = Recorder(gate=asyncio.Event())
    sub = await b.subscribe(bus.s("x"), cb=rec.cb)
    await bus.sync(b)
    for i in range(3):
        await a.publish(bus.s("x"), str(i).encode())
    await wait(rec.started)
    await bus.barrier(a, b)
    assert sub.pending_msgs == 2  # the first is in the callback

    await sub.unsubscribe()
    await wait(rec.cancelled)
    rec.gate.set()
    await a.publish(bus.s("x"), b"late")
    await bus.barrier(a, b)
    assert rec.msgs == []
    assert sub.delivered == 3
    with pytest.raises(nats.errors.BadSubscriptionError):
        await sub.unsubscribe()


async def test_drain_delivers_queued_messages_and_returns_after_them(bus: Bus) -> None:
    a, b = await bus.connect("a"), await bus.connect("b")
    rec = Recorder(gate=asyncio.Event())
    sub = await b.subscribe(bus.s("x"), cb=rec.cb)
    await bus.sync(b)
    for i in range(3):
        await a.publish(bus.s("x"), str(i).encode())
    await wait(rec.started)
    await bus.barrier(a, b)

    draining = asyncio.ensure_future(sub.drain())
    await bus.sync(b)
    assert not draining.done()  # a message is still in the callback, two are queued
    rec.gate.set()
    async with asyncio.timeout(WAIT_S):
        await draining
    assert rec.data == [b"0", b"1", b"2"]
    assert not rec.cancelled.is_set()

    await a.publish(bus.s("x"), b"after")
    await bus.barrier(a, b)
    assert sub.delivered == 3
    with pytest.raises(nats.errors.BadSubscriptionError):
        await sub.drain()
    with pytest.raises(nats.errors.BadSubscriptionError):
        await sub.unsubscribe()


async def test_drain_stops_new_messages_at_once(mem: MemoryNats) -> None:
    a, b = mem.connect("a"), mem.connect("b")
    rec = Recorder(gate=asyncio.Event())
    sub = await b.subscribe("x", cb=rec.cb)
    await a.publish("x", b"0")
    await a.publish("x", b"1")
    await wait(rec.started)
    draining = asyncio.ensure_future(sub.drain())
    await b.flush()  # lets the drain task start
    assert mem.interest("x") == 0
    await a.publish("x", b"2")
    assert sub.delivered == 2
    rec.gate.set()
    async with asyncio.timeout(WAIT_S):
        await draining
    assert rec.data == [b"0", b"1"]


# --------------------------------------------------------------------------- request / reply


async def test_request_gets_the_reply_with_the_request_headers_echoed(bus: Bus) -> None:
    a, b = await bus.connect("a"), await bus.connect("b")

    async def responder(msg: Msg) -> None:
        await msg.respond(b"pong:" + msg.data)

    await b.subscribe(bus.s("svc"), queue="svc", cb=responder)
    await bus.sync(b)
    reply = await a.request(bus.s("svc"), b"ping", timeout=WAIT_S, headers={"X-Trace": "abc"})
    assert reply.data == b"pong:ping"
    assert reply.headers == {"X-Trace": "abc"}  # nats-py's Msg.respond copies the request's headers
    plain = await a.request(bus.s("svc"), b"again", timeout=WAIT_S)
    assert plain.data == b"pong:again"
    assert plain.headers is None


async def test_request_without_responders_raises_no_responders(bus: Bus) -> None:
    a = await bus.connect("a")
    with pytest.raises(nats.errors.NoRespondersError):
        await a.request(bus.s("nobody"), b"?", timeout=WAIT_S)


async def test_request_without_an_answer_times_out(bus: Bus) -> None:
    a, b = await bus.connect("a"), await bus.connect("b")
    rec = Recorder()
    await b.subscribe(bus.s("silent"), cb=rec.cb)
    await bus.sync(b)
    with pytest.raises(nats.errors.TimeoutError) as raised:
        await a.request(bus.s("silent"), b"?", timeout=0.05)
    assert isinstance(raised.value, asyncio.TimeoutError)
    await rec.wait_for(1)
    assert rec.msgs[0].reply.startswith("_INBOX.")


async def test_publish_with_a_reply_nobody_hears_gets_a_503_status(bus: Bus) -> None:
    a = await bus.connect("a")
    inbox = a.new_inbox()
    rec = Recorder()
    await a.subscribe(inbox, cb=rec.cb)
    await bus.sync(a)
    await a.publish(bus.s("nobody"), b"?", reply=inbox)
    await rec.wait_for(1)
    status = rec.msgs[0]
    assert (status.subject, status.data, status.headers["Status"]) == (inbox, b"", "503")
    # Recent nats-servers name the subject; nats-py 2.16 then also parses a junk "Description".
    assert status.headers.get("Nats-Subject", bus.s("nobody")) == bus.s("nobody")


async def test_new_inboxes_are_unique(bus: Bus) -> None:
    a = await bus.connect("a")
    inboxes = {a.new_inbox() for _ in range(100)}
    assert len(inboxes) == 100
    assert all(i.startswith("_INBOX.") for i in inboxes)


# --------------------------------------------------------------------------- headers


async def test_headers_arrive_as_the_wire_leaves_them(bus: Bus) -> None:
    a, b = await bus.connect("a"), await bus.connect("b")
    first, second = Recorder(), Recorder()
    await b.subscribe(bus.s("h"), cb=first.cb)
    await b.subscribe(bus.s("h"), cb=second.cb)
    await bus.sync(b)
    await a.publish(bus.s("h"), b"1", headers={"traceparent": "00-abc-def-01", " Padded ": "  v  ", "Multi": "a\r\nb"})
    await a.publish(bus.s("h"), b"2", headers={})
    await a.publish(bus.s("h"), b"3")
    await first.wait_for(3)
    await second.wait_for(3)
    assert first.msgs[0].headers == {"traceparent": "00-abc-def-01", "Padded": "v", "Multi": "a  b"}
    assert first.msgs[1].headers is None
    assert first.msgs[2].headers is None
    first.msgs[0].headers["traceparent"] = "changed"
    assert second.msgs[0].headers["traceparent"] == "00-abc-def-01"  # every receiver has its own dict


async def test_an_invalid_header_key_is_refused(bus: Bus) -> None:
    a = await bus.connect("a")
    with pytest.raises(nats.errors.BadHeaderError):
        await a.publish(bus.s("h"), b"1", headers={"bad key": "v"})


# --------------------------------------------------------------------------- slow consumers


async def test_messages_beyond_the_pending_limit_are_dropped(bus: Bus) -> None:
    a, b = await bus.connect("a"), await bus.connect("b")
    rec = Recorder(gate=asyncio.Event())
    sub = await b.subscribe(bus.s("x"), cb=rec.cb, pending_msgs_limit=2)
    await bus.sync(b)
    await a.publish(bus.s("x"), b"0")
    await wait(rec.started)  # the first message left the queue for the callback
    for i in range(1, 5):
        await a.publish(bus.s("x"), str(i).encode())
    await bus.barrier(a, b)
    assert sub.pending_msgs == 2
    assert sub.delivered == 5  # nats-py counts dropped messages as delivered
    slow = [e for e in bus.errors(b) if isinstance(e, nats.errors.SlowConsumerError)]
    assert len(slow) == 2
    if bus.kind == "memory":
        assert sub.dropped == 2
    rec.gate.set()
    await rec.wait_for(3)
    assert rec.data == [b"0", b"1", b"2"]


async def test_messages_beyond_the_pending_bytes_limit_are_dropped(bus: Bus) -> None:
    a, b = await bus.connect("a"), await bus.connect("b")
    rec = Recorder(gate=asyncio.Event())
    sub = await b.subscribe(bus.s("x"), cb=rec.cb, pending_bytes_limit=10)
    await bus.sync(b)
    await a.publish(bus.s("x"), b"0000")
    await wait(rec.started)
    for payload in (b"1111", b"2222", b"3333"):  # 4 + 4 fit; 12 reaches the limit
        await a.publish(bus.s("x"), payload)
    await bus.barrier(a, b)
    assert (sub.pending_msgs, sub.pending_bytes) == (2, 8)
    rec.gate.set()
    await rec.wait_for(3)
    assert rec.data == [b"0000", b"1111", b"2222"]


def test_default_pending_limits_are_nats_pys() -> None:
    ours = inspect.signature(MemoryConnection.subscribe).parameters
    theirs = inspect.signature(NatsClient.subscribe).parameters
    for name in ("pending_msgs_limit", "pending_bytes_limit"):
        assert ours[name].default == theirs[name].default


# --------------------------------------------------------------------------- closing and draining the connection


async def test_a_closed_connection_refuses_everything(bus: Bus) -> None:
    a = await bus.connect("a")
    assert a.is_connected and not a.is_closed
    await a.close()
    assert a.is_closed and not a.is_connected
    with pytest.raises(nats.errors.ConnectionClosedError):
        await a.publish(bus.s("x"), b"1")
    with pytest.raises(nats.errors.ConnectionClosedError):
        await a.subscribe(bus.s("x"))
    with pytest.raises(nats.errors.ConnectionClosedError):
        await a.request(bus.s("x"), b"1")
    with pytest.raises(nats.errors.ConnectionClosedError):
        await a.flush()
    with pytest.raises(nats.errors.ConnectionClosedError):
        await a.drain()
    await a.close()  # again: a no-op


async def test_close_cancels_running_callbacks_and_others_carry_on(bus: Bus) -> None:
    a, b, c = await bus.connect("a"), await bus.connect("b"), await bus.connect("c")
    blocked, other = Recorder(gate=asyncio.Event()), Recorder()
    sub = await b.subscribe(bus.s("x"), cb=blocked.cb)
    await c.subscribe(bus.s("x"), cb=other.cb)
    await bus.sync(b, c)
    await a.publish(bus.s("x"), b"1")
    await wait(blocked.started)
    await b.close()
    await wait(blocked.cancelled)
    with pytest.raises(nats.errors.ConnectionClosedError):
        await sub.unsubscribe()
    await a.publish(bus.s("x"), b"2")
    await other.wait_for(2)
    assert blocked.msgs == []


async def test_connection_drain_finishes_callbacks_which_may_still_publish(bus: Bus) -> None:
    a, b = await bus.connect("a"), await bus.connect("b")
    acks = Recorder()
    await a.subscribe(bus.s("ack"), cb=acks.cb)
    gate = asyncio.Event()
    started = asyncio.Event()

    async def worker(msg: Msg) -> None:
        started.set()
        await gate.wait()
        await b.publish(bus.s("ack"), msg.data)

    await b.subscribe(bus.s("job"), cb=worker)
    await bus.sync(a, b)
    for i in range(3):
        await a.publish(bus.s("job"), str(i).encode())
    await wait(started)
    await bus.barrier(a, b)

    draining = asyncio.ensure_future(b.drain())
    await a.flush()
    assert b.is_draining and not draining.done()
    gate.set()
    async with asyncio.timeout(WAIT_S):
        await draining
    assert b.is_closed
    await acks.wait_for(3)
    assert acks.data == [b"0", b"1", b"2"]
    with pytest.raises(nats.errors.ConnectionClosedError):
        await b.publish(bus.s("ack"), b"late")


# --------------------------------------------------------------------------- callback-less subscriptions


async def test_next_msg_returns_messages_times_out_and_fails_on_close(bus: Bus) -> None:
    a, b = await bus.connect("a"), await bus.connect("b")
    sub = await b.subscribe(bus.s("pull"))
    await bus.sync(b)
    await a.publish(bus.s("pull"), b"1", headers={"k": "v"})
    msg = await sub.next_msg(timeout=WAIT_S)
    assert (msg.data, msg.headers) == (b"1", {"k": "v"})
    with pytest.raises(nats.errors.TimeoutError):
        await sub.next_msg(timeout=0.01)
    waiting = asyncio.ensure_future(sub.next_msg(timeout=WAIT_S))
    await b.flush()
    await b.close()
    with pytest.raises(nats.errors.ConnectionClosedError):
        await waiting


async def test_payloads_over_the_max_are_refused(bus: Bus) -> None:
    a = await bus.connect("a")
    with pytest.raises(nats.errors.MaxPayloadError):
        await a.publish(bus.s("big"), b"x" * (a.max_payload + 1))


# --------------------------------------------------------------------------- memory-only guarantees


async def test_publish_enqueues_before_it_returns(mem: MemoryNats) -> None:
    a, b = mem.connect("a"), mem.connect("b")
    rec = Recorder()
    sub = await b.subscribe("x", cb=rec.cb)
    await a.publish("x", b"1")
    assert sub.delivered == 1  # no flush needed: a subscription made before a publish gets it
    await a.flush()
    await rec.wait_for(1)


async def test_no_echo_connections_do_not_hear_themselves(mem: MemoryNats) -> None:
    quiet, other = mem.connect("quiet", no_echo=True), mem.connect("other")
    mine, theirs = Recorder(), Recorder()
    own_sub = await quiet.subscribe("x", cb=mine.cb)
    await other.subscribe("x", cb=theirs.cb)
    await quiet.publish("x", b"1")
    await other.publish("x", b"2")
    await theirs.wait_for(2)
    await mine.wait_for(1)
    assert mine.data == [b"2"]
    assert own_sub.delivered == 1


async def test_close_from_inside_a_callback_does_not_deadlock(mem: MemoryNats) -> None:
    a = mem.connect("a")
    closed = asyncio.Event()

    async def cb(msg: Msg) -> None:
        await a.close()
        closed.set()

    await a.subscribe("x", cb=cb)
    await a.publish("x", b"1")
    await wait(closed)
    assert a.is_closed


async def test_close_releases_a_pending_subscription_drain(mem: MemoryNats) -> None:
    a = mem.connect("a")
    rec = Recorder(gate=asyncio.Event())
    sub = await a.subscribe("x", cb=rec.cb)
    await a.publish("x", b"1")
    await a.publish("x", b"2")
    await wait(rec.started)
    draining = asyncio.ensure_future(sub.drain())
    await a.flush()
    await a.close()
    async with asyncio.timeout(WAIT_S):
        await draining
    assert rec.cancelled.is_set() and rec.msgs == []


async def test_error_callback_and_errors_list(mem: MemoryNats) -> None:
    received: list[Exception] = []
    reported = asyncio.Event()

    async def error_cb(exc: Exception) -> None:
        received.append(exc)
        reported.set()

    conn = mem.connect("a", error_cb=error_cb)
    await conn.subscribe("x", cb=Recorder(raise_on={b"bad"}).cb)
    await conn.publish("x", b"bad")
    await wait(reported)
    assert conn.errors == received == conn.callback_errors
    assert conn.options["name"] == "a"


async def test_server_view_of_subscriptions(mem: MemoryNats) -> None:
    a = mem.connect("a")
    sub = await a.subscribe("a.*", queue="q", cb=Recorder().cb)
    assert (sub.subject, sub.queue) == ("a.*", "q")
    assert mem.interest("a.b") == 1 and mem.interest("b.a") == 0
    assert mem.subscriptions == [sub]
    await sub.unsubscribe()
    assert mem.interest("a.b") == 0


async def test_payload_must_be_bytes(mem: MemoryNats) -> None:
    a = mem.connect("a")
    with pytest.raises(TypeError):
        await a.publish("x", "text")  # type: ignore[arg-type]
    await a.publish("x", bytearray(b"ok"))
