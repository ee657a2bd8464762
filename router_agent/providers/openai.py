"""OpenAI-compatible chat completions over HTTP (OpenAI, vLLM, llama.cpp, Ollama, emulator).

Upstream text (error messages, decode errors) is redacted before it becomes an error
message: an upstream may echo the key it was sent, and the message is published on the bus.
Redirects are not followed (``router_agent/http.py``): a 3xx fails the call and the probe.
"""

from __future__ import annotations

import aiohttp
import msgspec

from router_agent.core.model import Deployment
from router_agent.core.redact import redact
from router_agent.http import HttpClient, endpoint_refusal
from router_agent.providers.base import Completion, ProviderError, status_error, unreachable_error
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
            raise unreachable_error(_unreachable_detail(exc)) from None
        if result.status != 200:
            raise status_error(result.status, _error_detail(result.body, api_key))
        try:
            parsed = _decoder.decode(result.body)
        except msgspec.DecodeError as exc:
            detail = redact(str(exc)[:_DETAIL_SCAN], (api_key,))[:_DETAIL_LIMIT]
            raise ProviderError("provider_error", f"unreadable provider answer: {detail}", True) from None
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
            return False, f"cannot reach {base_url}: {_unreachable_detail(exc)}", False
        emulated = result.headers.get("x-emulated", "").lower() == "true"
        if result.status == 200:
            return True, "ok", emulated
        if 300 <= result.status < 400:
            return False, (f"{base_url}/models answered with a redirect (HTTP {result.status}); "
                           "redirects are not followed: register the final URL"), emulated
        return False, f"{base_url}/models answered HTTP {result.status}", emulated


class _ErrorBody(msgspec.Struct):
    error: dict | str | None = None


_DETAIL_LIMIT = 200
"""Characters of upstream text kept in an error message."""
_DETAIL_SCAN = 1000
"""Characters redacted before the cut to ``_DETAIL_LIMIT``: a key across the cut is whole then."""


def _error_detail(body: bytes, api_key: str | None) -> str:
    """The upstream's own error message, redacted and trimmed; never the request."""
    try:
        error = msgspec.json.decode(body, type=_ErrorBody).error
    except msgspec.DecodeError:
        text = body[:_DETAIL_SCAN].decode("utf-8", "replace")
    else:
        text = str(error.get("message", "")) if isinstance(error, dict) else str(error or "")
    return redact(text[:_DETAIL_SCAN], (api_key,))[:_DETAIL_LIMIT]


def _unreachable_detail(exc: BaseException) -> str:
    """Why no answer came: the endpoint policy's refusal (host named, addresses not), or
    the exception's type (its text may carry addresses and OS detail)."""
    refusal = endpoint_refusal(exc)
    return refusal.strerror if refusal is not None else type(exc).__name__
