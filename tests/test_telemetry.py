"""Telemetry: spans across the bus, the GenAI client span, metrics, the Prometheus endpoint.

Spans and metrics are read from the SDK's in-memory exporter and reader; the agent runs on
the in-memory bus (``tests/fast.py``) and once over a real nats-server. Each test waits for
the answers it expects and then stops the agent, so every span has ended before it is read.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import signals as sig
from router_agent.config import TelemetryConfig
from router_agent.core.model import Deployment
from router_agent.outbox import Outbox
from router_agent.routes import Route, callback
from router_agent.state import Metrics
from router_agent.telemetry import Plan, Telemetry, plan
from tests.conftest import Collector
from tests.fast import fast_fixture  # noqa: F401 - the `fast` fixture
from tests.membus import MemoryNats

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
CALLER = f"00-{TRACE_ID}-{CALLER_SPAN}-01"
GPT4 = Deployment(provider="openai", model="gpt-4-turbo", model_id="gpt-4-turbo-2024-04-09", api="openai",
                  type="cloud", base_url="https://api.openai.com/v1")
OFF = TelemetryConfig()


@pytest.fixture(autouse=True)
def _no_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a test turns on is what it says: no OTEL_* variable from the shell leaks in."""
    for name in ("OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER", "OTEL_METRICS_EXPORTER", "OTEL_TRACES_SAMPLER",
                 "OTEL_TRACES_SAMPLER_ARG", "OTEL_EXPORTER_PROMETHEUS_PORT", "OTEL_EXPORTER_PROMETHEUS_HOST"):
        monkeypatch.delenv(name, raising=False)


