"""The runtime control service: routing overrides over the bus, discoverable with nats.micro.

Writes ``routing_overrides`` (through ``core/overrides.py``) and the bad-input counters.

Operators change routing without a restart: an agent's primary model, the strategy for one
agent or all of them for a while (``privacy_first`` for 2 h, then it reverts by itself), a
model forced for one task id, and they read the routing table. The service is a nats.micro
service, ``llm-router-control``, so ``$SRV.PING``, ``$SRV.INFO`` and ``$SRV.STATS`` find every
instance (``nats micro ls`` too). Its endpoints join the router's queue group, so one instance
answers each request:

| endpoint (``router_control.<name>``) | body                   | answer          |
|--------------------------------------|------------------------|-----------------|
| ``set_primary``                      | ``ControlSetPrimary``       | ``control_result`` |
| ``override_strategy``                | ``ControlOverrideStrategy`` | ``control_result`` |
| ``force_model``                      | ``ControlForceModel``       | ``control_result`` |
| ``clear``                            | ``ControlClear``            | ``control_result`` |
| ``table``                            | ``ControlTable`` (``{}``)   | ``routing_table``  |
| ``cost_report`` (``ledger_service``) | ``CostQuery`` (``{}``)      | ``cost_report``    |

A body is the request's JSON object as it is (``nats req router_control.table '{}'``), or a
CloudEvent carrying it (what ``signals.encode_event`` makes; its ``source`` then stands for
``requested_by`` when that is empty). Answers are CloudEvents like every router signal. Bad
input (malformed JSON, a field out of bounds, an unknown model, agent or strategy, a full
table) is answered ``control_result`` with ``accepted: false`` and every reason, and also
carries nats.micro's error headers (``Nats-Service-Error-Code: 400``); nothing is changed.

What is checked: a model is a served model name or an alias of config (an alias is stored
as the model it names); ``set_primary`` needs an agent of ``agents.yaml``; a strategy
override accepts any agent id, because agents that are not in ``agents.yaml`` route too; a
strategy is one the engine implements (``Policy.strategy_names``: a building block or a
named strategy of ``routing.yaml``); a duration is above 0 and at most 30 days (none: until cleared); the table
holds at most ``MAX_OVERRIDES`` entries.

Every accepted change is published as ``routing_control`` (instance id, the change, reason,
who asked, expiry). Every instance hears that subject (no queue group), checks the change
the same way and applies it unless it published it itself, so all instances route alike.
Each counts a duration from when it applies the change, on its own monotonic clock. The
overrides live in memory: an instance that starts later, or restarts, has none until the
next change.
"""

from __future__ import annotations

import importlib.metadata
import logging
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import nats.errors
import nats.micro
from nats.micro.request import Request
from nats.micro.service import EndpointStats, Service

from router_agent.config import Config
from router_agent.core.overrides import RoutingOverrides
from router_agent.outbox import Outbox
from router_agent.registry import ProviderRegistry
from router_agent.routes import count_invalid
from router_agent.state import Metrics, RouterState
from signals import (
    AgentRouting,
    ControlClear,
    ControlForceModel,
    ControlOverrideStrategy,
    ControlResult,
    ControlSetPrimary,
    ControlTable,
    CostQuery,
    ErrorInfo,
    OverrideInfo,
    RouterError,
    RoutingChange,
    RoutingControl,
    RoutingTable,
    SignalError,
    Subjects,
    decode_event,
)

log = logging.getLogger("router_agent")

SERVICE_NAME = "llm-router-control"
MAX_OVERRIDES = 10_000
"""Entries the override table may hold (forced models by task id are the ones that grow)."""

ENDPOINTS: dict[str, str] = {
    "set_primary": "control_set_primary",
    "override_strategy": "control_override_strategy",
    "force_model": "control_force_model",
    "clear": "control_clear",
    "table": "control_table",
    "cost_report": "cost_query",
}
"""Endpoint name -> the signal its body carries."""

_TYPES: dict[str, type[msgspec.Struct]] = {
    "control_set_primary": ControlSetPrimary,
    "control_override_strategy": ControlOverrideStrategy,
    "control_force_model": ControlForceModel,
    "control_clear": ControlClear,
    "control_table": ControlTable,
    "cost_query": CostQuery,
}
_BARE = {signal: msgspec.json.Decoder(cls) for signal, cls in _TYPES.items()}
_KEY_FIELD = {"primary": "agent_id", "strategy": "agent_id", "forced": "task_id"}
_FIELD = re.compile(r"^Object (?:missing required|contains unknown) field `([^`]+)`")


