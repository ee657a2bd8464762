"""Endpoint policy: which URLs a ``provider_register`` may make the agent call.

Without it the bus could be used to make the agent fetch arbitrary URLs (SSRF): cloud
metadata services, link-local addresses, internal hosts. The check is pure; the caller
resolves host names (``resolved``) so that a name pointing at a denied address is refused
as well as a literal one.
"""

from __future__ import annotations

import fnmatch
import ipaddress
from collections.abc import Sequence
from typing import Protocol
from urllib.parse import urlsplit


class EndpointPolicy(Protocol):
    """The policy's settings (``security.endpoints`` in config satisfies it)."""

    allowed_schemes: Sequence[str]
    allowed_hosts: Sequence[str]
    allowed_networks: Sequence[str]
    denied_hosts: Sequence[str]
    denied_networks: Sequence[str]


def endpoint_host(url: str) -> str:
    """The host of a URL, lower-cased, without brackets; '' when there is none."""
    try:
        return (urlsplit(url).hostname or "").lower().rstrip(".")
    except ValueError:
        return ""


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
        return f"scheme {parts.scheme!r} is not allowed (allowed: {policy.allowed_schemes})"
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
    try:
        addresses.append(str(ipaddress.ip_address(host)))
    except ValueError:
        pass  # a name, not a literal address: judged by what it resolves to
    for address in addresses:
        reason = _check_address(address, policy)
        if reason:
            return reason
    return None


def _check_address(address: str, policy: EndpointPolicy) -> str | None:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return f"{address!r} is not an IP address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    for net in policy.denied_networks:
        if ip in ipaddress.ip_network(net, strict=False):
            return f"address {ip} is in denied network {net}"
    if ip.is_link_local:
        return f"address {ip} is link-local"
    if policy.allowed_networks and not any(
        ip in ipaddress.ip_network(net, strict=False) for net in policy.allowed_networks
    ):
        return f"address {ip} is not in the allowed networks"
    return None
