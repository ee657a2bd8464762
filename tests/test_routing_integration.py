"""The routing engine over a real nats-server, with the shipped config and the emulator:
the design's examples route as it says, every time, and say why."""

from __future__ import annotations

import pytest

import signals as sig
from tests.fast import FakeClock
from tests.test_control_service import call

pytestmark = pytest.mark.integration

REPEAT = 4  # "every time": round robin over three candidates would miss within four tries

EXAMPLES = [
    ("backend_agent", {"type": "code_generation"}, "deepseek-coder-33b", "agents.backend_agent.routing_rules[0]"),
    ("backend_agent", {"complexity": 7}, "claude-3-opus", "agents.backend_agent.routing_rules[1]"),
    ("cto_agent", {"privacy_level": "high"}, "llama-3-70b", "agents.cto_agent.routing_rules[0]"),
    ("cto_agent", {"complexity": 9}, "claude-3-opus", "agents.cto_agent.routing_rules[1]"),
    ("frontend_agent", {"involves_ui_design": True}, "gpt-4-turbo", "agents.frontend_agent.routing_rules[0]"),
    ("qa_agent", {"type": "test_generation"}, "llama-3-70b", "agents.qa_agent.routing_rules[0]"),
    ("qa_agent", {"requires_reasoning": True}, "gpt-4-turbo", "agents.qa_agent.routing_rules[1]"),
]


async def ask_and_explain(client, subjects, agent_id: str, **fields) -> tuple[sig.LlmResponse, sig.RoutingDecision]:
    decisions = await client.collect(subjects.routing_decision(agent_id))
    request = client.new_request(agent_id=agent_id, **fields)
    response = await client.ask(request)
    decision = await decisions.wait_for(lambda d: d.request_id == request.request_id)
    return response, decision


@pytest.mark.parametrize(("agent_id", "task", "model", "rule"), EXAMPLES,
                         ids=[f"{a}-{m}-{next(iter(t))}" for a, t, m, _ in EXAMPLES])
async def test_the_design_examples_route_as_the_design_says_every_time(agent, client, subjects, agent_id, task,
                                                                       model, rule):
    for _ in range(REPEAT):
        response, decision = await ask_and_explain(client, subjects, agent_id, task=sig.Task(**task))
        assert response.status == "ok", response.error
        assert response.model == model
        assert decision.chosen is not None and decision.chosen.model == model
        assert decision.rule == rule
        assert 1 <= decision.chosen.suitability <= 5 and 0 < decision.chosen.score <= 1
        assert 0 < decision.confidence <= 1
        assert decision.complexity_source == ("request" if "complexity" in task else "estimated")
        if "complexity" in task:
            assert decision.complexity == task["complexity"]


PII = {
    "card": "Please charge my card 4111 1111 1111 1111 for the upgrade.",
    "iban": "Wire it to GB82 WEST 1234 5698 7654 32 by Friday.",
    "email": "Reply to jane.doe@example.com with the summary.",
}


@pytest.mark.parametrize("kind", sorted(PII))
@pytest.mark.parametrize("agent_id", ["cto_agent", "frontend_agent", "somebody_unconfigured"])
async def test_personal_data_goes_to_a_local_model_with_no_cloud_fallback(agent, client, subjects, agent_id, kind):
    response, decision = await ask_and_explain(client, subjects, agent_id, content=PII[kind])
    assert response.status == "ok", response.error
    local = {name for name, m in agent.config.models.items() if m.type == "local"}
    assert response.model in local
    assert decision.chosen.model in local
    assert all(f.model in local for f in decision.fallbacks)
    assert decision.pii_kinds == [{"card": "payment_card"}.get(kind, kind)]
    assert "personal data" in decision.privacy
    assert any(r.constraint == "privacy" for r in decision.rejected)
    # The value found is never published: not in the decision, not in its reasons.
    published = sig.encode_event("routing_decision", decision)
    for secret in ("4111", "GB82", "jane.doe"):
        assert secret.encode() not in published


async def test_a_critical_task_on_a_local_model_is_verified_by_a_stronger_one(agent, client, subjects):
    response, decision = await ask_and_explain(
        client, subjects, "qa_agent", task=sig.Task(type="test_generation", critical=True))
    assert decision.chosen.model == "llama-3-70b"
    assert decision.verify_with is not None and decision.verify_with.model == "gpt-4-turbo"
    assert response.status == "ok"
    assert response.verification == sig.Verification(
        status="verified", draft_model="llama-3-70b", draft_provider="local",
        verifier_model="gpt-4-turbo", verifier_provider="openai")
    assert response.model == "gpt-4-turbo"  # the caller receives the verifier's answer
    assert [(a.model, a.outcome) for a in response.attempts] == [("llama-3-70b", "ok"), ("gpt-4-turbo", "ok")]


