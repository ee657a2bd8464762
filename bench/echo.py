"""``python -m bench.echo --nats URL --subject S``: a bare nats-py request/reply echo.

The floor any agent on NATS pays for one request/reply: the bench's latency scenario
measures it in the same run as the router, and reports the router's own share as
``(router - direct) - echo``. It answers every request on ``S`` with a fixed payload the
size of a small ``llm_response``, from its own process (like the agent), doing no work.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import nats

ANSWER = (b'{"specversion":"1.0","type":"llm.router.llm_response","data":{"request_id":"echo",'
          b'"status":"ok","agent_id":"bench","message":{"role":"assistant","content":"[emulated] echo"},'
          b'"model":"echo","provider":"echo","usage":{"input_tokens":10,"output_tokens":4}}}')


async def serve(url: str, subject: str) -> None:
    nc = await nats.connect(url, name="bench-echo", pending_size=64 * 1024 * 1024)

    async def echo(msg) -> None:
        await nc.publish(msg.reply, ANSWER)

    await answer_forever(nc, subject, echo, "echo")


async def answer_forever(nc: nats.NATS, subject: str, cb: Callable[[Any], Awaitable[None]], name: str) -> None:
    """Subscribe ``cb`` to ``subject``, say ``<name> ready: <subject>`` (what the bench waits
    for), then serve until stopped."""
    await nc.subscribe(subject, cb=cb, pending_msgs_limit=1_000_000)
    await nc.flush()
    print(f"{name} ready:", subject, flush=True)
    await asyncio.Event().wait()


def run_like_the_agent(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on uvloop when it is installed, as the agent runs: the same floor."""
    try:
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    asyncio.run(main)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.echo", description=__doc__.split("\n")[0])
    ap.add_argument("--nats", required=True)
    ap.add_argument("--subject", default="bench.echo")
    args = ap.parse_args()
    run_like_the_agent(serve(args.nats, args.subject))


if __name__ == "__main__":
    main()
