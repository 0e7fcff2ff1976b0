"""Fast in-process fakes for property tests of the delivery core: no wasm.

FakeInstance is a real InstanceBase (the same thread, the same guarded-call
and host-import code) whose guest is a Python script: it starts the streams
a Plan describes, answers handle-chunk as the plan says, and can trap (a
CallFault, as the native core reports one) where the plan says; its batch
loop is a Python model of the native one (native/src/batch.rs). FakeBlob is a blob source with injected
transient and permanent faults. FakePool and FakeRuntime give a JobRunner
exactly what it needs, so a whole job runs through the real runner, stream
set and deliveries.
"""
from __future__ import annotations

import asyncio
import os
import tempfile
import threading
from dataclasses import dataclass, field, replace
from types import SimpleNamespace
from typing import Any

from chunkd.config import ComponentConfig, Config, DaemonConfig, LimitsConfig
from chunkd.errors import GuestTrap, SourceError
from chunkd.host import values
from chunkd.host.instance import BatchResult, CallFault, CallOutcome, DirectRun, HandleCall, InstanceBase
from chunkd.hostservices import RuntimeServices
from chunkd.jobrunner import JobRunner
from chunkd.limits import LiveLimits
from chunkd.metrics import Metrics
from chunkd.outputs import JobOutputs
from chunkd.fairshare import FairShare
from chunkd.flowcontrol import BufferBudget, Pacer
from chunkd.tasks import TaskScope
from chunkd.tracing import Tracing


class FakeBlob:
    def __init__(self, data: bytes, *, known_size: bool, read_unit: int, faults: dict[int, bool],
                 direct: bool = False) -> None:
        self.data = data
        self.known_size = known_size
        self.read_unit = read_unit
        self.faults = dict(faults)  # read call number -> transient?
        self.reads = 0
        self.closed = 0
        # direct: a real file the instance thread reads chunks from itself (the core path's
        # direct mode, pipelined batches included); None: chunks come through read_at
        self.direct_fd: int | None = None
        if direct:
            f = tempfile.TemporaryFile()
            f.write(data)
            f.flush()
            self.direct_fd = os.dup(f.fileno())
            f.close()

    @property
    def size(self) -> int | None:
        return len(self.data) if self.known_size else None

    async def read_at(self, offset: int, length: int) -> bytes:
        n = self.reads
        self.reads += 1
        await asyncio.sleep(0)
        if n in self.faults:
            transient = self.faults.pop(n)
            raise SourceError(f"injected {'transient' if transient else 'permanent'} fault at read {n}",
                              transient=transient)
        return self.data[offset:offset + length]

    async def close(self) -> None:
        self.closed += 1
        if self.direct_fd is not None:
            os.close(self.direct_fd)
            self.direct_fd = None


@dataclass
class StreamPlan:
    data: bytes
    chunk_size: int
    known_size: bool = True
    read_unit: int = 0
    pre_read: int = 0  # bytes the guest pulls with `read` before chunking
    false_at: int | None = None  # handle-chunk answers false at this chunk
    faults: dict[int, bool] = field(default_factory=dict)
    direct: bool = False  # read by the instance thread from a file (needs known_size)


@dataclass
class Plan:
    streams: list[StreamPlan]
    invoke_error: bool = False
    trap_in_invoke: bool = False
    trap_at_call: int | None = None  # the n-th handle-chunk call (0-based) traps
    trap_in_ended: bool = False
    cancel_at_call: int | None = None  # operator cancel when the n-th handle-chunk call is made
    shutdown_at_call: int | None = None  # the runner is drained (shutdown) at the n-th call


@dataclass
class Observed:
    chunks: dict[int, list[tuple[int, int, bytes]]] = field(default_factory=dict)  # cid -> (current, total, data)
    ended: dict[int, list[values.StreamEnd]] = field(default_factory=dict)
    started: dict[int, values.StreamErr | None] = field(default_factory=dict)
    calls: int = 0


class FakeClock:
    ticks = 0
    engine: Any = None

    @staticmethod
    def ticks_for(seconds: float) -> int:
        return max(1, round(seconds / 0.01))


