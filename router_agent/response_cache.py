"""The response cache's shell: an in-process layer in front of a JetStream key-value bucket
that every router instance shares.

Writes nothing in ``RouterState``: it owns its in-process layer (``core.cache.LruTtl``) and
its counters (``stats``, a ``core.cache.CacheStats``), which the agent copies into its
metrics. The key, who may use the cache, what is stored and what a hit answers are decided
in ``core/cache.py``; this module only keeps and fetches answers.

Theory of operation
-------------------
``get(key)`` asks the in-process layer first (no I/O), then the bucket, but only for a key
the bucket is known to hold: every instance listens to the bucket's subject
(``$KV.<bucket>.>``, a plain subscription) and keeps an index of the keys written, its own
and the others' (``INDEX_MAX_KEYS`` of them, oldest forgotten first; seeded with the
bucket's keys at start). So a request nobody has asked before (the common miss) costs no
round trip to JetStream; a key is read from the bucket when another instance wrote it, or
when this one's layer has since dropped it. Another instance's write is known a moment after
it is stored (``until_known`` waits for that). A read is bounded by ``cache.kv_timeout_ms``:
a slow, failed or absent bucket is a miss, never an error, so the cache can only ever save a
provider call, not cost a request; a key forgotten by the index is a miss too. An answer
found in the bucket fills the in-process layer for the rest of its time (its ``stored_at``
says how much is left), so another instance's answer is read from the bus once.

``put(key, answer)`` is synchronous: it encodes the answer once, skips it when it is larger
than ``cache.max_entry_bytes``, stores it in the in-process layer at once, and queues the
bucket write, so the request path never waits for JetStream. One writer task publishes what
is queued (every write of a loop turn in one go) to the bucket's subject with a reply
subject of this instance's, where JetStream's acknowledgements arrive: an error, no
responder, or no acknowledgement within ``WRITE_ACK_TIMEOUT_S`` counts in ``kv_errors``.
This is what ``KeyValue.put`` does, without a request (an inbox, a future, a timer, a
parsed reply) per write: each answer stored costs one publish and one small message back.
At most ``cache.max_pending_writes`` writes are queued or unacknowledged; ``drain()`` waits
for them (at a stop).

The bucket is a key-value bucket in the JetStream sense (``KV_<bucket>``, one value per key),
created with ``cache.ttl_s`` as its max age, ``cache.bucket_max_bytes`` as its size and
``max_entry_bytes`` as its largest value. Unlike ``create_key_value`` (which discards new
writes when the bucket is full) it discards the *oldest* answers, as a cache should; the
bucket's own limits are set from config again at every start. Without JetStream (or with
``cache.bucket: null``) the in-process layer works alone.

``replay_events(answer, piece_chars)`` gives a cached answer as the stream events an adapter
would yield, for ``StreamRelay.attempt``: a streamed request served from the cache gets its
``llm_chunk`` signals and summary exactly as from a provider.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from nats.js import api

from router_agent.core.cache import CachedAnswer, CacheStats, LruTtl, split_pieces
from router_agent.providers.base import StreamEnd, StreamEvent, TextDelta, ToolCallDelta
from router_agent.settings import CacheConfig
from router_agent.store import prefixed_name

log = logging.getLogger("router_agent")

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(CachedAnswer).decode

INDEX_MAX_KEYS = 65_536
"""Keys of the shared bucket an instance keeps track of (about 10 MB at most); beyond, the
oldest are forgotten, which only turns a later lookup of one into a miss."""
SEED_TIMEOUT_S = 5.0
"""How long ``start`` may spend listing the keys the bucket already holds."""
WRITE_ACK_TIMEOUT_S = 5.0
"""A bucket write not acknowledged by then is counted as failed (nats-py's own default)."""
STREAM_IN_USE = 10058
"""JetStream's error code for "stream name already in use with a different configuration"."""


class ResponseCache:
    """Answers by key: in-process first, then the shared bucket."""

    def __init__(self, bus: Any, settings: CacheConfig, clock: Callable[[], float], *, subject_prefix: str = "",
                 wall: Callable[[], float] = time.time):
        """``bus`` is a nats-py client or a JetStream context (``None``, or a client without
        JetStream: in-process only); ``clock`` is monotonic seconds (the in-process layer's
        TTL), ``wall`` Unix seconds (``stored_at``, which instances compare)."""
        self.settings = settings
        self.clock = clock
        self.wall = wall
        self.local: LruTtl[str, CachedAnswer] = LruTtl(
            max_entries=settings.max_entries, max_bytes=settings.max_bytes, ttl_s=settings.ttl_s
        )
        self.stats = CacheStats()
        self.bucket = prefixed_name(subject_prefix, settings.bucket) if settings.bucket else None
        self._js = _jetstream(bus) if self.bucket else None
        self._nc = bus if callable(getattr(bus, "jetstream", None)) else getattr(bus, "_nc", None)
        if self._nc is None:  # the bucket is written and watched over the client
            self._js = None
        self._kv: Any = None
        self._queued: list[tuple[str, bytes]] = []
        """Bucket writes (subject, payload) the writer task has yet to publish."""
        self._unacked: deque[float] = deque()
        """When each published write not yet acknowledged was sent (``clock`` time), oldest first."""
        self._writer: asyncio.Task[None] | None = None
        self._settled = asyncio.Event()
        """Set while no write is queued or unacknowledged: what ``drain`` waits for."""
        self._settled.set()
        self._acks = ""
        self._ack_sub: Any = None
        self._index: dict[str, float] = {}
        """Keys the bucket holds, as far as this instance has seen: key -> wall time written."""
        self._subject = f"$KV.{self.bucket}." if self.bucket else ""
        self._sub: Any = None
        """The subscription that feeds the index; without one, every miss asks the bucket."""
        self._waiting: dict[str, asyncio.Future[None]] = {}

    @property
    def shared(self) -> bool:
        """The bucket is open: answers are shared with the other instances."""
        return self._kv is not None

    async def start(self) -> None:
        """Create or open the bucket; without JetStream, carry on in-process only (logged)."""
        if self._js is None or self.bucket is None:
            return
        s = self.settings
        config = api.StreamConfig(
            name=f"KV_{self.bucket}",
            description="llm-router-agent response cache",
            subjects=[f"$KV.{self.bucket}.>"],
            max_age=s.ttl_s,
            max_bytes=s.bucket_max_bytes,
            max_msg_size=s.max_entry_bytes,
            max_msgs_per_subject=1,
            discard=api.DiscardPolicy.OLD,  # a full cache forgets its oldest answers
            storage=api.StorageType.MEMORY if s.storage == "memory" else api.StorageType.FILE,
            num_replicas=1,
            duplicate_window=min(s.ttl_s, 120.0),
            allow_rollup_hdrs=True,
            deny_delete=True,
            allow_direct=True,
            max_consumers=-1,
            max_msgs=-1,
        )
        try:
            try:
                await self._js.add_stream(config)
            except nats.js.errors.BadRequestError as exc:
                if exc.err_code != STREAM_IN_USE:
                    raise
                await self._update(config)
            self._kv = await self._js.key_value(self.bucket)
            self._acks = self._nc.new_inbox()
            self._ack_sub = await self._nc.subscribe(self._acks, cb=self._acknowledged)
            # Listen before listing, so that no write falls between the two.
            self._sub = await self._nc.subscribe(self._subject + ">", cb=self._written)
            await self._seed()
        except (nats.errors.Error, OSError) as exc:  # nats TimeoutError is a nats Error
            log.warning("response cache: bucket %s unavailable (%s); answers stay in this instance", self.bucket,
                        exc)
            self._kv = None

    async def _seed(self) -> None:
        """Index the keys the bucket already holds (bounded in time and count)."""
        try:
            async with asyncio.timeout(SEED_TIMEOUT_S):
                keys = await self._kv.keys()
        except nats.js.errors.NoKeysError:
            return
        except (nats.errors.Error, OSError) as exc:
            log.warning("response cache: could not list bucket %s (%s); its older answers are misses here",
                        self.bucket, exc)
            return
        now = self.wall()
        for key in keys[-INDEX_MAX_KEYS:]:
            self._index.setdefault(key, now)

    async def _written(self, msg: Any) -> None:
        """A write to the bucket (any instance's, this one's too): the key is there now."""
        self._know(msg.subject[len(self._subject):])

    def _know(self, key: str) -> None:
        index = self._index
        index.pop(key, None)  # re-inserted: the newest write is the last forgotten
        index[key] = self.wall()
        if len(index) > INDEX_MAX_KEYS:
            del index[next(iter(index))]
        if self._waiting:
            waiter = self._waiting.pop(key, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def knows(self, key: str) -> bool:
        """The bucket holds ``key``, as far as this instance knows (and it has not expired)."""
        written = self._index.get(key)
        return written is not None and self.wall() - written < self.settings.ttl_s

    async def until_known(self, key: str) -> None:
        """Return once this instance knows the bucket holds ``key`` (another instance's write
        reaches it over the bus a moment after it is stored)."""
        if key in self._index:
            return
        waiter = self._waiting.get(key)
        if waiter is None:
            waiter = self._waiting[key] = asyncio.get_running_loop().create_future()
        await asyncio.shield(waiter)

    async def _update(self, config: api.StreamConfig) -> None:
        """The bucket exists with other limits: config wins over the last start's. What the
        server will not change in place (its storage) leaves the bucket as it is, said."""
        try:
            await self._js.update_stream(config)
        except nats.js.errors.APIError as exc:
            log.warning("response cache: bucket %s keeps its own settings (%s)", self.bucket, exc.description)

    # ------------------------------------------------------------------ reading

    async def get(self, key: str) -> CachedAnswer | None:
        """The live answer for ``key``, counted as a hit or a miss."""
        stats = self.stats
        answer = self.local.get(key, self.clock())
        if answer is not None:
            stats.hits += 1
            stats.local_hits += 1
            return answer
        if self._kv is not None and (self._sub is None or self.knows(key)):
            answer = await self._read(key)
        if answer is None:
            stats.misses += 1
            return None
        stats.hits += 1
        return answer

    async def _read(self, key: str) -> CachedAnswer | None:
        try:
            async with asyncio.timeout(self.settings.kv_timeout_ms / 1000):
                entry = await self._kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return None
        except (nats.errors.Error, OSError) as exc:  # TimeoutError is an OSError
            self.stats.kv_errors += 1
            log.debug("response cache: bucket read failed: %r", exc)
            return None
        value = entry.value or b""
        try:
            answer = _decode(value)
        except msgspec.DecodeError:  # another version's shape, or not ours: not an answer
            self.stats.kv_errors += 1
            return None
        left = self.settings.ttl_s - (self.wall() - answer.stored_at)
        if left <= 0:  # the bucket removes it a little later than its time
            return None
        self.local.put(key, answer, len(value), self.clock(), ttl_s=left)
        return answer

    # ------------------------------------------------------------------ writing

    def put(self, key: str, answer: CachedAnswer) -> bool:
        """Store ``answer`` here now and in the bucket soon; False when it is too large."""
        if not answer.stored_at:
            answer.stored_at = self.wall()
        payload = _encode(answer)
        if len(payload) > self.settings.max_entry_bytes:
            self.stats.oversize += 1
            return False
        now = self.clock()
        self.local.put(key, answer, len(payload), now)
        self.stats.stores += 1
        if self._kv is not None:
            self._know(key)  # its echo from the bus confirms it a moment later
            self._expire_unacked(now)
            if len(self._queued) + len(self._unacked) >= self.settings.max_pending_writes:
                self.stats.kv_writes_dropped += 1
            else:
                self._queued.append((self._subject + key, payload))
                self._settled.clear()
                if self._writer is None:
                    self._writer = asyncio.get_running_loop().create_task(self._write_queued())
        return True

    async def _write_queued(self) -> None:
        try:
            while self._queued:
                batch, self._queued = self._queued, []
                for subject, payload in batch:
                    self._unacked.append(self.clock())
                    try:
                        await self._nc.publish(subject, payload, reply=self._acks)
                    except (nats.errors.Error, OSError) as exc:
                        self._unacked.pop()
                        self.stats.kv_errors += 1
                        log.debug("response cache: bucket write failed: %r", exc)
        finally:
            self._writer = None
            self._check_settled()

    async def _acknowledged(self, msg: Any) -> None:
        """JetStream's answer to one write: ``{"stream": ..., "seq": ...}``, an error, or (no
        JetStream behind the subject) an empty no-responders status."""
        if self._unacked:
            self._unacked.popleft()
            if not msg.data or b'"error"' in msg.data:
                self.stats.kv_errors += 1
                log.debug("response cache: bucket write failed: %r", msg.data or msg.headers)
            self._check_settled()

    def _expire_unacked(self, now: float) -> None:
        unacked = self._unacked
        while unacked and now - unacked[0] > WRITE_ACK_TIMEOUT_S:
            unacked.popleft()
            self.stats.kv_errors += 1

    def _check_settled(self) -> None:
        if not self._queued and not self._unacked and self._writer is None:
            self._settled.set()

    async def drain(self) -> None:
        """Wait for the bucket writes on their way (each at most ``WRITE_ACK_TIMEOUT_S``)."""
        if self._settled.is_set():
            return
        try:
            async with asyncio.timeout(WRITE_ACK_TIMEOUT_S):
                await self._settled.wait()
        except TimeoutError:
            self._expire_unacked(math.inf)  # every write still unacknowledged is lost
            self._check_settled()

    async def close(self) -> None:
        """Stop listening to the bucket (the writes on their way are not waited for: ``drain``)."""
        for sub in (self._sub, self._ack_sub):
            if sub is not None:
                with contextlib.suppress(nats.errors.Error):
                    await sub.unsubscribe()
        self._sub = self._ack_sub = None


async def replay_events(answer: CachedAnswer, piece_chars: int) -> AsyncIterator[StreamEvent]:
    """A cached answer as an adapter's stream: text pieces, each tool call (its id and name,
    then its arguments in pieces), then the end (with the original usage, for information)."""
    for piece in split_pieces(answer.content, piece_chars):
        yield TextDelta(piece)
    for index, call in enumerate(answer.tool_calls):
        pieces = split_pieces(call.function.arguments, piece_chars) or [""]
        yield ToolCallDelta(index, call.id, call.function.name, pieces[0])
        for piece in pieces[1:]:
            yield ToolCallDelta(index, arguments=piece)
    yield StreamEnd(answer.finish_reason, answer.usage)


def _jetstream(bus: Any) -> Any:
    """A JetStream context from a nats-py client (or the context itself); None without one."""
    if bus is None:
        return None
    if hasattr(bus, "key_value") and hasattr(bus, "add_stream"):
        return bus
    jetstream = getattr(bus, "jetstream", None)
    return jetstream() if callable(jetstream) else None
