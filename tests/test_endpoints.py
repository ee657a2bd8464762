"""check_endpoint(): the SSRF policy for URLs a provider_register may make the agent call;
is_local(): when a self-declared ``type: local`` endpoint is believed.

Reasons are asserted on a key word, not their full text."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from router_agent.config import EndpointPolicy, SecurityConfig, load_config
from router_agent.core.endpoints import (
    check_endpoint,
    embedded_ipv4,
    endpoint_host,
    endpoint_origin,
    is_local,
    parse_address,
)


@pytest.fixture(scope="module")
def bundled() -> EndpointPolicy:
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("ROUTER_ENV", raising=False)  # the base files, no environment overlay
        return load_config().security.endpoints


@pytest.fixture(scope="module")
def development() -> EndpointPolicy:
    return load_config(environment="development").security.endpoints


@pytest.fixture(scope="module")
def production() -> EndpointPolicy:
    return load_config(environment="production").security.endpoints


DEFAULT = EndpointPolicy()


def refused(url: str, policy: EndpointPolicy, resolved: list[str] | None = None) -> str:
    reason = check_endpoint(url, policy, resolved)
    assert reason is not None, f"{url} (resolved {resolved}) was allowed"
    assert isinstance(reason, str) and reason
    return reason


# ------------------------------------------------------------------ refusals, bundled policy


@pytest.mark.parametrize(
    "url, resolved, words",
    [
        ("http://169.254.169.254/latest/meta-data", None, ["169.254.169.254", "denied"]),
        ("http://[fe80::1]/", None, ["fe80::1", "denied"]),
        ("http://[fe80::1%25eth0]/", None, ["fe80::1", "denied"]),
        ("http://[::ffff:169.254.169.254]/", None, ["169.254.169.254", "denied"]),
        ("http://[::ffff:a9fe:a9fe]/", None, ["169.254.169.254", "denied"]),
        ("http://[fd00:ec2::254]/", None, ["fd00:ec2::254", "denied"]),
        ("http://100.100.100.200/", None, ["100.100.100.200", "denied"]),
        ("http://0.0.0.0:8000/", None, ["0.0.0.0", "denied"]),
        (
            "http://metadata.google.internal/computeMetadata/v1/",
            None,
            ["metadata.google.internal", "denied"],
        ),
        ("http://METADATA.Google.Internal/", None, ["metadata.google.internal", "denied"]),
        ("http://metadata/", None, ["metadata", "denied"]),
        # A harmless-looking name whose DNS answer points at the metadata service.
        ("http://innocent.example.org/v1", ["169.254.169.254"], ["169.254.169.254", "denied"]),
        # Every resolved address must pass, not only the first.
        (
            "http://innocent.example.org/v1",
            ["93.184.216.34", "169.254.169.254"],
            ["169.254.169.254"],
        ),
        ("http://innocent.example.org/v1", ["93.184.216.34", "fe80::1%eth0"], ["fe80::1"]),
        # A decimal-encoded IPv4 literal is judged by what the resolver makes of it.
        ("http://2852039166/", ["169.254.169.254"], ["169.254.169.254"]),
        ("http://innocent.example.org/", ["not-an-address"], ["not an ip address"]),
        # IPv4 carried inside IPv6 is checked too: each form of the metadata address.
        ("http://[::a9fe:a9fe]/", None, ["169.254.169.254", "ipv4-compatible", "denied"]),
        ("http://[::169.254.169.254]/", None, ["169.254.169.254", "denied"]),
        ("http://[::ffff:0:a9fe:a9fe]/", None, ["169.254.169.254", "ipv4-translated"]),
        ("http://[64:ff9b::a9fe:a9fe]/", None, ["169.254.169.254", "nat64", "denied"]),
        ("http://[64:ff9b::169.254.169.254]/", None, ["169.254.169.254", "nat64"]),
        ("http://[64:ff9b:1::a9fe:a9fe]/", None, ["169.254.169.254", "nat64"]),
        ("http://[64:ff9b:1:a9fe:a9:fe00::]/", None, ["169.254.169.254", "nat64"]),  # the /48 layout
        ("http://[2002:a9fe:a9fe::1]/", None, ["169.254.169.254", "6to4", "denied"]),
        ("http://[2001:0:4136:e378:8000:63bf:5601:5601]/", None, ["169.254.169.254", "teredo client"]),
        ("http://[2001:0:a9fe:a9fe::1]/", None, ["169.254.169.254", "teredo server"]),
        ("http://[64:ff9b::6464:64c8]/", None, ["100.100.100.200", "denied"]),  # Alibaba's, over NAT64
        ("http://name.example/", ["2002:a9fe:a9fe::1"], ["169.254.169.254"]),  # and for resolved names
        ("http://[::]/", None, ["this host"]),
        ("http://[::ffff:0.0.0.0]:8000/", None, ["0.0.0.0"]),
        ("http://0.1.2.3:8000/", None, ["this host"]),
        ("file:///etc/passwd", None, ["scheme", "file"]),
        ("gopher://127.0.0.1:70/_GET", None, ["scheme", "gopher"]),
        ("ftp://127.0.0.1/", None, ["scheme", "ftp"]),
        ("http://user:secret@127.0.0.1:8000/v1", None, ["credentials"]),
        ("http://token@127.0.0.1:8000/v1", None, ["credentials"]),
        ("http:///v1", None, ["no host"]),
        ("http://127.0.0.1:99999/v1", None, ["port"]),
        ("http://127.0.0.1:eighty/v1", None, ["port"]),
    ],
)
def test_bundled_policy_refuses_with_a_meaningful_reason(bundled, url, resolved, words):
    reason = refused(url, bundled, resolved).lower()
    for word in words:
        assert word.lower() in reason


def test_credentials_are_never_echoed_in_the_reason(bundled):
    assert "secret" not in refused("http://user:secret@127.0.0.1:8000/v1", bundled)


def test_a_trailing_dot_does_not_escape_denied_hosts(bundled):
    url = "http://metadata.google.internal./computeMetadata/v1/"
    reason = refused(url, bundled, ["10.20.30.40"])
    assert "denied" in reason


# --------------------------------------------------------------------------- public, private


@pytest.mark.parametrize(
    "url, resolved",
    [
        ("https://api.openai.com/v1", None),
        ("https://api.openai.com/v1", ["104.18.6.192", "2606:4700::6812:6c0"]),
        ("http://8.8.8.8:8080/v1", None),
        ("http://[2002:808:808::1]/v1", None),  # 6to4 of a public address
    ],
)
@pytest.mark.parametrize("which", ["bundled", "default", "development", "production"])
def test_public_endpoints_are_allowed(request, which, url, resolved):
    policy = DEFAULT if which == "default" else request.getfixturevalue(which)
    assert check_endpoint(url, policy, resolved) is None


PRIVATE = [
    ("http://127.0.0.1:8000/v1", None),
    ("http://localhost:11434/v1", ["127.0.0.1", "::1"]),
    ("http://[::1]:8000/v1", None),
    ("http://10.1.2.3:8080/v1", None),
    ("http://172.20.0.5:8000/v1", None),
    ("http://192.168.1.10/v1", None),
    ("http://[fd12:3456::1]/v1", None),
    ("http://vllm.lab.internal/v1", ["10.20.30.40"]),
]


@pytest.mark.parametrize("url, resolved", PRIVATE)
@pytest.mark.parametrize("which", ["bundled", "default", "production"])
def test_loopback_and_private_networks_are_closed_unless_listed(request, which, url, resolved):
    policy = DEFAULT if which == "default" else request.getfixturevalue(which)
    reason = refused(url, policy, resolved)
    assert "not public" in reason and "private_networks_allowed" in reason


@pytest.mark.parametrize("url, resolved", PRIVATE)
def test_the_development_overlay_opens_loopback_and_private_networks(development, url, resolved):
    assert check_endpoint(url, development, resolved) is None


@pytest.mark.parametrize(
    "url",
    ["http://[::7f00:1]:8000/", "http://[64:ff9b::a00:1]/", "http://[2002:a00:1::1]/", "http://100.64.0.1/",
     "http://[64:ff9b:1::808:808]/"],
)
def test_private_addresses_in_other_forms_are_closed_too(bundled, url):
    assert "not public" in refused(url, bundled)


def test_private_networks_allowed_opens_only_what_it_lists():
    policy = EndpointPolicy(private_networks_allowed=["10.20.0.0/16"])
    assert check_endpoint("http://10.20.3.4/v1", policy) is None
    assert check_endpoint("http://lab.example/v1", policy, ["10.20.3.4"]) is None
    assert "not public" in refused("http://10.21.3.4/v1", policy)
    assert "not public" in refused("http://127.0.0.1/v1", policy)
    assert "10.21.0.1" in refused("http://lab.example/v1", policy, ["10.20.3.4", "10.21.0.1"])


def test_private_networks_allowed_never_opens_link_local_or_denied_networks():
    policy = EndpointPolicy(private_networks_allowed=["0.0.0.0/0", "::/0"])
    assert "denied" in refused("http://169.254.169.254/", policy)
    assert "link-local" in refused("http://[fe80::1]/", EndpointPolicy(denied_networks=[], private_networks_allowed=["::/0"]))
    assert "this host" in refused("http://0.0.0.0:8000/", EndpointPolicy(denied_networks=[], private_networks_allowed=["0.0.0.0/0"]))


# --------------------------------------------------------------------------- hand-built policies


def test_link_local_is_refused_even_when_not_in_denied_networks():
    policy = EndpointPolicy(denied_networks=[])
    assert "link-local" in refused("http://169.254.169.254/", policy)
    assert "link-local" in refused("http://[fe80::1]/", policy)
    assert "link-local" in refused("http://name.example/", policy, ["169.254.10.10"])


def test_a_hand_built_denied_network_is_enforced_for_literals_and_resolved_names():
    policy = EndpointPolicy(denied_networks=["10.0.0.0/8"])
    assert "10.0.0.0/8" in refused("http://10.9.8.7/", policy)
    assert "10.0.0.0/8" in refused("http://internal.example/", policy, ["10.9.8.7"])
    assert "10.0.0.0/8" in refused("http://[::ffff:10.9.8.7]/", policy)
    assert check_endpoint("http://11.0.0.1/", policy) is None


def test_allowed_schemes_restrict_the_scheme():
    policy = EndpointPolicy(allowed_schemes=["https"])
    assert "scheme" in refused("http://api.example.com/", policy)
    assert check_endpoint("https://api.example.com/", policy) is None


def test_allowed_hosts_pattern_admits_subdomains_only():
    policy = EndpointPolicy(allowed_hosts=["*.example.com"])
    assert check_endpoint("https://api.example.com/v1", policy) is None
    assert check_endpoint("https://API.Example.COM/v1", policy) is None
    assert check_endpoint("https://a.b.example.com/v1", policy) is None
    for url in (
        "https://example.com/v1",
        "https://evil-example.com/v1",
        "https://api.example.com.evil.org/v1",
        "https://127.0.0.1/v1",
    ):
        assert "allowed hosts" in refused(url, policy)


def test_denied_hosts_win_over_allowed_hosts():
    policy = EndpointPolicy(
        allowed_hosts=["*.example.com"], denied_hosts=["*.internal.example.com"]
    )
    assert "denied" in refused("https://db.internal.example.com/", policy)
    assert check_endpoint("https://api.example.com/", policy) is None


def test_an_allowed_host_still_has_to_resolve_to_an_allowed_address():
    policy = EndpointPolicy(allowed_hosts=["*.example.com"])
    assert "denied" in refused("https://api.example.com/", policy, ["169.254.169.254"])


def test_allowed_networks_restrict_to_loopback():
    # allowed_networks restricts; opening a non-public network is private_networks_allowed's job.
    assert "not public" in refused("http://127.0.0.1:8000/v1", EndpointPolicy(allowed_networks=["127.0.0.0/8"]))
    policy = EndpointPolicy(allowed_networks=["127.0.0.0/8"], private_networks_allowed=["127.0.0.0/8", "10.0.0.0/8"])
    assert check_endpoint("http://127.0.0.1:8000/v1", policy) is None
    assert check_endpoint("http://127.42.0.9/v1", policy) is None
    assert check_endpoint("http://[::ffff:127.0.0.1]/v1", policy) is None
    assert check_endpoint("http://localhost:8000/v1", policy, ["127.0.0.1"]) is None
    assert "allowed networks" in refused("http://10.0.0.1/v1", policy)
    assert "allowed networks" in refused("http://[::1]/v1", policy)
    assert "allowed networks" in refused("http://api.openai.com/v1", policy, ["104.18.6.192"])
    assert "10.0.0.1" in refused("http://localhost/v1", policy, ["127.0.0.1", "10.0.0.1"])


def test_denied_networks_apply_inside_allowed_networks():
    policy = EndpointPolicy(
        allowed_networks=["127.0.0.0/8"], denied_networks=["127.0.0.53/32"], private_networks_allowed=["127.0.0.0/8"]
    )
    assert "denied" in refused("http://127.0.0.53/", policy)
    assert check_endpoint("http://127.0.0.1/", policy) is None


def test_a_policy_with_a_malformed_network_is_rejected_when_built():
    with pytest.raises(ValidationError, match="not a network"):
        EndpointPolicy(denied_networks=["169.254.0.0/16", "metadata"])
    with pytest.raises(ValidationError, match="not a network"):
        EndpointPolicy(private_networks_allowed=["lab"])
    with pytest.raises(ValidationError, match="local_networks: '10.0.0.0/33' is not a network"):
        SecurityConfig(local_networks=["10.0.0.0/33"])


# --------------------------------------------------------------------------- embedded IPv4


@pytest.mark.parametrize(
    "address, found",
    [
        ("::a9fe:a9fe", [("169.254.169.254", "IPv4-compatible")]),
        ("::ffff:0:a00:1", [("10.0.0.1", "IPv4-translated")]),
        ("64:ff9b::a00:1", [("10.0.0.1", "NAT64")]),
        ("2002:a00:1::5", [("10.0.0.1", "6to4")]),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", [("65.54.227.120", "Teredo server"), ("192.0.2.45", "Teredo client")]),
        ("::1", []),
        ("::", []),
        ("2606:4700::6812:6c0", []),
    ],
)
def test_embedded_ipv4_is_found_in_each_form(address, found):
    assert [(str(ip), form) for ip, form in embedded_ipv4(parse_address(address))] == found


def test_an_ipv4_mapped_address_is_judged_as_ipv4():
    assert str(parse_address("::ffff:10.0.0.1")) == "10.0.0.1"
    assert str(parse_address("fe80::1%eth0")) == "fe80::1"
    assert parse_address("example.com") is None


# --------------------------------------------------------------------------- is_local


LOCAL = SecurityConfig().local_networks


@pytest.mark.parametrize(
    "addresses, local",
    [
        (["127.0.0.1"], True),
        (["127.0.0.1", "::1"], True),
        (["10.1.2.3", "192.168.0.9", "172.31.255.1", "fd00::5"], True),
        (["::ffff:10.1.2.3"], True),
        (["10.1.2.3", "8.8.8.8"], False),  # every address must be local
        (["104.18.6.192"], False),
        (["100.64.0.1"], False),  # CGNAT is someone else's network
        (["64:ff9b::a00:1"], False),  # through a NAT64 translator: not local
        (["2002:a00:1::1"], False),
        (["169.254.1.1"], False),
        ([], False),
        (["not-an-address"], False),
    ],
)
def test_a_local_claim_holds_only_when_every_address_is_in_local_networks(addresses, local):
    assert is_local(addresses, LOCAL) is local


def test_local_networks_are_the_operators_to_choose():
    assert is_local(["127.0.0.1"], ["10.0.0.0/8"]) is False
    assert is_local(["100.64.3.4"], ["100.64.0.0/10"]) is True


# --------------------------------------------------------------------------- endpoint_origin


@pytest.mark.parametrize(
    "a, b, same",
    [
        ("https://api.openai.com/v1", "https://API.openai.com:443/v2/", True),
        ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000", True),
        ("https://api.openai.com/v1", "http://api.openai.com/v1", False),
        ("https://api.openai.com/v1", "https://api.openai.com.evil.org/v1", False),
        ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8001/v1", False),
    ],
)
def test_endpoint_origin_compares_scheme_host_and_port(a, b, same):
    assert (endpoint_origin(a) == endpoint_origin(b)) is same


def test_endpoint_origin_of_a_malformed_url_is_none():
    assert endpoint_origin("http://[not-closed/") is None
    assert endpoint_origin("http:///v1") is None


# --------------------------------------------------------------------------- endpoint_host


@pytest.mark.parametrize(
    "url, host",
    [
        ("http://API.Example.com:443/v1", "api.example.com"),
        ("http://[FE80::1]:8080/", "fe80::1"),
        ("http://u:p@h.example/", "h.example"),
        ("file:///etc/passwd", ""),
        ("http://[not-closed/", ""),
    ],
)
def test_endpoint_host_is_lower_cased_unbracketed_or_empty(url, host):
    assert endpoint_host(url) == host
