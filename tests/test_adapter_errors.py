"""Every failure class, from every adapter, over real HTTP: the typed code, the retryable and
fallback flags, Retry-After and quota headers, timeouts, refused connections, and a key that
never appears in an error message (even when the upstream echoes it)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from router_agent.http import HttpClient
from router_agent.providers import ADAPTERS
from router_agent.providers.base import ProviderError
from router_agent.providers.errors import parse_duration, parse_retry_after
from tests.upstream import Reply, Upstream, deployment, request

KEY = "sk-proj-LEAKCHECK0123456789abcdefghijklmnopqrstuv"
BASE = {"openai": "/v1", "anthropic": "/v1", "gemini": "/v1beta", "ollama": ""}


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    server = await Upstream.start([Reply()])
    yield server
    await server.close()


async def call(api: str, base_url: str, *, stream: bool = False, http: HttpClient | None = None) -> ProviderError:
    """Run one call (or stream) that must fail; the error it raised."""
    own = http is None
    client = http or HttpClient()
    adapter = ADAPTERS[api](client)
    dep = deployment(base_url + BASE[api], api)
    try:
        with pytest.raises(ProviderError) as caught:
            if stream:
                async for _ in adapter.stream(request(), dep, KEY):
                    pass
            else:
                await adapter.complete(request(), dep, KEY)
    finally:
        if own:
            await client.close()
    assert KEY not in caught.value.message
    return caught.value


# (api, status, body, headers) -> (code, retryable, fallback)
CASES = [
    ("openai", 400, {"error": {"message": "This model's maximum context length is 8192 tokens. However, your "
                               "messages resulted in 9000 tokens.", "type": "invalid_request_error",
                               "param": "messages", "code": "context_length_exceeded"}},
     ("context_length_exceeded", False, True)),
    ("openai", 400, {"error": {"message": "Invalid value for 'tool_choice'", "type": "invalid_request_error",
                               "param": "tool_choice", "code": None}}, ("bad_request", False, False)),
    ("openai", 400, {"error": {"message": "The response was filtered due to the prompt triggering content "
                               "management policy.", "type": None, "param": "prompt", "code": "content_filter"}},
     ("content_filtered", False, False)),
    ("openai", 400, {"error": {"message": "Unsupported parameter: 'seed' is not supported with this model.",
                               "type": "invalid_request_error", "code": "unsupported_parameter"}},
     ("bad_request", False, True)),
    ("openai", 401, {"error": {"message": f"Incorrect API key provided: {KEY}.", "type": "invalid_request_error",
                               "code": "invalid_api_key"}}, ("auth_error", False, True)),
    ("openai", 404, {"error": {"message": "The model `gpt-9` does not exist", "type": "invalid_request_error",
                               "code": "model_not_found"}}, ("not_found", False, True)),
    ("openai", 429, {"error": {"message": "You exceeded your current quota", "type": "insufficient_quota",
                               "code": "insufficient_quota"}}, ("rate_limited", False, True)),
    ("openai", 500, {"error": {"message": "The server had an error", "type": "server_error"}},
     ("server_error", True, True)),
    ("openai", 503, b"upstream connect error", ("overloaded", True, True)),
    ("openai", 504, b"gateway timeout", ("timeout", True, True)),
    ("openai", 408, b"request timeout", ("timeout", True, True)),
    ("anthropic", 400, {"type": "error", "error": {"type": "invalid_request_error",
                                                   "message": "prompt is too long: 250000 tokens > 200000 maximum"}},
     ("context_length_exceeded", False, True)),
    ("anthropic", 400, {"type": "error", "error": {"type": "invalid_request_error",
                                                   "message": "`temperature` is deprecated for this model."}},
     ("bad_request", False, True)),
    ("anthropic", 401, {"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}},
     ("auth_error", False, True)),
    ("anthropic", 403, {"type": "error", "error": {"type": "permission_error", "message": "no access"}},
     ("auth_error", False, True)),
    ("anthropic", 413, {"type": "error", "error": {"type": "request_too_large", "message": "too large"}},
     ("bad_request", False, False)),
    ("anthropic", 529, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
     ("overloaded", True, True)),
    ("anthropic", 500, {"type": "error", "error": {"type": "api_error", "message": "Internal server error"}},
     ("server_error", True, True)),
    ("gemini", 400, {"error": {"code": 400, "message": "The input token count (1200000) exceeds the maximum number "
                               "of tokens allowed (1048576).", "status": "INVALID_ARGUMENT"}},
     ("context_length_exceeded", False, True)),
    ("gemini", 400, {"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.",
                               "status": "INVALID_ARGUMENT", "details": [
                                   {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                                    "domain": "googleapis.com"}]}}, ("auth_error", False, True)),
    ("gemini", 429, {"error": {"code": 429, "message": "Resource has been exhausted (e.g. check quota).",
                               "status": "RESOURCE_EXHAUSTED"}}, ("rate_limited", True, True)),
    ("gemini", 404, {"error": {"code": 404, "message": "models/x is not found", "status": "NOT_FOUND"}},
     ("not_found", False, True)),
    ("gemini", 503, {"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}},
     ("overloaded", True, True)),
    ("ollama", 404, {"error": "model 'llama9' not found, try pulling it first"}, ("not_found", False, True)),
    ("ollama", 400, {"error": "invalid options"}, ("bad_request", False, False)),
    ("ollama", 500, {"error": "llama runner process has terminated"}, ("server_error", True, True)),
]


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize(("api", "status", "body", "expected"), CASES,
                         ids=[f"{c[0]}-{c[1]}-{i}" for i, c in enumerate(CASES)])
async def test_each_vendor_error_is_classified(upstream, api, status, body, expected, stream) -> None:
    upstream.script(Reply(status=status, body=body))
    error = await call(api, upstream.url, stream=stream)
    assert (error.code, error.retryable, error.fallback) == expected, error.message
    assert error.status == status


@pytest.mark.parametrize("api", sorted(ADAPTERS))
async def test_an_echoed_key_never_reaches_the_message(upstream, api) -> None:
    upstream.script(Reply(status=400, body={"error": {"message": f"bad request for key {KEY} in header"}}))
    error = await call(api, upstream.url)
    assert error.code == "bad_request" and "bad request for key" in error.message  # redacted, not dropped


async def test_retry_after_and_openai_quota_headers(upstream) -> None:
    upstream.script(Reply(status=429, body={"error": {"message": "Rate limit reached", "type": "requests",
                                                      "code": "rate_limit_exceeded"}},
                          headers={"retry-after": "2", "x-ratelimit-remaining-requests": "0",
                                   "x-ratelimit-remaining-tokens": "1500", "x-ratelimit-reset-requests": "6m0s"}))
    error = await call("openai", upstream.url)
    assert (error.code, error.retryable, error.retry_after_s) == ("rate_limited", True, 2.0)
    assert (error.remaining_requests, error.remaining_tokens) == (0, 1500)


async def test_without_retry_after_the_reset_of_the_exhausted_quota_is_used(upstream) -> None:
    upstream.script(Reply(status=429, body=b"{}", headers={
        "x-ratelimit-remaining-requests": "10", "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "1m30s"}))
    error = await call("openai", upstream.url)
    assert error.retry_after_s == 90.0


async def test_anthropic_rate_limit_headers(upstream) -> None:
    reset = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    upstream.script(Reply(status=429, body={"type": "error", "error": {"type": "rate_limit_error", "message": "slow"}},
                          headers={"anthropic-ratelimit-requests-remaining": "0",
                                   "anthropic-ratelimit-requests-reset": reset,
                                   "anthropic-ratelimit-tokens-remaining": "5000"}))
    error = await call("anthropic", upstream.url)
    assert (error.code, error.remaining_requests, error.remaining_tokens) == ("rate_limited", 0, 5000)
    assert error.retry_after_s is not None and 3000 < error.retry_after_s <= 3600


def test_retry_after_parsing() -> None:
    now = 1_700_000_000.0
    date = format_datetime(datetime.fromtimestamp(now + 120, UTC), usegmt=True)
    assert parse_retry_after(date, now=now) == 120.0
    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after("999999") == 3600.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
    assert parse_retry_after("nan") is None
    assert [parse_duration(v) for v in ("20ms", "1s", "6m0s", "2m3.5s", "", "6 minutes")] == [
        0.02, 1.0, 360.0, 123.5, None, None]


@pytest.mark.parametrize("api", sorted(ADAPTERS))
async def test_a_redirect_is_not_followed(upstream, api) -> None:
    upstream.script(Reply(status=307, body=b"", headers={"location": "http://169.254.169.254/latest"}))
    error = await call(api, upstream.url)
    assert (error.code, error.retryable, error.fallback, error.status) == ("provider_error", False, True, 307)
    assert len(upstream.seen) == 1


@pytest.mark.parametrize("api", sorted(ADAPTERS))
async def test_an_unreadable_answer_is_a_server_error(upstream, api) -> None:
    upstream.script(Reply(body=b"<html>gateway</html>"))
    error = await call(api, upstream.url)
    assert (error.code, error.retryable) == ("server_error", True)


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize("api", sorted(ADAPTERS))
async def test_no_answer_within_the_read_timeout_is_a_timeout(upstream, api, stream) -> None:
    upstream.script(Reply(hang_before_headers=True))
    http = HttpClient(read_timeout_s=0.05)
    try:
        error = await call(api, upstream.url, stream=stream, http=http)
    finally:
        await http.close()
    assert (error.code, error.retryable, error.fallback) == ("timeout", True, True)


async def test_a_stream_that_stalls_mid_way_times_out_after_what_it_delivered(upstream) -> None:
    upstream.script(Reply(chunks=[b'data: {"choices": [{"index": 0, "delta": {"content": "Hi"}}]}\n\n'], hang=True,
                          headers={"content-type": "text/event-stream"}))
    http = HttpClient(read_timeout_s=0.05)
    events = []
    try:
        with pytest.raises(ProviderError) as caught:
            async for event in ADAPTERS["openai"](http).stream(request(), deployment(upstream.url + "/v1", "openai"),
                                                               KEY):
                events.append(event)
    finally:
        await http.close()
    assert len(events) == 1 and caught.value.code == "timeout"


@pytest.mark.parametrize("api", sorted(ADAPTERS))
async def test_a_refused_connection_is_a_connection_error(api) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    error = await call(api, f"http://127.0.0.1:{port}")
    assert (error.code, error.retryable, error.fallback) == ("connection_error", True, True)
    assert "127.0.0.1" not in error.message  # the exception's type, not its OS text
