"""``router-agent``: run the agent, the emulator, and talk to the bus like another agent would.

Commands that touch the bus take ``--nats-url`` (default: $NATS_URL, else
nats://127.0.0.1:4222). Exit codes: 0 ok, 1 the answer was an error or a rejection,
2 usage or no answer in time, 3 cannot reach the bus.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import msgspec
import nats.errors
import yaml

import signals as sig
from router_agent import control_cli, cost_cli
from router_agent.bus import BusError, connect, sync_subscriptions
from router_agent.config import ConfigError, NatsConfig, load_config

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="router-agent", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def bus(p: argparse.ArgumentParser) -> None:
        p.add_argument("--nats-url", default=None, help=f"NATS URL (default: $NATS_URL or {DEFAULT_NATS_URL})")
        p.add_argument("--prefix", default="", help="subject prefix, when the router uses one")

    run = sub.add_parser("run", help="run the router agent")
    run.add_argument("--nats-url", default=None,
                     help="NATS URL (default: $NATS_URL, else config, else an embedded nats-server)")
    run.add_argument("--config", default=None, help="config directory (default: the bundled config/)")
    run.add_argument("--env", default=None, help="environment overlay: config/environments/<ENV>.yaml "
                                                   "(default: $ROUTER_ENV)")
    run.add_argument("--overlay", action="append", default=[], help="extra YAML overlay file (repeatable)")
    run.add_argument("--emulator-url", default=None, help="use this running emulator for emulated providers")
    run.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING or ERROR")

    emulate = sub.add_parser("emulate", help="run the provider emulator (OpenAI, Anthropic, Gemini, Ollama APIs)")
    emulate.add_argument("--config", default=None, help="emulator YAML: models, faults, seed (see config/emulator.yaml)")
    emulate.add_argument("--host", default=None, help="bind address (default: the file's, else 127.0.0.1)")
    emulate.add_argument("--port", type=int, default=None, help="port (default: the file's, else 8000; 0 picks one)")
    emulate.add_argument("--latency-ms", type=float, default=None,
                         help="default time to first token (default: the file's, else 40)")
    emulate.add_argument("--tokens-per-s", type=float, default=None, help="default generation pace (0: instant)")
    emulate.add_argument("--jitter", type=float, default=None, help="timing jitter, 0 to 1")
    emulate.add_argument("--seed", type=int, default=None, help="seed for jitter and fault draws")

    request = sub.add_parser("request", help="send one llm_request; print the decision and the response")
    bus(request)
    request.add_argument("prompt", nargs="?", help="the user message (or use --file)")
    request.add_argument("--file", help="a JSON/YAML llm_request data document ('-' for stdin)")
    request.add_argument("--agent", default="cli", help="agent_id (default: cli)")
    request.add_argument("--model", default=None, help="insist on a model (name or alias)")
    request.add_argument("--system", default=None, help="a system message")
    request.add_argument("--max-tokens", type=int, default=None)
    request.add_argument("--temperature", type=float, default=None)
    request.add_argument("--task-type", default=None)
    request.add_argument("--complexity", type=int, default=None)
    request.add_argument("--privacy", choices=["low", "normal", "high"], default=None)
    request.add_argument("--capability", action="append", default=[], help="required capability (repeatable)")
    request.add_argument("--timeout", type=float, default=30.0,
                         help="seconds to wait for the answer (with --stream: for each next piece of it)")
    request.add_argument("--stream", action="store_true",
                         help="stream the answer: print it as it arrives (llm_chunk signals), then the summary")
    request.add_argument("--json", action="store_true", help="print the raw signals as JSON (one line each)")

    register = sub.add_parser("register", help="register a provider at run time")
    bus(register)
    register.add_argument("file", nargs="?", help="a YAML/JSON provider_register data document")
    register.add_argument("--provider")
    register.add_argument("--base-url")
    register.add_argument("--model", action="append", default=[], help="model name (repeatable)")
    register.add_argument("--type", choices=["cloud", "local"], default="local")
    register.add_argument("--api-key-env", default=None)
    register.add_argument("--capability", action="append", default=[], help="capability of every model")
    register.add_argument("--timeout", type=float, default=10.0)

    watch = sub.add_parser("watch", help="print signals as they pass")
    bus(watch)
    watch.add_argument("signal", nargs="*", help=f"signal names (default: all of {', '.join(sig.SIGNAL_TYPES)})")
    watch.add_argument("--count", type=int, default=0, help="exit after this many signals")
    watch.add_argument("--timeout", type=float, default=0, help="exit after this many seconds")

    control_cli.add_parser(sub, bus)  # router-agent control ping|info|stats|table|set-primary|...
    cost_cli.add_parser(sub, bus)  # router-agent cost
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {"run": _run, "emulate": _emulate, "request": _request, "register": _register, "watch": _watch,
               "control": lambda a: control_cli.run(a, _bus_url(a)), "cost": lambda a: cost_cli.run(a, _bus_url(a))}
    try:
        return handler[args.command](args)
    except ConfigError as exc:
        print(f"router-agent: {exc}", file=sys.stderr)
        return 2
    except BusError as exc:
        print(f"router-agent: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130


def _event_loop_policy() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _say(line: str) -> None:
    print(line, flush=True)


def _run(args: argparse.Namespace) -> int:
    from router_agent.app import run

    config = load_config(args.config, args.env, args.overlay)
    level = args.log_level or config.logging.level
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _event_loop_policy()
    asyncio.run(run(config, nats_url=args.nats_url, emulator_url=args.emulator_url, announce=_say))
    return 0


def _emulate(args: argparse.Namespace) -> int:
    from router_agent.emulator import EmulatorConfig, build_config, load_config, serve

    try:
        base = load_config(args.config) if args.config else EmulatorConfig()
        config = build_config(base, host=args.host, port=args.port, latency_ms=args.latency_ms,
                              tokens_per_s=args.tokens_per_s, jitter=args.jitter, seed=args.seed)
    except ValueError as exc:
        print(f"router-agent emulate: {exc}", file=sys.stderr)
        return 2
    _event_loop_policy()
    try:
        asyncio.run(serve(config=config))
    except KeyboardInterrupt:
        pass
    return 0


def _bus_url(args: argparse.Namespace) -> str:
    return args.nats_url or os.environ.get("NATS_URL") or DEFAULT_NATS_URL


def _load_document(path: str) -> Any:
    text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    return yaml.safe_load(text)


def _request(args: argparse.Namespace) -> int:
    if args.file:
        data = _load_document(args.file)
        data.setdefault("request_id", uuid.uuid4().hex[:16])
        data.setdefault("agent_id", args.agent)
        try:
            request = msgspec.convert(data, sig.LlmRequest)
        except msgspec.ValidationError as exc:
            print(f"router-agent: invalid request: {exc}", file=sys.stderr)
            return 2
    elif args.prompt:
        messages = [sig.ChatMessage(role="system", content=args.system)] if args.system else []
        messages.append(sig.ChatMessage(role="user", content=args.prompt))
        request = sig.LlmRequest(
            request_id=uuid.uuid4().hex[:16],
            agent_id=args.agent,
            messages=messages,
            model=args.model,
            params=sig.Params(max_tokens=args.max_tokens, temperature=args.temperature),
            task=sig.Task(type=args.task_type, complexity=args.complexity, privacy_level=args.privacy),
            requirements=sig.Requirements(capabilities=args.capability),
        )
    else:
        print("router-agent: give a prompt or --file", file=sys.stderr)
        return 2
    if args.stream:
        request = msgspec.structs.replace(request, stream=True)
    return asyncio.run(_request_async(args, request))


async def _request_async(args: argparse.Namespace, request: sig.LlmRequest) -> int:
    subjects = sig.Subjects(args.prefix)
    nc = await connect(_bus_url(args), NatsConfig(), name="router-agent-cli")
    decisions: asyncio.Queue[sig.RoutingDecision] = asyncio.Queue()

    async def on_decision(msg: Any) -> None:
        decision = sig.decode_data(msg.data, "routing_decision")
        if decision.request_id == request.request_id:
            decisions.put_nowait(decision)

    await nc.subscribe(subjects.routing_decision(request.agent_id), cb=on_decision)
    await sync_subscriptions(nc)
    payload = sig.encode_event("llm_request", request, source="router-agent-cli")
    shown = False
    try:
        if request.stream:
            response, shown = await _stream(nc, subjects, payload, decisions, args)
        else:
            reply = await nc.request(subjects.llm_request, payload, timeout=args.timeout)
            response = sig.decode_data(reply.data, "llm_response")
    except TimeoutError:
        print(f"router-agent: no answer within {args.timeout}s (is a router running?)", file=sys.stderr)
        await nc.close()
        return 2
    except (nats.errors.Error, OSError, _NoResponders) as exc:  # NoRespondersError and friends
        print(f"router-agent: request failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        await nc.close()
        return 2
    try:
        decision = None if shown else await asyncio.wait_for(decisions.get(), 1.0)
    except TimeoutError:
        decision = None
    await nc.close()
    if args.json:
        if decision is not None:
            print(json.dumps({"routing_decision": msgspec.to_builtins(decision)}))
        print(json.dumps({"llm_response": msgspec.to_builtins(response)}))
    else:
        _print_human(decision, response, content=not request.stream)
    return 0 if response.status == "ok" else 1


class _NoResponders(Exception):
    pass


async def _stream(nc: Any, subjects: sig.Subjects, payload: bytes, decisions: asyncio.Queue[sig.RoutingDecision],
                  args: argparse.Namespace) -> tuple[sig.LlmResponse, bool]:
    """Publish a streamed request with our own reply inbox; print each ``llm_chunk`` as it
    arrives (after the decision, when it is there by then); return the terminal
    ``llm_response`` and whether the decision was printed. ``args.timeout`` bounds each wait."""
    pieces: asyncio.Queue[Any] = asyncio.Queue()
    inbox = nc.new_inbox()
    await nc.subscribe(inbox, cb=pieces.put)
    await nc.publish(subjects.llm_request, payload, reply=inbox)
    expected, shown = 0, False
    while True:
        msg = await asyncio.wait_for(pieces.get(), args.timeout)
        if msg.headers and msg.headers.get("Status") == "503":  # what nc.request() turns into NoRespondersError
            raise _NoResponders("nats: no responders available for request")
        if _msg_type(msg.data) == sig.event_type("llm_response"):
            if not args.json and expected:
                print(flush=True)  # end the streamed text's line
            return sig.decode_data(msg.data, "llm_response"), shown
        chunk: sig.LlmChunk = sig.decode_data(msg.data, "llm_chunk")
        if chunk.seq != expected:
            print(f"router-agent: chunk(s) {expected}..{chunk.seq - 1} missing", file=sys.stderr)
        expected = chunk.seq + 1
        if args.json:
            print(json.dumps({"llm_chunk": msgspec.to_builtins(chunk)}), flush=True)
            continue
        if chunk.seq == 0 and not decisions.empty():
            _print_human(decisions.get_nowait(), None)
            shown = True
        parts = [chunk.content]
        for fragment in chunk.tool_calls:
            parts.append(f"\n[tool call {fragment.name}] " if fragment.name else "")
            parts.append(fragment.arguments)
        sys.stdout.write("".join(parts))
        sys.stdout.flush()


class _EventType(msgspec.Struct):
    type: str = ""


def _msg_type(payload: bytes) -> str:
    """A CloudEvent's ``type``, without decoding its data ("" when it has none)."""
    try:
        return msgspec.json.decode(payload, type=_EventType).type
    except msgspec.DecodeError:
        return ""


