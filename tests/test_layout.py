"""The layout's rules, checked: the core stays pure, modules stay small, each says what it writes."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "router_agent"
CORE = sorted((PACKAGE / "core").glob("*.py"))
FORBIDDEN_IN_CORE = ("asyncio", "nats", "aiohttp", "httpx", "router_agent.config", "router_agent.telemetry",
                     "opentelemetry", "socket", "time")


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, anywhere in it (TYPE_CHECKING blocks and functions too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_core_has_modules_to_check():
    assert {p.stem for p in CORE} >= {"breaker", "lifecycle", "model", "routing", "cost", "endpoints", "ledger"}


@pytest.mark.parametrize("path", CORE, ids=lambda p: p.name)
def test_nothing_in_core_does_io_reads_config_or_telemetry(path: Path):
    bad = sorted(
        name for name in imported_modules(path)
        if any(name == f or name.startswith(f"{f}.") for f in FORBIDDEN_IN_CORE)
    )
    assert bad == [], f"{path.name} imports {bad}"


def test_the_import_check_catches_a_forbidden_import(tmp_path: Path):
    sample = tmp_path / "sample.py"
    sample.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from router_agent.config import Config\n")
    assert "router_agent.config" in imported_modules(sample)


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_passes_about_four_hundred_lines(path: Path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= 420, f"{path.relative_to(PACKAGE)} has {lines} lines: split it by what it owns"


def test_the_agent_docstring_table_shows_every_route():
    from router_agent import agent as agent_module
    from router_agent.agent import RouterAgent
    from router_agent.config import load_config
    from signals import SIGNAL_TYPES

    rows = [line for line in (agent_module.__doc__ or "").splitlines() if line.startswith("| ")]
    routes = RouterAgent(load_config(), nc=None).routes()
    assert len(routes) == 5
    for route in routes:
        row = next((r for r in rows if r.startswith(f"| {route.signal} ")), None)
        assert row is not None, f"no row for {route.signal}"
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == SIGNAL_TYPES[route.signal].__name__
        assert cells[2].split(".")[-1] == route.handle.__name__
        assert cells[4] == route.publishes
        assert ("(queue)" in cells[0]) == bool(route.queue)


def test_the_coroutines_a_request_holds_while_its_provider_answers_make_no_cells():
    """Memory per request in flight is a goal (bench): each of these frames lives as long as the
    provider takes, and a closure or comprehension over a local makes that local a cell,
    created when the coroutine starts (~50 bytes each). Helpers and partials instead."""
    from router_agent.attempt import OneAttempt
    from router_agent.chain import AttemptChain
    from router_agent.providers import base, openai
    from router_agent.requests import RequestShell

    held = [RequestShell.serve, RequestShell._route_and_call, AttemptChain.run, OneAttempt.attempt,
            OneAttempt.traced, base.post_json, base.stream_events, openai.OpenAIAdapter.complete]
    assert {f.__qualname__: f.__code__.co_cellvars for f in held if f.__code__.co_cellvars} == {}