def traced() -> tuple[Telemetry, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    return Telemetry(OFF, span_processor=SimpleSpanProcessor(exporter)), exporter


def hex_id(value: int, width: int) -> str:
    return format(value, f"0{width}x")


def traceparent_of(span: Any) -> str:
    return f"00-{hex_id(span.context.trace_id, 32)}-{hex_id(span.context.span_id, 16)}-01"


def ancestors(span: Any, spans: list[Any]) -> list[Any]:
    by_id = {s.context.span_id: s for s in spans}
    chain = []
    while span.parent is not None and span.parent.span_id in by_id:
        span = by_id[span.parent.span_id]
        chain.append(span)
    return chain


# ------------------------------------------------------------------ what is on


def test_off_by_default_and_config_or_the_standard_variables_turn_it_on():
    assert plan(OFF, {}) == Plan((), (), None)
    assert plan(TelemetryConfig(enabled=True, exporter="otlp"), {}) == Plan(("otlp",), ("otlp",), None)
    assert plan(TelemetryConfig(enabled=True, exporter="none"), {}) == Plan((), (), None)
    env = {"OTEL_TRACES_EXPORTER": "otlp,console", "OTEL_METRICS_EXPORTER": "prometheus",
           "OTEL_EXPORTER_PROMETHEUS_PORT": "9999"}
    assert plan(OFF, env) == Plan(("otlp", "console"), (), ("localhost", 9999))
    assert plan(TelemetryConfig(enabled=True), {"OTEL_METRICS_EXPORTER": "none"}) == Plan(("console",), (), None)
    assert plan(TelemetryConfig(prometheus_port=0), {}) == Plan((), (), ("127.0.0.1", 0))
    everything = TelemetryConfig(enabled=True, prometheus_port=9464)
    assert plan(everything, {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}) == Plan((), (), None)


def test_an_unknown_exporter_is_an_error_not_a_silent_nothing():
    with pytest.raises(ValueError, match="OTEL_TRACES_EXPORTER='zipkin': unknown exporter 'zipkin'"):
        plan(OFF, {"OTEL_TRACES_EXPORTER": "zipkin"})
    with pytest.raises(ValueError, match="unknown exporter 'prometheus'"):
        plan(OFF, {"OTEL_TRACES_EXPORTER": "prometheus"})  # a metrics-only exporter


def test_off_imports_no_opentelemetry_and_passes_the_callers_context_through():
    script = (
        "import sys\n"
        "from router_agent.agent import RouterAgent\n"
        "from router_agent.config import TelemetryConfig\n"
        "from router_agent.telemetry import Telemetry\n"
        "t = Telemetry(TelemetryConfig())\n"
        f"assert t.start('x', {CALLER!r}, {{}}) == (None, {CALLER!r})\n"
        f"assert t.attempt_start(None, {CALLER!r}) == (None, {CALLER!r})\n"
        "t.attempt_end(None); t.request_done('a', 'p', 'm', 'ok', 0.1); t.observe(in_flight=lambda: 1); t.shutdown()\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('opentelemetry'))\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[1], env={"PATH": ""}, check=False)
    assert done.returncode == 0, done.stderr


def test_off_leaves_the_bus_callback_unwrapped():
    async def handle(msg: Any, data: Any) -> None: ...

    route = Route("llm_request", "llm_request", handle, handle, "")
    assert callback(route, 1024, Metrics(), Telemetry(OFF)).__name__ == "deliver"
    telemetry, _ = traced()
    assert callback(route, 1024, Metrics(), telemetry).__name__ == "traced"


def test_the_sdk_reads_the_sampler_from_the_standard_variables(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0")
    telemetry, exporter = traced()
    span, sent = telemetry.start("llm_request", None, {})
    telemetry.end(span, {})
    assert not span.is_recording() and int(sent[-2:], 16) & 1 == 0  # unsampled, and said so downstream
    # parentbased_* follows a sampled caller whatever the ratio
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    telemetry, exporter = traced()
    span, _ = telemetry.start("llm_request", CALLER, {})
    telemetry.end(span, {})
    assert [s.name for s in exporter.get_finished_spans()] == ["llm_request"]


# ------------------------------------------------------------------ the GenAI client span


def test_a_provider_attempt_is_a_genai_client_span_in_the_callers_trace():
    telemetry, exporter = traced()
    attempt, upstream = telemetry.attempt_start(GPT4, CALLER)
    telemetry.attempt_end(attempt, response_model="gpt-4-turbo-2024-04-09", input_tokens=12, output_tokens=30,
                          finish_reason="stop")
    (span,) = exporter.get_finished_spans()
    assert span.name == "chat gpt-4-turbo-2024-04-09" and span.kind is SpanKind.CLIENT
    assert hex_id(span.context.trace_id, 32) == TRACE_ID and hex_id(span.parent.span_id, 16) == CALLER_SPAN
    assert upstream == traceparent_of(span)  # what goes to the provider in its traceparent header
    assert dict(span.attributes) == {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4-turbo-2024-04-09", "gen_ai.response.model": "gpt-4-turbo-2024-04-09",
        "gen_ai.usage.input_tokens": 12, "gen_ai.usage.output_tokens": 30,
        "gen_ai.response.finish_reasons": ("stop",),
        "server.address": "api.openai.com", "server.port": 443,
        "router.provider": "openai", "router.model": "gpt-4-turbo",
    }
    assert span.status.status_code is StatusCode.UNSET


def test_a_failed_attempt_carries_its_error_type_and_no_usage():
    telemetry, exporter = traced()
    gemini = Deployment(provider="google", model="gemini-pro", model_id="gemini-1.5-pro", api="gemini",
                        type="cloud", base_url="http://127.0.0.1:8080/v1beta")
    attempt, _ = telemetry.attempt_start(gemini, None)
    telemetry.attempt_end(attempt, error_type="rate_limited")
    (span,) = exporter.get_finished_spans()
    assert span.parent is None  # no caller trace: the attempt starts one
    assert span.attributes["gen_ai.provider.name"] == "gcp.gemini"
    assert (span.attributes["server.address"], span.attributes["server.port"]) == ("127.0.0.1", 8080)
    assert span.attributes["error.type"] == "rate_limited" and span.status.status_code is StatusCode.ERROR
    assert "gen_ai.usage.input_tokens" not in span.attributes


# ------------------------------------------------------------------ consumer and producer spans


async def test_one_request_is_one_trace_from_the_caller_through_the_router(fast):
    telemetry, exporter = traced()
    f = await fast.start(tracing=telemetry)
    stream = await f.client.collect(f.subjects.llm_response("tester"))
    request = f.client.new_request(model="gpt-4-turbo")
    response = await f.client.ask(request, headers={"traceparent": CALLER})
    assert response.status == "ok"
    await stream.wait_for(lambda r: r.request_id == request.request_id)
    await f.agent.stop()  # every request task has finished: every span has ended

    spans = exporter.get_finished_spans()
    assert {hex_id(s.context.trace_id, 32) for s in spans} == {TRACE_ID}
    (consumer,) = [s for s in spans if s.kind is SpanKind.CONSUMER]
    assert consumer.name == "process llm_request" and hex_id(consumer.parent.span_id, 16) == CALLER_SPAN
    assert dict(consumer.attributes) == {
        "messaging.system": "nats", "messaging.operation.type": "process", "messaging.operation.name": "process",
        "messaging.destination.name": f.subjects.llm_request,
        "messaging.destination.subscription.name": f.subjects.llm_request,
        "messaging.consumer.group.name": f.agent.settings.queue_group,
        "messaging.message.body.size": len(sig.encode_event("llm_request", request)),
    }
    producers = [s for s in spans if s.kind is SpanKind.PRODUCER]
    assert sorted((s.name, s.attributes["messaging.destination.name"]) for s in producers if
                  not s.attributes.get("messaging.destination.temporary")) == [
        ("publish llm_response", f.subjects.llm_response("tester")),
        ("publish routing_decision", f.subjects.routing_decision("tester")),
    ]
    (to_reply,) = [s for s in producers if s.attributes.get("messaging.destination.temporary")]
    assert to_reply.name == "publish llm_response"
    for span in producers:
        assert span.attributes["messaging.system"] == "nats"
        assert span.attributes["messaging.operation.type"] == "send"
        assert consumer in ancestors(span, spans)  # the router's work hangs under the received signal
    # Observers of the stream continue the trace from the producer span that sent it.
    (_, _, headers) = stream.items[-1]
    (to_stream,) = [s for s in producers if s.attributes["messaging.destination.name"] == stream.items[-1][0]]
    assert headers == {"traceparent": traceparent_of(to_stream)}


async def test_bad_input_marks_its_consumer_span_with_the_error(fast):
    telemetry, exporter = traced()
    f = await fast.start(tracing=telemetry)
    answer = await f.client.ask_raw(b"{not json")
    assert answer.error.code == "malformed_json"
    await f.agent.stop()
    (consumer,) = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CONSUMER]
    assert consumer.parent is None and consumer.attributes["error.type"] == "malformed_json"
    assert consumer.status.status_code is StatusCode.ERROR


async def test_a_publish_without_trace_context_is_not_traced_and_off_sends_the_callers_header():
    bus = MemoryNats()
    agent_nc, observer = bus.connect("agent"), bus.connect("observer")
    seen = Collector()
    await observer.subscribe("llm_response.>", cb=seen.on_message)
    telemetry, exporter = traced()
    answer = sig.LlmResponse(request_id="r", agent_id="a", status="ok")
    payload = sig.encode_event("llm_response", answer)
    await Outbox(agent_nc, sig.EventFactory("test"), sig.Subjects(), Metrics(), telemetry).send_answer(
        "a", payload, "", None)
    await Outbox(agent_nc, sig.EventFactory("test"), sig.Subjects(), Metrics(), Telemetry(OFF)).send_answer(
        "a", payload, "", CALLER)
    await seen.wait_for(lambda _: len(seen.items) == 2)
    assert [headers for _, _, headers in seen.items] == [None, {"traceparent": CALLER}]
    assert exporter.get_finished_spans() == ()


@settings(max_examples=60, deadline=None)
@given(st.one_of(st.none(), st.text(max_size=80), st.just(CALLER), st.just(f"00-{'0' * 32}-{'0' * 16}-01")))
def test_any_traceparent_a_sender_writes_yields_a_valid_one(header: str | None):
    telemetry, _ = traced()
    _, sent = telemetry.start("llm_request", header, {})
    _, headers = telemetry.producer_start("llm_response", "llm_response.a", 10, sent)
    assert sent and len(sent) == 55 and sent.startswith("00-") and headers["traceparent"][36:] != sent[36:]
    if header == CALLER:
        assert sent[3:35] == TRACE_ID


hexes = st.text(alphabet="0123456789abcdefABCDEF", min_size=1, max_size=34)


@settings(max_examples=150, deadline=None)
@given(st.one_of(
    st.tuples(st.sampled_from(["00", "01", "ff", "cc", "0"]), st.one_of(st.just(TRACE_ID), st.just("0" * 32), hexes),
              st.one_of(st.just(CALLER_SPAN), st.just("0" * 16), hexes), st.sampled_from(["00", "01", "02", "x1"]),
              st.sampled_from(["", "-", "-extra"])).map(lambda p: "-".join(p[:4]) + p[4]),
    st.text(max_size=60),
))
def test_a_traceparent_is_read_as_the_sdks_own_propagator_reads_it(header: str):
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    telemetry, _ = traced()
    ours = trace.get_current_span(telemetry._parent(header)).get_span_context()
    theirs = trace.get_current_span(TraceContextTextMapPropagator().extract({"traceparent": header})).get_span_context()
    assert (ours.is_valid, ours.trace_id, ours.span_id, ours.trace_flags) == (
        theirs.is_valid, theirs.trace_id, theirs.span_id, theirs.trace_flags)


@pytest.mark.integration
async def test_over_nats_the_answer_continues_the_callers_trace(agents, client, subjects):
    import nats

    from router_agent.agent import RouterAgent

    telemetry, exporter = traced()
    nc = await nats.connect(agents.nats_url)
    agent = RouterAgent(agents.make_config(), nc, emulator_url=agents.emulator.url, tracing=telemetry)
    await agent.start()
    agents.agents.append(agent)
    stream = await client.collect(subjects.llm_response("tester"))
    request = client.new_request(model="gpt-4-turbo")
    assert (await client.ask(request, headers={"traceparent": CALLER})).status == "ok"
    await stream.wait_for(lambda r: r.request_id == request.request_id)
    await agent.stop()
    spans = exporter.get_finished_spans()
    assert {hex_id(s.context.trace_id, 32) for s in spans} == {TRACE_ID}
    (consumer,) = [s for s in spans if s.kind is SpanKind.CONSUMER]
    sent = stream.items[-1][2]["traceparent"]
    (to_stream,) = [s for s in spans if s.kind is SpanKind.PRODUCER and traceparent_of(s) == sent]
    assert consumer in ancestors(to_stream, spans) and hex_id(consumer.parent.span_id, 16) == CALLER_SPAN


# ------------------------------------------------------------------ metrics


def points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    return {m.name: list(m.data.data_points) for rm in data.resource_metrics for sm in rm.scope_metrics
            for m in sm.metrics}


def test_requests_attempts_and_gauges_are_recorded():
    reader = InMemoryMetricReader()
    telemetry = Telemetry(OFF, metric_reader=reader)
    assert telemetry.metrics_on and not telemetry.traces_on
    attempt, sent = telemetry.attempt_start(GPT4, CALLER)
    assert attempt is not None and sent == CALLER  # metrics alone: no span, the context passes through
    telemetry.attempt_end(attempt, response_model="gpt-4-turbo-2024-04-09", input_tokens=12, output_tokens=30)
    telemetry.request_done("coder", "openai", "gpt-4-turbo", "ok", 0.25, ttft_s=0.05, input_tokens=12,
                           output_tokens=30, cost_usd=0.00102, cached=True)
    telemetry.request_done("coder", "", "", "error", 0.5, error_type="no_candidates")
    telemetry.observe(in_flight=lambda: 3, queue_depth=lambda: 7,
                      breaker_states=lambda: [(("openai", "gpt-4-turbo"), "open"), (("local", "llama"), "closed")])

    got = points(reader)
    (duration,) = got["gen_ai.client.operation.duration"]
    assert duration.count == 1 and duration.attributes["gen_ai.provider.name"] == "openai"
    assert duration.attributes["gen_ai.response.model"] == "gpt-4-turbo-2024-04-09"
    usage = {p.attributes["gen_ai.token.type"]: p.sum for p in got["gen_ai.client.token.usage"]}
    assert usage == {"input": 12, "output": 30}
    requests = {p.attributes["router.status"]: p for p in got["router.request.duration"]}
    assert requests["ok"].count == requests["error"].count == 1
    assert requests["error"].attributes["error.type"] == "no_candidates"
    (ttft,) = got["router.request.time_to_first_token"]
    assert ttft.sum == pytest.approx(0.05)
    assert {p.attributes["gen_ai.token.type"]: p.value for p in got["router.tokens"]} == {"input": 12, "output": 30}
    ((cost,), (hits,)) = got["router.cost.micro_usd"], got["router.cache.hits"]
    assert cost.value == 1020 and hits.value == 1 and cost.attributes["router.agent_id"] == "coder"
    assert [p.value for p in got["router.requests.in_flight"]] == [3]
    assert [p.value for p in got["router.queue.depth"]] == [7]
    breakers = {(p.attributes["router.provider"], p.attributes["router.model"]): p.value
                for p in got["router.breaker.state"]}
    assert breakers == {("openai", "gpt-4-turbo"): 2, ("local", "llama"): 0}
    telemetry.shutdown()


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return answer.read().decode()


async def test_the_prometheus_endpoint_serves_the_metrics():
    telemetry = Telemetry(TelemetryConfig(prometheus_port=0))
    assert telemetry.metrics_on and not telemetry.traces_on
    host, port = telemetry.prometheus_address
    assert host == "127.0.0.1" and port > 0
    telemetry.request_done("coder", "openai", "gpt-4-turbo", "ok", 0.25, input_tokens=12, output_tokens=30,
                           cost_usd=0.001)
    attempt, _ = telemetry.attempt_start(GPT4, None)
    telemetry.attempt_end(attempt, input_tokens=12, output_tokens=30)
    telemetry.observe(in_flight=lambda: 4, breaker_states=lambda: [(("openai", "gpt-4-turbo"), "half_open")])
    text = await asyncio.to_thread(scrape, f"http://{host}:{port}/metrics")
    samples = [line for line in text.splitlines() if not line.startswith("#")]
    for name in ("router_request_duration_seconds_count", "gen_ai_client_token_usage_bucket",
                 "gen_ai_client_operation_duration_seconds_count", "router_cost_micro_usd_total",
                 "router_tokens_total", "router_requests_in_flight", "router_breaker_state"):
        assert any(line.startswith(name + "{") for line in samples), name
    (in_flight,) = [line for line in samples if line.startswith("router_requests_in_flight{")]
    (breaker,) = [line for line in samples if line.startswith("router_breaker_state{")]
    assert in_flight.endswith(" 4.0") and breaker.endswith(" 1.0")  # 1: half-open
    assert 'router_provider="openai"' in breaker and 'router_model="gpt-4-turbo"' in breaker
    telemetry.shutdown()
    with pytest.raises(urllib.error.URLError):
        await asyncio.to_thread(scrape, f"http://{host}:{port}/metrics")


def test_a_prometheus_port_in_use_fails_at_start_with_the_address():
    first = Telemetry(TelemetryConfig(prometheus_port=0))
    try:
        port = first.prometheus_address[1]
        with pytest.raises(RuntimeError, match=f"cannot serve Prometheus metrics on 127.0.0.1:{port}"):
            Telemetry(TelemetryConfig(prometheus_port=port))
    finally:
        first.shutdown()
