"""The HTTP client on the hot path: keep-alive HTTP/1.1 connections, pooled per origin.

Why not a general client: with one request at a time, aiohttp 3.14 took ~150 µs more per
call than a plain asyncio protocol with httptools' parser on this machine (``python -m
bench.httpclient``), and it was ~38 % of the agent's CPU at saturation; httpx 0.28's default
transport managed 44 req/s with 500 in flight (encode/httpx#3215). A provider call needs
little of what those clients do: a POST or a GET of a JSON body to a fixed URL, the answer
whole or as it streams. ``http_wire.Connection`` is that connection; the parsing (status
line, headers, chunked and length-framed bodies) is httptools'. The pool is unbounded
because the agent's own concurrency limit is the bound that matters.

Two rules keep provider traffic inside the endpoint policy (``core/endpoints.py``):

- **No redirects.** A 3xx comes back to the adapter as it is (a call fails, a probe fails).
  Following one would let an upstream send the prompt and the key (307/308 re-send the
  body) anywhere, the cloud metadata service included, past the check made at registration.
- **Every address connected to is checked (optional ``guard``).** The policy is checked
  when a provider registers, but a name can be re-pointed afterwards (DNS rebinding).
  With a guard, every answer the resolver gives, for every host, is put to it; the guard
  returns why the addresses are refused (or None), and a refused answer raises
  ``EndpointRefused`` (an ``OSError``) before any connection is attempted. The whole
  answer is refused if any address in it is, as at registration.

  What bounds it: IP literals are not resolved (those were checked at registration and
  cannot change), and a good answer is reused for ``DNS_CACHE_TTL_S``: the guard runs on
  every resolution, so a good answer is reused for at most that long, and a refused one is
  never cached. A pooled keep-alive connection stays with the address it was opened to
  (which the guard passed). The check runs only on a cache miss: nothing is added per
  request.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Self
from urllib.parse import quote, urlsplit

from router_agent.core.endpoints import EndpointPolicy, check_endpoint
from router_agent.http_wire import Connection, header_map

log = logging.getLogger("router_agent")

DNS_CACHE_TTL_S = 300
"""How long a resolved answer is reused; with a guard, how long a good one may be reused."""

KEEPALIVE_S = 60.0
"""An idle pooled connection older than this is closed rather than reused."""

MAX_CACHED = 4096
"""Request heads (and their parsed URLs) kept."""

Guard = Callable[[str, list[str]], str | None]
"""``guard(host, addresses)``: why connecting to ``host`` at ``addresses`` is refused, or None.

``host`` is lower-cased, without a trailing dot; ``addresses`` are what it resolved to."""


@dataclass(slots=True)
class HttpResult:
    status: int
    body: bytes
    headers: Mapping[str, str]
    """Names in lower case; a repeated header's values joined by ", "."""


class EndpointRefused(OSError):
    """A host resolved to addresses the endpoint policy refuses; nothing was connected to.

    ``str()`` names the host and the policy, not the addresses (they may be internal, and
    the message reaches the caller); ``reason`` has the policy's full answer for logs.
    """

    def __init__(self, host: str, reason: str):
        super().__init__(errno.EACCES, f"{host!r} resolved to an address the endpoint policy does not allow")
        self.host = host
        self.reason = reason

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (type(self), (self.host, self.reason))


class InvalidURL(OSError):
    """A URL the client cannot call: not http(s), no host, or credentials in it."""


def endpoint_refusal(exc: BaseException) -> EndpointRefused | None:
    """The ``EndpointRefused`` an exception from a request is, if it is one."""
    return exc if isinstance(exc, EndpointRefused) else None


def policy_guard(policy: EndpointPolicy, trusted_hosts: Collection[str] = ()) -> Guard:
    """A guard that applies ``policy`` (through ``check_endpoint``) to every resolved answer.

    ``trusted_hosts`` (the hosts of config-defined providers) are not judged: config is the
    operator's word, and a cloud vendor's name may well resolve to addresses a strict
    policy would refuse. The scheme is not known when a name is resolved; the check is made
    as for the policy's first allowed scheme (a scheme it does not allow was refused at
    registration).
    """
    trusted = frozenset(h.lower().rstrip(".") for h in trusted_hosts)
    scheme = policy.allowed_schemes[0] if policy.allowed_schemes else "http"

    def guard(host: str, addresses: list[str]) -> str | None:
        host = host.lower().rstrip(".")
        if host in trusted:
            return None
        return check_endpoint(f"{scheme}://{host}/", policy, addresses)

    return guard


Resolver = Callable[[str, int], Awaitable[list[str]]]
"""``resolve(host, port)``: the addresses ``host`` resolves to, in the order to try them."""


