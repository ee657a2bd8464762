"""``python -m bench.relay --nats URL --subject S --upstream URL``: a bare LLM relay.

The least a router written like this one (Python, nats-py, uvloop, ``router_agent.http``)
does for a request: decode the ``llm_request``, post its messages to one chat-completions
endpoint, decode the completion, publish an ``llm_response`` to the reply subject, with a
task per request as any router serving concurrently needs. No routing, limits, breakers,
budgets, accounting, decision signal or copy to ``llm_response.<agent>``.

The latency scenario measures it in the same run as the router: ``router - relay`` is what
the product's own work costs a caller on top of what the stack costs any such relay, and
``relay - direct - echo`` says how much of the own-share goal the stack alone takes.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import msgspec
import nats

from bench.echo import answer_forever, run_like_the_agent
from router_agent.http import HttpClient

HEADERS = {"content-type": "application/json", "accept": "application/json"}


class _Message(msgspec.Struct):
    role: str
    content: str


class _Request(msgspec.Struct):
    request_id: str
    agent_id: str
    messages: list[_Message]
    model: str | None = None


class _Event(msgspec.Struct):
    data: _Request


class _Choice(msgspec.Struct):
    message: _Message
    finish_reason: str | None = None


class _Completion(msgspec.Struct):
    choices: list[_Choice]
    usage: dict[str, Any]


async def serve(url: str, subject: str, upstream: str, model: str) -> None:
    nc = await nats.connect(url, name="bench-relay", pending_size=64 * 1024 * 1024)
    http = HttpClient()
    endpoint = upstream.rstrip("/") + "/chat/completions"
    requests = msgspec.json.Decoder(_Event)
    completions = msgspec.json.Decoder(_Completion)
    encode = msgspec.json.Encoder().encode
    tasks: set[asyncio.Task[None]] = set()

    async def relay(msg: Any) -> None:
        request = requests.decode(msg.data).data
        async with http.posting(endpoint, encode({"model": model, "messages": request.messages}), HEADERS) as answer:
            body = await answer.read()
        completion = completions.decode(body)
        choice = completion.choices[0]
        await nc.publish(msg.reply, encode({
            "specversion": "1.0", "type": "llm.router.llm_response",
            "data": {"request_id": request.request_id, "agent_id": request.agent_id, "status": "ok",
                     "message": choice.message, "model": request.model, "provider": "relay",
                     "finish_reason": choice.finish_reason, "usage": completion.usage},
        }))

    async def on_request(msg: Any) -> None:
        task = asyncio.create_task(relay(msg))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    await answer_forever(nc, subject, on_request, "relay")


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.relay", description=__doc__.split("\n")[0])
    ap.add_argument("--nats", required=True)
    ap.add_argument("--subject", default="bench.relay")
    ap.add_argument("--upstream", required=True, help="base URL of a chat-completions endpoint (the emulator's /v1)")
    ap.add_argument("--model", default="gpt-4-turbo-preview", help="the upstream model id posted")
    args = ap.parse_args()
    run_like_the_agent(serve(args.nats, args.subject, args.upstream, args.model))


if __name__ == "__main__":
    main()
