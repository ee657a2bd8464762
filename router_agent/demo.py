"""``python3 dev.py run``: the agent on an embedded nats-server with emulated providers, and a short
demo workload sent over the bus the way any other agent would send it.

After the workload the agent keeps running; the last lines print the exact commands to
send your own request or watch the signals from a second terminal. Ctrl-C stops it.
"""

from __future__ import annotations

import asyncio
import logging
import sys

import signals as sig
from router_agent.agent import RouterAgent
from router_agent.app import run
from router_agent.bus import connect, sync_subscriptions
from router_agent.cli import _event_loop_policy
from router_agent.config import NatsConfig, load_config

WORKLOAD: list[tuple[str, str, dict]] = [
    ("cto_agent", "Sketch the architecture of a rate limiter for LLM calls.", {}),
    ("cto_agent", "Review this salary spreadsheet for anomalies.", {"task": sig.Task(privacy_level="high")}),
    ("backend_agent", "Write a FastAPI endpoint that returns the health of each provider.", {}),
    ("frontend_agent", "Propose a dashboard layout for routing decisions.", {}),
    ("qa_agent", "Generate edge-case tests for a token bucket.", {"model": "gpt4"}),
    ("cto_agent", "Needs a capability nobody has.", {"requirements": sig.Requirements(capabilities=["time_travel"])}),
]


async def _workload(agent: RouterAgent, url: str) -> None:
    nc = await connect(url, NatsConfig(), name="router-demo")
    subjects = agent.subjects
    decisions: dict[str, sig.RoutingDecision] = {}

    async def on_decision(msg) -> None:
        decision = sig.decode_data(msg.data, "routing_decision")
        decisions[decision.request_id] = decision

    await nc.subscribe(f"{subjects.prefix}routing_decision.*", cb=on_decision)
    await sync_subscriptions(nc)
    print("\n--- demo workload: requests sent over NATS like any agent would -----------------", flush=True)
    for i, (agent_id, prompt, extra) in enumerate(WORKLOAD, 1):
        request = sig.LlmRequest(
            request_id=f"demo-{i}", agent_id=agent_id, messages=[sig.ChatMessage(role="user", content=prompt)], **extra
        )
        reply = await nc.request(subjects.llm_request, sig.encode_event("llm_request", request, source="demo"), timeout=10)
        response: sig.LlmResponse = sig.decode_data(reply.data, "llm_response")
        decision = decisions.get(request.request_id)
        print(f"\n[{i}] {agent_id}: {prompt}", flush=True)
        if decision is not None:
            rejected = ", ".join(f"{r.model} ({r.constraint})" for r in decision.rejected) or "none"
            print(f"    decision: {decision.reason}; rejected: {rejected}")
        if response.status == "ok":
            tag = " EMULATED" if response.emulated else ""
            print(f"    -> {response.provider}/{response.model}{tag}, {response.latency_ms:.1f} ms, "
                  f"{response.usage.input_tokens}+{response.usage.output_tokens} tokens, ${response.cost_usd:.6f}")
            print(f"    {response.message.content if response.message else ''}")
        else:
            print(f"    -> error {response.error.code}: {response.error.message}")
    await nc.close()
    report = agent.cost_report()
    print(f"\ncost so far: ${report.total.cost_usd:.6f} over {report.total.requests} requests "
          f"(by agent: {', '.join(f'{k} ${v.cost_usd:.6f}' for k, v in report.by_agent.items())})")
    print("\n--- the agent keeps running; from a second terminal try: ---------------------------")
    print(f"  .venv/bin/router-agent request --nats-url {url} --agent cto_agent \"Plan the database migration\"")
    print(f"  .venv/bin/router-agent watch --nats-url {url} routing_decision llm_response cost_report")
    print("Ctrl-C stops the agent gracefully.", flush=True)


def main() -> int:
    config = load_config()
    logging.basicConfig(level=config.logging.level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _event_loop_policy()
    try:
        asyncio.run(run(config, announce=lambda line: print(line, flush=True), on_ready=_workload))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
