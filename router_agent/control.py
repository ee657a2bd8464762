"""The control plane: ``provider_register``, ``provider_update`` and ``provider_health``.

Every router instance hears these (no queue group). Checks that need no I/O run in the
handler; a registration's DNS lookup and probe run in a child task (``spawn``) that comes
back to the registry on the actor's loop. Every registration and update is answered with
``provider_registered`` (accepted, or every reason why not); bad ``provider_health`` input
with ``router_error``.

Writes nothing itself: changes go through the registry.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec

from router_agent.config import Config
from router_agent.core.endpoints import check_endpoint, endpoint_host
from router_agent.outbox import Outbox
from router_agent.registry import ProviderRegistry, build_deployment, read_key
from router_agent.routes import count_invalid
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

    # ------------------------------------------------------------------ provider_register

    async def on_register(self, msg: Any, register: ProviderRegister) -> None:
        errors = self._check_register(register)
        if errors:
            count_invalid(self.metrics, errors[0].code)
            await self._refuse(msg, register.provider, errors)
            return
        self.spawn(self._complete_registration(msg.reply, register))

    def _check_register(self, register: ProviderRegister) -> list[ErrorInfo]:
        """Checks without I/O: the API, the key rule and the endpoint policy on the literal URL."""
        errors: list[ErrorInfo] = []
        security = self.config.security
        if register.api not in self.registry.adapters:
            errors.append(ErrorInfo(
                code="invalid_provider_config", field="$.data.api",
                message=f"no adapter for the {register.api!r} API yet (have: {sorted(self.registry.adapters)})",
            ))
        if register.api_key is not None and not security.allow_inline_api_keys:
            errors.append(ErrorInfo(
                code="invalid_provider_config", field="$.data.api_key",
                message="raw API keys are not accepted here; name an environment variable in api_key_env",
            ))
        if register.api_key_file is not None and security.secret_files_dir is not None:
            allowed = Path(security.secret_files_dir).resolve()
            if allowed not in Path(register.api_key_file).resolve().parents:
                errors.append(ErrorInfo(
                    code="invalid_provider_config", field="$.data.api_key_file",
                    message=f"api_key_file must be under {security.secret_files_dir}",
                ))
        reason = check_endpoint(register.base_url, security.endpoints)
        if reason:
            errors.append(ErrorInfo(code="endpoint_not_allowed", field="$.data.base_url", message=reason))
        errors += self._config_owned(register.provider)
        names = [m.name for m in register.models]
        if len(set(names)) != len(names):
            errors.append(ErrorInfo(code="invalid_provider_config", field="$.data.models",
                                    message="model names repeat"))
        return errors

    def _config_owned(self, provider: str) -> list[ErrorInfo]:
        existing = self.registry.state.providers.get(provider)
        if existing is not None and existing.source == "config":
            return [ErrorInfo(
                code="invalid_provider_config", field="$.data.provider",
                message=f"provider {provider!r} comes from config and cannot be replaced at run time",
            )]
        return []

    async def _complete_registration(self, reply: str, register: ProviderRegister) -> None:
        """Resolve and re-check the host, probe, then add the provider (back on the actor)."""
        name = register.provider
        base_url = register.base_url.rstrip("/")
        host = endpoint_host(base_url)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, None)
            resolved = sorted({info[4][0] for info in infos})
        except OSError as exc:
            await self._refuse(reply, name, [ErrorInfo(
                code="probe_failed", field="$.data.base_url", message=f"cannot resolve {host!r}: {exc.strerror}",
            )])
            return
        reason = check_endpoint(base_url, self.config.security.endpoints, resolved)
        if reason:
            count_invalid(self.metrics, "endpoint_not_allowed")
            await self._refuse(reply, name, [
                ErrorInfo(code="endpoint_not_allowed", field="$.data.base_url", message=reason)
            ])
            return
        key = register.api_key or read_key(register.api_key_env, register.api_key_file)
        ok, detail, emulated = await self.registry.probe(register.api, base_url, key)
        if not ok:
            await self._refuse(reply, name, [ErrorInfo(code="probe_failed", message=detail, retryable=True)])
            return
        errors = self._config_owned(name)  # config is fixed, but check again after the awaits
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
        await self._refuse(msg, _short(_partial_provider(msg.data)), [_error_info(exc)])

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
        await self._refuse(msg, _short(_partial_provider(msg.data)), [_error_info(exc)], action="update")

    # ------------------------------------------------------------------ provider_health

    async def on_health(self, msg: Any, health: ProviderHealth) -> None:
        if health.provider not in self.registry.state.provider_states:
            count_invalid(self.metrics, "unknown_provider")
            await self.reject_health(msg, SignalError(
                "unknown_provider", f"provider {health.provider!r} is not registered"
            ))
            return
        self.registry.set_health(health.provider, health.status, health.detail)

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
    except (msgspec.DecodeError, msgspec.ValidationError):
        return ""
    return (event.data.provider if event.data else None) or ""
