"""The HTTP edge against hostile upstreams: redirects, DNS rebinding, secrets echoed back.

Real aiohttp servers on 127.0.0.1; a stub resolver stands in for DNS (a name that first
resolves to an allowed address and later to the metadata service), and the connections
the client opens are recorded to show that a refused address is never dialled.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import msgspec
import pytest
from aiohttp import web

from router_agent import http as http_module
from router_agent.config import EndpointPolicy
from router_agent.core.model import Deployment
from router_agent.http import EndpointRefused, HttpClient, policy_guard
from router_agent.providers.base import ProviderError
from router_agent.providers.openai import OpenAIAdapter
from signals import ChatMessage, LlmRequest

REDIRECTS = [301, 302, 303, 307, 308]
METADATA = "169.254.169.254"
KEY = "sk-live-4f9Qx2LmZ7pR1vT8kW3nB6yH0cJ5dS"

# ------------------------------------------------------------------ servers


@dataclass
class Server:
    url: str
    port: int
    hits: list[tuple[str, str, bytes]] = field(default_factory=list)


Handler = Callable[[web.Request, Server], Awaitable[web.StreamResponse]]


async def _serve(handler: Handler) -> tuple[web.AppRunner, Server]:
    server = Server(url="", port=0)

    async def handle(request: web.Request) -> web.StreamResponse:
        server.hits.append((request.method, request.path, await request.read()))
        return await handler(request, server)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.port = runner.addresses[0][1]
    server.url = f"http://127.0.0.1:{server.port}"
    return runner, server


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[Server]]]:
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> Server:
        runner, server = await _serve(handler)
        runners.append(runner)
        return server

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def client() -> AsyncIterator[HttpClient]:
    http = HttpClient()
    yield http
    await http.close()


def _chat_ok() -> web.Response:
    body = {
        "choices": [{"message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1},
    }
    response = web.json_response(body)
    response.force_close()  # every call opens a new connection, so it resolves the name again
    return response


async def answer_ok(request: web.Request, server: Server) -> web.StreamResponse:
    if request.path.endswith("/models"):
        response = web.json_response({"object": "list", "data": []})
        response.force_close()
        return response
    return _chat_ok()


def deployment(base_url: str) -> Deployment:
    return Deployment(provider="p", model="m", model_id="m", api="openai", type="local", base_url=base_url)


def request() -> LlmRequest:
    return LlmRequest(request_id="r1", agent_id="tester",
                      messages=[ChatMessage(role="user", content="the secret prompt")])


# ------------------------------------------------------------------ 4. redirects are not followed


@pytest.fixture
async def target(serve: Callable[[Handler], Awaitable[Server]]) -> Server:
    """Where a redirect points; it must never be hit."""
    return await serve(answer_ok)


def redirecting(status: int, target: Server) -> Handler:
    async def handle(request: web.Request, server: Server) -> web.StreamResponse:
        return web.Response(status=status, headers={"Location": f"{target.url}{request.path}"})

    return handle


@pytest.mark.parametrize("status", REDIRECTS)
async def test_a_call_does_not_follow_a_redirect(
    status: int, serve: Callable[[Handler], Awaitable[Server]], target: Server, client: HttpClient,
) -> None:
    upstream = await serve(redirecting(status, target))
    with pytest.raises(ProviderError) as caught:
        await OpenAIAdapter(client).complete(request(), deployment(f"{upstream.url}/v1"), KEY)
    error = caught.value
    assert error.retryable is False
    assert error.status == status
    assert "redirect" in error.message and "not followed" in error.message
    assert len(upstream.hits) == 1
    assert target.hits == []  # the prompt (and the key) went nowhere else


@pytest.mark.parametrize("status", REDIRECTS)
async def test_a_probe_does_not_follow_a_redirect(
    status: int, serve: Callable[[Handler], Awaitable[Server]], target: Server, client: HttpClient,
) -> None:
    upstream = await serve(redirecting(status, target))
    ok, detail, _ = await OpenAIAdapter(client).probe(f"{upstream.url}/v1", KEY)
    assert ok is False
    assert "redirect" in detail and "not followed" in detail
    assert target.hits == []


@pytest.mark.parametrize("status", REDIRECTS)
async def test_the_client_hands_back_a_redirect_unfollowed(
    status: int, serve: Callable[[Handler], Awaitable[Server]], target: Server, client: HttpClient,
) -> None:
    upstream = await serve(redirecting(status, target))
    posted = await client.post(f"{upstream.url}/x", b"{}", {})
    got = await client.get(f"{upstream.url}/y", {})
    assert posted.status == got.status == status
    assert target.hits == []


async def test_a_redirect_to_the_metadata_service_is_not_followed(
    serve: Callable[[Handler], Awaitable[Server]], client: HttpClient, dials: list[str],
) -> None:
    async def handle(request: web.Request, server: Server) -> web.StreamResponse:
        return web.Response(status=307, headers={"Location": f"http://{METADATA}/latest/meta-data/"})

    upstream = await serve(handle)
    with pytest.raises(ProviderError, match="not followed"):
        await OpenAIAdapter(client).complete(request(), deployment(f"{upstream.url}/v1"), KEY)
    assert METADATA not in dials


# ------------------------------------------------------------------ 5. DNS rebinding


class StubResolver:
    """Answers each lookup with the next address list in ``answers`` (the last repeats)."""

    def __init__(self, answers: list[list[str]]) -> None:
        self.answers = answers
        self.lookups: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        return self.answers[min(len(self.lookups), len(self.answers)) - 1]


@pytest.fixture
def dials(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every address the client connects to, in order; the metadata service is never dialled."""
    seen: list[str] = []
    real = http_module.dial

    async def recording(loop, factory, address, *args):  # type: ignore[no-untyped-def]
        seen.append(address)
        if address == METADATA:  # a regression must not reach a real metadata service
            raise OSError(113, "the test does not let anything dial the metadata service")
        return await real(loop, factory, address, *args)

    monkeypatch.setattr(http_module, "dial", recording)
    return seen


