"""Finding 11 of the hardening issue, as it was reported: an upstream 400 whose message
echoed the Authorization header put the key on the reply and on llm_response.<agent>."""

from __future__ import annotations

import pytest
from aiohttp import web

import signals as sig

pytestmark = pytest.mark.integration

SECRET = "sk-live-ECHOED-0123456789abcdefABCDEF"


@pytest.fixture
async def echoing_upstream():
    async def models(request: web.Request) -> web.Response:
        return web.json_response({"data": []})

    async def chat(request: web.Request) -> web.Response:
        echoed = request.headers.get("Authorization", "")
        return web.json_response({"error": {"message": f"invalid header: Authorization: {echoed}"}}, status=400)

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/v1"
    await runner.cleanup()


async def test_an_upstream_error_echoing_the_key_never_puts_it_on_the_bus(agents, client, subjects, echoing_upstream,
                                                                          monkeypatch, caplog):
    monkeypatch.setenv("ECHO_PROVIDER_KEY", SECRET)
    await agents.start({"security": {"runtime_key_envs": ["ECHO_PROVIDER_KEY"]}})
    everything = await client.collect(f"{subjects.prefix}>")
    answer = await client.control("provider_register", sig.ProviderRegister(
        provider="echoer", base_url=echoing_upstream, type="local", api_key_env="ECHO_PROVIDER_KEY",
        models=[sig.ModelSpec(name="echo-model")]))
    assert answer.accepted, answer.errors
    request = client.new_request(model="echo-model")
    response = await client.ask(request)
    assert response.status == "error"
    assert "invalid header" in response.error.message or "invalid header" in response.attempts[0].error.message
    await everything.wait_for(lambda d: isinstance(d, sig.LlmResponse) and d.request_id == request.request_id)
    assert SECRET not in str(response)
    assert not any(SECRET in str(data) for data in everything.data)
    assert SECRET not in caplog.text
