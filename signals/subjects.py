"""NATS subjects: the signal names themselves, with an optional prefix.

| subject | who publishes | notes |
|---|---|---|
| ``llm_request`` | callers | routers listen in queue group ``router`` |
| ``llm_response.<agent_id>`` | router | every answer, also sent to the reply subject |
| ``llm_chunk.<agent_id>`` | router | the chunks of a streamed request sent without a reply subject (with one, they go to the reply subject only) |
| ``routing_decision.<agent_id>`` | router | one per routed request |
| ``provider_register`` / ``provider_update`` / ``provider_health`` | operators, monitors | every router instance hears them |
| ``provider_registered.<provider>`` | router | answer to register and update, also to the reply |
| ``provider_metrics.<provider>`` | router | periodic |
| ``cost_report`` | router | periodic; on demand from ``router_control.cost_report`` |
| ``cost_event.<instance_id>`` | router | the spend each instance books, in batches, kept in the JetStream stream ``ROUTER_COST_EVENTS`` (named with the subject prefix, dots as ``_``): replaying it rebuilds the ledger |
| ``router_error`` | router | bad input on a subject whose signal has no answer of its own |
| ``router_control.<endpoint>`` | operators | the control service (nats.micro ``llm-router-control``): ``set_primary``, ``override_strategy``, ``force_model``, ``clear``, ``table``, ``cost_report``; one instance answers each (queue group ``router``) |
| ``routing_control`` | router | every accepted control change; every router instance applies it |
| ``llm_response.%`` / ``provider_registered.%`` | router | answers to bad input whose id could not be read (``%`` is no id's token) |

Per-agent and per-provider suffixes let a consumer select (``llm_response.cto_agent``)
or take everything (``llm_response.>``).

The suffix is one subject token made from the id by ``signals.token``: characters other
than letters, digits and ``_ - : @ /`` are percent-encoded as UTF-8 bytes (``%2E`` for
``.``, ``%25`` for ``%``), so an Identifier only changes where it has a dot
(``team.agent`` -> ``llm_response.team%2Eagent``) and two different ids never share a
subject. ``signals.subjects.untoken`` reverses it. The empty string, which no id is,
becomes ``%``.
"""

from __future__ import annotations

import re

QUEUE_GROUP = "router"
# Kept as they are: the Identifier alphabet without '.', none of it special to NATS (which
# reserves '.', '*', '>' and whitespace) and none of it '%', the escape. '$' (a system
# subject when it leads) and everything else is escaped.
_ESCAPED = re.compile(r"[^A-Za-z0-9_:@/\-]+")
_ESCAPES = re.compile(r"(?:%[0-9A-F]{2})+")


def _escape(match: re.Match[str]) -> str:
    return "".join(f"%{byte:02X}" for byte in match.group().encode("utf-8", "surrogatepass"))


def token(value: str) -> str:
    """One subject token for an id; different values give different tokens (see above)."""
    if not value:
        return "%"
    if _ESCAPED.search(value) is None:  # the common case, twice as fast as sub()
        return value
    return _ESCAPED.sub(_escape, value)


def untoken(subject_token: str) -> str:
    """The value ``token`` was given (for a consumer of ``llm_response.>`` reading the id)."""
    if subject_token == "%":
        return ""
    return _ESCAPES.sub(
        lambda m: bytes.fromhex(m.group().replace("%", "")).decode("utf-8", "surrogatepass"),
        subject_token,
    )


class Subjects:
    def __init__(self, prefix: str = ""):
        if prefix and not prefix.endswith("."):
            prefix += "."
        self.prefix = prefix
        p = prefix
        self.llm_request = f"{p}llm_request"
        self.provider_register = f"{p}provider_register"
        self.provider_update = f"{p}provider_update"
        self.provider_health = f"{p}provider_health"
        self.cost_report = f"{p}cost_report"
        self.router_error = f"{p}router_error"
        self.router_control = f"{p}router_control"
        """The control service's endpoints: ``router_control.<endpoint>``."""
        self.routing_control = f"{p}routing_control"

    def llm_response(self, agent_id: str) -> str:
        return f"{self.prefix}llm_response.{token(agent_id)}"

    def llm_chunk(self, agent_id: str) -> str:
        return f"{self.prefix}llm_chunk.{token(agent_id)}"

    def routing_decision(self, agent_id: str) -> str:
        return f"{self.prefix}routing_decision.{token(agent_id)}"

    def provider_registered(self, provider: str) -> str:
        return f"{self.prefix}provider_registered.{token(provider)}"

    def provider_metrics(self, provider: str) -> str:
        return f"{self.prefix}provider_metrics.{token(provider)}"

    def watch(self, signal: str) -> list[str]:
        """Subjects that carry a signal: the bare name and any suffix."""
        return [f"{self.prefix}{signal}", f"{self.prefix}{signal}.>"]
