"""Helpers for the adapter tests: a scripted upstream HTTP server on 127.0.0.1 that records
what it was sent, and a field-by-field check of a request body against a vendor SDK's
request TypedDict.

The server answers each request with the next scripted ``Reply`` (the last one repeats): a
status, headers and a body, or a list of chunks written one by one (a stream), or a hang
until the server is closed (for timeouts). Nothing is mocked in the adapter under test:
it speaks real HTTP through the agent's own ``HttpClient``.
"""

from __future__ import annotations

import asyncio
import collections.abc
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_origin, get_type_hints

import pydantic
from aiohttp import web
from typing_extensions import NotRequired, ReadOnly, Required, is_typeddict  # noqa: UP035 - ReadOnly too

from router_agent.core.model import Deployment
from signals import ChatMessage, LlmRequest


@dataclass
class Reply:
    status: int = 200
    body: bytes | dict[str, Any] | list[Any] = b"{}"
    chunks: list[bytes] | None = None
    """Written one by one (``content-type`` from ``headers``); the body is then unused."""
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False
    """Send the headers (or nothing, with ``hang_before_headers``), then never finish."""
    hang_before_headers: bool = False


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Upstream:
    """``await Upstream.start([...])``; ``.url``; ``.seen``; ``await .close()``."""

    def __init__(self, replies: list[Reply]):
        self.replies = list(replies)
        self.seen: list[Seen] = []
        self._stop = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    @classmethod
    async def start(cls, replies: list[Reply]) -> Upstream:
        upstream = cls(replies)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", upstream._handle)
        upstream._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
        await upstream._runner.setup()
        site = web.TCPSite(upstream._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        upstream.url = f"http://127.0.0.1:{port}"
        return upstream

    async def close(self) -> None:
        self._stop.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def script(self, *replies: Reply) -> None:
        self.replies = list(replies)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(Seen(request.method, request.path, dict(request.query), dict(request.headers),
                              await request.read()))
        reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        if reply.hang_before_headers:
            await self._stop.wait()
            raise web.HTTPServiceUnavailable()
        if reply.chunks is None and not reply.hang:
            body = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
            return web.Response(status=reply.status, body=body,
                                headers={"content-type": "application/json", **reply.headers})
        response = web.StreamResponse(status=reply.status, headers=reply.headers)
        await response.prepare(request)
        for chunk in reply.chunks or ():
            await response.write(chunk)
        if reply.hang:
            await self._stop.wait()
        await response.write_eof()
        return response


def deployment(base_url: str, api: str, model_id: str = "model-x") -> Deployment:
    return Deployment(provider="p", model="m", model_id=model_id, api=api, type="cloud", base_url=base_url)


def request(*messages: ChatMessage | dict[str, Any], **fields: Any) -> LlmRequest:
    """An ``LlmRequest`` decoded from plain data, as the agent would receive it."""
    import msgspec

    data = {
        "request_id": "r-1", "agent_id": "tester",
        "messages": [m if isinstance(m, dict) else msgspec.to_builtins(m) for m in messages]
        or [{"role": "user", "content": "hello"}],
        **fields,
    }
    return msgspec.convert(data, LlmRequest)


def sse(*events: Any, event_names: list[str] | None = None, done: bool = False) -> list[bytes]:
    """SSE frames: one ``data:`` (and ``event:`` when named) per event, JSON-encoded."""
    frames = []
    for i, event in enumerate(events):
        name = f"event: {event_names[i]}\n" if event_names else ""
        frames.append(f"{name}data: {json.dumps(event)}\n\n".encode())
    if done:
        frames.append(b"data: [DONE]\n\n")
    return frames


# --------------------------------------------------------------------------- SDK request types


def _strip(tp: Any) -> Any:
    while get_origin(tp) in (Required, NotRequired, ReadOnly, typing.Annotated):
        tp = get_args(tp)[0]
    return tp


def wire_problems(value: Any, tp: Any, path: str = "$") -> list[str]:
    """Where ``value`` strays from the SDK type ``tp``: unknown keys, missing required keys,
    values outside a Literal, wrong JSON kinds. Unions pass if any member fits."""
    tp = _strip(tp)
    origin = get_origin(tp)
    if tp is Any or tp is object or isinstance(tp, typing.TypeVar):
        return []
    if origin in (typing.Union, types.UnionType):
        best: list[str] | None = None
        for member in get_args(tp):
            problems = wire_problems(value, member, path)
            if not problems:
                return []
            if best is None or len(problems) < len(best):
                best = problems
        return best or [f"{path}: no member of {tp} fits"]
    if origin is Literal:
        return [] if value in get_args(tp) else [f"{path}: {value!r} not in {get_args(tp)}"]
    if is_typeddict(tp):
        if not isinstance(value, dict):
            return [f"{path}: expected an object"]
        hints = get_type_hints(tp, include_extras=True)
        problems = [f"{path}.{k}: unknown field" for k in value if k not in hints]
        # ``__required_keys__`` misses keys marked Required[...] under string annotations.
        required = {k for k, h in hints.items() if get_origin(h) is Required} | set(tp.__required_keys__)
        problems += [f"{path}.{k}: missing" for k in required if k not in value]
        for key, item in value.items():
            if key in hints:
                problems += wire_problems(item, hints[key], f"{path}.{key}")
        return problems
    if origin in (list, collections.abc.Iterable, collections.abc.Sequence, typing.Iterable, typing.Sequence):
        if not isinstance(value, list):
            return [f"{path}: expected an array"]
        (item_tp,) = get_args(tp) or (Any,)
        return [p for i, item in enumerate(value) for p in wire_problems(item, item_tp, f"{path}[{i}]")]
    if origin in (dict, collections.abc.Mapping) or tp is dict:
        return [] if isinstance(value, dict) else [f"{path}: expected an object"]
    if isinstance(tp, type) and issubclass(tp, pydantic.BaseModel):  # SDKs mix response models in
        try:
            tp.model_validate(value)
        except pydantic.ValidationError as exc:
            return [f"{path}: not a {tp.__name__} ({exc.error_count()} errors)"]
        return []
    if tp is str:
        return [] if isinstance(value, str) else [f"{path}: expected a string"]
    if tp is bool:
        return [] if isinstance(value, bool) else [f"{path}: expected a boolean"]
    if tp in (int, float):
        return [] if isinstance(value, (int, float)) and not isinstance(value, bool) else [f"{path}: expected a number"]
    if tp is type(None):
        return [] if value is None else [f"{path}: expected null"]
    return []
