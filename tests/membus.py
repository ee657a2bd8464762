"""An in-memory stand-in for a nats-py connection, for the fast half of the test suite.

The agent talks to NATS through a small part of ``nats.aio.client.Client``: ``subscribe``
(with queue groups and callbacks), ``publish``, ``request``, ``flush``, ``new_inbox``,
``drain``/``close`` and a subscription's ``unsubscribe``/``drain``. ``MemoryNats`` is a
"server" living in the test's event loop; every ``MemoryConnection`` made from it with
``connect()`` sees the others, so the agent and a test client talk as they would over a
real nats-server, in microseconds instead of milliseconds and with nothing to start.

The same scenarios run against a real nats-server in the slow half; this module keeps the
semantics those scenarios can observe the same as nats-py 2.x (read from its source):

* Messages are ``nats.aio.msg.Msg`` objects bound to the *receiving* connection, so
  ``msg.respond(data)`` publishes on it -- and, like nats-py, copies the request's headers
  onto the reply.
* Subjects: ``*`` matches one token, ``>`` one or more trailing tokens; subscribe
  validates subjects strictly and publish loosely, raising ``BadSubjectError`` like nats-py.
* Queue groups: each message goes to one member of each queue group (grouped by queue
  name across every matching subscription, as nats-server does; round robin here, random
  there); every plain subscription gets its own copy. A connection hears its own messages
  unless made with ``no_echo=True``.
* Delivery: each callback subscription has its own ``asyncio.Queue`` and task, so its
  callbacks run one at a time in publish order, and different subscriptions run
  concurrently. An exception from a callback goes to the error callback (nats-py logs it)
  and is recorded in ``conn.callback_errors``; delivery goes on. A callback that lets
  ``CancelledError`` escape ends that subscription's delivery task, silently in nats-py;
  here it is also recorded in ``callback_errors`` as ``SubscriptionStopped``.
* Slow consumers: a message is dropped when the subscription's queue already holds
  ``pending_msgs_limit`` messages (the one a callback is processing does not count) or
  when its pending bytes would reach ``pending_bytes_limit``; ``SlowConsumerError`` goes
  to the error callback and ``sub.dropped`` counts it. ``sub.delivered`` counts every
  message the subscription was sent, dropped ones included, as nats-py's does. The
  defaults are nats-py's (512 Ki messages, 128 MiB).
* ``unsubscribe()`` removes interest at once and cancels the delivery task: a callback
  still running gets ``CancelledError`` and queued messages are never delivered (they
  stay counted in ``pending_msgs``), as in nats-py.
  ``drain()`` removes interest at once, lets the queued messages reach the callback and
  returns when the last one has been processed (so calling it from the subscription's
  own callback never returns, as in nats-py). Both raise ``BadSubscriptionError`` when
  repeated, ``ConnectionClosedError`` after close and ``ConnectionDrainingError`` while
  the connection drains.
* ``request()`` uses one wildcard inbox subscription per connection, as nats-py's new
  style requests do. With no subscription on the subject, the "server" sends the
  requester a ``Status: 503`` message and ``request`` raises ``NoRespondersError``; with no
  answer in time it raises ``nats.errors.TimeoutError``. A plain ``publish`` with a reply
  subject, to a subject nobody listens on, also gets that 503 message (headers ``Status``
  and ``Nats-Subject``, as recent nats-servers send) on the publisher's reply subscription.
* Headers go through what the wire does to them: keys and values are stripped, CR/LF in
  values become spaces, an invalid key raises ``BadHeaderError``, an empty dict arrives as
  ``None``; every receiver gets its own dict.
* ``publish`` enqueues to every matching subscription before it returns and does not
  yield; ``flush`` only yields once (there is no network), so a subscription made before
  a publish always receives it. Payloads over ``max_payload`` (1 MiB, nats-server's
  default) raise ``MaxPayloadError``.
* ``drain()`` on the connection drains every subscription (publishing still allowed
  meanwhile, so callbacks can answer), then refuses publishes with
  ``ConnectionDrainingError`` and closes. After ``close()``, ``publish``, ``subscribe``,
  ``request`` and ``flush`` raise ``ConnectionClosedError``; ``close()`` discards queued
  messages and cancels the delivery tasks (a running callback gets ``CancelledError``).
  Unlike nats-py it then waits for those tasks to finish, so no callback runs after it
  returns, and it lets a pending ``sub.drain()`` return (in nats-py that one never does).

Callback-less subscriptions support ``next_msg()`` (not the ``messages`` iterator).
Not reproduced: reconnection, JetStream, ``max_msgs``/``unsubscribe(limit)``, old-style
requests, and the network's interleaving of messages from different publishers (here every
publish is enqueued to all its subscribers before ``publish`` returns, in one global order).

Test helpers beyond nats-py: ``MemoryNats.interest(subject)`` and ``.subscriptions``;
``conn.errors`` (every async error) and ``conn.callback_errors``; ``sub.dropped`` and
``sub.processed`` (callbacks that returned or raised).
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, Self

from nats import errors
from nats.aio.msg import Msg
from nats.aio.subscription import DEFAULT_SUB_PENDING_BYTES_LIMIT, DEFAULT_SUB_PENDING_MSGS_LIMIT
from nats.nuid import NUID

__all__ = [
    "DEFAULT_MAX_PAYLOAD",
    "MemoryConnection",
    "MemoryNats",
    "MemorySubscription",
    "SubscriptionStopped",
    "subject_matches",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_PAYLOAD = 1024 * 1024
DEFAULT_DRAIN_TIMEOUT = 30.0
INBOX_PREFIX = "_INBOX"
STATUS_HEADER = "Status"
NO_RESPONDERS_STATUS = "503"

ErrorCallback = Callable[[Exception], Awaitable[None]]
MsgCallback = Callable[[Msg], Awaitable[None]]

_INVALID_SUBJECT_CHARS = re.compile(r"[ \t\r\n]")
_HEADER_KEY = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER_VALUE_NEWLINES = str.maketrans({"\r": " ", "\n": " "})


class SubscriptionStopped(RuntimeError):
    """A callback let ``CancelledError`` escape: nats-py then ends that subscription's delivery."""


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether a subscription ``pattern`` (with ``*`` and ``>``) matches a published ``subject``."""
    pattern_tokens = pattern.split(".")
    subject_tokens = subject.split(".")
    for index, token in enumerate(pattern_tokens):
        if token == ">":
            return len(subject_tokens) > index
        if index >= len(subject_tokens):
            return False
        if token != "*" and token != subject_tokens[index]:
            return False
    return len(pattern_tokens) == len(subject_tokens)


def _validate_subject(subject: str, *, strict: bool) -> None:
    """nats-py's checks: never empty or with whitespace; for subscribe, well-formed wildcards."""
    if not subject or _INVALID_SUBJECT_CHARS.search(subject):
        raise errors.BadSubjectError
    if not strict:
        return
    tokens = subject.split(".")
    for index, token in enumerate(tokens):
        if not token:
            raise errors.BadSubjectError
        if token == ">":
            if index != len(tokens) - 1:
                raise errors.BadSubjectError
        elif ">" in token or ("*" in token and token != "*"):
            raise errors.BadSubjectError