async def test_a_private_critical_task_is_never_verified_in_the_cloud(agent, client, subjects):
    response, decision = await ask_and_explain(
        client, subjects, "qa_agent", task=sig.Task(type="test_generation", critical=True, privacy_level="high"))
    assert decision.chosen.model == "llama-3-70b"
    cloud = {name for name, m in agent.config.models.items() if m.type == "cloud"}
    assert decision.verify_with is None or decision.verify_with.model not in cloud
    assert all(a.model not in cloud for a in response.attempts)


async def test_the_development_environment_forces_local_models(agents, client, subjects):
    agent = await agents.start({"routing": {"global_overrides": {"force_local_models": True}}})
    response, decision = await ask_and_explain(client, subjects, "frontend_agent",
                                               task=sig.Task(involves_ui_design=True))
    local = {name for name, m in agent.config.models.items() if m.type == "local"}
    assert response.model in local
    assert "agents.frontend_agent.routing_rules[0]" in " ".join(decision.notes)  # gpt-4-turbo was removed
    assert any(r.model == "gpt-4-turbo" and r.constraint == "local_only" for r in decision.rejected)


# --------------------------------------------------------------------------- runtime control


async def test_a_strategy_override_takes_effect_at_once_and_expires_on_time(routers, operator, client, subjects):
    clock = FakeClock()
    await routers("ctl-route", clock)
    before = await ask_and_explain(client, subjects, "cto_agent", task=sig.Task(complexity=9))
    assert before[1].chosen.model == "claude-3-opus" and before[1].strategy == "round_robin"

    result, _ = await call(operator, subjects, "override_strategy", {
        "strategy": "privacy_first", "agent_id": "cto_agent", "duration_s": 7200, "reason": "audit"})
    assert result.accepted, result.errors
    response, decision = await ask_and_explain(client, subjects, "cto_agent", task=sig.Task(complexity=9))
    assert decision.strategy == "privacy_first" and "override" in decision.reason
    assert response.model == "llama-3-70b"  # claude-3-opus: removed, the strategy is local only
    assert any(r.model == "claude-3-opus" and r.constraint == "local_only" for r in decision.rejected)

    clock.advance(7199.9)
    assert (await ask_and_explain(client, subjects, "cto_agent", task=sig.Task(complexity=9)))[1].strategy == "privacy_first"
    clock.advance(0.1)
    response, decision = await ask_and_explain(client, subjects, "cto_agent", task=sig.Task(complexity=9))
    assert decision.strategy == "round_robin" and response.model == "claude-3-opus"


async def test_a_primary_set_at_run_time_leads_the_agents_requests(routers, operator, client, subjects):
    await routers("ctl-route", FakeClock())
    result, _ = await call(operator, subjects, "set_primary", {
        "agent_id": "frontend_agent", "model": "llama", "reason": "gpt-4 quota"})
    assert result.accepted, result.errors
    for _ in range(REPEAT):
        response, decision = await ask_and_explain(client, subjects, "frontend_agent")
        assert (response.model, decision.rule) == ("llama-3-70b", "primary")


async def test_a_model_forced_for_a_task_serves_it_and_still_obeys_privacy(routers, operator, client, subjects):
    await routers("ctl-route", FakeClock())
    result, _ = await call(operator, subjects, "force_model", {
        "task_id": "incident-7", "model": "gemini-1.5-pro", "duration_s": 600, "reason": "repro"})
    assert result.accepted, result.errors
    response, decision = await ask_and_explain(client, subjects, "qa_agent",
                                               task=sig.Task(id="incident-7", type="test_generation"))
    assert (response.model, decision.rule, decision.confidence) == ("gemini-1.5-pro", "forced", 1.0)
    other = await ask_and_explain(client, subjects, "qa_agent", task=sig.Task(id="incident-8", type="test_generation"))
    assert other[0].model == "llama-3-70b"
    private = await ask_and_explain(client, subjects, "qa_agent",
                                    task=sig.Task(id="incident-7", privacy_level="high"))
    assert private[0].status == "error" and private[0].error.code == "no_candidates"
    assert [(r.model, r.constraint) for r in private[1].rejected] == [("gemini-1.5-pro", "privacy")]


async def test_what_a_request_carries_becomes_a_hard_constraint(agent, client, subjects):
    image = sig.ChatMessage(role="user", content=[
        sig.TextPart(text="What is on this whiteboard?"),
        sig.ImagePart(image_url=sig.ImageUrl(url="https://example.com/board.png"))])
    vision = {n for n, m in agent.config.models.items() if "vision" in m.capabilities}
    for _ in range(REPEAT):
        response, decision = await ask_and_explain(client, subjects, "somebody", messages=[image])
        assert response.status == "ok", response.error
        assert response.model in vision
        assert {c.model for c in [decision.chosen, *decision.fallbacks]} <= vision
        lacking = {r.model for r in decision.rejected if r.constraint == "capability" and "vision" in r.detail}
        assert lacking == set(agent.config.models) - vision
