"""check_endpoint(): the SSRF policy for URLs a provider_register may make the agent call.

Reasons are asserted on a key word, not their full text."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from router_agent.config import EndpointPolicy, load_config
from router_agent.core.endpoints import check_endpoint, endpoint_host


@pytest.fixture(scope="module")
def bundled() -> EndpointPolicy:
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("ROUTER_ENV", raising=False)  # the base files, no environment overlay
        return load_config().security.endpoints


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


# --------------------------------------------------------------------------- allowed by default


@pytest.mark.parametrize(
    "url, resolved",
    [
        ("http://127.0.0.1:8000/v1", None),
        ("http://localhost:11434/v1", ["127.0.0.1", "::1"]),
        ("https://api.openai.com/v1", None),
        ("https://api.openai.com/v1", ["104.18.6.192", "2606:4700::6812:6c0"]),
        ("http://10.1.2.3:8080/v1", None),
    ],
)
@pytest.mark.parametrize("which", ["bundled", "default"])
def test_ordinary_endpoints_are_allowed(bundled, which, url, resolved):
    policy = bundled if which == "bundled" else DEFAULT
    assert check_endpoint(url, policy, resolved) is None


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
    policy = EndpointPolicy(allowed_networks=["127.0.0.0/8"])
    assert check_endpoint("http://127.0.0.1:8000/v1", policy) is None
    assert check_endpoint("http://127.42.0.9/v1", policy) is None
    assert check_endpoint("http://[::ffff:127.0.0.1]/v1", policy) is None
    assert check_endpoint("http://localhost:8000/v1", policy, ["127.0.0.1"]) is None
    assert "allowed networks" in refused("http://10.0.0.1/v1", policy)
    assert "allowed networks" in refused("http://[::1]/v1", policy)
    assert "allowed networks" in refused("http://api.openai.com/v1", policy, ["104.18.6.192"])
    assert "10.0.0.1" in refused("http://localhost/v1", policy, ["127.0.0.1", "10.0.0.1"])


def test_denied_networks_apply_inside_allowed_networks():
    policy = EndpointPolicy(allowed_networks=["127.0.0.0/8"], denied_networks=["127.0.0.53/32"])
    assert "denied" in refused("http://127.0.0.53/", policy)
    assert check_endpoint("http://127.0.0.1/", policy) is None


def test_a_policy_with_a_malformed_network_is_rejected_when_built():
    with pytest.raises(ValidationError, match="not a network"):
        EndpointPolicy(denied_networks=["169.254.0.0/16", "metadata"])


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