def _print_human(decision: sig.RoutingDecision | None, response: sig.LlmResponse | None,
                 content: bool = True) -> None:
    if decision is not None:
        chosen = f"{decision.chosen.provider}/{decision.chosen.model}" if decision.chosen else "none"
        fallbacks = ", ".join(f"{c.provider}/{c.model}" for c in decision.fallbacks) or "none"
        print(f"decision: {chosen}{' (EMULATED)' if decision.emulated else ''} - {decision.reason}")
        if decision.chosen:
            print(f"  score {decision.chosen.score:.3f}, suitability {decision.chosen.suitability}/5, "
                  f"confidence {decision.confidence:.2f}, complexity {decision.complexity} ({decision.complexity_source})")
        if decision.pii_kinds or decision.privacy:
            print(f"  privacy: {decision.privacy or 'none'}; personal data found: {', '.join(decision.pii_kinds) or 'none'}")
        print(f"  fallbacks: {fallbacks}")
        for note in decision.notes:
            print(f"  note: {note}")
        for r in decision.rejected:
            print(f"  rejected {r.provider}/{r.model}: {r.constraint} ({r.detail})")
    if response is None:
        return
    streamed = response.streamed
    if streamed is not None:
        first = f", the first after {streamed.first_chunk_ms:.1f} ms" if streamed.chunks else ""
        print(f"streamed: {streamed.chunks} chunk(s), {streamed.chars} character(s){first}")
    for warning in response.warnings:
        print(f"warning: {warning}")
    if response.status == "ok":
        tag = " (EMULATED)" if response.emulated else ""
        estimated = " (estimated)" if response.usage.estimated else ""
        print(f"response: {response.provider}/{response.model}{tag} in {response.latency_ms:.1f} ms, "
              f"{response.usage.input_tokens}+{response.usage.output_tokens} tokens{estimated}, "
              f"${response.cost_usd:.6f}")
        if content or streamed is None or not streamed.chunks:  # not printed as it streamed
            print(response.message.content if response.message else "")
    else:
        assert response.error is not None
        print(f"error: {response.error.code}: {response.error.message} (retryable: {response.error.retryable})")
        for attempt in response.attempts:
            print(f"  attempt {attempt.provider}/{attempt.model}: {attempt.outcome}"
                  f"{' - ' + attempt.error.message if attempt.error else ''}")


