"""The real processes a benchmark runs against: nats-server, emulators, agents.

Every child gets its own process group (``start_new_session``) and writes stdout and
stderr to a log file in the run's temporary directory (never a pipe, so a chatty child
cannot block on a full pipe). ``Stack`` owns them all and stops every one it started,
group by group, on ``close()``: callers use it in ``try``/``finally``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from router_agent.bus import EmbeddedNats, free_port

ROOT = Path(__file__).resolve().parent.parent
OVERLAY = Path(__file__).resolve().parent / "overlay.yaml"


def _cli() -> list[str]:
    """The router-agent CLI of this interpreter's environment."""
    script = Path(sys.executable).parent / "router-agent"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "router_agent.cli"]


class StartError(RuntimeError):
    """A child did not come up; the message carries the tail of its log."""


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    info: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid

    def ps(self) -> psutil.Process:
        return psutil.Process(self.process.pid)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_for_line(self, prefix: str, timeout_s: float) -> str:
        """Poll the log for a line starting with ``prefix``; fail if the child exits first."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                text = self.log_path.read_text(errors="replace")
            except OSError:
                text = ""
            for line in text.splitlines():
                if line.startswith(prefix):
                    return line
            if self.process.poll() is not None:
                raise StartError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            time.sleep(0.05)
        raise StartError(f"{self.name} printed no {prefix!r} line within {timeout_s}s:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 8.0) -> None:
        """SIGTERM the child's process group, SIGKILL it if it is still there after the timeout."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.process.wait(timeout=5)
        # The group may hold grandchildren (none expected); make sure they go too.
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _child_setup() -> None:
    """Runs in the child before exec: die with the harness, and allow many sockets."""
    try:
        import ctypes

        # PR_SET_PDEATHSIG = 1: if the harness is killed outright (SIGKILL, a test's
        # timeout), the kernel sends the child SIGTERM; nothing outlives the run.
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    # Children may hold thousands of sockets (5,000 in flight = 5,000 upstream connections).
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass


class Stack:
    """Everything one benchmark run started; ``close()`` stops it all."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.children: list[Child] = []
        self.nats: EmbeddedNats | None = None
        self._count = 0

    # -- nats-server --------------------------------------------------------------

    def start_nats(self) -> str:
        self.nats = EmbeddedNats(self.workdir / "nats", port=0).start()
        return self.nats.url

    @property
    def nats_pid(self) -> int | None:
        return self.nats.process.pid if self.nats and self.nats.process else None

    # -- children -----------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Child:
        self._count += 1
        log_path = self.workdir / f"{self._count:02d}-{name}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=str(ROOT),
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                start_new_session=True,
                preexec_fn=_child_setup,  # noqa: PLW1509 - PR_SET_PDEATHSIG can only be set in the child
            )
        child = Child(name, process, log_path)
        self.children.append(child)
        return child

    def start_emulator(self, latency_ms: float, name: str | None = None, tokens_per_s: float = 0.0,
                       wait: bool = True) -> Child:
        """``router-agent emulate``: ``latency_ms`` to the first token (or to the whole answer),
        then ``tokens_per_s`` pacing a stream (0: the rest at once). ``wait=False`` returns
        at once: then ``ready(child)`` (start several, wait once)."""
        port = free_port()
        argv = [*_cli(), "emulate", "--host", "127.0.0.1", "--port", str(port), "--latency-ms", f"{latency_ms:g}"]
        if tokens_per_s:
            argv += ["--tokens-per-s", f"{tokens_per_s:g}"]
        child = self._spawn(name or f"emulator-{latency_ms:g}ms" + (f"-{tokens_per_s:g}tps" if tokens_per_s else ""), argv)
        child.info["url"] = f"http://127.0.0.1:{port}/v1"
        child.info["root"] = f"http://127.0.0.1:{port}"
        child.info["latency_ms"] = f"{latency_ms:g}"
        child.info["tokens_per_s"] = f"{tokens_per_s:g}"
        child.info["ready_line"] = "emulator ready:"
        return self.ready(child) if wait else child

    def ready(self, child: Child, timeout_s: float = 30) -> Child:
        """Wait for a child started with ``wait=False`` to say it is ready; stop it if it does not."""
        try:
            child.info["ready"] = child.wait_for_line(child.info["ready_line"], timeout_s)
        except StartError:
            self.stop(child)
            raise
        return child

    def start_agent(
        self,
        nats_url: str,
        emulator_url: str,
        prefix: str,
        name: str | None = None,
        extra_router: dict[str, object] | None = None,
        cli: list[str] | None = None,
        env: dict[str, str] | None = None,
        wait: bool = True,
        extra: dict[str, object] | None = None,
    ) -> Child:
        """An agent whose subjects carry ``prefix``, so several agent pools share one server.

        ``extra_router`` adds ``router:`` settings to its overlay, ``extra`` other top-level
        sections (``agents:``, ...); ``cli`` replaces the ``router-agent`` command (the memory
        profiler runs it under tracemalloc); ``env`` adds environment variables;
        ``wait=False``: see ``ready``.
        """
        if extra and "router" in extra:
            raise ValueError("router settings go in extra_router")
        self._count += 1
        overlay = self.workdir / f"overlay-{self._count:02d}-{prefix}.yaml"
        router = {"subject_prefix": prefix, **(extra_router or {})}
        overlay.write_text(_yaml({"router": router, **(extra or {})}))
        child = self._spawn(
            name or f"agent-{prefix}",
            [
                *(cli or _cli()), "run",
                "--nats-url", nats_url,
                "--emulator-url", emulator_url,
                "--overlay", str(OVERLAY),
                "--overlay", str(overlay),
                "--log-level", "WARNING",
            ],
            env,
        )
        child.info["prefix"] = prefix
        child.info["ready_line"] = "router-agent ready:"
        return self.ready(child) if wait else child

    def spawn_python(self, name: str, module: str, args: list[str], env: dict[str, str] | None = None) -> Child:
        return self._spawn(name, [sys.executable, "-m", module, *args], env)

    def stop(self, child: Child) -> None:
        child.stop()
        if child in self.children:
            self.children.remove(child)

    def close(self) -> None:
        for child in reversed(list(self.children)):
            try:
                child.stop()
            except Exception as exc:  # noqa: BLE001 - keep stopping the others
                print(f"bench: could not stop {child.name}: {exc}", file=sys.stderr)
        self.children.clear()
        if self.nats is not None:
            self.nats.stop()
            self.nats = None


def _yaml(document: dict) -> str:
    import yaml

    return yaml.safe_dump(document, sort_keys=False)
