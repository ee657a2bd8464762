"""The control plane: ``provider_register``, ``provider_update`` and ``provider_health``.

Every router instance hears these (no queue group). Checks that need no network I/O run in
the handler: the API, the key (which variable or file it may come from, that it is one line,
that it is not a configured provider's key headed elsewhere), the endpoint policy on the
literal URL, the model names and the caps. Only then does a child task (``spawn``) resolve the
host, re-check every address, check a ``type: local`` claim against ``local_networks`` and
probe with the key, and come back to the registry on the actor's loop. Every registration and
update is answered with ``provider_registered`` (accepted, or every reason why not); bad
``provider_health`` input with ``router_error``. A failed probe gets one generic answer,
sent when the probe's time is up, whatever answered (a closed port, another service) and
however fast: the details go to the log, not to the bus, so registrations cannot be used
to scan ports.

Writes nothing itself: changes go through the registry.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec

from router_agent.config import Config
from router_agent.core.endpoints import check_endpoint, endpoint_host, is_local
from router_agent.keys import KeyProblem, check_key_text, read_key_file
from router_agent.outbox import Outbox
from router_agent.registry import ProviderRegistry, build_deployment
from router_agent.routes import addressable_id, count_invalid
from router_agent.state import Metrics, ProviderEntry
from signals import (
    ErrorInfo,
    ProviderHealth,
    ProviderRegister,
    ProviderRegistered,
    ProviderUpdate,
    RouterError,
    SignalError,
)

log = logging.getLogger("router_agent")

PROBE_FAILED = "the endpoint did not answer the probe as a provider"


def _config_error(field: str, message: str) -> ErrorInfo:
    return ErrorInfo(code="invalid_provider_config", field=field, message=message)


def _probe_failed() -> ErrorInfo:
    return ErrorInfo(code="probe_failed", field="$.data.base_url", message=PROBE_FAILED, retryable=True)


class Control:
    def __init__(
        self,
        config: Config,
        registry: ProviderRegistry,
        outbox: Outbox,
        metrics: Metrics,
        spawn: Callable[[Awaitable[None]], None],
    ):
        self.config = config
        self.registry = registry
        self.outbox = outbox
        self.metrics = metrics
        self.spawn = spawn
        self._config_names = frozenset(config.models) | frozenset(config.aliases)

    # ------------------------------------------------------------------ provider_register

    async def on_register(self, msg: Any, register: ProviderRegister) -> None:
        errors = self._check_register(register)
        key: str | None = None
        if not errors:
            errors, key = self._resolve_key(register)
        if errors:
            count_invalid(self.metrics, errors[0].code)
            await self._refuse(msg, register.provider, errors)
            return
        self.spawn(self._complete_registration(msg.reply, register, key))

    def _check_register(self, register: ProviderRegister) -> list[ErrorInfo]:
        """Checks without I/O: the API, the key's source, the endpoint on the literal URL, the models."""
        errors: list[ErrorInfo] = []
        security = self.config.security
        if register.api not in self.registry.adapters:
            errors.append(_config_error(
                "$.data.api", f"no adapter for the {register.api!r} API yet (have: {sorted(self.registry.adapters)})"
            ))
        errors += self._check_key_source(register)
        reason = check_endpoint(register.base_url, security.endpoints)
        if reason:
            errors.append(ErrorInfo(code="endpoint_not_allowed", field="$.data.base_url", message=reason))
        errors += self._config_owned(register.provider)
        errors += self._check_models(register)
        return errors

    def _check_key_source(self, register: ProviderRegister) -> list[ErrorInfo]:
        """Where the key may come from: only what the operator opened (nothing by default)."""
        security = self.config.security
        named = [f for f in ("api_key", "api_key_env", "api_key_file") if getattr(register, f) is not None]
        if len(named) > 1:
            return [_config_error(f"$.data.{named[1]}", f"name the key one way, not {' and '.join(named)}")]
        if register.api_key is not None and not security.allow_inline_api_keys:
            return [_config_error(
                "$.data.api_key", "raw API keys are not accepted here; name an environment variable in api_key_env"
            )]
        if register.api_key_env is not None and register.api_key_env not in security.runtime_key_envs:
            return [_config_error("$.data.api_key_env", (
                f"environment variable {_short(register.api_key_env, 64)!r} is not one a registration may use "
                "(the operator lists those in security.runtime_key_envs)"
            ))]
        if register.api_key_file is not None:
            if security.secret_files_dir is None:
                return [_config_error("$.data.api_key_file", (
                    "api_key_file is not accepted: the operator has set no security.secret_files_dir"
                ))]
            if _key_file_path(register.api_key_file, security.secret_files_dir) is None:
                return [_config_error("$.data.api_key_file", "api_key_file must lie under security.secret_files_dir")]
        return []

    def _resolve_key(self, register: ProviderRegister) -> tuple[list[ErrorInfo], str | None]:
        """Read the key the (already allowed) source names; refuse what cannot be an HTTP
        header and a configured provider's key headed anywhere but that provider. No
        message holds the key."""
        field = ""
        try:
            if register.api_key is not None:
                field = "$.data.api_key"
                key = check_key_text(register.api_key)
            elif register.api_key_env is not None:
                field = "$.data.api_key_env"
                value = os.environ.get(register.api_key_env)
                if not value:
                    raise KeyProblem("is not set on this router")
                key = check_key_text(value)
            elif register.api_key_file is not None:
                field = "$.data.api_key_file"
                path = _key_file_path(register.api_key_file, self.config.security.secret_files_dir or "")
                if path is None:  # the directory changed under us: refuse as before
                    raise KeyProblem("must lie under security.secret_files_dir")
                key = read_key_file(path)
            else:
                return [], None
        except KeyProblem as exc:
            source = field.removeprefix("$.data.")
            if source == "api_key_env":
                source = f"environment variable {_short(register.api_key_env, 64)!r}"
            return [_config_error(field, f"{source} {exc}")], None
        if self.registry.key_sent_elsewhere(key, register.base_url):
            return [_config_error(field, (
                "this key is a configured provider's and is only sent to that provider's own endpoint"
            ))], None
        return [], key

    def _check_models(self, register: ProviderRegister) -> list[ErrorInfo]:
        """Repeated names, the caps, and names config defines (a hijack of its traffic)."""
        security = self.config.security
        errors: list[ErrorInfo] = []
        names = [m.name for m in register.models]
        if len(set(names)) != len(names):
            errors.append(_config_error("$.data.models", "model names repeat"))
        if len(names) > security.max_models_per_provider:
            errors.append(_config_error("$.data.models", (
                f"{len(names)} models; a provider may declare at most {security.max_models_per_provider} "
                "(security.max_models_per_provider)"
            )))
        else:
            errors += self._runtime_cap(register)
        may_serve = security.runtime_may_serve_config_models
        for i, name in enumerate(names):
            if name in self._config_names and not (may_serve is True or (isinstance(may_serve, list) and name in may_serve)):
                errors.append(_config_error(f"$.data.models[{i}].name", (
                    f"model {name!r} is defined in config; a run-time provider may serve it only when "
                    "security.runtime_may_serve_config_models allows it"
                )))
        return errors

    def _runtime_cap(self, register: ProviderRegister) -> list[ErrorInfo]:
        cap = self.config.security.max_runtime_models
        others = self.registry.runtime_model_count(besides=register.provider)
        if others + len(register.models) <= cap:
            return []
        return [_config_error("$.data.models", (
            f"run-time providers may serve at most {cap} models together (security.max_runtime_models); "
            f"{others} are registered and this adds {len(register.models)}"
        ))]

    def _config_owned(self, provider: str) -> list[ErrorInfo]:
        existing = self.registry.state.providers.get(provider)
        if existing is not None and existing.source == "config":
            return [_config_error(
                "$.data.provider", f"provider {provider!r} comes from config and cannot be replaced at run time"
            )]
        return []

    async def _complete_registration(self, reply: str, register: ProviderRegister, key: str | None) -> None:
        """Resolve and re-check the host, check a local claim, probe, then add the provider."""
        name = register.provider
        base_url = register.base_url.rstrip("/")
        host = endpoint_host(base_url)
        loop = asyncio.get_running_loop()
        # A failed probe is answered when the probe's time is up, however fast it failed: a
        # closed port must not be told from a silent one by how soon the answer comes.
        answer_at = loop.time() + self.config.router.probe_timeout_ms / 1000
        try:
            infos = await loop.getaddrinfo(host, None)
            resolved = sorted({info[4][0] for info in infos})
        except (OSError, ValueError) as exc:  # ValueError: a host IDNA cannot encode
            log.info("provider_register %r refused: cannot resolve %r: %s", name, host, exc)
            await asyncio.sleep(max(0.0, answer_at - loop.time()))
            await self._refuse(reply, name, [_probe_failed()])
            return
        reason = check_endpoint(base_url, self.config.security.endpoints, resolved)
        if reason:
            log.info("provider_register %r refused: %r resolves to %s: %s", name, host, resolved, reason)
            count_invalid(self.metrics, "endpoint_not_allowed")
            await self._refuse(reply, name, [ErrorInfo(
                code="endpoint_not_allowed", field="$.data.base_url",
                message=f"host {host!r} resolves to an address the endpoint policy does not allow "
                        "(the router's log says which and why)",
            )])
            return
        if register.type == "local" and not is_local(resolved, self.config.security.local_networks):
            log.info("provider_register %r refused: type local, but %r resolves to %s", name, host, resolved)
            count_invalid(self.metrics, "invalid_provider_config")
            await self._refuse(reply, name, [_config_error("$.data.type", (
                f"type 'local' is trusted for private requests only when every address of the host lies in "
                f"security.local_networks, and {host!r} does not; register it as type 'cloud', or have the "
                "operator list its network in security.local_networks"
            ))])
            return
        try:
            ok, detail, emulated = await self.registry.probe(register.api, base_url, key)
        except Exception as exc:  # noqa: BLE001 - an adapter bug must not leave the registration unanswered
            ok, detail, emulated = False, f"the probe raised {type(exc).__name__}", False
        if not ok:
            log.info("provider_register %r refused: probe of %s failed: %s", name, base_url, detail)
            await asyncio.sleep(max(0.0, answer_at - loop.time()))
            await self._refuse(reply, name, [_probe_failed()])
            return
        # Config is fixed, but other registrations may have completed during the awaits.
        errors = self._config_owned(name) + self._runtime_cap(register)
        if errors:
            await self._refuse(reply, name, errors)
            return
        models = {
            spec.name: build_deployment(name, spec.name, spec, api=register.api, type=register.type, base_url=base_url)
            for spec in register.models
        }
        self.registry.reset_state(name)
        self.registry.add(
            ProviderEntry(
                name=name,
                api=register.api,
                type=register.type,
                base_url=base_url,
                models=models,
                weight=register.weight,
                enabled=register.enabled,
                timeout_ms=register.timeout_ms or self.config.router.default_provider_timeout_ms,
                emulated=emulated,
                emulated_reason="the endpoint says it is an emulator" if emulated else "",
                has_key=key is not None,
                source="runtime",
            ),
            key,
        )
        log.info("provider %s registered with %d model(s)%s", name, len(models), " (emulated)" if emulated else "")
        await self.outbox.ack(reply, ProviderRegistered(
            provider=name, accepted=True, models=list(models), emulated=emulated,
        ))

    async def reject_register(self, msg: Any, exc: SignalError) -> None:
        await self._refuse(msg, addressable_id(_partial_provider(msg.data)), [_error_info(exc)])

    async def _refuse(self, msg_or_reply: Any, provider: str, errors: list[ErrorInfo], action: str = "register") -> None:
        reply = msg_or_reply if isinstance(msg_or_reply, str) else msg_or_reply.reply
        await self.outbox.ack(reply, ProviderRegistered(
            provider=provider, accepted=False, action=action, errors=errors,  # type: ignore[arg-type]
        ))

    # ------------------------------------------------------------------ provider_update

    async def on_update(self, msg: Any, update: ProviderUpdate) -> None:
        entry = self.registry.state.providers.get(update.provider)
        errors: list[ErrorInfo] = []
        if entry is None:
            errors.append(ErrorInfo(code="unknown_provider", message=f"provider {update.provider!r} is not registered"))
        else:
            for i, model in enumerate(update.models):
                if model.name not in entry.models:
                    errors.append(ErrorInfo(code="invalid_provider_config", field=f"$.data.models[{i}].name",
                                            message=f"provider {update.provider!r} has no model {model.name!r}"))
            if update.enabled and entry.api not in self.registry.adapters:
                    errors.append(ErrorInfo(code="invalid_provider_config", field="$.data.enabled",
                                        message=f"no adapter for the {entry.api!r} API yet: it cannot be enabled"))
        if errors or entry is None:
            count_invalid(self.metrics, errors[0].code)
            await self._refuse(msg, update.provider, errors, action="update")
            return
        # Build the whole change, validate it, then apply it at once.
        models = dict(entry.models)
        for change in update.models:
            fields: dict[str, Any] = {}
            if change.cost_per_1k_tokens is not None:
                fields["price_in"] = change.cost_per_1k_tokens.input
                fields["price_out"] = change.cost_per_1k_tokens.output
                fields["price_cached_in"] = change.cost_per_1k_tokens.cached_input
            if change.rate_limits is not None:
                fields["requests_per_minute"] = change.rate_limits.requests_per_minute
                fields["tokens_per_minute"] = change.rate_limits.tokens_per_minute
            if change.enabled is not None:
                fields["enabled"] = change.enabled
            models[change.name] = dataclasses.replace(models[change.name], **fields)
        changes: dict[str, Any] = {"models": models}
        for field in ("enabled", "weight", "timeout_ms"):
            value = getattr(update, field)
            if value is not None:
                changes[field] = value
        changed = ProviderEntry.model_validate({**dict(entry), **changes})
        self.registry.add(changed, self.registry.secrets.get(update.provider))
        await self.outbox.ack(msg.reply, ProviderRegistered(
            provider=update.provider, accepted=True, action="update", models=list(changed.models),
            emulated=changed.emulated,
        ))

    async def reject_update(self, msg: Any, exc: SignalError) -> None:
        await self._refuse(msg, addressable_id(_partial_provider(msg.data)), [_error_info(exc)], action="update")

    # ------------------------------------------------------------------ provider_health

    async def on_health(self, msg: Any, health: ProviderHealth) -> None:
        if health.provider not in self.registry.state.provider_states:
            count_invalid(self.metrics, "unknown_provider")
            await self.reject_health(msg, SignalError(
                "unknown_provider", f"provider {health.provider!r} is not registered"
            ))
            return
        if health.origin == "router":
            return  # another instance's own evidence, announced for observers (monitor.py)
        self.registry.report_health(health.provider, health.status, health.detail)

    async def reject_health(self, msg: Any, exc: SignalError) -> None:
        await self.outbox.router_error(msg.reply, RouterError(subject=msg.subject, error=_error_info(exc)))


def _error_info(exc: SignalError) -> ErrorInfo:
    return ErrorInfo(code=exc.code, message=exc.message, field=exc.field)


def _short(value: str | None, limit: int = 128) -> str:
    return (value or "")[:limit]


class _ProviderOnly(msgspec.Struct):
    provider: str | None = None


class _ProviderEvent(msgspec.Struct):
    data: _ProviderOnly | None = None


def _partial_provider(payload: bytes) -> str:
    """The provider name of an invalid control signal, when it can still be read."""
    try:
        event = msgspec.json.decode(payload, type=_ProviderEvent)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError, UnicodeDecodeError, ValueError):
        return ""
    return (event.data.provider if event.data else None) or ""


def _key_file_path(name: str, secret_files_dir: str) -> Path | None:
    """``name`` resolved (links followed), when it lies under ``secret_files_dir``; else None."""
    try:
        path = Path(name).resolve()
        allowed = Path(secret_files_dir).resolve()
    except (OSError, RuntimeError, ValueError):  # a link loop, a NUL in the name
        return None
    return path if secret_files_dir and allowed in path.parents else None