POLICY = EndpointPolicy(private_networks_allowed=["127.0.0.0/8"])  # 169.254.0.0/16 stays denied


def forget_dns(http: HttpClient) -> None:
    """What the cache TTL does when it runs out: the next call resolves the name again."""
    http.clear_dns_cache()


async def test_a_name_rebound_to_a_denied_address_is_refused_before_connecting(
    serve: Callable[[Handler], Awaitable[Server]], dials: list[str],
) -> None:
    upstream = await serve(answer_ok)
    stub = StubResolver([["127.0.0.1"], [METADATA]])
    http = HttpClient(guard=policy_guard(POLICY, trusted_hosts=set()), resolver=stub)
    adapter = OpenAIAdapter(http)
    dep = deployment(f"http://rebind.test:{upstream.port}/v1")
    try:
        first = await adapter.complete(request(), dep, None)  # allowed: 127.0.0.1
        assert first.content == "hi"
        forget_dns(http)
        with pytest.raises(ProviderError) as caught:
            await adapter.complete(request(), dep, None)
    finally:
        await http.close()
    error = caught.value
    assert error.code == "connection_error"
    assert error.retryable is True  # this provider is unusable; another one may answer
    assert "endpoint policy" in error.message and "rebind.test" in error.message
    assert METADATA not in error.message  # names the policy, not the address list
    assert stub.lookups == ["rebind.test", "rebind.test"]
    assert dials == ["127.0.0.1"]  # the metadata service was never dialled
    assert len(upstream.hits) == 1


async def test_a_refused_probe_names_the_policy(dials: list[str]) -> None:
    stub = StubResolver([[METADATA]])
    http = HttpClient(guard=policy_guard(POLICY, trusted_hosts=set()), resolver=stub)
    try:
        ok, detail, emulated = await OpenAIAdapter(http).probe("http://rebind.test:9/v1", None)
    finally:
        await http.close()
    assert (ok, emulated) == (False, False)
    assert "endpoint policy" in detail and METADATA not in detail
    assert dials == []


