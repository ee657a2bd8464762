"""OpenTelemetry for the agent: traces across the bus, GenAI client spans, metrics, Prometheus.

Writes nothing in ``RouterState``: it only reads what the agent's callbacks hand it.

Rules
-----
1. Off by default, and then free: no OpenTelemetry module is imported, every hook returns
   after one attribute read, bus callbacks are not wrapped and ``traceparent`` passes through.
2. The standard variables first, config second (``plan``): ``OTEL_TRACES_EXPORTER`` /
   ``OTEL_METRICS_EXPORTER`` (console, otlp, none; metrics also prometheus, on
   ``OTEL_EXPORTER_PROMETHEUS_HOST``/``PORT``), else ``telemetry.enabled`` + ``exporter`` for
   both; ``telemetry.prometheus_port`` serves ``/metrics`` on its own; ``OTEL_SDK_DISABLED=true``
   wins. An unknown exporter is an error at start, not a silent nothing.
3. Sampling is the SDK's (``OTEL_TRACES_SAMPLER`` / ``_ARG``, default parentbased_always_on):
   a caller's sampled flag is followed. OTLP goes over HTTP/protobuf (``OTEL_EXPORTER_OTLP_*``).
4. The providers are this object's own, never the process-global ones.

Theory of operation
-------------------
Trace context travels in the W3C ``traceparent`` NATS header. A received signal gets a
CONSUMER span (``routes.callback``) under the sender's header, and the handler finds that
span's context in the header instead, so what it starts (the ``llm_request`` span) is its
child. A provider attempt is a CLIENT span whose traceparent goes upstream in the HTTP
header. A publish that carries a trace context (decisions, answers; not periodic reports or
chunks) is a PRODUCER span whose own context goes out in the header (``outbox.py``).

| span                   | kind     | attributes                                              |
|------------------------|----------|---------------------------------------------------------|
| process <signal>       | CONSUMER | messaging.system=nats, messaging.destination.name, messaging.destination.subscription.name, messaging.consumer.group.name, messaging.operation.type=process, messaging.message.body.size, error.type |
| llm_request            | INTERNAL | router.* (what requests.py passes)                      |
| chat <model_id>        | CLIENT   | gen_ai.operation.name=chat, gen_ai.provider.name, gen_ai.request.model, gen_ai.response.model, gen_ai.usage.input_tokens, gen_ai.usage.output_tokens, gen_ai.response.finish_reasons, server.address, server.port, router.provider, router.model, error.type |
| publish <signal>       | PRODUCER | messaging.system=nats, messaging.destination.name, messaging.destination.temporary (reply subjects), messaging.operation.type=send, messaging.message.body.size |

Metrics: ``gen_ai.client.*`` per provider attempt (``attempt_end``), ``router.*`` per request
(``request_done``) and gauges read from the callbacks given to ``observe``; README.md,
"Telemetry", has the table of names, units and labels.
"""

from __future__ import annotations

import contextvars
import importlib
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from router_agent.config import TelemetryConfig
from router_agent.core.model import Deployment, DeploymentKey

# gen_ai.provider.name by wire format: a vLLM server speaks openai, router.provider says which it was.
GEN_AI_PROVIDER = {"openai": "openai", "anthropic": "anthropic", "gemini": "gcp.gemini", "ollama": "ollama"}
BREAKER_LEVEL = {"closed": 0, "half_open": 1, "open": 2}
# The GenAI semantic conventions' advised buckets.
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)
EXPORTERS = {"traces": ("console", "otlp"), "metrics": ("console", "otlp", "prometheus")}

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?\Z")
_consuming: contextvars.ContextVar[Any] = contextvars.ContextVar("router_agent_consuming", default=None)
"""The CONSUMER span being delivered (nats-py runs a subscription's callbacks in one task)."""


@dataclass(frozen=True, slots=True)
class Plan:
    traces: tuple[str, ...]
    metrics: tuple[str, ...]  # the push exporters; a scrape endpoint is ``prometheus``
    prometheus: tuple[str, int] | None


