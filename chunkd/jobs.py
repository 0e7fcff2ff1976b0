"""Job records: one invoke and every stream it (or its handle-chunk calls) started."""
from __future__ import annotations

import asyncio
import collections
import threading
import time
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from chunkd.streamview import StreamSummary, stream_summary
from chunkd.tracing import submitted_trace, valid_carrier

if TYPE_CHECKING:
    from chunkd.delivery import Delivery
    from chunkd.host.instance import InstanceBase, OutputPort
    from chunkd.host.streamtable import HostStream
    from chunkd.outputs import JobOutputs
    from chunkd.tracing import JobTrace


class JobState(StrEnum):
    """A job's state; the string values are what the API and the store show."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in FINAL_STATES


QUEUED, RUNNING, COMPLETED, FAILED, CANCELLED = (JobState.QUEUED, JobState.RUNNING, JobState.COMPLETED,
                                                 JobState.FAILED, JobState.CANCELLED)
FINAL_STATES = frozenset((COMPLETED, FAILED, CANCELLED))
MAX_OUTPUT_LINES = 1000  # guest stdout lines kept per job (the newest)


@dataclass
class StreamRequest:
    """A start-chunking-read accepted on an instance thread, not yet scheduled."""

    inst: "InstanceBase"
    stream: "HostStream"
    chunk_size: int
    correlation_id: int
    start: int


class RunInbox:
    """The one place an instance thread and the event loop share about a running job:
    stream requests accepted on the instance thread, the delivery loop's wake-up, its
    queue of ready streams, and guest output. The instance sees only this (as
    host.instance.JobPort), never the record."""

    def __init__(self, job: "Job") -> None:
        self._job = job
        self.requests: list[StreamRequest] = []  # filled from instance threads, drained by the loop
        self._lock = threading.Lock()
        self._wake_pending = False  # a wake() is scheduled on the loop and has not run yet
        self.ready = asyncio.Event()
        self.ready_streams: collections.deque["Delivery"] = collections.deque()
        # this attempt's outputs (chunkd/outputs.py), set by the job runner; None: no outputs
        self.outputs: "OutputPort | None" = None

    @property
    def id(self) -> str:
        return self._job.id

    @property
    def output_lines(self) -> int:
        return self._job.output_lines

    def add_output(self, fd: str, line: str) -> int:
        """From an instance thread: a guest output line; returns the lines seen so far."""
        job = self._job
        if fd == "stdout":
            job.output.append(line)
        job.output_lines += 1
        return job.output_lines

    def mark_ready(self, d: "Delivery") -> None:
        """A stream has something to deliver: queue it once for the delivery loop."""
        if not d.in_ready:
            d.in_ready = True
            self.ready_streams.append(d)
        self.ready.set()

    def take_requests(self) -> list[StreamRequest]:
        with self._lock:
            reqs, self.requests = self.requests, []
        return reqs

    def add_request(self, req: StreamRequest) -> bool:
        """From an instance thread. True when the caller must schedule wake() on the loop:
        a guest starting 1,000 streams in one call wakes the loop once, not 1,000 times
        (each wake is a write to the loop's self-pipe and a GIL handoff)."""
        with self._lock:
            self.requests.append(req)
            if self._wake_pending:
                return False
            self._wake_pending = True
            return True

    def wake(self) -> None:
        """On the loop: the requests added so far (and until this runs) are seen."""
        with self._lock:
            self._wake_pending = False
        self.ready.set()


@dataclass
class Job:
    component: str
    args: list[str]
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    tenant: str | None = None  # the tenant whose token submitted it (config [tenants]); None: admin or no tenants
    state: JobState = QUEUED
    invoke_ok: bool | None = None
    invoke_result: str | None = None
    error: str | None = None
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    ended_at: float | None = None
    instance: str | None = None
    attempts: int = 0
    output: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=MAX_OUTPUT_LINES))
    past_streams: list[StreamSummary] = field(default_factory=list)  # from the store, for finished jobs
    deliveries: list["Delivery"] = field(default_factory=list)
    open_streams: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)
    cancel_requested: bool = False
    ends: int = 0  # how often the job ended (the job runner makes it exactly once)
    fenced: str | None = None  # cluster mode: why this node stopped delivering (not an end)
    stopped: str | None = None  # why chunkd stopped the job (limits.max_job_duration): it fails
    node: str | None = None  # cluster mode: the node that runs or ran it
    output_lines: int = 0  # guest output lines seen (stdout and stderr), for log throttling
    past_outputs: list[dict[str, Any]] = field(default_factory=list)  # from the store (or the cluster's record)
    live_outputs: "JobOutputs | None" = None  # this node's last attempt's outputs (chunkd/outputs.py)
    # W3C trace context {"traceparent", "tracestate"} its attempts' spans continue (chunkd/tracing.py):
    # the submission's (POST /v1/jobs), persisted so a resumed or moved job stays one trace
    trace: dict[str, str] | None = field(default_factory=submitted_trace)
    span: "JobTrace | None" = field(default=None, repr=False)  # this attempt's, while traces are on
    inbox: "RunInbox" = field(init=False, repr=False)  # what the instance thread and the delivery loop share

    def __post_init__(self) -> None:
        self.inbox = RunInbox(self)

    @property
    def finished(self) -> bool:
        return self.state.final

    def record(self) -> dict[str, Any]:
        """The durable form: its keys are the columns of jobstore.py (_COLUMNS), and "outputs"
        (their view: the job store keeps its own rows of them; cluster mode's record carries it)."""
        return {
            "id": self.id, "component": self.component, "args": self.args, "state": self.state,
            "attempts": self.attempts, "created_at": self.created_at, "started_at": self.started_at,
            "ended_at": self.ended_at, "invoke_ok": self.invoke_ok, "invoke_result": self.invoke_result,
            "error": self.error, "streams": self.stream_summaries(), "output": list(self.output),
            "node": self.node, "outputs": self.output_summaries(), "tenant": self.tenant,
            "trace": self.trace,
        }

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> "Job":
        job = cls(component=r["component"], args=list(r["args"]), id=r["id"], state=JobState(r["state"]),
                  invoke_ok=r["invoke_ok"], invoke_result=r["invoke_result"], error=r["error"],
                  created_at=r["created_at"], started_at=r["started_at"], ended_at=r["ended_at"],
                  attempts=r["attempts"])
        job.output.extend(r["output"])
        job.node = r.get("node")
        job.tenant = r.get("tenant")  # records written before tenants have none
        job.trace = valid_carrier(r.get("trace"))  # records written before traces have none
        job.past_streams = list(r["streams"])
        job.past_outputs = list(r.get("outputs") or [])
        return job

    def output_summaries(self) -> list[dict[str, Any]]:
        """Container, name, bytes, state and version of each output (GET /v1/jobs/{id})."""
        if self.live_outputs is None:
            return list(self.past_outputs)
        return self.live_outputs.view()

    def stream_summaries(self) -> list[StreamSummary]:
        if not self.deliveries:
            return list(self.past_streams)
        return [stream_summary(d) for d in self.deliveries]
