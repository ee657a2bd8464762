"""The HTTP client on the hot path: one pooled aiohttp session per agent.

Why aiohttp and not httpx's default transport: measured on this machine with 500 requests
in flight against a 200 ms upstream, httpx 0.28's default transport managed 44 req/s
(encode/httpx#3215) against aiohttp's ~2,300. The pool is unbounded (``limit=0``) because
the agent's own concurrency limit is the bound that matters.

Two rules keep provider traffic inside the endpoint policy (``core/endpoints.py``):

- **No redirects.** Every request is sent with ``allow_redirects=False``; a 3xx comes back
  to the adapter as it is (a call fails, a probe fails). Following one would let an
  upstream send the prompt and the key (307/308 re-send the body) anywhere, the cloud
  metadata service included, past the check made at registration.
- **Every address connected to is checked (optional ``guard``).** The policy is checked
  when a provider registers, but a name can be re-pointed afterwards (DNS rebinding).
  With a guard, the connector's resolver asks it about every answer it gets, for every
  host; the guard returns why the addresses are refused (or None), and a refused answer
  raises ``EndpointRefused`` (an ``OSError``) before any connection is attempted. The
  whole answer is refused if any address in it is, as at registration.

  What bounds it: aiohttp does not resolve IP literals (those were checked at
  registration and cannot change), and it caches answers for ``DNS_CACHE_TTL_S``: the
  guard runs on every resolution, so a good answer is reused for at most that long, and a
  refused one is never cached. A pooled keep-alive connection stays with the address it
  was opened to (which the guard passed). The check runs only on a cache miss: nothing
  is added per request.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from router_agent.core.endpoints import EndpointPolicy, check_endpoint

log = logging.getLogger("router_agent")

DNS_CACHE_TTL_S = 300
"""How long aiohttp reuses a resolved answer; with a guard, how long a good one may be reused."""

Guard = Callable[[str, list[str]], str | None]
"""``guard(host, addresses)``: why connecting to ``host`` at ``addresses`` is refused, or None.

``host`` is lower-cased, without a trailing dot; ``addresses`` are what it resolved to."""


@dataclass(slots=True)
class HttpResult:
    status: int
    body: bytes
    headers: aiohttp.typedefs.LooseHeaders


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


def endpoint_refusal(exc: BaseException) -> EndpointRefused | None:
    """The ``EndpointRefused`` behind an exception from a request (aiohttp wraps it), if any."""
    if isinstance(exc, EndpointRefused):
        return exc
    if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(exc.os_error, EndpointRefused):
        return exc.os_error
    return None


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


class GuardedResolver(AbstractResolver):
    """Resolves with ``inner``, then lets ``guard`` refuse the answer (``EndpointRefused``)."""

    def __init__(self, guard: Guard, inner: AbstractResolver):
        self._guard = guard
        self._inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        name = host.lower().rstrip(".")
        reason = self._guard(name, [r["host"] for r in results])
        if reason is not None:
            log.warning("not connecting to %s: %s", name, reason)
            raise EndpointRefused(name, reason)
        return results

    async def close(self) -> None:
        await self._inner.close()


class HttpClient:
    """``post``/``get`` one request, no redirects followed; ``close`` the pool.

    ``guard``: checked against every DNS answer (see the module's docstring); None checks
    nothing. ``resolver``: the resolver the guard wraps (default: aiohttp's), for tests.
    """

    def __init__(
        self,
        guard: Guard | None = None,
        *,
        resolver: AbstractResolver | None = None,
        connect_timeout_s: float | None = None,
        read_timeout_s: float | None = None,
    ) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        """None: no timer (the agent's per-attempt deadline bounds the call). Set, a stalled
        connect or a gap between reads longer than it fails the call as a ``TimeoutError``."""
        self._guard = guard
        self._resolver = resolver
        self._own_resolver: AbstractResolver | None = None  # the connector closes only its own

    def _open(self) -> aiohttp.ClientSession:
        # Created lazily so that it binds to the running loop.
        if self._session is None:
            resolver = self._resolver
            if self._guard is not None:
                if resolver is None:
                    resolver = self._own_resolver = DefaultResolver()
                resolver = GuardedResolver(self._guard, resolver)
            connector = aiohttp.TCPConnector(
                limit=0, ttl_dns_cache=DNS_CACHE_TTL_S, keepalive_timeout=60, resolver=resolver
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                # No timers of its own: the agent's per-request deadline bounds every call,
                # and a second timer per request cost memory and CPU on the hot path.
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=None, sock_connect=self._connect_timeout_s, sock_read=self._read_timeout_s
                ),
                auto_decompress=True,
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    def posting(self, url: str, body: bytes, headers: dict[str, str]) -> Any:
        """The POST as aiohttp's own context manager (the response unread, for a caller that
        reads it whole or streams it), no redirects followed. Not a coroutine nor a context
        manager of ours: a caller on the request path holds no frame of this for as long as
        the provider takes."""
        return self._open().post(url, data=body, headers=headers, allow_redirects=False)

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> HttpResult:
        async with self.posting(url, body, headers) as response:
            return HttpResult(response.status, await response.read(), response.headers)

    async def get(self, url: str, headers: dict[str, str]) -> HttpResult:
        async with self._open().get(url, headers=headers, allow_redirects=False) as response:
            return HttpResult(response.status, await response.read(), response.headers)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._own_resolver is not None:
            await self._own_resolver.close()
            self._own_resolver = None
