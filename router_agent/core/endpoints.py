"""Endpoint policy: which URLs a ``provider_register`` may make the agent call, and which
endpoints are trusted as ``local`` for privacy routing.

Without it the bus could be used to make the agent fetch arbitrary URLs (SSRF): cloud
metadata services, link-local addresses, internal hosts. The check is pure; the caller
resolves host names (``resolved``) so that a name pointing at a denied address is refused
as well as a literal one.

Theory of operation, for each address (the URL's literal one and every resolved one):

1. An IPv6 address that carries an IPv4 address (IPv4-mapped ``::ffff:a.b.c.d`` is judged
   as that IPv4 address; IPv4-compatible ``::a.b.c.d``, IPv4-translated ``::ffff:0:a.b.c.d``,
   NAT64 ``64:ff9b::/96`` and ``64:ff9b:1::/48``, 6to4 ``2002::/16`` and Teredo
   ``2001::/32`` also have the embedded address(es) checked): every one of these must pass.
2. Refused outright: ``denied_networks``, link-local, and "this host" (``0.0.0.0/8``, ``::``).
3. ``allowed_networks``, when not empty, is an allow list for the address itself.
4. An address that is not globally routable (loopback, RFC 1918, ULA, CGNAT, documentation
   and reserved ranges: Python's ``not is_global``) is refused unless it lies in
   ``private_networks_allowed``. Closed by default: a registration must not reach the
   agent's own host or internal network unless the operator says so.

Trust for privacy (``is_local``) is separate: an endpoint is local only when every address
it resolves to lies, as it is (no embedded address counts: NAT64, 6to4 and Teredo go
through a translator or relay), in the operator's ``local_networks``.
"""

from __future__ import annotations

import fnmatch
import ipaddress
from collections.abc import Iterable, Sequence
from typing import Protocol
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class EndpointPolicy(Protocol):
    """The policy's settings (``security.endpoints`` in config satisfies it)."""

    allowed_schemes: Sequence[str]
    allowed_hosts: Sequence[str]
    allowed_networks: Sequence[str]
    private_networks_allowed: Sequence[str]
    denied_hosts: Sequence[str]
    denied_networks: Sequence[str]


_THIS_HOST_V4 = ipaddress.ip_network("0.0.0.0/8")
_NAT64_WELL_KNOWN = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL_USE = ipaddress.ip_network("64:ff9b:1::/48")
_V4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")


def endpoint_host(url: str) -> str:
    """The host of a URL, lower-cased, without brackets; '' when there is none."""
    try:
        return (urlsplit(url).hostname or "").lower().rstrip(".")
    except ValueError:
        return ""


def endpoint_origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of a URL with the scheme's default port filled in; None when the
    URL has no host or is malformed. Two URLs with one origin reach the same server."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower().rstrip(".")
    if not host:
        return None
    return scheme, host, port if port is not None else {"http": 80, "https": 443}.get(scheme, 0)


def check_endpoint(url: str, policy: EndpointPolicy, resolved: list[str] | None = None) -> str | None:
    """Return why ``url`` is refused, or None when the policy allows it.

    ``resolved`` are the addresses the host name resolves to (the caller's DNS lookup);
    every one of them must pass, not just the first.
    """
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a bad port
    except ValueError as exc:
        return f"not a valid URL: {exc}"
    del port
    if parts.scheme not in policy.allowed_schemes:
        return f"scheme {parts.scheme!r} is not allowed (allowed: {list(policy.allowed_schemes)})"
    # "host." is the same host as "host" (fully qualified): compare without the dot.
    host = (parts.hostname or "").lower().rstrip(".")
    if not host:
        return "the URL has no host"
    if parts.username or parts.password:
        return "credentials inside the URL are not allowed; use api_key_env"
    if any(fnmatch.fnmatch(host, pattern.lower()) for pattern in policy.denied_hosts):
        return f"host {host!r} is denied by policy"
    if not any(fnmatch.fnmatch(host, pattern.lower()) for pattern in policy.allowed_hosts):
        return f"host {host!r} is not in the allowed hosts"
    addresses = list(resolved or [])
    literal = parse_address(host)
    if literal is not None:
        addresses.append(str(literal))
    for address in addresses:
        reason = _check_address(address, policy)
        if reason:
            return reason
    return None


