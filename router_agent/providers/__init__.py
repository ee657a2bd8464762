"""Provider adapters, one per wire format.

``ADAPTERS`` is the one list of wire formats the agent can speak; a provider whose API is
not in it is emulated (config, in ``auto`` mode) or refused (``provider_register``). The
wire formats the contract knows are ``signals.ProviderApi``.
"""

from __future__ import annotations

from collections.abc import Callable

from router_agent.http import HttpClient
from router_agent.providers.base import Adapter
from router_agent.providers.openai import OpenAIAdapter

ADAPTERS: dict[str, Callable[[HttpClient], Adapter]] = {
    "openai": OpenAIAdapter,
}