async def test_every_address_of_an_answer_must_pass(dials: list[str]) -> None:
    """A mixed answer (one good, one denied) is refused whole, as at registration."""
    stub = StubResolver([["127.0.0.1", METADATA]])
    http = HttpClient(guard=policy_guard(POLICY, trusted_hosts=set()), resolver=stub)
    try:
        with pytest.raises(ProviderError, match="endpoint policy"):
            await OpenAIAdapter(http).complete(request(), deployment("http://mixed.test:9/v1"), None)
    finally:
        await http.close()
    assert dials == []


async def test_a_refused_answer_is_not_cached(
    serve: Callable[[Handler], Awaitable[Server]], dials: list[str],
) -> None:
    """The guard runs on every resolution: a refusal is not remembered, nor is it sticky."""
    upstream = await serve(answer_ok)
    stub = StubResolver([[METADATA], ["127.0.0.1"]])
    http = HttpClient(guard=policy_guard(POLICY, trusted_hosts=set()), resolver=stub)
    adapter = OpenAIAdapter(http)
    dep = deployment(f"http://flip.test:{upstream.port}/v1")
    try:
        with pytest.raises(ProviderError, match="endpoint policy"):
            await adapter.complete(request(), dep, None)
        assert (await adapter.complete(request(), dep, None)).content == "hi"
    finally:
        await http.close()
    assert dials == ["127.0.0.1"]


async def test_a_good_answer_is_reused_within_the_cache_ttl(
    serve: Callable[[Handler], Awaitable[Server]],
) -> None:
    upstream = await serve(answer_ok)
    stub = StubResolver([["127.0.0.1"], [METADATA]])
    http = HttpClient(guard=policy_guard(POLICY, trusted_hosts=set()), resolver=stub)
    adapter = OpenAIAdapter(http)
    dep = deployment(f"http://cached.test:{upstream.port}/v1")
    try:
        for _ in range(3):
            assert (await adapter.complete(request(), dep, None)).content == "hi"
    finally:
        await http.close()
    assert stub.lookups == ["cached.test"]


async def test_trusted_hosts_and_literals_are_not_judged() -> None:
    guard = policy_guard(POLICY, trusted_hosts={"api.openai.com", "metadata.internal."})
    assert guard("api.openai.com", [METADATA]) is None
    assert guard("API.OpenAI.com.", [METADATA]) is None
    assert guard("metadata.internal", [METADATA]) is None
    reason = guard("evil.test", [METADATA])
    assert reason is not None and "denied" in reason
    assert guard("evil.test", ["127.0.0.1", "127.0.0.2"]) is None
    assert guard("evil.test", ["127.0.0.1", "10.0.0.7"]) is not None  # not in private_networks_allowed


async def test_a_policy_with_allowed_networks_is_applied_to_resolved_addresses() -> None:
    policy = EndpointPolicy(allowed_networks=["10.0.0.0/8"], private_networks_allowed=["10.0.0.0/8"])
    guard = policy_guard(policy, trusted_hosts=set())
    assert guard("inside.test", ["10.1.2.3"]) is None
    assert guard("outside.test", ["10.1.2.3", "192.0.2.1"]) is not None


async def test_any_guard_callable_works_and_sees_the_name_normalised(dials: list[str]) -> None:
    seen: list[tuple[str, list[str]]] = []

    def guard(host: str, addresses: list[str]) -> str | None:
        seen.append((host, addresses))
        return "nothing is allowed today"

    http = HttpClient(guard=guard, resolver=StubResolver([["127.0.0.1"]]))
    try:
        with pytest.raises(ProviderError) as caught:
            await OpenAIAdapter(http).complete(request(), deployment("http://Some.Test.:9/v1"), None)
    finally:
        await http.close()
    assert seen == [("some.test", ["127.0.0.1"])]
    assert "endpoint policy" in caught.value.message
    assert dials == []