def _register(args: argparse.Namespace) -> int:
    if args.file:
        data = _load_document(args.file)
    elif args.provider and args.base_url and args.model:
        data = {
            "provider": args.provider,
            "base_url": args.base_url,
            "type": args.type,
            "models": [{"name": m, "capabilities": args.capability} for m in args.model],
        }
        if args.api_key_env:
            data["api_key_env"] = args.api_key_env
    else:
        print("router-agent: give a file, or --provider, --base-url and --model", file=sys.stderr)
        return 2
    try:
        register = msgspec.convert(data, sig.ProviderRegister)
    except msgspec.ValidationError as exc:
        print(f"router-agent: invalid provider_register: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_register_async(args, register))


async def _register_async(args: argparse.Namespace, register: sig.ProviderRegister) -> int:
    subjects = sig.Subjects(args.prefix)
    nc = await connect(_bus_url(args), NatsConfig(), name="router-agent-cli")
    try:
        reply = await nc.request(
            subjects.provider_register, sig.encode_event("provider_register", register, source="router-agent-cli"),
            timeout=args.timeout,
        )
    except TimeoutError:
        print(f"router-agent: no answer within {args.timeout}s (is a router running?)", file=sys.stderr)
        return 2
    finally:
        await nc.close()
    answer: sig.ProviderRegistered = sig.decode_data(reply.data, "provider_registered")
    if answer.accepted:
        print(f"registered {answer.provider}: models {', '.join(answer.models)}"
              f"{' (EMULATED)' if answer.emulated else ''}")
        return 0
    print(f"rejected {answer.provider}:")
    for error in answer.errors:
        print(f"  {error.code}: {error.message}{' at ' + error.field if error.field else ''}")
    return 1


def _watch(args: argparse.Namespace) -> int:
    names = args.signal or list(sig.SIGNAL_TYPES)
    unknown = [n for n in names if n not in sig.SIGNAL_TYPES]
    if unknown:
        print(f"router-agent: unknown signal(s) {unknown}; known: {list(sig.SIGNAL_TYPES)}", file=sys.stderr)
        return 2
    return asyncio.run(_watch_async(args, names))


async def _watch_async(args: argparse.Namespace, names: list[str]) -> int:
    subjects = sig.Subjects(args.prefix)
    nc = await connect(_bus_url(args), NatsConfig(), name="router-agent-watch")
    done = asyncio.Event()
    seen = 0

    async def on_message(msg: Any) -> None:
        nonlocal seen
        print(f"{msg.subject} {msg.data.decode('utf-8', 'replace')}", flush=True)
        seen += 1
        if args.count and seen >= args.count:
            done.set()

    for name in names:
        for subject in subjects.watch(name):
            await nc.subscribe(subject, cb=on_message)
    await sync_subscriptions(nc)
    print(f"watching {', '.join(names)} on {_bus_url(args)}", file=sys.stderr, flush=True)
    try:
        await asyncio.wait_for(done.wait(), args.timeout or None)
    except TimeoutError:
        pass
    finally:
        await nc.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
