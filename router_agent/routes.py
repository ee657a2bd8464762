"""One ``Route`` per subject: what arrives there, who handles it, how bad input is answered,
what it publishes. The actor (``agent.py``) lists its routes in one table; this module
turns a route into the nats-py callback, which is the one place where signals are
size-checked and decoded, bad input is counted and answered, and a bug in a handler is
contained (logged, counted as ``internal``, answered) so the agent goes on.

Writes ``metrics.invalid_inputs`` / ``invalid_by_code`` / ``internal_errors``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from router_agent.state import Metrics
from signals import SignalError, decode_event

log = logging.getLogger("router_agent")

Handler = Callable[[Any, Any], Awaitable[None]]
"""``handle(msg, decoded_data)``."""
Rejecter = Callable[[Any, SignalError], Awaitable[None]]
"""``reject(msg, error)``: answers input that could not be accepted."""


@dataclass(frozen=True, slots=True)
class Route:
    subject: str
    signal: str
    """The typed input: ``signals.SIGNAL_TYPES[signal]``."""
    handle: Handler
    reject: Rejecter
    publishes: str
    """What the route publishes; the table in ``agent.py``'s docstring is checked against it."""
    queue: str = ""
    """Queue group: one instance takes each message. Empty: every instance hears it."""


def callback(route: Route, max_payload: int, metrics: Metrics, telemetry: Any = None) -> Callable[[Any], Awaitable[None]]:
    """The nats-py callback for ``route``: decode, dispatch, answer bad input, contain bugs.
    With tracing on (``telemetry.Telemetry``), each message gets a CONSUMER span."""
    signal, handle, reject = route.signal, route.handle, route.reject
    traced = telemetry is not None and telemetry.traces_on
    if traced:
        reject = telemetry.rejecting(reject)

    async def deliver(msg: Any) -> None:
        try:
            payload = msg.data
            if len(payload) > max_payload:
                raise SignalError(
                    "payload_too_large", f"payload is {len(payload)} bytes; the limit is {max_payload}"
                )
            data = decode_event(payload, signal)[1]
        except SignalError as exc:
            count_invalid(metrics, exc.code)
            await _contained(reject, msg, exc, metrics)
            return
        try:
            await handle(msg, data)
        except Exception:
            log.exception("handler for %s failed", msg.subject)
            metrics.internal_errors += 1
            await _contained(reject, msg, SignalError("internal", "internal router error"), metrics)

    return telemetry.consuming(signal, route.subject, route.queue, deliver) if traced else deliver


def addressable_id(value: Any, limit: int = 128) -> str:
    """An id read from bad input, as it was sent, or "" when it is not a string or is longer
    than an Identifier. Never cut: a cut id could be another's, and the error answer would
    reach its subject ("" goes to the unaddressed subject, ``<signal>.%``)."""
    return value if isinstance(value, str) and len(value) <= limit else ""


def count_invalid(metrics: Metrics, code: str) -> None:
    metrics.invalid_inputs += 1
    metrics.invalid_by_code[code] = metrics.invalid_by_code.get(code, 0) + 1


async def _contained(reject: Rejecter, msg: Any, exc: SignalError, metrics: Metrics) -> None:
    try:
        await reject(msg, exc)
    except Exception:
        # The answer to bad input failed too: log it; the subscription must go on.
        log.exception("answering bad input on %s failed", msg.subject)
        metrics.internal_errors += 1
