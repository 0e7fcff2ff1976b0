"""One chunked read: its producer, its queue of read-ahead chunks, its budget ledger.

Direct mode (a `file` blob going to a core-module guest): there is no producer
and no buffered byte. The delivery loop takes a stream's share of a batch as
one DirectRun of consecutive chunks, which the instance thread reads from the
file straight into guest memory, chunk by chunk; read-ahead becomes a kernel
hint (posix_fadvise WILLNEED over the run and the `prefetch_chunks` chunks
after it).

The producer reads ahead at most `prefetch_chunks` chunks (or one coalesced
read unit of a remote source, cut to fit the budget) into a queue; the job's
StreamSet (streamset.py) takes them round-robin and calls handle-chunk. A
chunk handed to the instance thread is no longer read-ahead: its slot goes
back then, so the next read overlaps the guest's call, while its budget bytes
stay held until the call is over.

Every byte a Delivery takes from the shared BufferBudget is counted in its own
ledger (`held`): a chunk gives back its share when it is delivered or
dropped, and `stop()` gives back whatever is left. So a stream returns
exactly what it took, on every path, whatever the chunk, unit and budget sizes.

`stop()` (the stream's end) also closes the delivery to its producer, which it
cancels; a cancel is not always honoured (on Python 3.11 `asyncio.wait_for`, which
bounds every remote read, returns its inner read's result or raises its error when
that read finished as the cancel came; a source may turn the release of its
response into a transient error). So the producer checks in at the three places it
could act after the end, and is refused there with ProducerStopped, which ends it
quietly: taking budget (`_take`: a grant goes straight back), retrying a read
(`_read`), and queueing a chunk or an end (`_push`: the item is dropped; its bytes
went back with `stop()`, which gave back the whole ledger, the read in flight's
included). Nothing is queued, taken or read after the end.
"""
from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import structlog

from chunkd.errors import SourceError
from chunkd.host import values
from chunkd.host.instance import DirectRun
from chunkd.flowcontrol import NO_FLOW, BufferBudget, read_with_retry

if TYPE_CHECKING:
    from chunkd.host.streamtable import HostStream

log = structlog.get_logger("chunkd.delivery")

STALLED_AFTER_S = 30.0  # an open stream with no chunk delivered for this long shows as stalled


class ProducerStopped(Exception):
    """Raised in a producer that runs on after its stream's end (`Delivery.stop()`), when it
    next takes budget, queues a chunk or an end, or would retry a read: it ends there."""


@dataclass(slots=True)
class Chunk:
    """What the delivery loop hands the instance: one chunk whose bytes are here (read
    ahead from a source), or a run of `count` consecutive chunks the instance reads itself
    (a DirectRun: direct mode). Both answer the same questions, without a type check."""

    index: int
    data: bytes | DirectRun  # passed as is to the instance (InstanceBase.handle_chunks)
    reserved: int  # budget bytes this chunk gives back when delivered or dropped
    length: int  # bytes in it
    unit: int  # bytes of each of its chunks but the last (the chunk size; a bytes chunk: its length)
    unit_end: bool = True  # the last chunk of one source read: frees a read-ahead slot
    slot_freed: bool = False  # its read-ahead slot went back when it was handed to the instance
    count: int = 1  # chunks in it: more than one only for a run

    @classmethod
    def buffered(cls, index: int, data: bytes, reserved: int, unit_end: bool = True) -> "Chunk":
        return cls(index, data, reserved, len(data), len(data), unit_end=unit_end)

    @classmethod
    def run(cls, index: int, run: DirectRun) -> "Chunk":
        return cls(index, run, 0, run.length, run.chunk_size, count=run.count)

    def delivered(self, made: int) -> tuple[int, int]:
        """(chunks, bytes) delivered when `made` of its handle-chunk calls returned."""
        if made >= self.count:
            return self.count, self.length
        return made, made * self.unit


@dataclass(slots=True)
class End:
    end: values.StreamEnd


@dataclass
class StreamStats:
    chunks: int = 0
    bytes: int = 0
    read_bytes: int = 0  # bytes fetched from the source (delivered + read ahead)
    retries: int = 0
    started_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    progress_at: float = field(default_factory=time.time)  # when a byte was last delivered (or the start)
    # the batches that carried it, aggregated (a trace's chunkd.stream attributes, chunkd/tracing.py)
    batches: int = 0  # trips to the instance thread with a chunk of this stream
    guest_s: float = 0.0  # seconds in its handle-chunk calls
    budget_wait_s: float = 0.0  # seconds its reads waited for room in the buffer budget
    share_wait_s: float = 0.0  # seconds its batches waited for their turn (the fair scheduler's)
    paced_s: float = 0.0  # seconds its batches waited for the pacer (max_bytes_per_second)
    last_batch: int = -1  # the number of the last batch counted in `batches`