def _wire_headers(headers: dict[str, str] | None) -> dict[str, str] | None:
    """The headers a receiver parses back after nats-py encoded them for the wire."""
    if headers is None:
        return None
    out: dict[str, str] = {}
    for key, value in headers.items():
        key = key.strip()
        if not key:
            continue
        if not _HEADER_KEY.fullmatch(key):
            raise errors.BadHeaderError(key)
        out[key] = value.strip().translate(_HEADER_VALUE_NEWLINES)
    return out


async def _log_error(exc: Exception) -> None:
    """nats-py's default error callback: log it."""
    log.error("nats: encountered error", exc_info=exc)


class MemoryNats:
    """The in-memory "server": routes messages between every connection made from it."""

    def __init__(self, *, max_payload: int = DEFAULT_MAX_PAYLOAD):
        self.max_payload = max_payload
        self.connections: list[MemoryConnection] = []
        self._subs: list[MemorySubscription] = []
        self._round_robin: dict[str, int] = {}

    def connect(
        self,
        name: str = "",
        *,
        error_cb: ErrorCallback | None = None,
        no_echo: bool = False,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    ) -> MemoryConnection:
        conn = MemoryConnection(self, name, error_cb=error_cb, no_echo=no_echo, drain_timeout=drain_timeout)
        self.connections.append(conn)
        return conn

    @property
    def subscriptions(self) -> list[MemorySubscription]:
        """Every subscription that currently has interest, in the order they were made."""
        return list(self._subs)

    def interest(self, subject: str) -> int:
        """How many subscriptions a message published on ``subject`` now would match."""
        return sum(1 for sub in self._subs if subject_matches(sub.subject, subject))

    # -- internals used by connections and subscriptions

    def _add(self, sub: MemorySubscription) -> None:
        self._subs.append(sub)

    def _remove(self, sub: MemorySubscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)

    def _route(
        self,
        publisher: MemoryConnection,
        subject: str,
        reply: str,
        data: bytes,
        headers: dict[str, str] | None,
    ) -> None:
        matched = [sub for sub in self._subs if subject_matches(sub.subject, subject)]
        if reply and not matched:
            # nats-server answers a message nobody can receive with a 503 status message,
            # sent to one of the publisher's own subscriptions on the reply subject.
            for sub in self._subs:
                if sub._conn is publisher and subject_matches(sub.subject, reply):
                    sub._enqueue(reply, "", b"", {STATUS_HEADER: NO_RESPONDERS_STATUS, "Nats-Subject": subject})
                    break
            return
        groups: dict[str, list[MemorySubscription]] = {}
        for sub in matched:
            if publisher.no_echo and sub._conn is publisher:
                continue
            if sub.queue:
                groups.setdefault(sub.queue, []).append(sub)
            else:
                sub._enqueue(subject, reply, data, headers)
        for queue, members in groups.items():
            turn = self._round_robin.get(queue, 0)
            self._round_robin[queue] = turn + 1
            members[turn % len(members)]._enqueue(subject, reply, data, headers)


