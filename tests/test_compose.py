"""docker-compose.yml and the Dockerfile, checked without a Docker engine.

This machine has no Docker, so the stack is never brought up here; instead the files
are parsed and every command in them is run through the real CLI parser, which is what
would reject them first inside a container.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
SUBCOMMANDS = {"run", "emulate", "request", "register", "watch"}


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def command(service: dict[str, Any]) -> list[str]:
    """A compose `command` as argv, whether written as a list or as one string."""
    cmd = service["command"]
    return shlex.split(cmd) if isinstance(cmd, str) else [str(word) for word in cmd]


def build_context(service: dict[str, Any]) -> Path:
    build = service["build"]
    context = build if isinstance(build, str) else build.get("context", ".")
    return (COMPOSE.parent / context).resolve()


def dockerfile_instruction(name: str) -> list[str]:
    """The exec-form (JSON array) argument of the Dockerfile's last `name` instruction."""
    lines = [line for line in DOCKERFILE.read_text().splitlines() if line.startswith(name + " ")]
    assert lines, f"Dockerfile has no {name}"
    return json.loads(lines[-1].removeprefix(name + " "))


def cli_parser() -> argparse.ArgumentParser:
    from router_agent.cli import build_parser

    return build_parser()


def subcommands(parser: argparse.ArgumentParser) -> set[str]:
    # argparse has no public accessor for subcommands; its action's `choices` is the list.
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert len(actions) == 1, "expected exactly one set of subcommands"
    return set(actions[0].choices)


def test_the_three_services_exist(services: dict[str, Any]) -> None:
    assert {"nats", "emulator", "router"} <= services.keys()


def test_nats_is_an_image_with_jetstream(services: dict[str, Any]) -> None:
    nats = services["nats"]
    assert nats["image"].startswith("nats:")
    assert "build" not in nats
    assert "-js" in command(nats)


@pytest.mark.parametrize("name", ["router", "emulator"])
def test_router_and_emulator_build_from_the_dockerfile(
    services: dict[str, Any], name: str
) -> None:
    assert (build_context(services[name]) / "Dockerfile").is_file()


def test_router_reaches_nats_and_the_emulator_it_depends_on(services: dict[str, Any]) -> None:
    router = services["router"]
    depends = router["depends_on"]
    assert {"nats", "emulator"} <= set(depends if isinstance(depends, list) else depends.keys())
    argv = command(router)
    assert argv[argv.index("--nats-url") + 1] == "nats://nats:4222"
    emulator_argv = command(services["emulator"])
    emulator_port = emulator_argv[emulator_argv.index("--port") + 1]
    assert argv[argv.index("--emulator-url") + 1] == f"http://emulator:{emulator_port}/v1"


def test_router_passes_provider_keys_through(services: dict[str, Any]) -> None:
    env = services["router"]["environment"]
    for key in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY"):
        assert env[key] == f"${{{key}:-}}"
    assert env["ROUTER_ENV"] == "development"


def test_dockerfile_runs_the_cli_as_non_root() -> None:
    assert dockerfile_instruction("ENTRYPOINT") == ["router-agent"]
    users = [line.split()[1] for line in DOCKERFILE.read_text().splitlines()
             if line.startswith("USER ")]
    assert users and users[-1] not in {"root", "0"}


def test_the_parser_has_the_expected_subcommands() -> None:
    assert SUBCOMMANDS <= subcommands(cli_parser())


@pytest.mark.parametrize("name", ["router", "emulator"])
def test_compose_commands_start_with_a_cli_subcommand(
    services: dict[str, Any], name: str
) -> None:
    assert command(services[name])[0] in subcommands(cli_parser())


def test_cli_accepts_the_router_command(services: dict[str, Any]) -> None:
    args = cli_parser().parse_args(command(services["router"]))
    assert args.nats_url == "nats://nats:4222"
    assert args.emulator_url == "http://emulator:8000/v1"


def test_cli_accepts_the_emulator_command(services: dict[str, Any]) -> None:
    args = cli_parser().parse_args(command(services["emulator"]))
    assert args.host == "0.0.0.0"
    assert int(args.port) == 8000
    assert float(args.latency_ms) == 40.0


def test_cli_accepts_the_dockerfile_default_command() -> None:
    args = cli_parser().parse_args(dockerfile_instruction("CMD"))
    assert args.nats_url == "nats://nats:4222"