def parse_address(text: str) -> IPAddress | None:
    """An IP address without its zone (``fe80::1%eth0``), IPv4-mapped IPv6 as IPv4; None
    when ``text`` is not an address."""
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        return ip.ipv4_mapped
    return ip


def embedded_ipv4(ip: IPAddress) -> list[tuple[ipaddress.IPv4Address, str]]:
    """The IPv4 addresses an IPv6 address carries, each with the name of its form.

    The local-use NAT64 prefix ``64:ff9b:1::/48`` may be cut at /48, /56, /64 or /96 (RFC
    6052 places the IPv4 address differently for each), so its candidates are all of those
    decodings except "0.0.0.0/8" ones (a layout that does not fit decodes to zeros); their
    form is "NAT64 local-use" and only the deny rules apply to them (``_check_address``).
    """
    if not isinstance(ip, ipaddress.IPv6Address):
        return []
    n = int(ip)
    low32 = ipaddress.IPv4Address(n & 0xFFFFFFFF)
    found: list[tuple[ipaddress.IPv4Address, str]] = []
    if n >> 32 == 0 and n > 1:
        found.append((low32, "IPv4-compatible"))
    if ip in _V4_TRANSLATED:
        found.append((low32, "IPv4-translated"))
    if ip in _NAT64_WELL_KNOWN:
        found.append((low32, "NAT64"))
    if ip.sixtofour is not None:
        found.append((ip.sixtofour, "6to4"))
    if ip.teredo is not None:
        server, client = ip.teredo
        found += [(server, "Teredo server"), (client, "Teredo client")]
    if ip in _NAT64_LOCAL_USE:
        decodings = [low32, *(_rfc6052(n, length) for length in (48, 56, 64))]
        found += [(v4, _SPECULATIVE) for v4 in dict.fromkeys(decodings) if v4 not in _THIS_HOST_V4]
    return found


_SPECULATIVE = "NAT64 local-use"


def _rfc6052(n: int, prefix_length: int) -> ipaddress.IPv4Address:
    """The IPv4 address behind a NAT64 prefix of ``prefix_length`` (32..64) bits: the 32 bits
    after the prefix, skipping the reserved octet at bits 64-71."""
    without_u = ((n >> 64) << 56) | (n & ((1 << 56) - 1))  # 120 bits
    return ipaddress.IPv4Address((without_u >> (120 - prefix_length - 32)) & 0xFFFFFFFF)


def _in_any(ip: IPAddress, networks: Iterable[str]) -> str | None:
    for net in networks:
        if ip in ipaddress.ip_network(net, strict=False):
            return net
    return None


def _is_public(ip: IPAddress) -> bool:
    # Python 3.11 counts the local-use NAT64 prefix as global; RFC 8215 makes it local.
    return ip.is_global and ip not in _NAT64_LOCAL_USE


def _check_address(address: str, policy: EndpointPolicy) -> str | None:
    ip = parse_address(address)
    if ip is None:
        return f"{address!r} is not an IP address"
    candidates = [(ip, ""), *embedded_ipv4(ip)]

    def what(candidate: IPAddress, form: str) -> str:
        return f"address {candidate}" if not form else f"address {ip} embeds {candidate} ({form}), which"

    for candidate, form in candidates:
        net = _in_any(candidate, policy.denied_networks)
        if net:
            return f"{what(candidate, form)} is in denied network {net}"
    for candidate, form in candidates:
        if candidate.is_link_local:
            return f"{what(candidate, form)} is link-local"
    definite = [(c, form) for c, form in candidates if form != _SPECULATIVE]
    for candidate, form in definite:
        if candidate.is_unspecified or candidate in _THIS_HOST_V4:
            return f"{what(candidate, form)} means this host"
    if policy.allowed_networks and not _in_any(ip, policy.allowed_networks):
        return f"address {ip} is not in the allowed networks"
    for candidate, form in definite:
        if not _is_public(candidate) and not _in_any(candidate, policy.private_networks_allowed):
            return (
                f"{what(candidate, form)} is not public (loopback or private); registrations may reach "
                "it only when security.endpoints.private_networks_allowed lists its network"
            )
    return None


def is_local(addresses: Iterable[str], local_networks: Sequence[str]) -> bool:
    """Whether every address lies in ``local_networks`` (and there is at least one)."""
    parsed = [parse_address(a) for a in addresses]
    return bool(parsed) and all(ip is not None and _in_any(ip, local_networks) for ip in parsed)
