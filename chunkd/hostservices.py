"""What instances ask of the daemon: open and read blobs, start chunked reads,
let go of streams, report guest output. Implements host.instance.HostServices.

`start_chunking`, `stream_released` and `guest_output` run on instance
threads; they touch only thread-safe state (the instance's StreamTable, a lock
around the stream counters here, the run's RunInbox) and hand anything else to
the event loop with call_soon_threadsafe.
"""
from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import TYPE_CHECKING, Any, Callable, Coroutine, Mapping

import structlog

from chunkd.errors import SourceError
from chunkd.host import values
from chunkd.jobs import StreamRequest
from chunkd.flowcontrol import read_with_retry
from chunkd.limits import LiveLimits
from chunkd.tasks import ScopeClosed, TaskScope

if TYPE_CHECKING:
    from chunkd.delivery import Delivery
    from chunkd.host.instance import InstanceBase, JobPort
    from chunkd.host.streamtable import HostStream
    from chunkd.metrics import Metrics
    from chunkd.sources import Container
    from chunkd.sources.base import Blob

log = structlog.get_logger("chunkd.hostservices")

LOGGED_LINES_PER_JOB = 10_000  # guest output lines logged per job; the rest are only counted
OutputListener = Callable[["JobPort | None", str, str, str], None]  # job, component, fd, line


class NotGranted(SourceError):
    """A component opened a container it is not granted (components.NAME.containers)."""


async def close_quietly(blob: "Blob") -> None:
    try:
        await blob.close()
    except Exception as e:
        log.warning("blob_close_failed", error=str(e))


class RuntimeServices:
    def __init__(self, loop: asyncio.AbstractEventLoop, limits: LiveLimits, metrics: "Metrics",
                 background: TaskScope) -> None:
        self.loop = loop
        self.limits = limits  # the runtime's live limits (a reload updates them in place): read per call
        self.containers: dict[str, "Container"] = {}  # replaced on reload
        # component -> the containers it is granted (components.NAME.containers), None: all; replaced on reload
        self.grants: Mapping[str, frozenset[str] | None] = {}
        self.metrics = metrics
        self.background = background  # owns blob closes handed over from instance threads
        self.output_listeners: list[OutputListener] = []
        self._lock = threading.Lock()
        self.active_streams = 0
        self.streams_started = 0
        self.streams_ended = 0

    # --- async, awaited by instance threads through the loop ------------------------

    def open_blob(self, container: str, name: str, *, component: str) -> Coroutine[Any, Any, "Blob"]:
        """Called on an instance thread, which awaits the coroutine through the loop: the
        grant (components.NAME.containers) is checked here, on the caller's thread."""
        self.check_grant(component, container)
        return self._open_blob(container, name)

    async def _open_blob(self, container: str, name: str) -> "Blob":
        c = self.containers.get(container)
        if c is None:
            raise SourceError(f"no container named {container!r}")
        return await c.open(name)

    def open_blob_now(self, container: str, name: str, *, component: str) -> "Blob | None":
        self.check_grant(component, container)
        c = self.containers.get(container)
        open_now = getattr(c, "open_now", None)
        return None if open_now is None else open_now(name, pipes=False)

    def check_grant(self, component: str | None, container: str) -> None:
        """A component with `containers = [...]` reaches only those containers (reads too)."""
        granted = self.grants.get(component) if component is not None else None
        if granted is not None and container not in granted:
            raise NotGranted(f"component {component} is not granted container {container} "
                             f"(components.{component}.containers)")

    async def read_blob(self, blob: "Blob", offset: int, length: int) -> bytes:
        lim = self.limits.current
        return await read_with_retry(blob, offset, length, lim.source_retries, lim.source_retry_backoff_s)

    # --- instance threads -------------------------------------------------------------

    def start_chunking(self, inst: "InstanceBase", handle: int, chunk_size: int,
                       correlation_id: int) -> values.StreamErr | None:
        """start-chunking-read: the stream table checks the stream and the correlation-id
        and starts it in one step under its lock; `admit` is that step's last check and
        this side's commit (the pending count, the request to the loop)."""
        lim = self.limits.current  # the same max_chunk_size InstanceBase.host_read checks
        invalid = None
        if chunk_size == 0 or chunk_size > lim.max_chunk_size_bytes:
            invalid = values.err_invalid(
                f"chunk-size {chunk_size} must be between 1 and max-chunk-size {lim.max_chunk_size_bytes}")
        job = inst.job
        wake = False

        def admit(stream: "HostStream") -> values.StreamErr | None:
            nonlocal wake
            if job is None:
                return values.err_failed("no job is running on this instance")
            with self._lock:
                if self.active_streams >= lim.max_pending_streams:
                    return values.err_failed(f"pending stream queue is full ({lim.max_pending_streams} streams)")
                self.active_streams += 1
                self.streams_started += 1
            wake = job.add_request(StreamRequest(inst, stream, chunk_size, correlation_id, stream.position))
            return None

        err = inst.streams.start(handle, correlation_id, invalid, admit)
        if wake and job is not None:
            self.loop.call_soon_threadsafe(job.wake)
        return err

    def stream_released(self, inst: "InstanceBase", stream: "HostStream") -> None:
        self.loop.call_soon_threadsafe(self._close_later, stream.blob)

    def _close_later(self, blob: "Blob") -> None:
        try:
            self.background.spawn(close_quietly(blob), name="blob-close")
        except ScopeClosed:
            pass  # shutting down: the container closes with the runtime

    def guest_output(self, inst: "InstanceBase", fd: str, line: str) -> None:
        job = inst.job
        if fd == "stderr":
            inst.stderr_tail.append(line[:500])
        logged = True
        if job is not None:
            seen = job.add_output(fd, line)
            if seen > LOGGED_LINES_PER_JOB:  # a flood: keep the log readable
                logged = False
                if seen == LOGGED_LINES_PER_JOB + 1:
                    log.warning("guest_output_throttled", component=inst.comp.name, instance=inst.label,
                                job_id=job.id, logged=LOGGED_LINES_PER_JOB)
        if logged:
            log.info("guest_output", component=inst.comp.name, instance=inst.label, fd=fd, line=line,
                     job_id=job.id if job else None)
        for listener in self.output_listeners:
            with contextlib.suppress(Exception):
                listener(job, inst.comp.name, fd, line)

    # --- loop: the StreamSet tells each end (streamset.StreamAccounting) ---------------

    def stream_ended(self, d: "Delivery", end: values.StreamEnd) -> None:
        with self._lock:
            self.active_streams -= 1
            self.streams_ended += 1
        self.metrics.streams_ended.labels(end.kind).inc()
        if d.stats.retries:
            self.metrics.source_retries.inc(d.stats.retries)
