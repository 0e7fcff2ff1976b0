"""Prometheus metrics (GET /metrics), one registry per runtime."""
from __future__ import annotations

import asyncio
from typing import Callable, Iterator, Protocol, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector



class _Budget(Protocol):
    in_use: int
    limit: int


class FlowRow(Protocol):
    @property
    def flow(self) -> str: ...

    @property
    def weight(self) -> int: ...

    @property
    def delivered(self) -> int: ...

    @property
    def waits(self) -> int: ...

    @property
    def wait_seconds(self) -> float: ...

    @property
    def waiting(self) -> int: ...

    @property
    def buffered(self) -> int: ...


class _Shares(Protocol):
    """The runtime's FairShare (chunkd/fairshare.py), as the scrape reads it."""

    @property
    def active(self) -> int: ...

    @property
    def workers(self) -> int: ...

    def metric_rows(self) -> "Sequence[FlowRow]": ...


class Gauged(Protocol):
    """What the gauges read when scraped (the runtime)."""

    @property
    def fairshare(self) -> _Shares: ...

    @property
    def active_streams(self) -> int: ...

    def pending_streams(self) -> int: ...

    def stalled_streams(self) -> int: ...

    @property
    def budget(self) -> _Budget: ...

    @property
    def queued_jobs(self) -> int: ...

    @property
    def running_jobs(self) -> int: ...

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def observe_many(hist: "Histogram", total: float, count: int) -> None:
    """`count` observations of `total / count` each, at the cost of one: a run of direct
    chunks (streamset.py) reports the calls it made by their mean duration. Falls back to
    `count` observe() calls if the client library's histogram is not laid out as known."""
    if count <= 0:
        return
    mean = total / count
    bounds = getattr(hist, "_upper_bounds", None)
    buckets = getattr(hist, "_buckets", None)
    sum_ = getattr(hist, "_sum", None)
    if bounds is None or buckets is None or sum_ is None or len(bounds) != len(buckets):
        for _ in range(count):
            hist.observe(mean)
        return
    sum_.inc(total)
    for bound, bucket in zip(bounds, buckets):
        if mean <= bound:
            bucket.inc(count)
            break


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.bytes = Counter("chunkd_bytes_delivered", "Bytes delivered (handle-chunk calls, or stream writes taken)",
                             ["component"], registry=r)
        self.chunks = Counter("chunkd_chunks_delivered", "Chunks delivered (handle-chunk calls made, or stream writes "
                              "taken whole)", ["component"], registry=r)
        self.handle_seconds = Histogram(
            "chunkd_handle_chunk_seconds",
            "Duration of one handle-chunk call (or stream write) on the instance thread (a direct read included)",
            ["component"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=r)
        self.traps = Counter("chunkd_traps", "Guest calls that trapped", ["component"], registry=r)
        self.timeouts = Counter("chunkd_timeouts", "Guest calls stopped by call_timeout", ["component"], registry=r)
        self.jobs = Counter("chunkd_jobs", "Jobs ended, by outcome", ["outcome"], registry=r)
        # per tenant (names from the config: bounded); tenant="" is the admin token's jobs
        self.jobs_submitted = Counter("chunkd_jobs_submitted", "Jobs accepted (202), by tenant", ["tenant"],
                                      registry=r)
        self.tenant_jobs_ended = Counter("chunkd_tenant_jobs_ended", "Jobs ended, by tenant and outcome",
                                         ["tenant", "outcome"], registry=r)
        self.streams_ended = Counter("chunkd_streams_ended", "Chunked reads ended, by how", ["end"], registry=r)
        self.source_retries = Counter("chunkd_source_retries", "Source reads retried", registry=r)
        self.output_bytes = Counter("chunkd_output_bytes_written", "Bytes guests wrote to outputs (handed to a sink)",
                                    ["component"], registry=r)
        self.outputs_committed = Counter("chunkd_outputs_committed", "Outputs committed with their job",
                                         ["component"], registry=r)
        self.outputs_aborted = Counter("chunkd_outputs_aborted", "Outputs aborted (dropped, failed, or their job did "
                                       "not complete)", ["component"], registry=r)
        self._gauges: list[Gauge] = []
        self.node: str | None = None  # cluster mode: added as a label to every sample

    def bind(self, runtime: Gauged) -> None:
        """Gauges read the runtime's own state when scraped."""
        def gauge(name: str, doc: str, fn: Callable[[], float]) -> None:
            g = Gauge(name, doc, registry=self.registry)
            g.set_function(fn)
            self._gauges.append(g)
        gauge("chunkd_streams_active", "Chunked reads started and not ended", lambda: runtime.active_streams)
        gauge("chunkd_streams_pending", "Chunked reads not yet given their first chunk", runtime.pending_streams)
        gauge("chunkd_streams_stalled", "Open chunked reads with no chunk delivered for 30 s",
              runtime.stalled_streams)
        gauge("chunkd_buffered_bytes", "Bytes held now in the buffer budget (read-ahead of all streams, and "
              "what output sinks hold)", lambda: runtime.budget.in_use)
        gauge("chunkd_buffered_bytes_limit", "max_buffered_bytes", lambda: runtime.budget.limit)
        gauge("chunkd_jobs_queued", "Jobs waiting for an instance", lambda: runtime.queued_jobs)
        gauge("chunkd_jobs_running", "Jobs on an instance now", lambda: runtime.running_jobs)
        gauge("chunkd_delivery_slots", "daemon.delivery_workers: handle-chunk batches of all jobs run at once",
              lambda: runtime.fairshare.workers)
        gauge("chunkd_delivery_slots_busy", "Delivery slots taken now", lambda: runtime.fairshare.active)
        self.registry.register(_FlowCollector(runtime))
        loop = asyncio.get_running_loop()
        gauge("chunkd_asyncio_tasks", "asyncio tasks alive on the daemon's loop (flat when nothing leaks)",
              lambda: len(asyncio.all_tasks(loop)))

    def value(self, name: str, **labels: str) -> float:
        v = self.registry.get_sample_value(name, labels or None)
        return 0.0 if v is None else v

    def render(self) -> bytes:
        text = generate_latest(self.registry)
        if self.node is None:
            return text
        # cluster mode: every sample gains node="..." (the same series from every node stay apart)
        label = f'node="{self.node}"'.encode()
        out = []
        for line in text.splitlines():
            if line and not line.startswith(b"#"):
                name, sep, rest = line.partition(b"{")
                if sep:
                    line = name + b"{" + label + b"," + rest
                else:
                    name, _, value = line.partition(b" ")
                    line = name + b"{" + label + b"} " + value
            out.append(line)
        return b"\n".join(out) + b"\n"


class _FlowCollector(Collector):
    """Per flow (a tenant, or "component/NAME" for untenanted jobs; the flows the config
    names, the rest summed as "other", so the label's cardinality is the config's), read
    from the runtime's FairShare when scraped: nothing is counted twice on the data path."""

    def __init__(self, runtime: Gauged) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        rows = self.runtime.fairshare.metric_rows()
        delivered = CounterMetricFamily("chunkd_flow_bytes_delivered", "Bytes delivered, by flow (tenant, or "
                                        "component/NAME for jobs with no tenant)", labels=["flow"])
        waits = CounterMetricFamily("chunkd_flow_share_waits", "Batches that waited for a delivery slot, by flow",
                                    labels=["flow"])
        waited = CounterMetricFamily("chunkd_flow_share_wait_seconds", "Seconds batches waited for a delivery "
                                     "slot, by flow", labels=["flow"])
        waiting = GaugeMetricFamily("chunkd_flow_batches_waiting", "Batches waiting for a delivery slot now, "
                                    "by flow", labels=["flow"])
        weight = GaugeMetricFamily("chunkd_flow_weight", "The flow's weight in the byte-fair share", labels=["flow"])
        buffered = GaugeMetricFamily("chunkd_flow_buffered_bytes", "Budget bytes the flow's streams hold now",
                                     labels=["flow"])
        for r in rows:
            delivered.add_metric([r.flow], r.delivered)
            waits.add_metric([r.flow], r.waits)
            waited.add_metric([r.flow], r.wait_seconds)
            waiting.add_metric([r.flow], r.waiting)
            weight.add_metric([r.flow], r.weight)
            buffered.add_metric([r.flow], r.buffered)
        yield from (delivered, waits, waited, waiting, weight, buffered)
