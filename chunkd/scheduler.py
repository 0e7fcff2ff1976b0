"""Streams, read-ahead, the shared buffer budget, pacing and fairness.

- BufferBudget: all read-ahead bytes of all streams stay under
  `max_buffered_bytes`; sources wait (FIFO, so no stream starves) when it is
  full. That is the backpressure.
- Pacer: `max_bytes_per_second` per component (0 = unpaced).
- Delivery: one chunked read. A producer task reads ahead at most
  `prefetch_chunks` chunks into a queue; the job's delivery loop takes them
  round-robin across the job's streams and calls handle-chunk.
"""
from __future__ import annotations

import asyncio
import collections
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import structlog

from chunkd.errors import SourceError
from chunkd.host import values

if TYPE_CHECKING:
    from chunkd.host.instance import GuestInstance, HostStream
    from chunkd.sources.base import Blob

log = structlog.get_logger("chunkd.scheduler")


class BufferBudget:
    """A byte semaphore with FIFO waiters and peak accounting."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0
        self.peak = 0
        self.waits = 0  # how often a source had to wait for room: backpressure at work
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    async def acquire(self, n: int) -> None:
        n = min(n, self.limit)
        if not self._waiters and self.in_use + n <= self.limit:
            self._take(n)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waits += 1
        self._waiters.append((n, fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(n)  # granted just as we were cancelled
            else:
                self._waiters = collections.deque(w for w in self._waiters if w[1] is not fut)
                self._wake()
            raise

    def _take(self, n: int) -> None:
        self.in_use += n
        if self.in_use > self.peak:
            self.peak = self.in_use

    def release(self, n: int) -> None:
        n = min(n, self.limit)
        self.in_use -= n
        assert self.in_use >= 0, "buffer budget released more than acquired"
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            n, fut = self._waiters[0]
            if fut.done():
                self._waiters.popleft()
                continue
            if self.in_use + n > self.limit:
                return
            self._waiters.popleft()
            self._take(n)
            fut.set_result(None)


class Pacer:
    """Spaces deliveries so a component gets at most `rate` bytes per second."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._next = 0.0

    async def take(self, n: int) -> None:
        if self.rate <= 0 or n <= 0:
            return
        now = time.monotonic()
        start = max(now, self._next)
        self._next = start + n / self.rate
        if start > now:
            await asyncio.sleep(start - now)


async def read_with_retry(blob: "Blob", offset: int, length: int, retries: int, backoff_s: float,
                          on_retry: "Callable[[int, float, SourceError], None] | None" = None) -> bytes:
    """blob.read_at, retrying transient errors with jittered exponential backoff from the same offset."""
    attempt = 0
    while True:
        try:
            return await blob.read_at(offset, length)
        except SourceError as e:
            if not e.transient or attempt >= retries:
                raise
            attempt += 1
            delay = backoff_s * (2 ** (attempt - 1)) * (0.5 + random.random())
            if on_retry is not None:
                on_retry(attempt, delay, e)
            await asyncio.sleep(delay)


@dataclass
class Chunk:
    index: int
    data: bytes
    reserved: int  # budget bytes this chunk gives back when delivered
    unit_end: bool = True  # the last chunk of one source read: frees a read-ahead slot


@dataclass
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


