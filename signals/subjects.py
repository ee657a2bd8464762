"""NATS subjects: the signal names themselves, with an optional prefix.

| subject | who publishes | notes |
|---|---|---|
| ``llm_request`` | callers | routers listen in queue group ``router`` |
| ``llm_response.<agent_id>`` | router | every answer, also sent to the reply subject |
| ``routing_decision.<agent_id>`` | router | one per routed request |
| ``provider_register`` / ``provider_update`` / ``provider_health`` | operators, monitors | every router instance hears them |
| ``provider_registered.<provider>`` | router | answer to register and update, also to the reply |
| ``provider_metrics.<provider>`` | router | periodic |
| ``cost_report`` | router | periodic |
| ``router_error`` | router | bad input on a subject whose signal has no answer of its own |

Per-agent and per-provider suffixes let a consumer select (``llm_response.cto_agent``)
or take everything (``llm_response.>``).
"""

from __future__ import annotations

import re

QUEUE_GROUP = "router"
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]")


def token(value: str) -> str:
    """Make a value safe as a single subject token ('.', '*', '>' and spaces become '_')."""
    return _UNSAFE.sub("_", value) or "_"


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

    def llm_response(self, agent_id: str) -> str:
        return f"{self.prefix}llm_response.{token(agent_id)}"

    def routing_decision(self, agent_id: str) -> str:
        return f"{self.prefix}routing_decision.{token(agent_id)}"

    def provider_registered(self, provider: str) -> str:
        return f"{self.prefix}provider_registered.{token(provider)}"

    def provider_metrics(self, provider: str) -> str:
        return f"{self.prefix}provider_metrics.{token(provider)}"

    def watch(self, signal: str) -> list[str]:
        """Subjects that carry a signal: the bare name and any suffix."""
        return [f"{self.prefix}{signal}", f"{self.prefix}{signal}.>"]
