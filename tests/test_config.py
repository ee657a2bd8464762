"""Config loading: the bundled files load, overlays merge, and every mistake names file and key.

Bad configs are made by copying the bundled directory to ``tmp_path`` and editing the copy,
so each test breaks exactly one thing in an otherwise real configuration.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from router_agent.config import (
    BUNDLED_CONFIG_DIR,
    ENV_VARIABLE,
    Config,
    ConfigError,
    ProviderConfig,
    load_config,
)


@pytest.fixture(autouse=True)
def _no_ambient_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's own ROUTER_ENV must not change what these tests load."""
    monkeypatch.delenv(ENV_VARIABLE, raising=False)


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    target = tmp_path / "config"
    shutil.copytree(BUNDLED_CONFIG_DIR, target)
    return target


def edit(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    change(document)
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")


def load_error(config_dir: Path, **kwargs: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(config_dir, **kwargs)
    return str(info.value)


# --------------------------------------------------------------------------- what ships


def test_bundled_config_loads() -> None:
    config = load_config()
    assert isinstance(config, Config)
    assert set(config.providers) == {"openai", "anthropic", "google", "local"}
    assert config.models["claude-3-opus"].provider == "anthropic"
    assert config.models["llama-3-70b"].context_window == 8192
    assert config.agents["cto_agent"].model_preferences["primary"] == "claude-3-opus"
    assert config.routing.default_strategy in config.routing.strategies
    assert config.aliases["opus"] == "claude-3-opus"
    assert config.emulation.mode == "auto"


@pytest.mark.parametrize("environment", ["development", "production"])
def test_bundled_environments_load(environment: str) -> None:
    assert isinstance(load_config(environment=environment), Config)


def test_production_overlay_changes_values() -> None:
    base, production = load_config(), load_config(environment="production")
    assert (base.emulation.mode, production.emulation.mode) == ("auto", "never")
    assert (base.logging.level, production.logging.level) == ("INFO", "WARNING")
    assert production.router.cost_report_interval_s == 60
    assert production.routing.global_overrides.max_cloud_spend_per_day == 500.0
    assert production.policy.max_cloud_spend_per_day == 500.0 and production.policy.require_local_for_pii
    # Deep merge: what the overlay does not mention survives.
    assert production.router.max_payload_bytes == base.router.max_payload_bytes
    assert production.security.endpoints.denied_networks == base.security.endpoints.denied_networks
    assert production.models == base.models


def test_development_overlay_does_not_leak_production_values() -> None:
    development = load_config(environment="development")
    assert development.emulation.mode == "auto"
    overrides = development.routing.global_overrides
    assert (overrides.force_local_models, overrides.verbose_routing_logs) == (False, True)
    assert (overrides.max_cloud_spend_per_day, overrides.require_local_for_pii) == (None, False)
    assert development.policy.verbose and not development.policy.require_local_for_pii


def test_router_env_selects_the_overlay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VARIABLE, "production")
    assert load_config().emulation.mode == "never"
    # An explicit argument wins over the variable; "" means "no overlay at all".
    assert load_config(environment="development").emulation.mode == "auto"
    assert load_config(environment="").emulation.mode == "auto"
    monkeypatch.setenv(ENV_VARIABLE, "")
    assert load_config().emulation.mode == "auto"


def test_router_env_with_an_unknown_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VARIABLE, "staging")
    with pytest.raises(
        ConfigError,
        match=r"unknown environment 'staging' \(known: \['development', 'production'\]\)",
    ):
        load_config()


def test_unknown_environment_lists_the_known_ones(config_dir: Path) -> None:
    (config_dir / "environments" / "qa.yaml").write_text(
        "logging: {level: DEBUG}\n", encoding="utf-8"
    )
    message = load_error(config_dir, environment="prod")
    assert "staging" not in message
    assert "unknown environment 'prod'" in message
    assert "['development', 'production', 'qa']" in message
    assert load_config(config_dir, environment="qa").logging.level == "DEBUG"


def test_overlay_file_deep_merges(config_dir: Path, tmp_path: Path) -> None:
    overlay = tmp_path / "site.yaml"
    overlay.write_text(
        "router: {max_attempts: 5}\n"
        "models: {llama-3-70b: {context_window: 4096}}\n"
        "routing: {global_overrides: {force_local_models: true}}\n",
        encoding="utf-8",
    )
    config = load_config(config_dir, environment="production", overlays=[overlay])
    assert config.router.max_attempts == 5
    assert config.router.cost_report_interval_s == 60  # from production.yaml
    assert config.router.queue_group == "router"  # from router.yaml
    llama = config.models["llama-3-70b"]
    assert (llama.context_window, llama.endpoint) == (4096, "http://localhost:8080/v1")
    overrides = config.routing.global_overrides
    assert (overrides.max_cloud_spend_per_day, overrides.require_local_for_pii, overrides.force_local_models) == (
        500.0, True, True)
    assert config.policy.force_local