def plan(cfg: TelemetryConfig, env: Mapping[str, str] = os.environ) -> Plan:
    """Which exporters run, from the ``OTEL_*`` variables and then config (the module's rule 2)."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return Plan((), (), None)
    default = (cfg.exporter,) if cfg.enabled and cfg.exporter != "none" else ()
    traces = _exporter_names("traces", env.get("OTEL_TRACES_EXPORTER"), default)
    metrics = _exporter_names("metrics", env.get("OTEL_METRICS_EXPORTER"), default)
    prometheus = None
    if cfg.prometheus_port is not None:
        prometheus = (cfg.prometheus_host, cfg.prometheus_port)
    elif "prometheus" in metrics:
        prometheus = (env.get("OTEL_EXPORTER_PROMETHEUS_HOST", "localhost"),
                      int(env.get("OTEL_EXPORTER_PROMETHEUS_PORT", "9464")))
    return Plan(traces, tuple(m for m in metrics if m != "prometheus"), prometheus)


def _exporter_names(signal: str, value: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
    if value is None or not value.strip():
        return default
    names = tuple(dict.fromkeys(n.strip().lower() for n in value.split(",") if n.strip()))
    unknown = [n for n in names if n != "none" and n not in EXPORTERS[signal]]
    if unknown:
        raise ValueError(f"OTEL_{signal.upper()}_EXPORTER={value!r}: unknown exporter {unknown[0]!r}; "
                         f"known: {', '.join(EXPORTERS[signal])}, none")
    return tuple(n for n in names if n != "none")


@dataclass(slots=True)
class Attempt:
    """One provider attempt in flight: its span (or None) and what its metrics need."""

    span: Any
    attributes: dict[str, Any]
    started: float = field(default_factory=time.perf_counter)


class Telemetry:
    """The agent's traces and metrics, each a no-op when off (``traces_on``, ``metrics_on``).
    ``span_processor`` / ``metric_reader`` (tests: the in-memory ones) replace the configured
    exporters; giving one turns that half on."""

    def __init__(self, cfg: TelemetryConfig, span_processor: Any = None, metric_reader: Any = None):
        self.plan = plan(cfg)
        self.traces_on = span_processor is not None or bool(self.plan.traces)
        self.metrics_on = metric_reader is not None or bool(self.plan.metrics) or self.plan.prometheus is not None
        self.enabled = self.traces_on or self.metrics_on
        self.prometheus_address: tuple[str, int] | None = None
        self._tracer_provider: Any = None
        self._meter_provider: Any = None
        self._prometheus: Any = None
        self._sources: dict[str, Callable[[], list[Any]]] = {}
        if not self.enabled:
            return
        from opentelemetry.sdk.resources import Resource

        resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "router-agent")})
        if self.traces_on:
            self._start_traces(resource, [span_processor] if span_processor is not None else
                               [_span_processor(name) for name in self.plan.traces])
        if self.metrics_on:
            readers = [metric_reader] if metric_reader is not None else [_metric_reader(n) for n in self.plan.metrics]
            if self.plan.prometheus is not None:
                readers.append(self._start_prometheus(*self.plan.prometheus))
            self._start_metrics(resource, readers)

    # ------------------------------------------------------------------ set-up

    def _start_traces(self, resource: Any, processors: list[Any]) -> None:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider

        self._tracer_provider = TracerProvider(resource=resource)  # sampler: OTEL_TRACES_SAMPLER
        for processor in processors:
            self._tracer_provider.add_span_processor(processor)
        self._tracer = self._tracer_provider.get_tracer("router_agent")
        self._in_context = trace.set_span_in_context
        self._remote = lambda trace_id, span_id, flags: trace.NonRecordingSpan(trace.SpanContext(
            trace_id, span_id, is_remote=True, trace_flags=trace.TraceFlags(flags)))
        self._kind = trace.SpanKind
        self._error = trace.Status(trace.StatusCode.ERROR)

    def _start_prometheus(self, host: str, port: int) -> Any:
        reader_class = _from_otel_extra("opentelemetry.exporter.prometheus", "PrometheusMetricReader")
        from prometheus_client import CollectorRegistry, start_http_server

        registry = CollectorRegistry()  # this agent's own: a second one in the process does not collide
        try:
            server, _thread = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            raise RuntimeError(f"telemetry: cannot serve Prometheus metrics on {host}:{port}: {exc}") from None
        self._prometheus = server
        self.prometheus_address = (host, server.server_port)
        return reader_class(registry=registry)

    def _start_metrics(self, resource: Any, readers: list[Any]) -> None:
        from opentelemetry.metrics import Observation
        from opentelemetry.sdk.metrics import MeterProvider

        self._meter_provider = MeterProvider(resource=resource, metric_readers=readers)
        meter = self._meter_provider.get_meter("router_agent")
        self._observation = Observation

        def histogram(name: str, unit: str, what: str, buckets: tuple[float, ...] = DURATION_BUCKETS) -> Any:
            return meter.create_histogram(name, unit, what, explicit_bucket_boundaries_advisory=buckets)

        self._op_duration = histogram("gen_ai.client.operation.duration", "s", "GenAI operation duration.")
        self._op_tokens = histogram("gen_ai.client.token.usage", "{token}", "Input and output tokens.", TOKEN_BUCKETS)
        self._op_first_chunk = histogram("gen_ai.client.operation.time_to_first_chunk", "s", "To a stream's first chunk.")
        self._req_duration = histogram("router.request.duration", "s", "An llm_request, admitted to answered.")
        self._req_ttft = histogram("router.request.time_to_first_token", "s", "A streamed request, to its first chunk.")
        self._tokens = meter.create_counter("router.tokens", "{token}", "Tokens billed, by agent and model.")
        self._cost = meter.create_counter("router.cost.micro_usd", "", "Spend in integer micro-dollars.")
        self._cache_hits = meter.create_counter("router.cache.hits", "{request}", "Answers served from the cache.")
        for name, unit, source in (("router.requests.in_flight", "{request}", "in_flight"),
                                   ("router.queue.depth", "{request}", "queue_depth"),
                                   ("router.breaker.state", "", "breakers")):  # 0 closed, 1 half-open, 2 open
            meter.create_observable_gauge(name, [self._gauge(source)], unit)

    # ------------------------------------------------------------------ spans

    def _child(self, name: str, kind: Any, traceparent: str | None, attributes: dict[str, Any]) -> tuple[Any, str]:
        """A span under ``traceparent`` (a new trace without one); it and its own traceparent."""
        parent = self._parent(traceparent) if traceparent else None
        span = self._tracer.start_span(name, context=parent, kind=kind, attributes=attributes)
        sent = span.get_span_context()
        return span, f"00-{sent.trace_id:032x}-{sent.span_id:016x}-{sent.trace_flags:02x}"

    def _parent(self, traceparent: str) -> Any:
        """The W3C ``traceparent`` as a parent context, or None (a new trace) when it is not
        one. Parsed here rather than by the SDK's propagator: a third of a span's cost."""
        match = _TRACEPARENT.match(traceparent)
        if match is None:
            return None
        version, trace_id, span_id, flags, rest = match.groups()
        if version == "ff" or (version == "00" and rest) or not int(trace_id, 16) or not int(span_id, 16):
            return None
        return self._in_context(self._remote(int(trace_id, 16), int(span_id, 16), int(flags, 16)))

    def start(self, name: str, traceparent: str | None, attributes: dict[str, Any]) -> tuple[Any, str | None]:
        """An internal span (the request's); it and the traceparent to send on."""
        if not self.traces_on:
            return None, traceparent
        return self._child(name, self._kind.INTERNAL, traceparent, attributes)

    def end(self, span: Any, attributes: dict[str, Any]) -> None:
        """End a span from ``start``; ``router.status == "error"`` marks it failed."""
        if span is None:
            return
        span.set_attributes(attributes)
        if attributes.get("router.status") == "error":
            span.set_attribute("error.type", str(attributes.get("router.error_code") or "error"))
            span.set_status(self._error)
        span.end()

    def consuming(self, signal: str, subscription: str, queue: str,
                  deliver: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
        """``deliver`` (a subscription's callback) in a CONSUMER span per message; the handler
        finds the span's traceparent in ``msg.headers``, so what it starts is the span's child."""
        base = {"messaging.system": "nats", "messaging.operation.type": "process",
                "messaging.operation.name": "process", "messaging.destination.subscription.name": subscription}
        if queue:
            base["messaging.consumer.group.name"] = queue
        name, kind = f"process {signal}", self._kind.CONSUMER

        async def traced(msg: Any) -> None:
            headers = msg.headers
            span, traceparent = self._child(
                name, kind, headers.get("traceparent") if headers else None,
                {**base, "messaging.destination.name": msg.subject, "messaging.message.body.size": len(msg.data)},
            )
            msg.headers = {**headers, "traceparent": traceparent} if headers else {"traceparent": traceparent}
            token = _consuming.set(span)
            try:
                await deliver(msg)
            finally:
                _consuming.reset(token)
                span.end()

        return traced

    def rejecting(self, reject: Callable[[Any, Any], Awaitable[None]]) -> Callable[[Any, Any], Awaitable[None]]:
        """``reject`` (answers bad input) marking the CONSUMER span failed with ``exc.code``."""

        async def traced(msg: Any, exc: Any) -> None:
            span = _consuming.get()
            if span is not None:
                span.set_attribute("error.type", exc.code)
                span.set_status(self._error)
            await reject(msg, exc)

        return traced

    def producer_start(self, signal: str, subject: str, size: int, traceparent: str | None,
                       temporary: bool = False) -> tuple[Any, dict[str, str]]:
        """The PRODUCER span of one publish; it and the headers to publish with."""
        attributes: dict[str, Any] = {"messaging.system": "nats", "messaging.operation.type": "send",
                                      "messaging.operation.name": "publish",
                                      "messaging.destination.name": subject, "messaging.message.body.size": size}
        if temporary:
            attributes["messaging.destination.temporary"] = True
        span, sent = self._child(f"publish {signal}", self._kind.PRODUCER, traceparent, attributes)
        return span, {"traceparent": sent}

    # ------------------------------------------------------------------ provider attempts

    def attempt_start(self, dep: Deployment, traceparent: str | None) -> tuple[Attempt | None, str | None]:
        """A provider call begins: its handle (None when all is off) and the traceparent to
        send upstream in the HTTP ``traceparent`` header."""
        if not self.enabled:
            return None, traceparent
        attributes = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": GEN_AI_PROVIDER.get(dep.api, dep.api),
                      "gen_ai.request.model": dep.model_id}
        span = None
        if self.traces_on:
            host, port = _server(dep.base_url)
            span, traceparent = self._child(f"chat {dep.model_id}", self._kind.CLIENT, traceparent, {
                **attributes, "server.address": host, "server.port": port,
                "router.provider": dep.provider, "router.model": dep.model,
            })
        return Attempt(span, attributes), traceparent

    def attempt_end(self, attempt: Attempt | None, response_model: str | None = None, input_tokens: int = 0,
                    output_tokens: int = 0, error_type: str | None = None, finish_reason: str | None = None,
                    ttft_s: float | None = None) -> None:
        """The call ended: with the vendor's model and usage, or ``error_type`` (an
        ``ErrorCode`` such as ``timeout``, ``rate_limited``; ``cancelled`` when abandoned)."""
        if attempt is None:
            return
        span = attempt.span
        if span is not None:
            if response_model:
                span.set_attribute("gen_ai.response.model", response_model)
            if finish_reason:
                span.set_attribute("gen_ai.response.finish_reasons", (finish_reason,))
            if error_type is None:
                span.set_attributes({"gen_ai.usage.input_tokens": input_tokens, "gen_ai.usage.output_tokens": output_tokens})
            else:
                span.set_attribute("error.type", error_type)
                span.set_status(self._error)
            span.end()
        if self.metrics_on:
            attributes = attempt.attributes
            if response_model:
                attributes["gen_ai.response.model"] = response_model
            if error_type is not None:
                attributes["error.type"] = error_type
            self._op_duration.record(time.perf_counter() - attempt.started, attributes)
            if error_type is None:
                self._op_tokens.record(input_tokens, {**attributes, "gen_ai.token.type": "input"})
                self._op_tokens.record(output_tokens, {**attributes, "gen_ai.token.type": "output"})
            if ttft_s is not None:
                self._op_first_chunk.record(ttft_s, attributes)

    # ------------------------------------------------------------------ request metrics

    def request_done(self, agent: str, provider: str, model: str, status: str, duration_s: float,
                     ttft_s: float | None = None, input_tokens: int = 0, output_tokens: int = 0,
                     cost_usd: float = 0.0, cached: bool = False, error_type: str | None = None) -> None:
        """One llm_request answered (``status`` ok/error; ``provider``/``model`` "" when none served it)."""
        if not self.metrics_on:
            return
        billed = {"router.agent_id": agent, "router.provider": provider, "router.model": model}
        attributes = {**billed, "router.status": status}
        if error_type is not None:
            attributes["error.type"] = error_type
        self._req_duration.record(duration_s, attributes)
        if ttft_s is not None:
            self._req_ttft.record(ttft_s, attributes)
        if input_tokens:
            self._tokens.add(input_tokens, {**billed, "gen_ai.token.type": "input"})
        if output_tokens:
            self._tokens.add(output_tokens, {**billed, "gen_ai.token.type": "output"})
        micro_usd = round(cost_usd * 1_000_000)
        if micro_usd:
            self._cost.add(micro_usd, billed)
        if cached:
            self._cache_hits.add(1, billed)

    def observe(self, in_flight: Callable[[], int] | None = None, queue_depth: Callable[[], int] | None = None,
                breaker_states: Callable[[], Iterable[tuple[DeploymentKey, str]]] | None = None) -> None:
        """Give the gauges their sources, read at each collection (not per request):
        ``breaker_states`` yields ``((provider, model), "closed" | "half_open" | "open")``."""
        if not self.metrics_on:
            return
        observed = self._observation
        if in_flight is not None:
            self._sources["in_flight"] = lambda: [observed(in_flight())]
        if queue_depth is not None:
            self._sources["queue_depth"] = lambda: [observed(queue_depth())]
        if breaker_states is not None:
            self._sources["breakers"] = lambda: [
                observed(BREAKER_LEVEL[state], {"router.provider": provider, "router.model": model})
                for (provider, model), state in breaker_states()]

    def _gauge(self, name: str) -> Callable[[Any], list[Any]]:
        return lambda _options: self._sources.get(name, list)()

    # ------------------------------------------------------------------ lifecycle

    def shutdown(self) -> None:
        """Export what is pending and stop the exporters and the Prometheus endpoint."""
        if self._tracer_provider is not None:
            self._tracer_provider.shutdown()
        if self._meter_provider is not None:
            self._meter_provider.shutdown()
        if self._prometheus is not None:
            self._prometheus.shutdown()
            self._prometheus.server_close()
            self._prometheus = None


Tracing = Telemetry  # the name before metrics joined (agent.py, requests.py and a test still use it)


@lru_cache(maxsize=256)
def _server(base_url: str) -> tuple[str, int]:
    parts = urlsplit(base_url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def _span_processor(exporter: str) -> Any:
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    if exporter == "otlp":
        return BatchSpanProcessor(_from_otel_extra("opentelemetry.exporter.otlp.proto.http.trace_exporter",
                                                   "OTLPSpanExporter")())
    return BatchSpanProcessor(ConsoleSpanExporter())


def _metric_reader(exporter: str) -> Any:
    from opentelemetry.sdk.metrics import export

    if exporter == "otlp":  # the interval: OTEL_METRIC_EXPORT_INTERVAL
        return export.PeriodicExportingMetricReader(_from_otel_extra(
            "opentelemetry.exporter.otlp.proto.http.metric_exporter", "OTLPMetricExporter")())
    return export.PeriodicExportingMetricReader(export.ConsoleMetricExporter())


def _from_otel_extra(module: str, name: str) -> Any:
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError:
        raise RuntimeError(f"telemetry: {name} is not installed; pip install 'llm-router-agent[otel]'") from None