class Delivery:
    """One chunked read: correlation-id, chunk size, producer and its queue."""

    def __init__(self, *, inst: "GuestInstance", stream: "HostStream", correlation_id: int, chunk_size: int,
                 start: int, prefetch: int, budget: BufferBudget, retries: int, backoff_s: float,
                 on_ready: "Callable[[Delivery], None]", job_id: str) -> None:
        self.inst = inst
        self.stream = stream
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
        # Remote blobs prefer larger reads (`read_unit`, e.g. 8 MiB ranges): read whole
        # chunks in such units and slice them. Read-ahead is then max(prefetch_chunks
        # chunks, one unit), always inside the shared budget.
        preferred = int(getattr(stream.blob, "read_unit", 0) or 0)
        self.unit = max(chunk_size, (preferred // chunk_size) * chunk_size)
        self._slots = asyncio.Semaphore(max(1, -(-prefetch * chunk_size // self.unit)))
        self._on_ready = on_ready
        self.in_ready = False  # queued in the job's ready_streams
        self.stats = StreamStats()
        self.outcome: values.StreamEnd | None = None
        self.task: asyncio.Task[None] | None = None
        self.log = log.bind(component=inst.comp.name, job_id=job_id, correlation_id=correlation_id,
                            container=stream.container, blob=stream.name)

    @property
    def name(self) -> str:
        return f"{self.stream.container}/{self.stream.name}"

    def begin(self) -> None:
        self.task = asyncio.create_task(self._produce(), name=f"produce-{self.job_id}-{self.correlation_id}")
        self.task.add_done_callback(self._producer_done)

    def _producer_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:  # a bug, not a source error: end the stream failed, loudly
            self.log.error("producer_crashed", error=repr(exc))
            self._push(End(values.failed(f"internal error: {exc!r}")))

    def _push(self, item: Chunk | End) -> None:
        self.queue.append(item)
        self._on_ready(self)

    async def _read(self, offset: int, length: int) -> bytes:
        def on_retry(attempt: int, delay: float, e: SourceError) -> None:
            self.stats.retries += 1
            self.log.warning("source_retry", offset=offset, attempt=attempt, delay_s=round(delay, 3), error=str(e))
        return await read_with_retry(self.stream.blob, offset, length, self.retries, self.backoff_s, on_retry)

    async def _produce(self) -> None:
        """Read one unit (a chunk, or a coalesced range of whole chunks) at a time, slice it."""
        offset = self.start
        index = 0
        unit = self.unit
        while True:
            want = unit if self.size is None else min(unit, self.size - offset)
            await self._slots.acquire()
            reserved = max(want, 0)
            try:
                await self.budget.acquire(reserved)
            except BaseException:
                self._slots.release()
                raise
            handed = False
            try:
                data = b"" if want <= 0 else await self._read(offset, want)
                self.stats.read_bytes += len(data)
                if self.size is not None and len(data) != want:
                    raise SourceError(f"blob {self.name} changed size: got {len(data)} bytes at offset "
                                      f"{offset}, expected {want}")
                if self.size is None and not data and index > 0:
                    self._push(End(values.COMPLETED))
                    return
                handed = True
                pieces = [data[p:p + self.chunk_size] for p in range(0, len(data), self.chunk_size)] or [b""]
                given = 0
                for n, piece in enumerate(pieces):
                    last = n == len(pieces) - 1
                    share = reserved - given if last else len(piece)
                    given += share
                    self._push(Chunk(index + n, piece, share, unit_end=last))
            except SourceError as e:
                self._push(End(values.failed(str(e))))
                return
            finally:
                if not handed:
                    self.budget.release(reserved)
                    self._slots.release()
            offset += len(data)
            index += len(pieces)
            if self.size is not None and index >= self.total_chunks:
                return
            if self.size is None and len(data) < want:  # short read: the unknown-size blob ended
                if data:
                    self._push(End(values.COMPLETED))
                return

    def consumed(self, chunk: Chunk) -> None:
        self.budget.release(chunk.reserved)
        if chunk.unit_end:
            self._slots.release()
        self.stats.chunks += 1
        self.stats.bytes += len(chunk.data)

    def discard(self, chunk: Chunk) -> None:
        """A chunk taken from the queue but never delivered: give its room back."""
        self.budget.release(chunk.reserved)
        if chunk.unit_end:
            self._slots.release()

    def is_last(self, chunk: Chunk) -> bool:
        if self.size is None:
            return not chunk.data
        return chunk.index == self.total_chunks - 1

    async def stop(self) -> None:
        """Stop reading (cancel) and give back every buffered byte."""
        if self.task is not None and not self.task.done():
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        while self.queue:
            item = self.queue.popleft()
            if isinstance(item, Chunk):
                self.budget.release(item.reserved)
                if item.unit_end:
                    self._slots.release()
        try:
            await self.stream.blob.close()
        except Exception as e:  # closing is best effort; the stream is over either way
            self.log.warning("blob_close_failed", error=str(e))