class MemorySubscription:
    """One subscription: its own pending queue and (with a callback) its own delivery task."""

    def __init__(
        self,
        conn: MemoryConnection,
        sid: int,
        subject: str,
        queue: str,
        cb: MsgCallback | None,
        pending_msgs_limit: int,
        pending_bytes_limit: int,
    ):
        self._conn = conn
        self._id = sid
        self._subject = subject
        self._queue = queue
        self._cb = cb
        self._pending_msgs_limit = pending_msgs_limit
        self._pending_bytes_limit = pending_bytes_limit
        self._pending_queue: asyncio.Queue[Msg] = asyncio.Queue(maxsize=pending_msgs_limit)
        self._pending_size = 0
        self._received = 0
        self._closed = False
        self._stopping = False
        self.dropped = 0
        self.processed = 0
        self._task: asyncio.Task[None] | None = None
        self._next_msg_calls: set[asyncio.Future[Msg]] = set()
        if cb is not None:
            self._task = asyncio.get_running_loop().create_task(
                self._deliver(), name=f"membus:{conn.name}:{subject}"
            )

    @property
    def subject(self) -> str:
        return self._subject

    @property
    def queue(self) -> str:
        return self._queue

    @property
    def pending_msgs(self) -> int:
        """Messages waiting in the queue (not counting one a callback is processing)."""
        return self._pending_queue.qsize()

    @property
    def pending_bytes(self) -> int:
        return self._pending_size

    @property
    def delivered(self) -> int:
        """Messages sent to this subscription so far, dropped ones included (as nats-py)."""
        return self._received

    async def unsubscribe(self, limit: int = 0) -> None:
        """Remove interest at once; queued messages are discarded, a running callback cancelled."""
        if limit:
            raise NotImplementedError("membus does not support unsubscribe(limit)")
        self._check_usable()
        self._closed = True
        self._conn._forget(self)
        self._stop_processing()

    async def drain(self) -> None:
        """Remove interest at once; return when every queued message has been processed."""
        self._check_usable()
        await self._drain()

    async def next_msg(self, timeout: float | None = 1.0) -> Msg:
        """The next message of a subscription made without a callback."""
        if self._conn.is_closed:
            raise errors.ConnectionClosedError
        if self._cb is not None:
            raise errors.Error("nats: next_msg cannot be used in async subscriptions")
        async def timed_get() -> Msg:
            return await asyncio.wait_for(self._pending_queue.get(), timeout)

        call = asyncio.ensure_future(timed_get())
        self._next_msg_calls.add(call)
        try:
            msg = await call
        except TimeoutError:
            if self._conn.is_closed:
                raise errors.ConnectionClosedError from None
            raise errors.TimeoutError from None
        except asyncio.CancelledError:
            if self._conn.is_closed:
                raise errors.ConnectionClosedError from None
            raise
        finally:
            self._next_msg_calls.discard(call)
        self._pending_size -= len(msg.data)
        self._pending_queue.task_done()
        return msg

    def _check_usable(self) -> None:
        if self._conn.is_closed:
            raise errors.ConnectionClosedError
        if self._conn.is_draining:
            raise errors.ConnectionDrainingError
        if self._closed:
            raise errors.BadSubscriptionError

    async def _drain(self) -> None:
        try:
            self._conn._server._remove(self)
            await self._pending_queue.join()
            self._stop_processing()
            self._conn._subs.pop(self._id, None)
        finally:
            self._closed = True

    def _stop_processing(self) -> None:
        self._stopping = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
        for call in self._next_msg_calls:
            call.cancel()

    def _discard_pending(self) -> None:
        """Throw the queued messages away, marking them done so a pending drain returns."""
        while not self._pending_queue.empty():
            self._pending_queue.get_nowait()
            self._pending_queue.task_done()
        self._pending_size = 0

    def _enqueue(self, subject: str, reply: str, data: bytes, headers: dict[str, str] | None) -> None:
        """The server hands this subscription a message (synchronously, in publish order)."""
        self._received += 1
        msg = Msg(
            _client=self._conn,  # type: ignore[arg-type]  # duck-typed: respond() needs publish()
            subject=subject,
            reply=reply,
            data=data,
            headers=dict(headers) if headers else None,
            _sid=self._id,
        )
        size = len(data)
        self._pending_size += size
        if self._pending_bytes_limit > 0 and self._pending_size >= self._pending_bytes_limit:
            self._pending_size -= size
            self._slow_consumer(msg)
            return
        try:
            self._pending_queue.put_nowait(msg)
        except asyncio.QueueFull:
            self._pending_size -= size
            self._slow_consumer(msg)

    def _slow_consumer(self, msg: Msg) -> None:
        self.dropped += 1
        self._conn._report(errors.SlowConsumerError(subject=msg.subject, reply=msg.reply, sid=self._id, sub=self))

    async def _deliver(self) -> None:
        """nats-py's ``_wait_for_msgs``: one callback at a time, errors reported, never fatal."""
        assert self._cb is not None
        while not self._stopping:
            try:
                msg = await self._pending_queue.get()
                self._pending_size -= len(msg.data)
                try:
                    await self._cb(msg)
                    self.processed += 1
                except asyncio.CancelledError:
                    if not self._stopping and not self._conn.is_closed:
                        self._conn.callback_errors.append(
                            SubscriptionStopped(
                                f"callback for {msg.subject!r} raised CancelledError: "
                                "nats-py stops delivering to this subscription"
                            )
                        )
                    break
                except Exception as exc:  # noqa: BLE001 - every callback error is an async error
                    self.processed += 1
                    self._conn.callback_errors.append(exc)
                    self._conn._report(exc)
                finally:
                    self._pending_queue.task_done()
            except asyncio.CancelledError:
                break

    def __repr__(self) -> str:
        queue = f" queue={self._queue!r}" if self._queue else ""
        return f"<MemorySubscription {self._id} {self._subject!r}{queue} on {self._conn.name!r}>"


