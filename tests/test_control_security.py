"""The control plane under attack: each test sends over a real nats-server what a hostile
client on the bus sent, and checks that no secret leaves and no traffic is hijacked.

The attacker's endpoint is a real HTTP server (``attacker``) that answers the probe like a
provider and records every request it gets, so "the key never reached it" is observed, not
assumed. The harness config (``make_config``) opens loopback to runtime registrations;
tests about the base config build it without that.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from aiohttp import web

import signals as sig
from router_agent.config import load_config
from router_agent.control import _partial_provider
from tests.conftest import decode_any

pytestmark = pytest.mark.integration

SECRET = "sk-test-CONFIG-KEY-0123456789abcdef"
"""What the operator put in OPENAI_API_KEY for the configured ``openai`` provider."""

GENERIC_PROBE = "the endpoint did not answer the probe as a provider"


def reg(provider: str, base_url: str, *models: str, **fields) -> sig.ProviderRegister:
    specs = [sig.ModelSpec(name=m, capabilities=["general_reasoning"],
                           cost_per_1k_tokens=sig.ModelPrice(input=0.001, output=0.002)) for m in models]
    return sig.ProviderRegister(provider=provider, base_url=base_url, models=specs, **fields)


def codes(answer: sig.ProviderRegistered) -> list[tuple[str, str | None]]:
    return [(e.code, e.field) for e in answer.errors]


class Recorder:
    """An HTTP endpoint that records every request (path, Authorization) and answers with
    ``status`` (200 with an empty model list: a probe takes it for a provider)."""

    def __init__(self, status: int = 200):
        self.status = status
        self.seen: list[tuple[str, str]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _any(self, request: web.Request) -> web.Response:
        self.seen.append((request.path, request.headers.get("Authorization", "")))
        if self.status == 200:
            return web.json_response({"object": "list", "data": []})
        return web.Response(status=self.status, text="nothing here")

    async def start(self) -> Recorder:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._any)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/v1"
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def attacker() -> AsyncIterator[Recorder]:
    recorder = await Recorder().start()
    try:
        yield recorder
    finally:
        await recorder.close()


@pytest.fixture
def operator_key(monkeypatch) -> str:
    """The configured openai provider's key, set before the agent starts."""
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    return SECRET


def base_config(tmp_path: Path, prefix: str):
    """The bundled base config as an operator runs it (no environment overlay, no harness
    opening of loopback): only the subject prefix and emulation are set for the test."""
    path = tmp_path / "base-overlay.yaml"
    path.write_text(yaml.safe_dump({
        "router": {"subject_prefix": prefix, "probe_timeout_ms": 2000},
        "emulation": {"mode": "always"},
    }))
    return load_config(environment="", overlays=[path])


# ---------------------------------------------------------------- 2. secrets sent to an attacker


@pytest.mark.parametrize("env_name", ["OPENAI_API_KEY", "PATH"])
async def test_an_unlisted_key_env_is_refused_before_anything_reaches_the_endpoint(
    agents, client, attacker, operator_key, env_name
):
    agent = await agents.start()
    answer = await client.control("provider_register", reg("thief", attacker.url, "m", api_key_env=env_name))
    assert not answer.accepted
    assert codes(answer) == [("invalid_provider_config", "$.data.api_key_env")]
    assert "runtime_key_envs" in answer.errors[0].message
    assert attacker.seen == []  # refused before any I/O: not even a probe without the key
    assert operator_key not in str(answer)
    assert "thief" not in agent.state.providers


@pytest.mark.parametrize("secret_dir", [None, "secrets"])
async def test_an_api_key_file_is_refused_unless_it_lies_under_secret_files_dir(
    agents, client, attacker, tmp_path, secret_dir
):
    (tmp_path / "secrets").mkdir()
    readable = tmp_path / "some-readable-file.txt"
    readable.write_text("sk-file-contents-0123\n")
    overrides = {"security": {"secret_files_dir": str(tmp_path / secret_dir)}} if secret_dir else {}
    await agents.start(overrides)
    for path in (readable, tmp_path / "secrets" / ".." / readable.name):
        answer = await client.control("provider_register", reg("thief", attacker.url, "m", api_key_file=str(path)))
        assert not answer.accepted
        assert codes(answer) == [("invalid_provider_config", "$.data.api_key_file")]
        assert "sk-file-contents" not in str(answer)
    assert attacker.seen == []


