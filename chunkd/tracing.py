"""OpenTelemetry traces (config [telemetry]; docs/tracing.md): a span per job attempt,
a child span per stream, exported over OTLP/HTTP. Off unless `otlp_endpoint` is set.

The span model:
    chunkd.submit   POST /v1/jobs, only when the request brought no valid `traceparent`
                    (it is then the job's parent, so every attempt stays in one trace)
    chunkd.job      one per attempt, from the runner taking the job to its end; parent:
                    the job's stored trace carrier (the request's `traceparent`, or chunkd.submit)
      chunkd.queued   waiting for a free instance (local mode)
      chunkd.stream   one per stream, made when it ends: the batches aggregated into attributes
                      (count, bytes, guest seconds, seconds waiting for the share, the budget,
                      the pacer), never a span per chunk or batch

A job's trace carrier ({"traceparent": ..., "tracestate": ...}) is persisted with it (the
job store's `trace` column, the cluster's record, and the NATS message's headers), so a
resumed job, or one that moves node, stays one trace.

When traces are off (`Tracing(None)`), OpenTelemetry is not imported, every hook returns
at its first test, and `Job.trace` still keeps a valid incoming traceparent (a later
attempt on a node with traces on continues it). Export runs on the SDK's own thread with a
bounded queue (spans past it are dropped); an exporter that fails or hangs never touches a
job: it only logs.
"""
from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import re
import time
from typing import TYPE_CHECKING, Any, Iterator, Mapping

import structlog

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

    from chunkd.config import TelemetryConfig

log = structlog.get_logger("chunkd.tracing")

Carrier = dict[str, str]

QUEUE_SPANS = 4096  # spans waiting for export; past this they are dropped (bounded)
EXPORT_BATCH = 512
EXPORT_DELAY_MS = 1000
EXPORT_TIMEOUT_S = 5.0  # one export request (its retries included)
SHUTDOWN_DEADLINE_S = 5.0  # flush at close: what is not out by then is dropped
MAX_TRACESTATE = 512  # characters kept of an incoming tracestate (W3C: 32 members)

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_TRACESTATE = re.compile(r"[\x20-\x7e]*")

# the trace carrier of the submission in progress (POST /v1/jobs): Job() takes it as its
# `trace` field, so no intake path passes it along by hand
_SUBMITTED: contextvars.ContextVar[Carrier | None] = contextvars.ContextVar("chunkd_trace", default=None)


def submitted_trace() -> Carrier | None:
    """The trace carrier of the submission in progress (Job's default `trace`)."""
    got = _SUBMITTED.get()
    return dict(got) if got is not None else None


def carrier_from_headers(headers: Mapping[str, str] | None) -> Carrier | None:
    """A valid W3C `traceparent` (and its `tracestate`) from request or message headers;
    None when absent or not valid: a bad value is ignored, never an error."""
    if not headers:
        return None
    raw = headers.get("traceparent")
    if not raw:
        return None
    value = raw.strip().lower()
    m = _TRACEPARENT.fullmatch(value)
    if m is None:
        return None
    version, trace_id, span_id, _flags, rest = m.groups()
    if version == "ff" or trace_id == "0" * 32 or span_id == "0" * 16 or (version == "00" and rest):
        return None
    carrier: Carrier = {"traceparent": value[:55]}  # a later version: its first four fields
    state = headers.get("tracestate")
    if state and len(state) <= MAX_TRACESTATE and _TRACESTATE.fullmatch(state):
        carrier["tracestate"] = state.strip()
    return carrier


def valid_carrier(value: Any) -> Carrier | None:
    """A stored carrier (job store, cluster record) checked again: anything else is None."""
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        return None
    return carrier_from_headers(value)


def _ns(t: float) -> int:
    return int(t * 1e9)


class JobTrace:
    """One attempt's span: the job runner starts it, the StreamSet adds a span per stream,
    the runner ends it. Only exists while traces are on."""

    __slots__ = ("_tracer", "span", "_ctx", "_queued_from")

    def __init__(self, tracer: "Tracer", span: "Span", ctx: "Context", start: float) -> None:
        self._tracer = tracer
        self.span = span
        self._ctx = ctx  # the job span's context: its children's parent
        self._queued_from: float | None = start

    def queued_until_now(self) -> None:
        """The job got an instance: its wait is a child span chunkd.queued."""
        start, self._queued_from = self._queued_from, None
        if start is None:
            return
        s = self._tracer.start_span("chunkd.queued", context=self._ctx, start_time=_ns(start))
        s.end()

    def stream(self, attributes: dict[str, Any], start: float, end: float, error: str | None) -> None:
        """A stream ended: its span, made whole now (start and end from its stats)."""
        from opentelemetry.trace import Status, StatusCode
        s = self._tracer.start_span("chunkd.stream", context=self._ctx, start_time=_ns(start),
                                    attributes=attributes)
        if error is not None:
            s.set_status(Status(StatusCode.ERROR, error))
        s.end(end_time=_ns(max(end, start)))

    def end(self, state: str, error: str | None, attempt: int, node: str | None = None) -> None:
        from opentelemetry.trace import Status, StatusCode
        span = self.span
        span.set_attribute("chunkd.job.state", state)
        span.set_attribute("chunkd.job.attempt", attempt)
        if node is not None:
            span.set_attribute("chunkd.node", node)
        if error is not None:
            span.set_attribute("chunkd.job.error", error)
        if state == "failed":
            span.set_status(Status(StatusCode.ERROR, error or "failed"))
        span.end()