class FakeInstance(InstanceBase):
    direct_reads = True  # streams whose blob has a direct_fd are read by the instance thread

    def __init__(self, plan: Plan, services: RuntimeServices, *, max_chunk_size: int,
                 on_call: Any = None) -> None:
        comp: Any = SimpleNamespace(name="fake", info=SimpleNamespace(world="consumer-with-events"))
        # the services' limits, but a short call_timeout and this instance's max_chunk_size
        limits = LiveLimits(replace(services.limits.current, call_timeout_s=1.0, max_chunk_size_bytes=max_chunk_size))
        super().__init__(comp, 0, services, FakeClock(), limits=limits,  # type: ignore[arg-type]
                         memory_bytes=1 << 20)
        self.plan = plan
        self.seen = Observed()
        self.blobs: list[FakeBlob] = []
        self.on_call = on_call  # called on the instance thread with the call number
        self.lock = threading.Lock()
        self._stopped: set[int] = set()

    def _instantiate(self) -> None:
        pass

    def _run_batch(self, calls: list[HandleCall], fresh: bool) -> BatchResult:
        """The native batch's rules, in Python: in order; a stream stopped by an earlier
        call of this batch or of one queued before it is skipped; a trap stops the batch."""
        out: list[CallOutcome] = []
        if fresh:
            self._stopped.clear()
        stopped = self._stopped
        for handle, cid, current, total, data in calls:
            if handle in stopped or self.halt:
                out.append(CallOutcome(None, 0, 0.0))
                continue
            # a run: one call per chunk, each (fd, offset, length) read here, as the native core does
            pieces: list[bytes | tuple[int, int, int]]
            if isinstance(data, DirectRun):
                c = data.chunk_size
                pieces = [(data.fd, data.offset + j * c, c if j < data.count - 1 else data.last_length)
                          for j in range(data.count)]
            else:
                pieces = [data]
            answer: bool | None = None
            made = 0
            error: SourceError | None = None
            for j, r in enumerate(pieces):
                if self.halt:
                    answer = None
                    break
                try:
                    if isinstance(r, tuple):
                        answer = self._guarded("handle-chunk", self._handle_direct, handle, cid, current + j, total, *r)
                    else:
                        answer = self._guarded("handle-chunk", self._handle_chunk, handle, cid, current, total, r)
                except GuestTrap as e:
                    if isinstance(data, DirectRun):
                        out.append(CallOutcome(None, made, 0.0))
                    return BatchResult(out, e)
                except SourceError as e:
                    answer, error = None, e
                    break
                made += 1
                if not answer:
                    break
            o = CallOutcome(answer, made, 0.0, error)
            out.append(o)
            if o.stops_stream:
                stopped.add(handle)
        return BatchResult(out)

    def _invoke(self, args: list[str]) -> tuple[bool, str]:
        for cid, sp in enumerate(self.plan.streams):
            blob = FakeBlob(sp.data, known_size=sp.known_size, read_unit=sp.read_unit, faults={},
                            direct=sp.direct and sp.known_size)
            self.blobs.append(blob)
            handle = self.streams.open("fake", f"blob{cid}", blob).handle
            if sp.pre_read:
                got = self.host_read(handle, sp.pre_read)
                assert isinstance(got, bytes) and got == sp.data[:sp.pre_read], got
            blob.faults = dict(sp.faults)  # faults apply to the chunked reads
            self.seen.started[cid] = self.host_start_chunking(handle, sp.chunk_size, cid)
        if self.plan.trap_in_invoke:
            raise CallFault("trap", "injected trap in invoke")
        return (False, "injected invoke error") if self.plan.invoke_error else (True, "ok")

    def _handle_chunk(self, handle: int, correlation_id: int, current: int, total: int, data: bytes) -> bool:
        n = self.seen.calls
        self.seen.calls += 1
        if self.on_call is not None:
            self.on_call(n)
        if n == self.plan.trap_at_call:
            raise CallFault("trap", "injected trap in handle-chunk")
        self.seen.chunks.setdefault(correlation_id, []).append((current, total, bytes(data)))
        return self.plan.streams[correlation_id].false_at != current

    def _handle_direct(self, handle: int, correlation_id: int, current: int, total: int,
                       fd: int, offset: int, length: int) -> bool:
        data = os.pread(fd, length, offset)
        if len(data) != length:
            raise SourceError(f"blob changed size: got {len(data)} bytes at offset {offset}, expected {length}")
        return self._handle_chunk(handle, correlation_id, current, total, data)

    @property
    def has_events(self) -> bool:
        return True

    def _stream_ended(self, correlation_id: int, end: values.StreamEnd) -> str | None:
        self.seen.ended.setdefault(correlation_id, []).append(end)
        if self.plan.trap_in_ended:
            raise CallFault("trap", "injected trap in stream-ended")
        return None


class FakePool:
    def __init__(self, inst: FakeInstance, prefetch: int, meters: tuple[Any, Any, Any]) -> None:
        self.inst = inst
        self.cfg = SimpleNamespace(prefetch_chunks=prefetch)
        self.pacer = Pacer(0)
        self.meters = meters
        self.given_back: list[InstanceBase] = []
        self._idle: asyncio.Queue[FakeInstance] = asyncio.Queue()
        self._idle.put_nowait(inst)

    async def acquire(self) -> InstanceBase:
        return await self._idle.get()

    def give_back(self, inst: InstanceBase) -> None:
        self.given_back.append(inst)


class FakeRuntime:
    """What a JobRunner reaches for on its runtime, and nothing more."""

    def __init__(self, *, budget: int, max_chunk_size: int, retries: int, prefetch: int, plan: Plan,
                 on_call: Any = None) -> None:
        loop = asyncio.get_running_loop()
        self.config = Config(file="fake.toml", daemon=DaemonConfig(),
                             limits=LimitsConfig(max_chunk_size_bytes=max_chunk_size, max_buffered_bytes=budget,
                                                 source_retries=retries, source_retry_backoff_s=0.0),
                             containers={}, components={"fake": ComponentConfig(name="fake", path=None)})  # type: ignore[arg-type]
        self.metrics = Metrics()
        self.budget = BufferBudget(budget)
        self.fairshare = FairShare(self.config, self.budget)  # the runtime's delivery slots (chunkd/fairshare.py)
        self.tracing = Tracing(None)  # off, as the runtime's is without [telemetry]
        self.background = TaskScope("fake-runtime")
        self.services = RuntimeServices(loop, LiveLimits(self.config.limits), self.metrics, self.background)
        self.inst = FakeInstance(plan, self.services, max_chunk_size=max_chunk_size, on_call=on_call)
        m = self.metrics
        meters = (m.handle_seconds.labels("fake"), m.chunks.labels("fake"), m.bytes.labels("fake"))
        self.pool = FakePool(self.inst, prefetch, meters)
        self.pools = {"fake": self.pool}
        self.runner = JobRunner(self, None)  # type: ignore[arg-type]

    async def job_outputs(self, job_id: str, component: str, attempt: int) -> JobOutputs:
        """An attempt's outputs, as the runtime makes them: no writable container here."""
        return JobOutputs(job_id, attempt, component, sinks={}, containers={}, grants=None, budget=self.budget)

    async def close(self) -> None:
        await self.runner.close()
        await self.background.close()
        await self.inst.close()