async def test_a_listed_key_env_and_a_file_under_secret_files_dir_are_used(
    agents, client, attacker, tmp_path, monkeypatch
):
    monkeypatch.setenv("LAB_VLLM_KEY", "sk-lab-own-key-1")
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "lab.key").write_text("sk-lab-own-key-2\n")
    agent = await agents.start({"security": {
        "runtime_key_envs": ["LAB_VLLM_KEY"], "secret_files_dir": str(tmp_path / "secrets"),
    }})
    by_env = await client.control("provider_register", reg("lab1", attacker.url, "lab-m1", api_key_env="LAB_VLLM_KEY"))
    by_file = await client.control("provider_register", reg(
        "lab2", attacker.url, "lab-m2", api_key_file=str(tmp_path / "secrets" / "lab.key")
    ))
    assert by_env.accepted and by_file.accepted, (by_env.errors, by_file.errors)
    assert [auth for _, auth in attacker.seen] == ["Bearer sk-lab-own-key-1", "Bearer sk-lab-own-key-2"]
    assert agent.state.providers["lab1"].has_key and agent.state.providers["lab2"].has_key


async def test_a_key_named_two_ways_is_refused(agents, client, attacker, tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_VLLM_KEY", "sk-lab-own-key-1")
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "lab.key").write_text("sk-lab-own-key-2\n")
    await agents.start({"security": {
        "runtime_key_envs": ["LAB_VLLM_KEY"], "secret_files_dir": str(tmp_path / "secrets"),
    }})
    answer = await client.control("provider_register", reg(
        "lab", attacker.url, "m", api_key_env="LAB_VLLM_KEY", api_key_file=str(tmp_path / "secrets" / "lab.key"),
    ))
    assert codes(answer) == [("invalid_provider_config", "$.data.api_key_file")]
    assert attacker.seen == []


@pytest.mark.parametrize("how", ["listed env", "file under secret_files_dir", "inline"])
async def test_a_configured_providers_key_is_never_sent_to_another_endpoint(
    agents, client, attacker, operator_key, tmp_path, monkeypatch, how
):
    monkeypatch.setenv("INNOCENT_LOOKING_KEY", operator_key)  # the same value under another name
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "copy.key").write_text(operator_key + "\n")
    await agents.start({"security": {
        "runtime_key_envs": ["INNOCENT_LOOKING_KEY"], "secret_files_dir": str(tmp_path / "secrets"),
        "allow_inline_api_keys": True,
    }})
    field, value = {
        "listed env": ("api_key_env", "INNOCENT_LOOKING_KEY"),
        "file under secret_files_dir": ("api_key_file", str(tmp_path / "secrets" / "copy.key")),
        "inline": ("api_key", operator_key),
    }[how]
    answer = await client.control("provider_register", reg("thief", attacker.url, "m", **{field: value}))
    assert not answer.accepted
    assert codes(answer) == [("invalid_provider_config", f"$.data.{field}")]
    assert operator_key not in str(answer)
    assert attacker.seen == []


async def test_a_configured_providers_key_may_go_to_that_providers_own_endpoint(
    agents, client, attacker, operator_key, monkeypatch
):
    monkeypatch.setenv("OPENAI_SECOND_KEY", operator_key)
    # Here the attacker's server plays api.openai.com: config says it is openai's endpoint.
    await agents.start({
        "providers": {"openai": {"base_url": attacker.url}},
        "security": {"runtime_key_envs": ["OPENAI_SECOND_KEY"]},
    })
    answer = await client.control("provider_register", reg(
        "openai-batch", attacker.url + "/", "batch-m", type="cloud", api_key_env="OPENAI_SECOND_KEY"
    ))
    assert answer.accepted, answer.errors
    assert attacker.seen == [("/v1/models", f"Bearer {operator_key}")]


@pytest.mark.parametrize(
    "content",
    [b"sk-one\nsk-two\n", b"sk-a\r\nX-Injected: 1\r\n", b"\x00\x01\xfe\xffsk", b"sk-\xc3\xa9t\xc3\xa9\n", b"\n"],
    ids=["two lines", "header injection", "binary", "not ascii", "empty"],
)
async def test_a_key_file_that_is_not_one_line_of_key_gets_a_typed_answer(
    agents, client, attacker, tmp_path, content
):
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "bad.key").write_bytes(content)
    await agents.start({"security": {"secret_files_dir": str(tmp_path / "secrets")}})
    answer = await client.control(
        "provider_register", reg("p", attacker.url, "m", api_key_file=str(tmp_path / "secrets" / "bad.key")),
        timeout=5,
    )
    assert not answer.accepted
    assert codes(answer) == [("invalid_provider_config", "$.data.api_key_file")]
    assert "sk-" not in answer.errors[0].message
    assert attacker.seen == []


