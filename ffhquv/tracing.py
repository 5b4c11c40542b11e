"""OpenTelemetry tracing (off by default) and request correlation in log lines.

Tracing is turned on per process by the standard environment variables: ``OTEL_TRACES_EXPORTER``
names the exporter(s) (``console``, or ``otlp`` with an OTLP exporter package installed, then
configured by ``OTEL_EXPORTER_OTLP_*``), ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES``
the resource; unset, ``none`` or ``OTEL_SDK_DISABLED=true`` leave it off. When on, the
OpenTelemetry gRPC instrumentation wraps every gRPC server and client of the process (sync and
asyncio), so one Reconstruct is one trace across gateway -> detector / fitter / eyeball /
exporter (W3C ``traceparent`` metadata). Needs the ``tracing`` extra
(``opentelemetry-sdk``, ``opentelemetry-instrumentation-grpc``).

Correlation without tracing: the gateway's request id travels to the services as
``x-request-id`` metadata and lives in :data:`REQUEST_ID` while a call is handled;
:class:`CorrelationFilter` (installed by :func:`ffhquv.logs.setup`) adds ``request_id`` and,
when a span is active, ``trace_id`` / ``span_id`` to every log record.
"""

from __future__ import annotations

import logging
import os
from contextvars import ContextVar
from importlib.metadata import entry_points

import grpc

log = logging.getLogger(__name__)

REQUEST_ID: ContextVar[str] = ContextVar("ffhquv_request_id", default="")
REQUEST_ID_HEADER = "x-request-id"
_state: dict[str, object] = {}


def enabled_by_env() -> bool:
    """True when the OTEL_* environment asks for a trace exporter."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() not in ("", "none")


def _exporter(name: str):
    """The span exporter registered under ``name`` (entry point group
    ``opentelemetry_traces_exporter``, as the OpenTelemetry SDK's own configuration does)."""
    for ep in entry_points(group="opentelemetry_traces_exporter", name=name):
        return ep.load()()
    raise LookupError(f"no OpenTelemetry trace exporter {name!r} is installed "
                      "(e.g. pip install opentelemetry-exporter-otlp for 'otlp')")


def setup(service: str, exporter=None) -> bool:
    """Turn tracing on for this process (once) when ``OTEL_TRACES_EXPORTER`` names an exporter,
    or with ``exporter`` (a SpanExporter, e.g. an in-memory one in tests). Returns whether
    tracing is on. Call it before servers and channels are created."""
    if "provider" in _state:
        return True
    if exporter is None and not enabled_by_env():
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.instrumentation.grpc import (
            GrpcAioInstrumentorClient,
            GrpcAioInstrumentorServer,
            GrpcInstrumentorClient,
            GrpcInstrumentorServer,
        )
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError as e:
        log.warning("tracing requested but OpenTelemetry is not installed "
                    "(pip install 'ffhquv[tracing]'): %s", e)
        return False
    attrs = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": f"ffhquv-{service}"}
    provider = TracerProvider(resource=Resource.create(attrs))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        names = os.environ["OTEL_TRACES_EXPORTER"].strip().lower().split(",")
        for name in filter(None, (n.strip() for n in names)):
            try:
                provider.add_span_processor(BatchSpanProcessor(_exporter(name)))
            except (LookupError, ImportError) as e:
                log.warning("tracing exporter unavailable: %s", e)
    trace.set_tracer_provider(provider)
    for inst in (GrpcInstrumentorServer, GrpcInstrumentorClient, GrpcAioInstrumentorServer,
                 GrpcAioInstrumentorClient):
        inst().instrument()
    _state["provider"] = provider
    log.info("tracing on", extra={"service": service})
    return True


def shutdown() -> None:
    """Flush and stop the exporter (end of process)."""
    provider = _state.get("provider")
    if provider is not None:
        provider.shutdown()


def current_ids() -> tuple[str, str]:
    """``(trace_id, span_id)`` in hex of the active span, or empty strings."""
    try:
        from opentelemetry import trace
    except ImportError:
        return "", ""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return "", ""
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"


def tag_request(request_id: str) -> None:
    """Make ``request_id`` the current request (logs, outgoing calls, the active span)."""
    REQUEST_ID.set(request_id)
    try:
        from opentelemetry import trace
    except ImportError:
        return
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute("ffhquv.request_id", request_id)


def request_id_from(metadata) -> str:
    """The ``x-request-id`` of incoming call metadata, or ""."""
    for item in metadata or ():
        key, value = (item.key, item.value) if hasattr(item, "key") else item
        if key == REQUEST_ID_HEADER:
            return value if isinstance(value, str) else value.decode()
    return ""


class CorrelationFilter(logging.Filter):
    """Adds ``request_id``, ``trace_id`` and ``span_id`` (when known) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        rid = REQUEST_ID.get()
        if rid and not hasattr(record, "request_id"):
            record.request_id = rid
        trace_id, span_id = current_ids()
        if trace_id:
            record.trace_id, record.span_id = trace_id, span_id
        return True


class _RequestIdClient:
    def _with_request_id(self, details):
        rid = REQUEST_ID.get()
        if not rid:
            return details
        md = list(details.metadata or ()) + [(REQUEST_ID_HEADER, rid)]
        return grpc.aio.ClientCallDetails(details.method, details.timeout, md,
                                          details.credentials, details.wait_for_ready)


class RequestIdUnaryUnary(_RequestIdClient, grpc.aio.UnaryUnaryClientInterceptor):
    """asyncio client interceptor: sends :data:`REQUEST_ID` as ``x-request-id``."""

    async def intercept_unary_unary(self, continuation, client_call_details, request):
        return await continuation(self._with_request_id(client_call_details), request)


class RequestIdUnaryStream(_RequestIdClient, grpc.aio.UnaryStreamClientInterceptor):
    """asyncio client interceptor (server streaming): sends ``x-request-id``."""

    async def intercept_unary_stream(self, continuation, client_call_details, request):
        return await continuation(self._with_request_id(client_call_details), request)


def client_interceptors() -> list:
    """Interceptors for the gateway's asyncio channels to the services."""
    return [RequestIdUnaryUnary(), RequestIdUnaryStream()]
