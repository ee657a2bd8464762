"""OpenAI-compatible chat completions over HTTP (OpenAI, vLLM, llama.cpp, Ollama, emulator)."""

from __future__ import annotations

import aiohttp
import msgspec

from router_agent.core.model import Deployment
from router_agent.http import HttpClient
from router_agent.providers.base import Completion, ProviderError, status_error
from signals import LlmRequest


class _Message(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    message: _Message
    finish_reason: str | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _ChatResponse(msgspec.Struct):
    choices: list[_Choice]
    usage: _Usage = msgspec.field(default_factory=_Usage)


class _ChatRequest(msgspec.Struct, omit_defaults=True):
    model: str
    messages: list
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(_ChatResponse)
_BASE_HEADERS = {"content-type": "application/json", "accept": "application/json"}


class OpenAIAdapter:
    def __init__(self, http: HttpClient):
        self._http = http

    async def complete(self, request: LlmRequest, deployment: Deployment, api_key: str | None) -> Completion:
        p = request.params
        body = _encoder.encode(
            _ChatRequest(
                model=deployment.model_id,
                messages=request.messages,
                temperature=p.temperature,
                top_p=p.top_p,
                max_tokens=p.max_tokens,
                stop=p.stop,
                seed=p.seed,
                presence_penalty=p.presence_penalty,
                frequency_penalty=p.frequency_penalty,
            )
        )
        headers = _BASE_HEADERS
        if api_key:
            headers = {**_BASE_HEADERS, "authorization": f"Bearer {api_key}"}
        try:
            result = await self._http.post(f"{deployment.base_url}/chat/completions", body, headers)
        except (aiohttp.ClientError, OSError) as exc:
            raise ProviderError("provider_error", f"cannot reach provider: {type(exc).__name__}", True) from None
        if result.status != 200:
            raise status_error(result.status, _error_detail(result.body))
        try:
            parsed = _decoder.decode(result.body)
        except msgspec.DecodeError as exc:
            raise ProviderError("provider_error", f"unreadable provider answer: {exc}", True) from None
        if not parsed.choices:
            raise ProviderError("provider_error", "provider answered with no choices", True)
        choice = parsed.choices[0]
        return Completion(
            content=choice.message.content or "",
            finish_reason=choice.finish_reason or "",
            input_tokens=parsed.usage.prompt_tokens,
            output_tokens=parsed.usage.completion_tokens,
        )

    async def probe(self, base_url: str, api_key: str | None) -> tuple[bool, str, bool]:
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        try:
            result = await self._http.get(f"{base_url}/models", headers)
        except (aiohttp.ClientError, OSError) as exc:
            return False, f"cannot reach {base_url}: {type(exc).__name__}", False
        emulated = result.headers.get("x-emulated", "").lower() == "true"
        if result.status == 200:
            return True, "ok", emulated
        return False, f"{base_url}/models answered HTTP {result.status}", emulated


class _ErrorBody(msgspec.Struct):
    error: dict | str | None = None


def _error_detail(body: bytes) -> str:
    """The upstream's own error message, trimmed; never the request (it may hold secrets)."""
    try:
        error = msgspec.json.decode(body, type=_ErrorBody).error
    except msgspec.DecodeError:
        return body[:200].decode("utf-8", "replace")
    if isinstance(error, dict):
        return str(error.get("message", ""))[:200]
    return str(error or "")[:200]