async def test_proc_self_environ_is_refused_even_under_secret_files_dir(agents, client, attacker, operator_key):
    await agents.start({"security": {"secret_files_dir": "/proc"}})
    for path in ("/proc/self/environ", "/proc/self/cmdline", "/proc/self/fd/0"):
        answer = await client.control("provider_register", reg("p", attacker.url, "m", api_key_file=path), timeout=5)
        assert not answer.accepted
        assert codes(answer) == [("invalid_provider_config", "$.data.api_key_file")]
        assert operator_key not in str(answer)
    assert attacker.seen == []


async def test_a_listed_env_whose_value_is_not_one_line_gets_a_typed_answer(agents, client, attacker, monkeypatch):
    monkeypatch.setenv("LAB_MULTILINE_KEY", "sk-first\nsk-second")
    await agents.start({"security": {"runtime_key_envs": ["LAB_MULTILINE_KEY"]}})
    answer = await client.control(
        "provider_register", reg("p", attacker.url, "m", api_key_env="LAB_MULTILINE_KEY"), timeout=5
    )
    assert codes(answer) == [("invalid_provider_config", "$.data.api_key_env")]
    assert "sk-" not in answer.errors[0].message
    assert attacker.seen == []


# ---------------------------------------------------------------- 3. traffic hijack, privacy bypass


async def test_a_runtime_provider_cannot_take_over_model_names_config_defines(agents, client, emulator):
    agent = await agents.start()
    answer = await client.control("provider_register", reg(
        "hijack", emulator.url, "gpt-4-turbo", "claude-3-opus", "llama-3-70b", "gpt4", "own-model", type="local",
    ))
    assert not answer.accepted
    assert codes(answer) == [("invalid_provider_config", f"$.data.models[{i}].name") for i in range(4)]
    assert "runtime_may_serve_config_models" in answer.errors[0].message
    assert "hijack" not in agent.state.providers
    served = [await client.ask(client.new_request(agent_id="cto_agent")) for _ in range(6)]
    private = [await client.ask(client.new_request(agent_id="cto_agent", task=sig.Task(privacy_level="high")))
               for _ in range(3)]
    assert all(r.status == "ok" and r.provider != "hijack" for r in served + private)


async def test_config_lists_the_config_models_runtime_providers_may_also_serve(agents, client, emulator):
    agent = await agents.start({"security": {"runtime_may_serve_config_models": ["llama-3-70b"]}})
    answer = await client.control("provider_register", reg("more-llama", emulator.url, "llama-3-70b", "gpt-4-turbo"))
    assert codes(answer) == [("invalid_provider_config", "$.data.models[1].name")]
    answer = await client.control("provider_register", reg("more-llama", emulator.url, "llama-3-70b"))
    assert answer.accepted, answer.errors
    assert {d.provider for d in agent.registry.deployments_by_model["llama-3-70b"]} == {"local", "more-llama"}


async def test_a_self_declared_local_provider_outside_local_networks_is_refused(agents, client, emulator):
    # The emulator listens on 127.0.0.1; this operator counts only 10.0.0.0/8 as local.
    agent = await agents.start({"security": {"local_networks": ["10.0.0.0/8"]}})
    answer = await client.control("provider_register", reg("sneaky", emulator.url, "sneaky-m", type="local"))
    assert not answer.accepted
    assert codes(answer) == [("invalid_provider_config", "$.data.type")]
    assert "local_networks" in answer.errors[0].message
    assert "sneaky" not in agent.state.providers
    # Declared as what it is, it is accepted, and private requests still never reach it.
    answer = await client.control("provider_register", reg("honest", emulator.url, "honest-m", type="cloud"))
    assert answer.accepted, answer.errors
    response = await client.ask(client.new_request(model="honest-m", task=sig.Task(privacy_level="high")))
    assert response.status == "error" and response.error.code == "no_candidates"


async def test_a_local_provider_on_a_local_network_is_trusted_for_private_requests(agents, client, emulator):
    await agents.start()  # default local_networks include loopback
    answer = await client.control("provider_register", reg("lab", emulator.url, "lab-private", type="local"))
    assert answer.accepted, answer.errors
    response = await client.ask(client.new_request(model="lab-private", task=sig.Task(privacy_level="high")))
    assert (response.status, response.provider) == ("ok", "lab")


