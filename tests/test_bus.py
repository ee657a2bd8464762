"""The NATS edge: credentials against real nats-servers that require them, TLS options,
and the embedded server itself."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

from router_agent.bus import BusError, EmbeddedNats, connect, connect_options
from router_agent.config import NatsConfig, TlsConfig


@pytest.fixture
def user_server(tmp_path: Path):
    with EmbeddedNats(tmp_path / "nats", extra_args=["--user", "router", "--pass", "s3cret-pw"]) as server:
        yield server


@pytest.fixture
def token_server(tmp_path: Path):
    with EmbeddedNats(tmp_path / "nats", extra_args=["--auth", "tok-123456"]) as server:
        yield server


async def test_user_and_password_come_from_the_named_environment_variables(user_server, monkeypatch):
    monkeypatch.setenv("ROUTER_NATS_USER", "router")
    monkeypatch.setenv("ROUTER_NATS_PASS", "s3cret-pw")
    cfg = NatsConfig(user_env="ROUTER_NATS_USER", password_env="ROUTER_NATS_PASS", token_env=None)
    nc = await connect(user_server.url, cfg, name="test")
    assert nc.is_connected
    await nc.close()


async def test_wrong_password_fails_with_a_clear_error_and_no_secret(user_server, monkeypatch):
    monkeypatch.setenv("ROUTER_NATS_USER", "router")
    monkeypatch.setenv("ROUTER_NATS_PASS", "wrong-pw-value")
    cfg = NatsConfig(user_env="ROUTER_NATS_USER", password_env="ROUTER_NATS_PASS", token_env=None)
    with pytest.raises(BusError) as raised:
        await connect(user_server.url, cfg, name="test", initial_attempts=1)
    assert "cannot connect to NATS" in str(raised.value)
    assert "wrong-pw-value" not in str(raised.value)


async def test_token_auth(token_server, monkeypatch):
    cfg = NatsConfig(user_env=None, password_env=None, token_env="ROUTER_NATS_TOKEN")
    monkeypatch.setenv("ROUTER_NATS_TOKEN", "tok-123456")
    nc = await connect(token_server.url, cfg, name="test")
    assert nc.is_connected
    await nc.close()
    monkeypatch.delenv("ROUTER_NATS_TOKEN")
    with pytest.raises(BusError):
        await connect(token_server.url, cfg, name="test", initial_attempts=1)


def test_no_credentials_in_the_environment_means_none_are_sent(monkeypatch):
    for name in ("NATS_USER", "NATS_PASSWORD", "NATS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    assert connect_options(NatsConfig()) == {}


def test_creds_and_nkey_files_are_passed_through():
    options = connect_options(NatsConfig(creds_file="/etc/router/user.creds", nkeys_seed_file="/etc/router/seed.nk"))
    assert options["user_credentials"] == "/etc/router/user.creds"
    assert options["nkeys_seed"] == "/etc/router/seed.nk"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a test CA")
def test_tls_options_build_a_verifying_context_with_client_certificate(tmp_path: Path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=router-test"],
        check=True, capture_output=True,
    )
    options = connect_options(NatsConfig(tls=TlsConfig(ca_file=str(cert), cert_file=str(cert), key_file=str(key))))
    context = options["tls"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert any(c["subject"] == ((("commonName", "router-test"),),) for c in context.get_ca_certs())


def test_embedded_server_runs_jetstream_in_its_data_folder(tmp_path: Path):
    with EmbeddedNats(tmp_path / "data") as server:
        assert server.process is not None and server.process.poll() is None
        assert (tmp_path / "data" / "jetstream").is_dir()
    assert server.process is None
