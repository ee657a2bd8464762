"""One HTTP/1.1 connection to a provider: a request written, its answer parsed by
httptools (llhttp, the parser of Node.js), the body handed over whole or as it arrives.

One exchange at a time per connection (no pipelining); ``http.HttpClient`` pools them.
Everything that goes wrong reading an answer is an ``OSError``: a ``ResponseError`` (a
malformed answer, one cut short, one too large, an encoding we did not ask for) or a
``TimeoutError`` (no byte within the read timeout). The adapters turn those into typed
provider errors.
"""

from __future__ import annotations

import asyncio
import zlib
from typing import Any

import httptools

MAX_BODY_BYTES = 64 * 1024 * 1024
"""A whole answer larger than this (after decompression) fails the call: an upstream must
not grow the agent's memory without end."""

STREAM_HIGH_WATER = 256 * 1024
"""A streamed answer buffered beyond this pauses reading from the socket until the
consumer catches up (TCP then slows the sender)."""


class ResponseError(ConnectionError):
    """The provider's answer could not be read: malformed, cut short, too large, or in an
    encoding that was not asked for. ``str()`` says which, never the answer's bytes."""


def header_map(fields: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """Headers as received, as a dict: names in lower case, a repeated header's values
    joined by ", "."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in fields:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


class Connection(asyncio.Protocol):
    """A keep-alive connection and the state of its current exchange.

    ``send`` starts an exchange; ``wait_headers`` returns once the status line and headers
    are in; ``read_all`` or ``next_chunk`` take the body. ``reusable`` says whether the
    answer was read to its end on a connection the server keeps open."""

    __slots__ = (
        "_body",
        "_buffered",
        "_decoder",
        "_error",
        "_loop",
        "_open",
        "_parser",
        "_paused",
        "_read_timeout_s",
        "_streaming",
        "_until_eof",
        "_waiter",
        "active",
        "closed",
        "complete",
        "fields",
        "idle_since",
        "keep_alive",
        "key",
        "status",
        "transport",
    )

    def __init__(self, key: Any, loop: asyncio.AbstractEventLoop, open_set: set[Connection],
                 read_timeout_s: float | None) -> None:
        self.key = key
        self.idle_since = 0.0
        self.active = False  # an exchange is under way (set by send, cleared by the pool)
        self.closed = False
        self.transport: asyncio.Transport | None = None
        self._loop = loop
        self._open = open_set
        self._read_timeout_s = read_timeout_s
        self._parser = httptools.HttpResponseParser(self)
        self._reset()

    def _reset(self) -> None:
        self.status: int | None = None
        self.complete = False
        self.keep_alive = False
        self.fields: list[tuple[bytes, bytes]] = []
        """The answer's headers as received (``header_map`` decodes them); final once ``status`` is set."""
        self._body: list[bytes] = []
        self._buffered = 0
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._decoder: Any = None
        self._until_eof = False
        self._streaming = False
        self._paused = False

    # ------------------------------------------------------------------ the exchange

    def send(self, data: bytes) -> None:
        self._reset()
        self.active = True
        self.transport.write(data)  # type: ignore[union-attr]

    @property
    def reusable(self) -> bool:
        return self.complete and self.keep_alive and self._error is None and not self.closed

    async def wait_headers(self) -> None:
        while self.status is None:
            if self._error is not None:
                raise self._error
            await self._wait()

    async def read_all(self) -> bytes:
        while not self.complete:
            if self._error is not None:
                raise self._error
            await self._wait()
        body = self._body
        return body[0] if len(body) == 1 else b"".join(body)

    async def next_chunk(self) -> bytes | None:
        """What arrived since the last call (waiting for something), or None at the end.
        Data that arrived before an error is handed over before the error is raised."""
        self._streaming = True
        while True:
            body = self._body
            if body:
                chunk = body[0] if len(body) == 1 else b"".join(body)
                self._body = []
                self._buffered = 0
                if self._paused:
                    self._paused = False
                    self.transport.resume_reading()  # type: ignore[union-attr]
                return chunk
            if self._error is not None:
                raise self._error
            if self.complete:
                return None
            await self._wait()

    async def _wait(self) -> None:
        waiter = self._waiter = self._loop.create_future()
        if self._read_timeout_s is None:
            await waiter
            return
        timer = self._loop.call_later(self._read_timeout_s, self._timed_out, waiter)
        try:
            await waiter
        finally:
            timer.cancel()

    def _timed_out(self, waiter: asyncio.Future[None]) -> None:
        if waiter is self._waiter and not waiter.done():
            self._fail(TimeoutError(f"no data from the provider within {self._read_timeout_s:g} s"))

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        self.abort()
        self._wake()

    def abort(self) -> None:
        """Close at once: the connection's state is not known to be clean."""
        if not self.closed:
            self.closed = True
            self._open.discard(self)
            if self.transport is not None:
                self.transport.abort()

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._open.add(self)

    def data_received(self, data: bytes) -> None:
        if not self.active:  # bytes nobody asked for: the connection cannot be trusted
            self.abort()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            raised = exc.__context__  # what a callback below raised, if it was one of those
            self._fail(raised if isinstance(raised, ResponseError)
                       else ResponseError("the provider's answer is not valid HTTP/1.1"))

    def eof_received(self) -> None:
        return None  # the transport closes itself; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._open.discard(self)
        if not self.active or self.complete or self._error is not None:
            return
        if self._until_eof:  # a body framed by the end of the connection has ended
            self._finish()
        else:
            self._error = ResponseError("the provider closed the connection before its answer was whole")
        self._wake()

    # ------------------------------------------------------------------ httptools callbacks

    def on_message_begin(self) -> None:
        if self.complete:
            raise ResponseError("the provider sent a second answer to one request")
        self.fields = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:  # an interim answer (100 Continue, 103 Early Hints): the real one follows
            return
        # Only the framing and the encoding are read here; the caller decodes the headers
        # when it asks for them (an adapter does on an error answer only).
        encoding = b"identity"
        framed = False
        for name, value in self.fields:
            name = name.lower()
            if name == b"content-encoding":
                encoding = value.strip().lower()
            elif name in (b"content-length", b"transfer-encoding"):
                framed = True
        if encoding in (b"gzip", b"deflate", b"x-gzip"):
            self._decoder = zlib.decompressobj(32 + zlib.MAX_WBITS)  # either header, detected
        elif encoding != b"identity":
            shown = encoding[:40].decode("latin-1")
            raise ResponseError(f"the provider's answer is in an encoding that was not asked for ({shown})")
        self._until_eof = not framed and status not in (204, 304)
        self.status = status
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self.status is None:
            return
        if self._decoder is not None:
            try:
                body = self._decoder.decompress(body)
            except zlib.error:
                raise ResponseError("the provider's compressed answer cannot be decompressed") from None
            if not body:
                return
        self._body.append(body)
        self._buffered += len(body)
        if self._streaming:
            if self._buffered > STREAM_HIGH_WATER and not self._paused:
                self._paused = True
                self.transport.pause_reading()  # type: ignore[union-attr]
        elif self._buffered > MAX_BODY_BYTES:
            raise ResponseError(f"the provider's answer is larger than {MAX_BODY_BYTES // (1024 * 1024)} MB")
        self._wake()

    def on_message_complete(self) -> None:
        if self.status is None:  # the end of an interim answer
            return
        self.keep_alive = self._parser.should_keep_alive()
        self._finish()

    def _finish(self) -> None:
        if self._decoder is not None:
            tail = self._decoder.flush()
            if tail:
                self._body.append(tail)
        self.complete = True
        self._wake()