def read_unit_for(chunk_size: int, preferred: int, budget_limit: int) -> int:
    """Bytes one source read asks for: whole chunks, as close to the source's preferred
    unit as the budget allows, never less than one chunk (a chunk larger than the whole
    budget is read alone and takes all of it)."""
    fit = min(preferred, budget_limit)
    return max(chunk_size, (fit // chunk_size) * chunk_size)


class Delivery:
    """One correlation-id's chunked read of one stream."""

    def __init__(self, *, component: str, stream: "HostStream", correlation_id: int, chunk_size: int,
                 start: int, prefetch: int, budget: BufferBudget, retries: int, backoff_s: float,
                 on_ready: Callable[["Delivery"], None], job_id: str, direct_fd: int | None = None,
                 flow: str = NO_FLOW) -> None:
        self.stream = stream
        self.flow = flow  # whose share of the budget it takes (fairshare.flow_of: a tenant or a component)
        self.correlation_id = correlation_id
        self.chunk_size = chunk_size
        self.start = start
        self.budget = budget
        self.retries = retries
        self.backoff_s = backoff_s
        self.job_id = job_id
        size = stream.blob.size
        self.size = size
        remaining = None if size is None else max(0, size - start)
        self.total_chunks = 0 if remaining is None else max(1, -(-remaining // chunk_size))
        self.queue: collections.deque[Chunk | End] = collections.deque()
        preferred = int(getattr(stream.blob, "read_unit", 0) or 0)
        self.unit = read_unit_for(chunk_size, preferred, budget.limit_for(flow))
        self._slots = asyncio.Semaphore(max(1, -(-max(prefetch, 1) * chunk_size // self.unit)))
        self._on_ready = on_ready
        self.in_ready = False  # queued in the job's ready_streams
        self.held = 0  # budget bytes this stream holds now (its ledger)
        self.stats = StreamStats()
        self.outcome: values.StreamEnd | None = None
        self.task: asyncio.Task[None] | None = None
        self.stopped = False  # stop() ran: the producer may take, read and queue nothing more
        self.log = log.bind(component=component, job_id=job_id, correlation_id=correlation_id,
                            container=stream.container, blob=stream.name)
        # direct mode: chunks are read on the instance thread, nothing is buffered here
        self.direct_fd = direct_fd if size is not None else None
        self._prefetch = max(prefetch, 1)
        self._next = 0  # direct mode: the next chunk to hand out
        self._hinted = 0  # direct mode: the file is hinted (fadvise WILLNEED) up to here

    @property
    def direct(self) -> bool:
        return self.direct_fd is not None

    def has_next(self) -> bool:
        if self.direct_fd is not None:
            return self.outcome is None and self._next < self.total_chunks
        return bool(self.queue)

    def take_direct(self, max_chunks: int, max_bytes: int) -> Chunk:
        """Direct mode: the next chunks, as many as both limits allow (at least one), as
        one DirectRun for the instance thread.

        Read-ahead is a kernel hint over the run and the `prefetch_chunks` chunks after
        it, issued once the part not yet hinted is a whole window (or the run itself is
        not hinted yet): one posix_fadvise per `prefetch_chunks` chunks, not per run."""
        assert self.direct_fd is not None and self.size is not None
        i = self._next
        cs = self.chunk_size
        k = max(1, min(max_chunks, self.total_chunks - i, max_bytes // cs))
        self._next += k
        offset = self.start + i * cs
        last = max(0, min(cs, self.size - (offset + (k - 1) * cs)))
        end = offset + (k - 1) * cs + last
        need = min(self.size, end + self._prefetch * cs)
        hint_offset = hint_length = 0
        if need > self._hinted and (self._hinted < end or need - self._hinted >= self._prefetch * cs):
            hint_offset = max(self._hinted, offset)
            hint_length = need - hint_offset
            self._hinted = need
        run = DirectRun(self.direct_fd, offset, cs, k, last, hint_offset, hint_length)
        return Chunk.run(i, run)

    @property
    def name(self) -> str:
        return f"{self.stream.container}/{self.stream.name}"

    # --- the producer (a task owned by the job's StreamSet) ------------------------

    async def produce(self) -> None:
        """Read ahead until the end; never raises but CancelledError: a source error or a
        bug ends this stream `failed` (a bug says `internal error` and is logged)."""
        try:
            try:
                await self._produce()
            except (asyncio.CancelledError, ProducerStopped):
                raise
            except SourceError as e:
                self._push(End(values.failed(str(e))))
            except Exception as e:
                self.log.exception("producer_crashed")
                self._push(End(values.failed(f"internal error: {e!r}")))
        except ProducerStopped:  # the stream ended and its cancel was not honoured: done
            self.log.debug("producer_outlived_its_end")

    def _check_open(self) -> None:
        """The producer's one check that its stream has not ended (see the module doc)."""
        if self.stopped:
            raise ProducerStopped(f"stream {self.name} (correlation-id {self.correlation_id}) has ended")

    def _push(self, item: Chunk | End) -> None:
        self._check_open()  # after the end an item is dropped: its bytes went back with stop()
        self.queue.append(item)
        self._on_ready(self)

    async def _take(self, n: int) -> int:
        self._check_open()
        t0 = time.monotonic()
        granted = await self.budget.acquire(n, self.flow)
        self.stats.budget_wait_s += time.monotonic() - t0
        if self.stopped:  # granted after the end: the ledger is closed, it goes straight back
            self.budget.release(granted, self.flow)
            self._check_open()
        self.held += granted  # no await between the grant and the ledger
        return granted

    def _give(self, n: int) -> None:
        n = min(n, self.held)
        self.held -= n
        self.budget.release(n, self.flow)

    async def _read(self, offset: int, length: int) -> bytes:
        def on_retry(attempt: int, delay: float, e: SourceError) -> None:
            self._check_open()  # no retry after the end: its blob is closed, or about to be
            self.stats.retries += 1
            self.log.warning("source_retry", offset=offset, attempt=attempt, delay_s=round(delay, 3), error=str(e))
        return await read_with_retry(self.stream.blob, offset, length, self.retries, self.backoff_s, on_retry)

    async def _produce(self) -> None:
        """Read one unit (a chunk, or a coalesced range of whole chunks) at a time, slice it."""
        offset = self.start
        index = 0
        unit = self.unit
        while True:
            want = unit if self.size is None else max(0, min(unit, self.size - offset))
            await self._slots.acquire()
            granted = await self._take(want)
            data = b"" if want == 0 else await self._read(offset, want)
            self.stats.read_bytes += len(data)
            if self.size is not None and len(data) != want:
                raise SourceError(f"blob {self.name} changed size: got {len(data)} bytes at offset "
                                  f"{offset}, expected {want}")
            if self.size is None and not data and index > 0:
                self._give(granted)
                self._push(End(values.COMPLETED))
                return
            pieces = [data[p:p + self.chunk_size] for p in range(0, len(data), self.chunk_size)] or [b""]
            left = granted
            for n, piece in enumerate(pieces):
                last = n == len(pieces) - 1
                share = left if last else min(len(piece), left)
                left -= share
                self._push(Chunk.buffered(index + n, piece, share, unit_end=last))
            offset += len(data)
            index += len(pieces)
            if self.size is not None and index >= self.total_chunks:
                return
            if self.size is None and len(data) < want:  # short read: the unknown-size blob ended
                if data:
                    self._push(End(values.COMPLETED))
                return

    # --- the consumer side (the StreamSet's delivery loop) --------------------------

    def account(self, chunk: Chunk, chunks: int, nbytes: int) -> None:
        """`chunk` came back from the instance with `chunks` chunks (`nbytes` bytes) of it
        delivered: its room goes back (none is held in direct mode), the stats count them."""
        self.dropped(chunk)
        self.stats.chunks += chunks
        self.stats.bytes += nbytes
        if chunks:
            self.stats.progress_at = time.time()

    def stalled(self, now: float) -> bool:
        """Open, and no chunk delivered for STALLED_AFTER_S (status page, /v1/status, metric)."""
        return self.outcome is None and now - self.stats.progress_at >= STALLED_AFTER_S

    def handed(self, chunk: Chunk) -> None:
        """A chunk left the queue for the instance thread: it is no longer read-ahead, so
        its slot goes back now and the producer reads the next unit while the guest works
        (its budget bytes stay held until it is delivered or dropped)."""
        if self.direct_fd is None and chunk.unit_end and not chunk.slot_freed:
            chunk.slot_freed = True
            self._slots.release()

    def dropped(self, chunk: Chunk) -> None:
        """A chunk is done with (delivered or not): its room goes back."""
        if self.direct_fd is not None:
            return
        self._give(chunk.reserved)
        if chunk.unit_end and not chunk.slot_freed:
            chunk.slot_freed = True
            self._slots.release()

    def is_last(self, chunk: Chunk) -> bool:
        if self.size is None:
            return chunk.length == 0
        return chunk.index + chunk.count == self.total_chunks

    def stop(self) -> None:
        """Stop reading and give back every byte this stream holds. Synchronous, so no
        cancellation can leave it half done. Once it ran, the producer can take, read and
        queue nothing more, whether it honours its cancel or not (a grant racing the
        cancel is given back inside acquire, one after it in `_take`)."""
        self.stopped = True
        if self.task is not None and not self.task.done():
            self.task.cancel()
        # the job's TaskGroup still owns the task; holding it here would keep a cancelled
        # producer's frame (its last read, up to a whole read unit) alive with the job record
        self.task = None
        self.queue.clear()
        self._give(self.held)

    async def close_blob(self) -> None:
        try:
            await self.stream.blob.close()
        except Exception as e:  # closing is best effort; the stream is over either way
            self.log.warning("blob_close_failed", error=str(e))