def test_later_overlay_wins(config_dir: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text("logging: {level: DEBUG}\n", encoding="utf-8")
    second.write_text("logging: {level: ERROR}\n", encoding="utf-8")
    assert load_config(config_dir, overlays=[first, second]).logging.level == "ERROR"
    assert load_config(config_dir, overlays=[second, first]).logging.level == "DEBUG"


# --------------------------------------------------------------------------- errors: file and key


@pytest.mark.parametrize(("key", "value"), [("input", float("inf")), ("output", 1.7e308)])
def test_a_poisoned_price_in_config_is_refused(config_dir: Path, key: str, value: float) -> None:
    edit(config_dir / "models.yaml", lambda d: d["models"]["gpt-4-turbo"]["cost_per_1k_tokens"].update({key: value}))
    message = load_error(config_dir)
    assert f"models.gpt-4-turbo.cost_per_1k_tokens.{key}: Input should be less than or equal to 1000" in message


def test_bad_value_names_file_and_key_path(config_dir: Path) -> None:
    edit(config_dir / "models.yaml", lambda d: d["models"]["llama-3-70b"].update(context_window=-1))
    message = load_error(config_dir)
    assert f"{config_dir / 'models.yaml'}: models.llama-3-70b.context_window:" in message
    assert "greater than or equal to 1" in message


def test_a_strategy_the_engine_lacks_is_refused_not_ignored(config_dir: Path) -> None:
    edit(config_dir / "routing.yaml", lambda d: d["routing"].update(default_strategy="fastest_please"))
    message = load_error(config_dir)
    assert f"{config_dir / 'routing.yaml'}: routing.default_strategy: unknown strategy 'fastest_please'" in message


def test_every_named_strategy_may_be_the_default(config_dir: Path) -> None:
    for name in ("cost_optimized", "performance_optimized", "privacy_first", "balanced", "adaptive", "hybrid"):
        edit(config_dir / "routing.yaml", lambda d, n=name: d["routing"].update(default_strategy=n))
        assert load_config(config_dir).policy.default_strategy == name


def test_a_rule_with_an_unknown_name_names_the_file_and_the_rule(config_dir: Path) -> None:
    edit(config_dir / "agents.yaml",
         lambda d: d["agents"]["qa_agent"]["routing_rules"].append({"condition": "task.colour == 'red'", "model": "llama-3-70b"}))
    message = load_error(config_dir)
    assert f"{config_dir / 'agents.yaml'}: agents.qa_agent.routing_rules[2].condition:" in message
    assert "unknown name 'task.colour'" in message and "task.colour == 'red'" in message


def test_a_rule_syntax_error_names_the_file_and_the_rule(config_dir: Path) -> None:
    edit(config_dir / "routing.yaml",
         lambda d: d["routing"]["global_rules"][0].update(condition="model.rate_limit_approaching and"))
    message = load_error(config_dir)
    assert f"{config_dir / 'routing.yaml'}: routing.global_rules[0].condition:" in message


def test_an_unknown_global_action_or_strategy_rule_is_refused(config_dir: Path) -> None:
    def change(d: dict) -> None:
        d["routing"]["global_rules"][1]["action"] = "panic"
        d["routing"]["strategies"]["balanced"]["rules"].append({"teleport": True})
    edit(config_dir / "routing.yaml", change)
    message = load_error(config_dir)
    assert "routing.global_rules[1].action: unknown action 'panic'" in message
    assert "routing.strategies.balanced.rules[3]: unknown strategy rule 'teleport'" in message


def test_an_unknown_global_override_is_refused(config_dir: Path) -> None:
    edit(config_dir / "routing.yaml", lambda d: d["routing"]["global_overrides"].update(site="eu"))
    message = load_error(config_dir)
    assert "routing.global_overrides.site: unknown key" in message


def test_unknown_key(config_dir: Path) -> None:
    edit(config_dir / "agents.yaml", lambda d: d["agents"]["qa_agent"].update(colour="blue"))
    message = load_error(config_dir)
    assert f"{config_dir / 'agents.yaml'}: agents.qa_agent.colour: unknown key" in message


def test_bad_value_in_an_overlay_names_the_overlay(config_dir: Path) -> None:
    edit(
        config_dir / "environments" / "production.yaml",
        lambda d: d["emulation"].update(mode="sometimes"),
    )
    message = load_error(config_dir, environment="production")
    assert "production.yaml" in message
    assert "emulation.mode:" in message


def test_model_with_unknown_provider(config_dir: Path) -> None:
    edit(config_dir / "models.yaml", lambda d: d["models"]["llama-3-70b"].update(provider="nope"))
    message = load_error(config_dir)
    assert "models.llama-3-70b.provider: unknown provider 'nope'" in message
    assert "'anthropic', 'google', 'local', 'openai'" in message


def test_agent_preferring_unknown_model(config_dir: Path) -> None:
    edit(
        config_dir / "agents.yaml",
        lambda d: d["agents"]["qa_agent"]["model_preferences"].update(primary="gpt-5"),
    )
    message = load_error(config_dir)
    assert "agents.qa_agent.model_preferences.primary: unknown model 'gpt-5'" in message


def test_routing_rule_with_unknown_model(config_dir: Path) -> None:
    edit(
        config_dir / "agents.yaml",
        lambda d: d["agents"]["cto_agent"]["routing_rules"][1].update(model="gpt-5"),
    )
    assert "agents.cto_agent.routing_rules[1].model: unknown model 'gpt-5'" in load_error(
        config_dir
    )


def test_alias_to_unknown_model(config_dir: Path) -> None:
    edit(config_dir / "models.yaml", lambda d: d["aliases"].update(fast="nope-1b"))
    assert "aliases.fast: unknown model 'nope-1b'" in load_error(config_dir)


@pytest.mark.parametrize(
    ("filename", "change"),
    [
        ("models.yaml", lambda d: d["models"]["llama-3-70b"].update(provider="nope")),
        (
            "agents.yaml",
            lambda d: d["agents"]["qa_agent"]["model_preferences"].update(primary="gpt-5"),
        ),
    ],
)
def test_reference_errors_name_the_file(
    config_dir: Path, filename: str, change: Callable[[dict[str, Any]], None]
) -> None:
    edit(config_dir / filename, change)
    assert f"{config_dir / filename}: " in load_error(config_dir)


def test_malformed_yaml(config_dir: Path) -> None:
    (config_dir / "routing.yaml").write_text("routing: [unclosed\n", encoding="utf-8")
    message = load_error(config_dir)
    assert message.startswith(f"{config_dir / 'routing.yaml'}: not valid YAML")
    assert "line 2" in message


def test_top_level_list(config_dir: Path) -> None:
    (config_dir / "agents.yaml").write_text("- cto_agent\n- qa_agent\n", encoding="utf-8")
    assert f"{config_dir / 'agents.yaml'}: the top level must be a mapping, not list" in load_error(
        config_dir
    )


def test_key_defined_in_two_base_files(config_dir: Path) -> None:
    (config_dir / "routing.yaml").write_text("models: {}\n", encoding="utf-8")
    message = load_error(config_dir)
    assert "key 'models' is already defined in" in message and "models.yaml" in message


def test_missing_directory(tmp_path: Path) -> None:
    assert "config directory not found" in load_error(tmp_path / "absent")


# --------------------------------------------------------------------------- secrets


_SECRET_WORDS = {"key", "keys", "token", "password", "secret", "creds", "credentials", "seed"}
_ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
_KEY_SHAPED = re.compile(
    r"sk-[A-Za-z0-9_-]{16,}|AIza[0-9A-Za-z_-]{20,}|xox[abp]-|ghp_[A-Za-z0-9]{20,}"
)


def _leaves(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _leaves(value, f"{path}[{i}]")
    else:
        yield path, node


def test_yaml_holds_no_secrets() -> None:
    """Keys live in the environment or in files; YAML only names where to find them."""
    files = sorted(BUNDLED_CONFIG_DIR.rglob("*.yaml"))
    assert len(files) >= 6
    for file in files:
        for path, value in _leaves(yaml.safe_load(file.read_text(encoding="utf-8")) or {}):
            where = f"{file.name}: {path}"
            assert not (isinstance(value, str) and _KEY_SHAPED.search(value)), (
                f"{where} looks like a key"
            )
            leaf = path.rsplit(".", 1)[-1]
            if (
                not _SECRET_WORDS & set(leaf.lower().split("_"))
                or value is None
                or isinstance(value, bool)
            ):
                continue
            assert leaf.endswith(("_env", "_file", "_dir")), f"{where} may hold a secret"
            if leaf.endswith("_env"):
                assert _ENV_NAME.match(value), f"{where} is not an environment variable name"


def test_providers_only_name_their_key() -> None:
    providers = yaml.safe_load((BUNDLED_CONFIG_DIR / "models.yaml").read_text(encoding="utf-8"))[
        "providers"
    ]
    for name, provider in providers.items():
        assert not {"api_key", "key", "token"} & set(provider), name
    cloud = {name: p for name, p in providers.items() if p["type"] == "cloud"}
    assert {p["api_key_env"] for p in cloud.values()} == {
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "GEMINI_API_KEY",
    }
    assert "api_key" not in ProviderConfig.model_fields
    assert {"api_key_env", "api_key_file"} <= set(ProviderConfig.model_fields)


def test_a_key_written_into_yaml_is_refused_and_not_echoed(config_dir: Path) -> None:
    secret = "sk-test-" + "a1b2" * 8
    edit(config_dir / "models.yaml", lambda d: d["providers"]["openai"].update(api_key=secret))
    message = load_error(config_dir)
    assert f"{config_dir / 'models.yaml'}: providers.openai.api_key: unknown key" in message
    assert secret not in message