_CONNECTED, _DRAINING_SUBS, _DRAINING_PUBS, _CLOSED = "connected", "draining_subs", "draining_pubs", "closed"


class MemoryConnection:
    """The part of ``nats.aio.client.Client`` the agent uses, wired to a ``MemoryNats``."""

    def __init__(
        self,
        server: MemoryNats,
        name: str = "",
        *,
        error_cb: ErrorCallback | None = None,
        no_echo: bool = False,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    ):
        self._server = server
        self.name = name
        self.no_echo = no_echo
        self.options: dict[str, Any] = {"name": name, "no_echo": no_echo, "drain_timeout": drain_timeout}
        self._error_cb = error_cb or _log_error
        self._status = _CONNECTED
        self._sids = itertools.count(1)
        self._subs: dict[int, MemorySubscription] = {}
        self._nuid = NUID()
        self._resp_prefix: str | None = None
        self._resp_map: dict[str, asyncio.Future[Msg]] = {}
        self._error_tasks: set[asyncio.Task[None]] = set()
        self.errors: list[Exception] = []
        """Every async error (callback exceptions, slow consumers), in order."""
        self.callback_errors: list[BaseException] = []
        """Exceptions raised by this connection's subscription callbacks."""

    # -- state, as nats-py reports it

    @property
    def is_connected(self) -> bool:
        return self._status in (_CONNECTED, _DRAINING_SUBS, _DRAINING_PUBS)

    @property
    def is_closed(self) -> bool:
        return self._status == _CLOSED

    @property
    def is_draining(self) -> bool:
        return self._status in (_DRAINING_SUBS, _DRAINING_PUBS)

    @property
    def is_draining_pubs(self) -> bool:
        return self._status == _DRAINING_PUBS

    @property
    def is_reconnecting(self) -> bool:
        return False

    @property
    def max_payload(self) -> int:
        return self._server.max_payload

    # -- the client API

    async def subscribe(
        self,
        subject: str,
        queue: str = "",
        cb: MsgCallback | None = None,
        pending_msgs_limit: int = DEFAULT_SUB_PENDING_MSGS_LIMIT,
        pending_bytes_limit: int = DEFAULT_SUB_PENDING_BYTES_LIMIT,
    ) -> MemorySubscription:
        _validate_subject(subject, strict=True)
        if queue and _INVALID_SUBJECT_CHARS.search(queue):
            raise errors.BadSubjectError
        if self.is_closed:
            raise errors.ConnectionClosedError
        if self.is_draining:
            raise errors.ConnectionDrainingError
        if cb is not None and not (
            inspect.iscoroutinefunction(cb) or inspect.iscoroutinefunction(getattr(cb, "func", None))
        ):
            raise errors.Error("nats: must use coroutine for subscriptions")
        sub = MemorySubscription(self, next(self._sids), subject, queue, cb, pending_msgs_limit, pending_bytes_limit)
        self._subs[sub._id] = sub
        self._server._add(sub)
        return sub

    async def publish(
        self,
        subject: str,
        payload: bytes = b"",
        reply: str = "",
        headers: dict[str, str] | None = None,
    ) -> None:
        _validate_subject(subject, strict=False)
        if reply:
            _validate_subject(reply, strict=False)
        if self.is_closed:
            raise errors.ConnectionClosedError
        if self.is_draining_pubs:
            raise errors.ConnectionDrainingError
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise TypeError(f"payload must be bytes, not {type(payload).__name__}")
        if len(payload) > self._server.max_payload:
            raise errors.MaxPayloadError
        self._server._route(self, subject, reply, bytes(payload), _wire_headers(headers))

    async def request(
        self,
        subject: str,
        payload: bytes = b"",
        timeout: float = 0.5,
        old_style: bool = False,
        headers: dict[str, str] | None = None,
    ) -> Msg:
        if old_style:
            raise NotImplementedError("membus only does new-style requests")
        _validate_subject(subject, strict=False)
        if self.is_draining_pubs:
            raise errors.ConnectionDrainingError
        if self._resp_prefix is None:
            prefix = f"{INBOX_PREFIX}.{self._nuid.next().decode()}."
            await self.subscribe(prefix + "*", cb=self._on_response)
            self._resp_prefix = prefix
        token = self._nuid.next().decode()
        future: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda _: self._resp_map.pop(token, None))
        self._resp_map[token] = future
        await self.publish(subject, payload, reply=self._resp_prefix + token, headers=headers)
        try:
            msg = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise errors.TimeoutError from None
        if msg.headers and msg.headers.get(STATUS_HEADER) == NO_RESPONDERS_STATUS:
            raise errors.NoRespondersError
        return msg

    async def _on_response(self, msg: Msg) -> None:
        assert self._resp_prefix is not None
        future = self._resp_map.get(msg.subject[len(self._resp_prefix):])
        if future is not None and not future.done():
            future.set_result(msg)

    def new_inbox(self) -> str:
        return f"{INBOX_PREFIX}.{self._nuid.next().decode()}"

    async def flush(self, timeout: float = 10) -> None:
        """Every publish is already enqueued to its subscribers; this only yields once."""
        if timeout <= 0:
            raise errors.BadTimeoutError
        if self.is_closed:
            raise errors.ConnectionClosedError
        await asyncio.sleep(0)

    async def drain(self) -> None:
        """Drain every subscription, then stop publishing and close (as nats-py does)."""
        if self.is_draining:
            return
        if self.is_closed:
            raise errors.ConnectionClosedError
        subs = list(self._subs.values())
        for sub in subs:
            self._server._remove(sub)
        self._status = _DRAINING_SUBS
        drains = asyncio.gather(*(sub._drain() for sub in subs))
        try:
            await asyncio.wait_for(drains, self.options["drain_timeout"])
        except TimeoutError:
            self._report(errors.DrainTimeoutError())
        finally:
            self._status = _DRAINING_PUBS
            await self.close()

    async def close(self) -> None:
        """Close at once: queued messages are discarded, running callbacks cancelled."""
        if self.is_closed:
            return
        self._status = _CLOSED
        current = asyncio.current_task()
        waiting: list[asyncio.Task[None]] = []
        for sub in list(self._subs.values()):
            self._server._remove(sub)
            sub._closed = True
            sub._stop_processing()
            sub._discard_pending()
            if sub._task is not None and sub._task is not current and not sub._task.done():
                waiting.append(sub._task)
        self._subs.clear()
        if waiting:
            await asyncio.wait(waiting)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- internals

    def _forget(self, sub: MemorySubscription) -> None:
        self._server._remove(sub)
        self._subs.pop(sub._id, None)

    def _report(self, exc: Exception) -> None:
        """An async error: recorded, and handed to the error callback (as nats-py does)."""
        self.errors.append(exc)
        task = asyncio.get_running_loop().create_task(self._error_cb(exc))
        self._error_tasks.add(task)
        task.add_done_callback(self._error_tasks.discard)

    def __repr__(self) -> str:
        return f"<MemoryConnection {self.name!r} {self._status}>"