async def system_resolve(host: str, port: int) -> list[str]:
    """The operating system's resolver (``getaddrinfo``), each address once, in its order."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def dial(loop: asyncio.AbstractEventLoop, factory: Callable[[], Connection], address: str, port: int,
               tls: ssl.SSLContext | None, server_name: str) -> Connection:
    """Open one connection to ``address`` (every connection the client makes goes through
    here, so a test can see where it dials)."""
    _, connection = await loop.create_connection(
        factory, address, port, ssl=tls, server_hostname=server_name if tls is not None else None)
    return connection


@dataclass(frozen=True, slots=True)
class _Target:
    """A URL as the client calls it, parsed once."""

    origin: tuple[str, str, int]  # the pool's key: scheme, host, port
    host: str  # lower case, no trailing dot: what is resolved, checked and named in TLS
    port: int
    tls: bool
    literal: bool  # an IP address: not resolved
    request_target: str  # path and query, percent-encoded
    host_header: str


def _parse_target(url: str) -> _Target:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidURL(errno.EINVAL, f"not a URL the client can call: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise InvalidURL(errno.EINVAL, f"only http and https URLs can be called, not {scheme!r}")
    if not parts.hostname:
        raise InvalidURL(errno.EINVAL, "the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise InvalidURL(errno.EINVAL, "credentials in a provider URL are not supported: configure its api key")
    host = parts.hostname.rstrip(".")
    default_port = 443 if scheme == "https" else 80
    port = port if port is not None else default_port
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    name = f"[{host}]" if literal is not None and literal.version == 6 else host
    path = quote(parts.path or "/", safe="/%:@!$&'()*+,;=~-._")
    query = quote(parts.query, safe="/%:@!$&'()*+,;=?~-._") if parts.query else ""
    return _Target(
        origin=(scheme, host, port), host=host, port=port, tls=scheme == "https", literal=literal is not None,
        request_target=f"{path}?{query}" if query else path,
        host_header=name if port == default_port else f"{name}:{port}",
    )


_FORBIDDEN = frozenset("\r\n\0")


def _head(method: str, target: _Target, headers: Mapping[str, str]) -> bytes:
    """The request line and headers, without the body's length and the blank line that ends them."""
    lines = [f"{method} {target.request_target} HTTP/1.1\r\nHost: {target.host_header}\r\n",
             "Accept-Encoding: gzip, deflate\r\n"]
    for name, value in headers.items():
        if not _FORBIDDEN.isdisjoint(name) or not _FORBIDDEN.isdisjoint(value) or ":" in name:
            # A header split by a line break would add headers (or a request) of its own.
            raise ValueError(f"header {name[:40]!r}: a line break, NUL or colon cannot be sent")
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines).encode()


class Exchange:
    """One request and its answer, used as ``async with``: entering sends the request and
    waits for the status and headers; ``read()`` takes the whole body, ``async for`` takes
    it as it arrives. Leaving hands the connection back to the pool when its answer was
    read to the end, else closes it."""

    __slots__ = ("_body", "_client", "_conn", "_fields", "_head", "_headers", "_target", "status")

    def __init__(self, client: HttpClient, target: _Target, head: bytes, body: bytes) -> None:
        self._client = client
        self._target = target
        self._head = head
        self._body = body
        self._conn: Connection | None = None
        self.status = 0
        self._fields: list[tuple[bytes, bytes]] = []
        self._headers: dict[str, str] | None = None

    async def __aenter__(self) -> Self:
        conn = await self._client._acquire(self._target)
        self._conn = conn
        try:
            conn.send(self._head + self._body if self._body else self._head)
            await conn.wait_headers()
        except BaseException:
            conn.abort()  # a cancelled or failed exchange leaves the connection in no known state
            raise
        self.status = conn.status  # type: ignore[assignment]
        self._fields = conn.fields
        return self

    @property
    def headers(self) -> Mapping[str, str]:
        """Names in lower case; a repeated header's values joined by ", " (decoded when first asked)."""
        if self._headers is None:
            self._headers = header_map(self._fields)
        return self._headers

    async def __aexit__(self, *exc_info: object) -> None:
        conn = self._conn
        if conn is not None:
            self._conn = None
            if exc_info[0] is None and conn.reusable:
                self._client._release(conn)
            else:
                conn.abort()

    async def read(self) -> bytes:
        return await self._conn.read_all()  # type: ignore[union-attr]

    def __aiter__(self) -> Exchange:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._conn.next_chunk()  # type: ignore[union-attr]
        if chunk is None:
            raise StopAsyncIteration
        return chunk


async def _whole(exchange: Exchange) -> HttpResult:
    async with exchange as response:
        return HttpResult(response.status, await response.read(), response.headers)


