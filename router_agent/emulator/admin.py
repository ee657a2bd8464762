"""The admin endpoint: read and change faults and timing while the emulator runs.

Chaos tests flip faults under load through it; a change applies to the next request.

=================================  ================================================================
``GET /admin/faults``              ``{model: FaultSpec}`` (``rate_limit_burst`` is what is left)
``PUT /admin/faults``              body ``{model: FaultSpec | status}``: replaces the whole table
``PUT /admin/faults/{model}``      body ``FaultSpec`` or a bare status: sets one model (``*``: all)
``DELETE /admin/faults/{model}``   removes one model's faults
``DELETE /admin/faults``           removes every fault
``GET /admin/models``              ``{"default": ModelProfile, "models": {model: ModelProfile}}``
``PUT /admin/models``              body ``{"default"?: ModelProfile, "models"?: {...}}``: replaces the parts given
``PUT /admin/models/{model}``      body ``ModelProfile``: sets one model
``DELETE /admin/models/{model}``   the model goes back to the default profile
``GET /admin/stats``               ``{"uptime_s", "requests": {model: n}, "faults": {model: {kind: n}}, "hanging"}``
``DELETE /admin/stats``            zeroes the counters
=================================  ================================================================

Every write answers with the new state of what it changed (the fault table, or the
profiles). A bad body gets a 400 ``{"error": "<what and where>"}`` and changes nothing. With
an ``admin_token`` configured, requests need ``Authorization: Bearer <token>`` (401 without).
"""

from __future__ import annotations

import hmac
from typing import Any

import msgspec
from aiohttp import web

from router_agent.emulator.respond import json_response
from router_agent.emulator.runtime import RUNTIME, Runtime
from router_agent.emulator.settings import FaultSpec, ModelProfile, to_fault_spec

__all__ = ["add_admin_routes"]


class ModelsDoc(msgspec.Struct, forbid_unknown_fields=True):
    default: ModelProfile | None = None
    models: dict[str, ModelProfile] | None = None


_encode = msgspec.json.Encoder().encode
_decode_faults = msgspec.json.Decoder(dict[str, FaultSpec | int]).decode
_decode_fault = msgspec.json.Decoder(FaultSpec | int).decode
_decode_models = msgspec.json.Decoder(ModelsDoc).decode
_decode_profile = msgspec.json.Decoder(ModelProfile).decode


def _error(status: int, message: str) -> web.Response:
    return json_response(_encode({"error": message}), status)


def _profile(profile: ModelProfile) -> dict[str, Any]:
    return {"ttft_ms": profile.ttft_ms, "tokens_per_s": profile.tokens_per_s, "jitter": profile.jitter}


def _faults_view(runtime: Runtime) -> web.Response:
    return json_response(_encode(runtime.faults.specs()))


def _models_view(runtime: Runtime) -> web.Response:
    doc = {"default": _profile(runtime.default),
           "models": {name: _profile(p) for name, p in sorted(runtime.profiles.items())}}
    return json_response(_encode(doc))


@web.middleware
async def _guard(request: web.Request, handler: Any) -> web.StreamResponse:
    """Token check for ``/admin/*`` (the middleware only wraps the admin sub-app)."""
    token = request.app[RUNTIME].admin_token
    if token is not None:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return _error(401, "admin endpoint: missing or wrong bearer token")
    try:
        return await handler(request)
    except (msgspec.DecodeError, ValueError) as exc:
        return _error(400, f"{request.method} {request.path}: {exc}")


async def get_faults(request: web.Request) -> web.Response:
    return _faults_view(request.app[RUNTIME])


async def put_faults(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    table = {model: to_fault_spec(spec) for model, spec in _decode_faults(await request.read()).items()}
    runtime.replace_faults(table)
    return _faults_view(runtime)


async def put_fault(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    runtime.set_fault(request.match_info["model"], to_fault_spec(_decode_fault(await request.read())))
    return _faults_view(runtime)


async def delete_fault(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    runtime.set_fault(request.match_info["model"], None)
    return _faults_view(runtime)


async def delete_faults(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    runtime.replace_faults({})
    return _faults_view(runtime)


async def get_models(request: web.Request) -> web.Response:
    return _models_view(request.app[RUNTIME])


async def put_models(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    doc = _decode_models(await request.read())
    runtime.set_profiles(doc.default, doc.models)
    return _models_view(runtime)


async def put_model(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    runtime.set_profile(request.match_info["model"], _decode_profile(await request.read()))
    return _models_view(runtime)


async def delete_model(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    runtime.set_profile(request.match_info["model"], None)
    return _models_view(runtime)


async def get_stats(request: web.Request) -> web.Response:
    return json_response(_encode(request.app[RUNTIME].stats()))


async def delete_stats(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    runtime.reset_stats()
    return json_response(_encode(runtime.stats()))


def add_admin_routes(app: web.Application, runtime: Runtime) -> None:
    """Mount ``/admin`` as a sub-app, so its token check costs the vendor routes nothing."""
    admin = web.Application(middlewares=[_guard])
    admin[RUNTIME] = runtime
    admin.router.add_get("/faults", get_faults)
    admin.router.add_put("/faults", put_faults)
    admin.router.add_delete("/faults", delete_faults)
    admin.router.add_put("/faults/{model:.+}", put_fault)
    admin.router.add_delete("/faults/{model:.+}", delete_fault)
    admin.router.add_get("/models", get_models)
    admin.router.add_put("/models", put_models)
    admin.router.add_put("/models/{model:.+}", put_model)
    admin.router.add_delete("/models/{model:.+}", delete_model)
    admin.router.add_get("/stats", get_stats)
    admin.router.add_delete("/stats", delete_stats)
    app.add_subapp("/admin", admin)
