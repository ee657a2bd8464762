"""JetStream key-value buckets and streams, with compare-and-set, behind two small protocols.

What must survive a restart or be shared by the instances on one bus lives here: the cost
ledger (spend records and the day's leases, ``ledger_service.py``) today. ``KeyValue`` is
get and compare-and-set update by revision; ``EventLog`` appends to a stream with a message
id the server deduplicates on. Each has a JetStream implementation and an in-memory one
with the same semantics (for ``router.budgets.store: memory`` and for tests of the shells
that use them), so callers never branch on which they have.

Every failure to reach the store (JetStream off, timeouts, the bus gone) is a ``StoreError``;
losing a compare-and-set race is a ``Conflict``, which ``compare_and_set`` retries.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Protocol

import nats.errors
import nats.js.errors
from nats.js import api

CAS_ATTEMPTS = 32
"""Tries of a read-modify-write before giving up: each round one of the racing writers wins, so
this many writers of one key at once always get through."""


class StoreError(Exception):
    """The store cannot be reached, or refused the operation."""


class Conflict(Exception):
    """A compare-and-set lost: the key changed since it was read."""


class KeyValue(Protocol):
    async def get(self, key: str) -> tuple[bytes | None, int]:
        """The value and its revision; ``(None, 0)`` when the key has none."""
        ...

    async def update(self, key: str, value: bytes, revision: int) -> int:
        """Write if the key is still at ``revision`` (0: absent); the new revision, else ``Conflict``."""
        ...


class EventLog(Protocol):
    async def publish(self, subject: str, payload: bytes, msg_id: str) -> bool:
        """Append; False when the stream already had ``msg_id`` (a duplicate it dropped)."""
        ...


async def compare_and_set(kv: KeyValue, key: str, change: Callable[[bytes | None], bytes | None]) -> bytes | None:
    """Read-modify-write ``key``: ``change`` gets the current value and returns the new one,
    or None to leave it as it is. Retried on conflict; returns what the key holds after."""
    for _ in range(CAS_ATTEMPTS):
        raw, revision = await kv.get(key)
        new = change(raw)
        if new is None or new == raw:
            return raw
        try:
            await kv.update(key, new, revision)
        except Conflict:
            continue
        return new
    raise StoreError(f"compare-and-set of {key!r} lost {CAS_ATTEMPTS} times in a row")


_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def key_token(value: str) -> str:
    """One key token for any id: bytes outside ``[A-Za-z0-9_-]`` become ``=XX`` (hex), so
    different ids never share a token and a dot never splits one."""
    return _KEY_UNSAFE.sub(lambda m: "".join(f"={b:02X}" for b in m.group().encode("utf-8", "surrogatepass")),
                           value) or "="


def prefixed_name(subject_prefix: str, name: str) -> str:
    """A bucket or stream name for routers on ``subject_prefix`` (``t1.`` -> ``t1_<name>``), so
    routers on different prefixes never share one."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", subject_prefix) + name


# --------------------------------------------------------------------------- JetStream


class JetStreamKV:
    def __init__(self, kv: Any, timeout_s: float):
        self.kv = kv
        self.timeout_s = timeout_s

    async def get(self, key: str) -> tuple[bytes | None, int]:
        try:
            entry = await self.kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return None, 0
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            raise StoreError(f"reading {key!r}: {_why(exc)}") from exc
        return entry.value, entry.revision

    async def update(self, key: str, value: bytes, revision: int) -> int:
        try:
            return await self.kv.update(key, value, last=revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            raise Conflict(key) from None
        except nats.js.errors.APIError as exc:
            if exc.err_code in (10071, 10164):  # wrong last sequence, reported without the KV wrapper
                raise Conflict(key) from None
            raise StoreError(f"writing {key!r}: {_why(exc)}") from exc
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            raise StoreError(f"writing {key!r}: {_why(exc)}") from exc


class JetStreamLog:
    def __init__(self, js: Any, stream: str, timeout_s: float):
        self.js = js
        self.stream = stream
        self.timeout_s = timeout_s

    async def publish(self, subject: str, payload: bytes, msg_id: str) -> bool:
        try:
            ack = await self.js.publish(subject, payload, timeout=self.timeout_s, stream=self.stream,
                                        headers={"Nats-Msg-Id": msg_id})
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            raise StoreError(f"publishing to stream {self.stream}: {_why(exc)}") from exc
        return not ack.duplicate


async def open_jetstream(nc: Any, *, bucket: str, stream: str, subjects: list[str], max_age_s: float,
                         storage: str = "file", timeout_s: float = 2.0) -> tuple[JetStreamKV, JetStreamLog]:
    """The bucket and the stream, created when absent (several instances may race to: the
    server accepts the same definition twice)."""
    js = nc.jetstream(timeout=timeout_s)
    kind = api.StorageType.FILE if storage == "file" else api.StorageType.MEMORY
    try:
        try:
            kv = await js.key_value(bucket)
        except nats.js.errors.BucketNotFoundError:
            kv = await js.create_key_value(bucket=bucket, history=1, ttl=max_age_s, storage=kind,
                                           description="router cost ledger: spend records and leases")
        try:
            await js.stream_info(stream)
        except nats.js.errors.NotFoundError:
            await js.add_stream(name=stream, subjects=subjects, max_age=max_age_s, storage=kind,
                                duplicate_window=120.0, description="router cost events (cost_event signals)")
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        raise StoreError(f"JetStream is not available ({_why(exc)})") from exc
    return JetStreamKV(kv, timeout_s), JetStreamLog(js, stream, timeout_s)


async def stream_payloads(nc: Any, stream: str, subject: str, timeout_s: float = 5.0) -> list[bytes]:
    """Every message a stream holds on ``subject`` (a wildcard may be used), oldest first: what
    a subscriber replays to rebuild what the stream records."""
    js = nc.jetstream(timeout=timeout_s)
    try:
        last = (await js.stream_info(stream)).state.last_seq
        if not last:
            return []
        sub = await js.subscribe(subject, stream=stream, ordered_consumer=True,
                                 config=api.ConsumerConfig(deliver_policy=api.DeliverPolicy.ALL))
        out = []
        try:
            while True:
                msg = await sub.next_msg(timeout=timeout_s)
                out.append(msg.data)
                if msg.metadata.sequence.stream >= last:
                    return out
        finally:
            await sub.unsubscribe()
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        raise StoreError(f"reading stream {stream}: {_why(exc)}") from exc


def _why(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --------------------------------------------------------------------------- in memory


class MemoryKV:
    """``KeyValue`` in this process: the same revisions and conflicts, nothing shared or kept."""

    def __init__(self) -> None:
        self.data: dict[str, tuple[bytes, int]] = {}
        self.revision = 0

    async def get(self, key: str) -> tuple[bytes | None, int]:
        value, revision = self.data.get(key, (None, 0))
        return value, revision

    async def update(self, key: str, value: bytes, revision: int) -> int:
        if self.data.get(key, (None, 0))[1] != revision:
            raise Conflict(key)
        self.revision += 1
        self.data[key] = (value, self.revision)
        return self.revision


class MemoryLog:
    """``EventLog`` in this process, deduplicating on message id like a stream."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.ids: set[str] = set()

    async def publish(self, subject: str, payload: bytes, msg_id: str) -> bool:
        if msg_id in self.ids:
            return False
        self.ids.add(msg_id)
        self.messages.append((subject, payload))
        return True