class Tracing:
    """The tracer's owner: built from [telemetry] by the runtime, closed (flushed within
    a deadline) by it. `Tracing(None)` is off: no OpenTelemetry import, no exporter."""

    def __init__(self, cfg: "TelemetryConfig | None", node: str | None = None) -> None:
        self.enabled = cfg is not None and bool(cfg.otlp_endpoint)
        self.node = node
        self._provider: "TracerProvider | None" = None
        self._tracer: "Tracer | None" = None
        self._closed = False
        if self.enabled:
            assert cfg is not None and cfg.otlp_endpoint
            self._provider, self._tracer = _build(cfg, node)
            log.info("tracing_on", endpoint=cfg.otlp_endpoint, service=cfg.service_name,
                     sample_ratio=cfg.sample_ratio)

    @property
    def exporting(self) -> bool:
        """An exporter exists (traces on and not closed)."""
        return self._provider is not None and not self._closed

    @contextlib.contextmanager
    def submission(self, incoming: Carrier | None) -> Iterator[None]:
        """Around one job intake: the jobs it creates take `incoming` as their trace
        carrier; with traces on and none incoming, a root span chunkd.submit is made
        and becomes their parent (so a job's attempts share one trace)."""
        if incoming is not None or self._tracer is None:
            token = _SUBMITTED.set(incoming)
            try:
                yield
            finally:
                _SUBMITTED.reset(token)
            return
        from opentelemetry import trace
        from opentelemetry.trace import SpanKind, Status, StatusCode
        span = self._tracer.start_span("chunkd.submit", kind=SpanKind.SERVER)
        token = _SUBMITTED.set(_inject(trace.set_span_in_context(span)) if span.get_span_context().is_valid
                               else None)
        try:
            yield
        except BaseException as e:
            span.set_status(Status(StatusCode.ERROR, str(e) or type(e).__name__))
            raise
        finally:
            _SUBMITTED.reset(token)
            span.end()

    def job(self, job_id: str, component: str, tenant: str | None, attempt: int,
            carrier: Carrier | None) -> JobTrace | None:
        """Start one attempt's span (None when traces are off)."""
        tracer = self._tracer
        if tracer is None or self._closed:
            return None
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
        parent = TraceContextTextMapPropagator().extract(carrier) if carrier else None
        attrs: dict[str, Any] = {"chunkd.job.id": job_id, "chunkd.component": component,
                                 "chunkd.job.attempt": attempt}
        if tenant is not None:
            attrs["chunkd.tenant"] = tenant
        if self.node is not None:
            attrs["chunkd.node"] = self.node
        now = time.time()
        span = tracer.start_span("chunkd.job", context=parent, attributes=attrs, start_time=_ns(now))
        return JobTrace(tracer, span, trace.set_span_in_context(span), now)

    async def close(self, deadline_s: float = SHUTDOWN_DEADLINE_S) -> None:
        """Flush what is queued (at most `deadline_s`), then stop the exporter thread.
        Runs on a thread: the event loop is never blocked by a slow collector."""
        provider = self._provider
        if provider is None or self._closed:
            return
        self._closed = True

        def shut() -> None:
            provider.force_flush(int(deadline_s * 1000))
            provider.shutdown()
        try:
            await asyncio.wait_for(asyncio.to_thread(shut), deadline_s + EXPORT_TIMEOUT_S)
        except Exception as e:  # a collector away: the spans are lost, nothing else is
            log.warning("tracing_flush_failed", error=str(e) or type(e).__name__)


def _inject(ctx: "Context") -> Carrier:
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    carrier: Carrier = {}
    TraceContextTextMapPropagator().inject(carrier, context=ctx)
    return carrier


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL for an endpoint given as the collector's base URL (or whole)."""
    e = endpoint.rstrip("/")
    return e if e.endswith("/v1/traces") else e + "/v1/traces"


class _OncePer(logging.Filter):
    """Lets a message through at most once per `every_s` seconds: the SDK logs a warning
    for every span it drops from a full queue (a collector away, jobs going on)."""

    def __init__(self, every_s: float) -> None:
        super().__init__()
        self.every_s = every_s
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        key = str(record.msg)
        if now - self._last.get(key, -self.every_s) < self.every_s:
            return False
        self._last[key] = now
        return True


def _build(cfg: "TelemetryConfig", node: str | None) -> "tuple[TracerProvider, Tracer]":
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    assert cfg.otlp_endpoint
    for name in ("opentelemetry.sdk._shared_internal", "opentelemetry.sdk.trace.export"):
        lg = logging.getLogger(name)
        if not any(isinstance(f, _OncePer) for f in lg.filters):
            lg.addFilter(_OncePer(60.0))
    attrs: dict[str, Any] = {"service.name": cfg.service_name}
    if node is not None:
        attrs["service.instance.id"] = node
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(cfg.sample_ratio)),
                              resource=Resource.create(attrs), shutdown_on_exit=False)
    exporter = OTLPSpanExporter(endpoint=traces_url(cfg.otlp_endpoint), timeout=EXPORT_TIMEOUT_S)
    provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=QUEUE_SPANS,
                                                   schedule_delay_millis=EXPORT_DELAY_MS,
                                                   max_export_batch_size=EXPORT_BATCH,
                                                   export_timeout_millis=EXPORT_TIMEOUT_S * 1000))
    return provider, provider.get_tracer("chunkd")
