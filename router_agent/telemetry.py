"""OpenTelemetry tracing: one span per routed request, parented by the caller's trace.

Off by default, so the hot path only passes the ``traceparent`` header through. On when
``telemetry.enabled`` is set or the standard ``OTEL_TRACES_EXPORTER`` variable names an
exporter. The span's own context then goes out as ``traceparent`` on ``routing_decision``
and ``llm_response``, so observers see the router as a child of the caller.
"""

from __future__ import annotations

import os
from typing import Any

from router_agent.config import TelemetryConfig


class Tracing:
    """The agent's tracer, or a no-op when telemetry is off."""

    def __init__(self, cfg: TelemetryConfig, span_processor: Any = None):
        exporter_env = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
        self.enabled = span_processor is not None or cfg.enabled or exporter_env not in ("", "none")
        self._tracer = None
        self._provider = None
        if not self.enabled:
            return
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        service = os.environ.get("OTEL_SERVICE_NAME", "router-agent")
        self._provider = TracerProvider(resource=Resource.create({"service.name": service}))
        self._provider.add_span_processor(span_processor or _default_processor(exporter_env or cfg.exporter))
        self._tracer = self._provider.get_tracer("router_agent")
        self._propagator = TraceContextTextMapPropagator()

    def start(self, name: str, traceparent: str | None, attributes: dict[str, Any]) -> tuple[Any, str | None]:
        """Start a span under the caller's trace; return it and the traceparent to send on."""
        if self._tracer is None:
            return None, traceparent
        carrier = {"traceparent": traceparent} if traceparent else {}
        context = self._propagator.extract(carrier)
        span = self._tracer.start_span(name, context=context, attributes=attributes)
        from opentelemetry import trace

        outgoing: dict[str, str] = {}
        self._propagator.inject(outgoing, context=trace.set_span_in_context(span))
        return span, outgoing.get("traceparent", traceparent)

    @staticmethod
    def end(span: Any, attributes: dict[str, Any]) -> None:
        if span is None:
            return
        span.set_attributes(attributes)
        if attributes.get("router.status") == "error":
            from opentelemetry.trace import Status, StatusCode

            span.set_status(Status(StatusCode.ERROR, str(attributes.get("router.error_code", ""))))
        span.end()

    def shutdown(self) -> None:
        if self._provider is not None:
            self._provider.shutdown()


def _default_processor(exporter: str) -> Any:
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    if exporter == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise RuntimeError(
                "telemetry exporter 'otlp' needs the opentelemetry-exporter-otlp-proto-http package"
            ) from None
        return BatchSpanProcessor(OTLPSpanExporter())
    return BatchSpanProcessor(ConsoleSpanExporter())
