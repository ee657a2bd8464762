"""Provider adapters, one per wire format.

``ADAPTERS`` is the one list of wire formats the agent can speak, keyed by
``signals.ProviderApi``: a deployment's ``api`` picks its adapter, for real and emulated
providers alike (the emulator speaks every one of them).
"""

from __future__ import annotations

from collections.abc import Callable

from router_agent.http import HttpClient
from router_agent.providers.anthropic import AnthropicAdapter
from router_agent.providers.base import Adapter
from router_agent.providers.gemini import GeminiAdapter
from router_agent.providers.ollama import OllamaAdapter
from router_agent.providers.openai import OpenAIAdapter

ADAPTERS: dict[str, Callable[[HttpClient], Adapter]] = {
    "openai": OpenAIAdapter,
    "anthropic": AnthropicAdapter,
    "gemini": GeminiAdapter,
    "ollama": OllamaAdapter,
}