def test_the_refusal_is_an_oserror_that_keeps_the_reason_out_of_its_text() -> None:
    exc = EndpointRefused("evil.test", f"address {METADATA} is in denied network 169.254.0.0/16")
    assert isinstance(exc, OSError)
    assert exc.host == "evil.test" and METADATA in exc.reason
    assert METADATA not in str(exc) and "endpoint policy" in str(exc)


async def test_without_a_guard_the_default_resolver_is_used(
    serve: Callable[[Handler], Awaitable[Server]], client: HttpClient,
) -> None:
    upstream = await serve(answer_ok)
    completion = await OpenAIAdapter(client).complete(
        request(), deployment(f"http://localhost:{upstream.port}/v1"), None
    )
    assert completion.content == "hi"


# ------------------------------------------------------------------ 11. upstream text is redacted


def echoing(status: int, message: str) -> Handler:
    async def handle(request: web.Request, server: Server) -> web.StreamResponse:
        body = msgspec.json.encode({"error": {"message": message, "type": "invalid_request_error"}})
        return web.Response(status=status, body=body, content_type="application/json")

    return handle


@pytest.mark.parametrize("status", [400, 404, 422, 429, 500, 503])
async def test_an_error_that_echoes_the_key_does_not_carry_it(
    status: int, serve: Callable[[Handler], Awaitable[Server]], client: HttpClient,
) -> None:
    upstream = await serve(echoing(status, f"invalid header Authorization: Bearer {KEY}"))
    with pytest.raises(ProviderError) as caught:
        await OpenAIAdapter(client).complete(request(), deployment(f"{upstream.url}/v1"), KEY)
    assert KEY not in caught.value.message
    assert KEY[:12] not in caught.value.message
    assert "[redacted]" in caught.value.message


async def test_a_key_of_no_known_shape_is_removed_because_it_is_known(
    serve: Callable[[Handler], Awaitable[Server]], client: HttpClient,
) -> None:
    key = "localsecretvalue"
    upstream = await serve(echoing(400, f"unknown token {key} for this model"))
    with pytest.raises(ProviderError) as caught:
        await OpenAIAdapter(client).complete(request(), deployment(f"{upstream.url}/v1"), key)
    assert key not in caught.value.message
    assert "unknown token [redacted] for this model" in caught.value.message


async def test_a_key_cut_by_the_length_limit_is_still_removed(
    serve: Callable[[Handler], Awaitable[Server]], client: HttpClient,
) -> None:
    key = "plainsecret-" + "q" * 40
    padding = "x " * 85  # puts the key across the 200-character limit of the detail
    upstream = await serve(echoing(400, f"{padding}bad credential {key} given"))
    with pytest.raises(ProviderError) as caught:
        await OpenAIAdapter(client).complete(request(), deployment(f"{upstream.url}/v1"), key)
    assert "plainsecret" not in caught.value.message
    assert "[redacted]" in caught.value.message


async def test_a_non_json_error_body_is_redacted(
    serve: Callable[[Handler], Awaitable[Server]], client: HttpClient,
) -> None:
    async def handle(request: web.Request, server: Server) -> web.StreamResponse:
        echoed = request.headers.get("authorization", "")
        return web.Response(status=502, text=f"<html>bad gateway; you sent {echoed}</html>")

    upstream = await serve(handle)
    with pytest.raises(ProviderError) as caught:
        await OpenAIAdapter(client).complete(request(), deployment(f"{upstream.url}/v1"), KEY)
    assert KEY not in caught.value.message and "[redacted]" in caught.value.message


async def test_an_unreadable_answer_is_redacted(
    serve: Callable[[Handler], Awaitable[Server]], client: HttpClient,
) -> None:
    async def handle(request: web.Request, server: Server) -> web.StreamResponse:
        return web.json_response({"choices": [{"message": {"content": 1}}], KEY: 1})

    upstream = await serve(handle)
    with pytest.raises(ProviderError) as caught:
        await OpenAIAdapter(client).complete(request(), deployment(f"{upstream.url}/v1"), KEY)
    assert "unreadable" in caught.value.message
    assert KEY not in caught.value.message