# ---------------------------------------------------------------- 6. policy gaps


@pytest.mark.parametrize(
    "host",
    [
        "[::a9fe:a9fe]",                            # IPv4-compatible
        "[::169.254.169.254]",
        "[64:ff9b::a9fe:a9fe]",                     # NAT64 well-known prefix
        "[64:ff9b:1::a9fe:a9fe]",                   # NAT64 local-use prefix, /96
        "[64:ff9b:1:a9fe:a9:fe00::]",               # NAT64 local-use prefix, /48 (RFC 6052 layout)
        "[2002:a9fe:a9fe::1]",                      # 6to4
        "[2001:0:4136:e378:8000:63bf:5601:5601]",   # Teredo, client 169.254.169.254 (inverted)
        "[::ffff:0:a9fe:a9fe]",                     # IPv4-translated (SIIT)
    ],
)
async def test_embedded_ipv4_forms_of_the_metadata_address_are_refused(agents, client, host):
    await agents.start()
    answer = await client.control("provider_register", reg("evil", f"http://{host}/latest", "m"), timeout=5)
    assert not answer.accepted
    assert codes(answer) == [("endpoint_not_allowed", "$.data.base_url")]
    assert "169.254.169.254" in answer.errors[0].message


async def test_loopback_and_private_networks_are_closed_to_registrations_in_the_base_config(
    agents, client, emulator, tmp_path, prefix
):
    agent = await agents.start(config=base_config(tmp_path, prefix))
    port = urlsplit(emulator.url).port
    for url in (emulator.url, f"http://localhost:{port}/v1", "http://10.1.2.3:8000/v1",
                "http://[::1]:8000/v1", "http://[::7f00:1]:8000/v1", "http://0.0.0.0:8000/v1"):
        answer = await client.control("provider_register", reg("inside", url, "m"), timeout=5)
        assert not answer.accepted, url
        assert codes(answer) == [("endpoint_not_allowed", "$.data.base_url")], url
    # For a host name, the answer does not tell what it resolved to (the log does).
    answer = await client.control("provider_register", reg("inside", f"http://localhost:{port}/v1", "m"))
    assert "127.0.0.1" not in answer.errors[0].message and "::1" not in answer.errors[0].message
    assert "inside" not in agent.state.providers


async def test_probe_failures_give_one_answer_whatever_listens_on_the_port(agents, client, nats_url, caplog):
    caplog.set_level(logging.INFO, logger="router_agent")
    await agents.start({"router": {"probe_timeout_ms": 400}})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    not_a_provider = await Recorder(status=404).start()
    try:
        urls = [f"http://127.0.0.1:{closed_port}/v1", f"http://127.0.0.1:{urlsplit(nats_url).port}/v1",
                not_a_provider.url]
        answers, took = [], []
        for i, url in enumerate(urls):
            started = time.monotonic()
            answers.append(await client.control("provider_register", reg(f"scan{i}", url, "m"), timeout=8))
            took.append(time.monotonic() - started)
    finally:
        await not_a_provider.close()
    errors = {(e.code, e.field, e.message, e.retryable) for a in answers for e in a.errors}
    assert errors == {("probe_failed", "$.data.base_url", GENERIC_PROBE, True)}
    # Nor does the time to the answer tell them apart: each comes when the probe's time is up.
    assert all(t >= 0.4 for t in took), took
    assert not any(a.accepted for a in answers)
    # The operator still learns what happened, from the log.
    logged = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.INFO)
    assert all(f"scan{i}" in logged for i in range(3))
    assert "404" in logged


async def test_a_failed_keyed_probe_is_logged_without_the_key(agents, client, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG, logger="router_agent")
    monkeypatch.setenv("LAB_VLLM_KEY", "sk-lab-key-NOT-IN-LOGS-42")
    await agents.start({"security": {"runtime_key_envs": ["LAB_VLLM_KEY"]}, "router": {"probe_timeout_ms": 400}})
    refusing = await Recorder(status=401).start()
    try:
        answer = await client.control("provider_register", reg("lab", refusing.url, "m", api_key_env="LAB_VLLM_KEY"))
    finally:
        await refusing.close()
    assert [(e.code, e.message) for e in answer.errors] == [("probe_failed", GENERIC_PROBE)]
    assert "401" in caplog.text
    assert "sk-lab-key-NOT-IN-LOGS-42" not in caplog.text + str(answer)