class HttpClient:
    """``post``/``get`` one request, no redirects followed; ``close`` the pool.

    ``guard``: checked against every DNS answer (see the module's docstring); None checks
    nothing. ``resolver``: how names are resolved (default: the system's), for tests.
    ``connect_timeout_s``: a connection (TLS included) not made within it fails the call
    as a ``TimeoutError``. ``read_timeout_s``: None sets no timer (the agent's per-attempt
    deadline bounds the call); set, a wait for the answer's next bytes longer than it
    fails the call as a ``TimeoutError``. ``tls``: the context for https (default: the
    system's trust store, names checked).
    """

    def __init__(
        self,
        guard: Guard | None = None,
        *,
        resolver: Resolver | None = None,
        connect_timeout_s: float | None = None,
        read_timeout_s: float | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._guard = guard
        self._resolve = resolver or system_resolve
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._heads: dict[tuple[object, ...], tuple[_Target, bytes]] = {}
        self._idle: dict[tuple[str, str, int], list[Connection]] = {}
        self._open: set[Connection] = set()
        self._dns: dict[str, tuple[list[str], float]] = {}
        self._tls = tls

    def _head_of(self, method: str, url: str, headers: Mapping[str, str]) -> tuple[_Target, bytes]:
        """The target and the head for ``url``, built and checked once per distinct request
        head (an adapter sends the same headers on every call to a deployment)."""
        key = (method, url, *headers.items())
        cached = self._heads.get(key)
        if cached is None:
            target = _parse_target(url)
            cached = (target, _head(method, target, headers))
            if len(self._heads) >= MAX_CACHED:  # URLs come from the registry; bounded anyway
                self._heads.clear()
            self._heads[key] = cached
        return cached

    def posting(self, url: str, body: bytes, headers: Mapping[str, str]) -> Exchange:
        """The POST as an ``Exchange`` (the answer unread, for a caller that reads it whole or
        streams it). Not a coroutine: a caller on the request path holds no frame of this
        for as long as the provider takes."""
        target, head = self._head_of("POST", url, headers)
        return Exchange(self, target, b"%sContent-Length: %d\r\n\r\n" % (head, len(body)), body)

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> HttpResult:
        return await _whole(self.posting(url, body, headers))

    async def get(self, url: str, headers: Mapping[str, str]) -> HttpResult:
        target, head = self._head_of("GET", url, headers)
        return await _whole(Exchange(self, target, head + b"\r\n", b""))

    def clear_dns_cache(self) -> None:
        """Forget every resolved answer (what the TTL does when it runs out)."""
        self._dns.clear()

    @property
    def connections(self) -> int:
        """Connections open now, idle or in use."""
        return len(self._open)

    async def close(self) -> None:
        for conn in list(self._open):
            conn.abort()
        self._idle.clear()

    # ------------------------------------------------------------------ the pool

    async def _acquire(self, target: _Target) -> Connection:
        idle = self._idle.get(target.origin)
        if idle:
            now = asyncio.get_running_loop().time()
            while idle:
                conn = idle.pop()  # the most recently used: the likeliest to be alive
                if not conn.closed and now - conn.idle_since < KEEPALIVE_S:
                    return conn
                conn.abort()
        return await self._connect(target)

    def _release(self, conn: Connection) -> None:
        conn.active = False
        now = asyncio.get_running_loop().time()
        conn.idle_since = now
        idle = self._idle.setdefault(conn.key, [])
        while idle and (idle[0].closed or now - idle[0].idle_since >= KEEPALIVE_S):
            idle.pop(0).abort()  # the longest idle: left over from a burst, not reused since
        idle.append(conn)

    async def _connect(self, target: _Target) -> Connection:
        loop = asyncio.get_running_loop()
        addresses = [target.host] if target.literal else await self._addresses(target)
        tls = self._tls_context() if target.tls else None

        def factory() -> Connection:
            return Connection(target.origin, loop, self._open, self._read_timeout_s)

        error: OSError = OSError(errno.EHOSTUNREACH, "no address to connect to")
        for address in addresses:
            try:
                async with asyncio.timeout(self._connect_timeout_s):  # None: no timer
                    return await dial(loop, factory, address, target.port, tls, target.host)
            except OSError as exc:  # refused, unreachable, TLS, timed out: try the next address
                error = exc
        raise error

    async def _addresses(self, target: _Target) -> list[str]:
        host = target.host
        now = asyncio.get_running_loop().time()
        cached = self._dns.get(host)
        if cached is not None and cached[1] > now:
            return cached[0]
        addresses = await self._resolve(host, target.port)
        if self._guard is not None:
            reason = self._guard(host, addresses)
            if reason is not None:
                log.warning("not connecting to %s: %s", host, reason)
                raise EndpointRefused(host, reason)
        if not addresses:
            raise OSError(errno.EHOSTUNREACH, f"{host!r} resolved to no address")
        self._dns[host] = (addresses, now + DNS_CACHE_TTL_S)
        return addresses

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
            self._tls.set_alpn_protocols(["http/1.1"])
        return self._tls