class _Probe(msgspec.Struct):
    specversion: Any = None


def version() -> str:
    try:
        return importlib.metadata.version("llm-router-agent")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


class ControlService:
    def __init__(
        self,
        config: Config,
        state: RouterState,
        registry: ProviderRegistry,
        outbox: Outbox,
        subjects: Subjects,
        instance_id: str,
        clock: Callable[[], float],
        metrics: Metrics,
    ):
        self.config = config
        self.state = state
        self.registry = registry
        self.outbox = outbox
        self.subjects = subjects
        self.instance_id = instance_id
        self.clock = clock
        self.metrics = metrics
        self.service: Service | None = None
        self.counts: dict[str, dict[str, int]] = {name: {"accepted": 0, "refused": 0} for name in ENDPOINTS}
        self.on_applied: Callable[[RoutingControl], None] | None = None
        """Called after a change from another instance was applied (tests wait on it)."""

    @property
    def overrides(self) -> RoutingOverrides:
        return self.state.routing_overrides

    def strategies(self) -> list[str]:
        """Every strategy name an override may use."""
        return self.config.policy.strategy_names()

    # ------------------------------------------------------------------ start / stop

    async def start(self, nc: Any) -> None:
        """Start the nats.micro service and its endpoints on ``nc``."""
        settings = self.config.router
        self.service = await nats.micro.add_service(
            nc, name=SERVICE_NAME, version=version(),
            description="Routing overrides of the LLM router: primary models, strategies, forced models",
            metadata={"instance_id": self.instance_id, "subject_prefix": self.subjects.prefix},
            queue_group=settings.queue_group, stats_handler=self._stats,
        )
        group = self.service.add_group(name=self.subjects.router_control)
        handlers: dict[str, Callable[[Request], Awaitable[None]]] = {
            "set_primary": self.on_set_primary, "override_strategy": self.on_override_strategy,
            "force_model": self.on_force_model, "clear": self.on_clear, "table": self.on_table,
        }
        for name, handler in handlers.items():
            await group.add_endpoint(name=name, handler=handler, metadata={"signal": ENDPOINTS[name]})

    async def stop(self) -> None:
        if self.service is not None:
            service, self.service = self.service, None
            await service.stop()

    def _stats(self, endpoint: EndpointStats) -> dict[str, int]:
        return dict(self.counts.get(endpoint.name, {}))

    # ------------------------------------------------------------------ endpoints

    async def on_set_primary(self, request: Request) -> None:
        await self._serve(request, "set_primary", lambda body, by: RoutingChange(
            action="set", kind="primary", key=body.agent_id, model=body.model, duration_s=body.duration_s,
            reason=body.reason, requested_by=body.requested_by or by,
        ))

    async def on_override_strategy(self, request: Request) -> None:
        await self._serve(request, "override_strategy", lambda body, by: RoutingChange(
            action="set", kind="strategy", key=body.agent_id, strategy=body.strategy, duration_s=body.duration_s,
            reason=body.reason, requested_by=body.requested_by or by,
        ))

    async def on_force_model(self, request: Request) -> None:
        await self._serve(request, "force_model", lambda body, by: RoutingChange(
            action="set", kind="forced", key=body.task_id, model=body.model, duration_s=body.duration_s,
            reason=body.reason, requested_by=body.requested_by or by,
        ))

    async def on_clear(self, request: Request) -> None:
        await self._serve(request, "clear", lambda body, by: RoutingChange(
            action="clear", kind=body.kind, key=body.key, reason=body.reason, requested_by=body.requested_by or by,
        ))

    async def on_table(self, request: Request) -> None:
        await self._serve(request, "table", None)

    async def _serve(self, request: Request, action: str, to_change: Callable[[Any, str], RoutingChange] | None) -> None:
        """Decode, check, apply, publish, answer: every request gets one typed answer."""
        signal = ENDPOINTS[action]
        try:
            try:
                body, by, root = self._decode(request.data, signal)
            except SignalError as exc:
                await self._refuse(request, action, [ErrorInfo(code=exc.code, message=exc.message, field=exc.field)])
                return
            if to_change is None:
                self.counts[action]["accepted"] += 1
                await self._answer(request, "routing_table", self.routing_table(body.agent_id))
                return
            change = self._resolve(to_change(body, by))
            errors = self.check(change, root)
            if errors:
                await self._refuse(request, action, errors)
                return
            changed = self.apply(change)
            self.counts[action]["accepted"] += 1
            expires_at = _wall_expiry(change.duration_s)
            if changed:
                await self.outbox.publish(self.subjects.routing_control, "routing_control", RoutingControl(
                    instance_id=self.instance_id, change=change, expires_at=expires_at,
                ))
            await self._answer(request, "control_result", ControlResult(
                accepted=True, action=action, instance_id=self.instance_id,  # type: ignore[arg-type]
                change=change, changed=changed, expires_at=expires_at,
            ))
        except Exception:
            log.exception("control service %s failed", action)
            self.metrics.internal_errors += 1
            await self._refuse(request, action, [ErrorInfo(code="internal", message="internal router error")],
                               code="500", counted=False)

    def _decode(self, payload: bytes, signal: str) -> tuple[Any, str, str]:
        """The body as its Struct, who sent it (a CloudEvent's source), and the root of field paths."""
        limit = self.config.router.max_payload_bytes
        if len(payload) > limit:
            raise SignalError("payload_too_large", f"payload is {len(payload)} bytes; the limit is {limit}")
        if not payload.strip():
            payload = b"{}"
        try:
            probe = msgspec.json.decode(payload, type=_Probe)
        except msgspec.ValidationError:
            probe = _Probe()  # not an object: the typed decode below names the problem
        except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
            raise SignalError("malformed_json", f"JSON is malformed: {exc}") from None
        if probe.specversion is not None:
            raw, body = decode_event(payload, signal)
            return body, raw.source[:128], "$.data"
        try:
            return _BARE[signal].decode(payload), "", "$"
        except msgspec.ValidationError as exc:
            text = str(exc)
            head, marker, at = text.rpartition(" - at `")
            path = at.rstrip("`") if marker else "$"
            field = _FIELD.match(head if marker else text)
            if field:
                path = f"{path}.{field.group(1)}"
            raise SignalError("invalid_request", f"{head if marker else text} - at `{path}`", path) from None
        except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
            raise SignalError("malformed_json", f"JSON is malformed: {exc}") from None

    async def _refuse(
        self, request: Request, action: str, errors: list[ErrorInfo], code: str = "400", counted: bool = True
    ) -> None:
        if counted:
            count_invalid(self.metrics, errors[0].code)
        self.counts[action]["refused"] += 1
        result = ControlResult(accepted=False, action=action, instance_id=self.instance_id, errors=errors)  # type: ignore[arg-type]
        await self._answer(request, "control_result", result, error=(code, errors[0].message[:200]))

    async def _answer(self, request: Request, signal: str, data: Any, error: tuple[str, str] | None = None) -> None:
        payload = self.outbox.events.encode(signal, data)
        try:
            if error is None:
                await request.respond(payload)
            else:
                await request.respond_error(error[0], error[1].replace("\r", " ").replace("\n", " "), data=payload)
        except ValueError:
            pass  # published without a reply subject: the change (if any) stands, nobody waits
        except (nats.errors.Error, OSError) as exc:
            log.warning("control answer not sent: %s", type(exc).__name__)

    # ------------------------------------------------------------------ checks and changes

    def _resolve(self, change: RoutingChange) -> RoutingChange:
        """An alias becomes the model it names, so the engine gets a model name."""
        if change.model is not None and change.model not in self.registry.deployments_by_model:
            target = self.config.aliases.get(change.model)
            if target is not None:
                return msgspec.structs.replace(change, model=target)
        return change

    def check(self, change: RoutingChange, root: str = "$.data") -> list[ErrorInfo]:
        """Every reason ``change`` cannot be applied; field paths under ``root``."""
        errors: list[ErrorInfo] = []
        by_key = change.action == "clear" or root.endswith(".change")  # a clear, or an event
        key_field = f"{root}.{'key' if by_key else _KEY_FIELD[change.kind]}"

        def refuse(field: str, message: str) -> None:
            errors.append(ErrorInfo(code="invalid_request", field=field, message=message))

        if change.key is None and change.kind != "strategy":
            refuse(key_field, f"a {change.kind} override needs its {_KEY_FIELD[change.kind]}")
        if change.action == "clear":
            return errors
        if change.kind == "primary" and change.key is not None and change.key not in self.config.agents:
            refuse(key_field, f"agent {change.key!r} is not in agents.yaml (known: {sorted(self.config.agents)})")
        if change.kind in ("primary", "forced"):
            if change.model is None:
                refuse(f"{root}.model", "a model is required")
            elif change.model not in self.registry.deployments_by_model:
                refuse(f"{root}.model", f"model {change.model!r} is not served by any provider and is not an alias")
        if change.kind == "strategy" and change.strategy not in self.strategies():
            refuse(f"{root}.strategy", f"strategy {change.strategy!r} is not known (known: {self.strategies()})")
        if not errors and self.overrides.get(change.kind, change.key, self.clock()) is None:
            self.overrides.prune(self.clock())
            if len(self.overrides) >= MAX_OVERRIDES:
                refuse(key_field, f"the override table is full ({MAX_OVERRIDES} entries): clear some first")
        return errors

    def apply(self, change: RoutingChange) -> bool:
        """Apply a checked change to the table; False when a clear found nothing to remove."""
        now = self.clock()
        table = self.overrides
        if change.action == "clear":
            table.prune(now)
            return table.clear(change.kind, change.key)
        assert change.key is not None or change.kind == "strategy"
        if change.kind == "primary":
            table.set_primary(change.key, change.model, change.reason, now, duration_s=change.duration_s)  # type: ignore[arg-type]
        elif change.kind == "strategy":
            table.set_strategy(change.key, change.strategy, change.duration_s, change.reason, now)  # type: ignore[arg-type]
        else:
            table.force_model(change.key, change.model, change.duration_s, change.reason, now)  # type: ignore[arg-type]
        log.info("routing override %s %s %s by %r: %s", change.action, change.kind, change.key or "(global)",
                 change.requested_by, change.reason)
        return True

    # ------------------------------------------------------------------ the event (every instance)

    async def on_event(self, msg: Any, event: RoutingControl) -> None:
        """A change another instance accepted: check it here too, then apply it."""
        if event.instance_id == self.instance_id:
            return
        errors = self.check(event.change, "$.data.change")
        if errors:
            count_invalid(self.metrics, errors[0].code)
            log.warning("routing_control from %s not applied here: %s", event.instance_id, errors[0].message)
            await self.outbox.router_error(msg.reply, RouterError(subject=msg.subject, error=errors[0]))
            return
        self.apply(event.change)
        if self.on_applied is not None:
            self.on_applied(event)

    async def reject_event(self, msg: Any, exc: SignalError) -> None:
        await self.outbox.router_error(msg.reply, RouterError(
            subject=msg.subject, error=ErrorInfo(code=exc.code, message=exc.message, field=exc.field),
        ))

    # ------------------------------------------------------------------ the table

    def routing_table(self, only_agent: str | None = None) -> RoutingTable:
        now = self.clock()
        table = self.overrides
        entries = table.table(now)
        default = self.config.routing.default_strategy
        current = table.global_strategy.strategy if table.global_strategy is not None else default
        agent_ids = set(self.config.agents) | {e.key for e in entries if e.kind != "forced" and e.key is not None}
        if only_agent is not None:
            agent_ids = {only_agent}
            entries = [e for e in entries if e.kind != "forced" and e.key in (only_agent, None)]
        agents: dict[str, AgentRouting] = {}
        for agent_id in sorted(agent_ids):
            agent = self.config.agents.get(agent_id)
            # agents.yaml may name a strategy per agent once the engine reads one.
            configured = getattr(agent, "strategy", None) or default
            strategy = table.strategy_for(agent_id, now)
            primary = table.primary_for(agent_id, now)
            preferred = agent.model_preferences.get("primary") if agent is not None else None
            agents[agent_id] = AgentRouting(
                strategy=strategy.strategy if strategy is not None else configured,
                strategy_source=(
                    "config" if strategy is None else "agent_override" if strategy.scope is not None else "global_override"
                ),
                primary=primary.model if primary is not None else preferred,
                primary_source="override" if primary is not None else "config" if preferred else "none",
                model_preferences=dict(agent.model_preferences) if agent is not None else {},
                routing_rules=len(agent.routing_rules) if agent is not None else 0,
                configured=agent is not None,
            )
        return RoutingTable(
            instance_id=self.instance_id, default_strategy=default, strategy=current,
            strategies=self.strategies(), agents=agents,
            overrides=[
                OverrideInfo(kind=e.kind, key=e.key, model=e.model, strategy=e.strategy, reason=e.reason,
                             expires_in_s=None if e.expires_in_s is None else round(e.expires_in_s, 3))
                for e in entries
            ],
        )


def _wall_expiry(duration_s: float | None) -> str | None:
    if duration_s is None:
        return None
    return (datetime.now(UTC) + timedelta(seconds=duration_s)).isoformat(timespec="seconds")