# ---------------------------------------------------------------- 7. work amplification


async def test_a_provider_with_more_models_than_the_cap_is_refused(agents, client, emulator):
    agent = await agents.start({"security": {"max_models_per_provider": 4}})
    answer = await client.control("provider_register", reg("wide", emulator.url, *[f"w{i}" for i in range(5)]))
    assert codes(answer) == [("invalid_provider_config", "$.data.models")]
    assert "max_models_per_provider" in answer.errors[0].message
    answer = await client.control("provider_register", reg("wide", emulator.url, *[f"w{i}" for i in range(4)]))
    assert answer.accepted, answer.errors
    assert len(agent.state.providers["wide"].models) == 4


async def test_runtime_models_are_capped_in_total(agents, client, emulator):
    agent = await agents.start({"security": {"max_runtime_models": 5}})
    assert (await client.control("provider_register", reg("a", emulator.url, "a1", "a2", "a3"))).accepted
    answer = await client.control("provider_register", reg("b", emulator.url, "b1", "b2", "b3"))
    assert codes(answer) == [("invalid_provider_config", "$.data.models")]
    assert "max_runtime_models" in answer.errors[0].message
    # A provider registered anew replaces its own models: they are not counted twice.
    assert (await client.control("provider_register", reg("a", emulator.url, "a4", "a5", "a6"))).accepted
    assert (await client.control("provider_register", reg("c", emulator.url, "c1", "c2"))).accepted
    runtime = sum(len(e.models) for e in agent.state.providers.values() if e.source == "runtime")
    assert runtime == 5


async def test_concurrent_registrations_cannot_pass_the_total_cap_together(agents, client, emulator):
    agent = await agents.start({"security": {"max_runtime_models": 4}})
    answers = await asyncio.gather(*(
        client.control("provider_register", reg(f"p{i}", emulator.url, f"p{i}a", f"p{i}b")) for i in range(4)
    ))
    assert sum(a.accepted for a in answers) == 2
    assert sum(len(e.models) for e in agent.state.providers.values() if e.source == "runtime") == 4


@pytest.mark.parametrize("in_pool", [False, True])
async def test_requests_without_a_model_consider_runtime_models_only_when_config_says_so(
    agents, client, emulator, in_pool
):
    agent = await agents.start({"security": {"runtime_models_in_default_pool": in_pool}})
    # Heavily weighted, so it would lead nearly every request it can take part in.
    answer = await client.control("provider_register", reg("bulk", emulator.url, "bulk-0", "bulk-1", weight=1000))
    assert answer.accepted, answer.errors
    assert ("bulk-0" in agent.registry.default_pool) is in_pool
    assert set(agent.registry.deployments_by_model) >= {"bulk-0", "bulk-1", "gpt-4-turbo"}
    responses = [await client.ask(client.new_request(agent_id="tester")) for _ in range(6)]
    assert all(r.status == "ok" for r in responses)
    assert any(r.provider == "bulk" for r in responses) is in_pool
    # Asked for by name, a runtime model is served either way.
    assert (await client.ask(client.new_request(model="bulk-1"))).provider == "bulk"


# ---------------------------------------------------------------- undecodable control signals


@pytest.mark.parametrize(
    "payload",
    [
        b'{"data": {"provider": "\xff\xfe"}}',
        b'{"data": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
        b'{"data": {"provider": "a\\ud800"}}',
    ],
    ids=["invalid utf-8", "deep nesting", "lone surrogate"],
)
async def test_an_undecodable_registration_is_still_answered(agents, client, payload):
    agent = await agents.start({"router": {"max_payload_bytes": 1_048_576}})
    msg = await client.nc.request(client.subjects.provider_register, payload, timeout=5)
    answer = decode_any(msg.data)
    assert isinstance(answer, sig.ProviderRegistered) and not answer.accepted
    assert answer.errors and answer.errors[0].code in {"malformed_json", "invalid_request"}
    assert agent.state.metrics.internal_errors == 0


@pytest.mark.parametrize(
    "payload",
    [b'{"data": {"provider": "\xff"}}', b'{"a":' * 20_000 + b"1" + b"}" * 20_000, b"\xff\xfe", b"[]"],
)
def test_partial_provider_never_raises(payload):
    assert _partial_provider(payload) == ""
