"""The streams of one job on one instance: invoke, the delivery loop, the ends.

A StreamSet owns its producers in one `asyncio.TaskGroup`. Leaving that
scope on any path (every stream done, invoke error, operator cancel, trap,
timeout, shutdown, or an exception nobody foresaw) ends every open stream
exactly once and gives back every byte of budget before the scope closes.
`run()` turns each of those paths into the job's outcome.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Coroutine, Protocol

import structlog

from chunkd.delivery import Chunk, Delivery, End
from chunkd.errors import GuestTrap, SourceError
from chunkd.host import values
from chunkd.host.instance import BatchResult, HandleCall
from chunkd.jobs import JobState
from chunkd.metrics import observe_many
from chunkd.fairshare import FairShare, Grant, flow_of
from chunkd.flowcontrol import BufferBudget, Pacer

if TYPE_CHECKING:
    from prometheus_client import Counter, Histogram

    from chunkd.host.instance import InstanceBase
    from chunkd.jobs import Job
    from chunkd.tracing import JobTrace

log = structlog.get_logger("chunkd.streamset")

BATCH_CHUNKS = 64  # handle-chunk calls per trip to the instance thread
BATCH_BYTES = 8 * 1024 * 1024
# a batch of direct runs (files read by a core guest's thread) may be larger: the trip to
# the instance thread and the handoff of the GIL around it (~0.1 ms) are paid per batch,
# and nothing is buffered for them (the guest's own memory takes each chunk)
DIRECT_BATCH_CHUNKS = 256
DIRECT_BATCH_BYTES = 32 * 1024 * 1024
MAX_INVOKE_RESULT = 64 * 1024  # characters of an invoke result kept in the job record


class StreamAccounting(Protocol):
    """Daemon-wide stream counters (the runtime's)."""

    def stream_ended(self, d: Delivery, end: values.StreamEnd) -> None: ...


@dataclass(frozen=True)
class StreamSettings:
    """What a job's streams need from the config and the component's pool."""

    prefetch: int
    retries: int
    backoff_s: float
    pacer: Pacer
    meters: tuple["Histogram", "Counter", "Counter"]  # handle seconds, chunks, bytes (this component)
    # the runtime's delivery slots, admitted by weighted byte share (chunkd/fairshare.py);
    # None: batches go to the instance thread as soon as they are ready
    fairshare: FairShare | None = None


@dataclass(frozen=True)
class Outcome:
    state: JobState
    error: str | None = None
    trap: GuestTrap | None = None  # the trap or timeout that broke the instance, if any


def clip_result(text: str) -> str:
    if len(text) <= MAX_INVOKE_RESULT:
        return text
    return text[:MAX_INVOKE_RESULT] + f"... [{len(text) - MAX_INVOKE_RESULT} more characters not kept]"


def charge_wait(batch: list[tuple[Delivery, Chunk]], what: str, seconds: float) -> None:
    """A batch waited `seconds` before its trip (`what`: "paced_s", or "share_wait_s" for
    the fair scheduler's turn): each stream in it is charged once, in its StreamStats."""
    for d in {d for d, _ in batch}:
        setattr(d.stats, what, getattr(d.stats, what) + seconds)


def trace_stream(span: "JobTrace", d: Delivery, end: values.StreamEnd) -> None:
    """A stream ended on a traced job: its chunkd.stream span, batches aggregated."""
    st = d.stats
    span.stream({
        "chunkd.stream.container": d.stream.container, "chunkd.stream.blob": d.stream.name,
        "chunkd.stream.correlation_id": d.correlation_id, "chunkd.stream.chunk_size": d.chunk_size,
        "chunkd.stream.size": -1 if d.size is None else d.size, "chunkd.stream.direct": d.direct,
        "chunkd.stream.outcome": end.kind, "chunkd.stream.chunks": st.chunks, "chunkd.stream.bytes": st.bytes,
        "chunkd.stream.retries": st.retries, "chunkd.stream.batches": st.batches,
        "chunkd.stream.guest_s": round(st.guest_s, 6), "chunkd.stream.budget_wait_s": round(st.budget_wait_s, 6),
        "chunkd.stream.share_wait_s": round(st.share_wait_s, 6), "chunkd.stream.paced_s": round(st.paced_s, 6),
    }, st.started_at, st.ended_at or time.time(), end.reason if end.kind == "failed" else None)


class StreamSet:
    def __init__(self, job: "Job", inst: "InstanceBase", budget: BufferBudget, settings: StreamSettings,
                 accounting: StreamAccounting) -> None:
        self.job = job
        self.inst = inst
        self.budget = budget
        self.settings = settings
        self.accounting = accounting
        self._tg: asyncio.TaskGroup | None = None
        self.flow = flow_of(job)  # whose share its batches and read-ahead count against
        self._batch_no = 0  # batches accounted for (a stream's stats count those that carried it)

    async def run(self) -> Outcome:
        """The job's one attempt on this instance. Returns its outcome; raises only
        CancelledError (shutdown, or an operator cancel of the waiting task), and then
        too every stream has ended and its budget is back."""
        exit_end: values.StreamEnd = values.failed("internal error: stream left open")
        tell = False
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            try:
                return await self._drive()
            except GuestTrap as e:
                exit_end = values.failed(str(e))
                return Outcome(JobState.FAILED, str(e), trap=e)
            except asyncio.CancelledError:
                cancel = self.job.cancel_requested
                exit_end = values.CANCELLED if cancel else values.failed("daemon shutting down")
                await self._settle()
                raise
            except Exception as e:  # a bug: this job fails, the daemon goes on
                log.exception("job_internal_error", job_id=self.job.id)
                exit_end = values.failed(f"internal error: {e!r}")
                tell = not self.inst.broken
                return Outcome(JobState.FAILED, f"internal error: {e!r}")
            finally:
                self._tg = None  # no producer starts after this
                await self._end_all(exit_end, tell_guest=tell)

    async def _settle(self) -> None:
        """After a cancel: let a guest call still running on the instance thread finish
        (call_timeout bounds it), so streams it starts are seen and ended here."""
        try:
            await asyncio.wait_for(asyncio.shield(self.inst.settle()), self.inst.call_timeout_s * 2 + 1)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            pass

    async def _drive(self) -> Outcome:
        job, inst = self.job, self.inst
        ok, text = await inst.invoke(job.args)
        job.invoke_ok, job.invoke_result = ok, clip_result(text)
        self._schedule_requests()
        if not ok:
            trap = await self._end_all(values.CANCELLED, tell_guest=True)
            if trap is not None:
                raise trap
            return Outcome(JobState.FAILED, f"invoke returned error: {clip_result(text)}")
        await self._deliver()
        if job.stopped:
            return Outcome(JobState.FAILED, job.stopped)
        if job.cancel_requested:
            return Outcome(JobState.CANCELLED, "cancelled by operator")
        if inst.verdicts:  # the streams world: a consume call returned an error
            names = {d.correlation_id: d.name for d in job.deliveries}
            return Outcome(JobState.FAILED, f"{len(inst.verdicts)} consume call(s) returned an error: " + "; ".join(
                f"{names.get(cid, '?')} (correlation-id {cid}): {clip_result(msg)}" for cid, msg in inst.verdicts[:5]))
        bad = [d for d in job.deliveries if d.outcome != values.COMPLETED]
        if not bad:
            return Outcome(JobState.COMPLETED)
        return Outcome(JobState.FAILED, f"{len(bad)} stream(s) did not complete: " + "; ".join(
            f"{d.name} (correlation-id {d.correlation_id}): {d.outcome}" for d in bad[:5]))

    def _schedule_requests(self) -> None:
        job = self.job
        s = self.settings
        direct = self.inst.direct_reads
        for req in job.inbox.take_requests():
            fd = getattr(req.stream.blob, "direct_fd", None) if direct else None
            d = Delivery(component=self.inst.comp.name, stream=req.stream, correlation_id=req.correlation_id,
                         chunk_size=req.chunk_size, start=req.start, prefetch=s.prefetch, budget=self.budget,
                         retries=s.retries, backoff_s=s.backoff_s, on_ready=job.inbox.mark_ready, job_id=job.id,
                         direct_fd=fd, flow=self.flow)
            job.deliveries.append(d)
            job.open_streams += 1
            d.log.info("stream_started", chunk_size=d.chunk_size, size=d.size, total_chunks=d.total_chunks,
                       start_offset=d.start, direct=d.direct)
            if self._tg is None:
                continue  # closing: it ends at once
            if d.direct:
                job.inbox.mark_ready(d)  # nothing to read ahead: the instance thread reads each chunk
            else:
                d.task = self._tg.create_task(d.produce(), name=f"chunkd:produce:{job.id}:{d.correlation_id}")

    async def _deliver(self) -> None:
        """Round-robin over the job's streams that have a chunk ready (O(1) per chunk).

        Chunks go to the instance thread in batches, one handle-chunk call after another,
        so a thread hop is paid per batch rather than per chunk; a paced component (or
        tenant) gets one chunk per hop. Each batch waits for its turn in the runtime's
        delivery slots (FairShare: at most `delivery_workers` batches of all jobs run at
        once, the next going to the flow furthest behind its weighted byte share).
        Batches of direct chunks (a core guest reading files itself) are pipelined: the
        next batch is built and queued on the instance thread while the current one runs,
        sharing its slot (FairShare.extend) when no other batch waits for one; when some
        do, the loop lets the batch in flight finish (and its slot go) before the next
        asks for a turn, so a job never waits for a slot while it holds one. The instance
        skips, in a queued batch, every stream an earlier batch stopped (see
        InstanceBase.handle_chunks)."""
        job = self.job
        fs = self.settings.fairshare
        tenant_pacer = fs.pacer(self.flow) if fs is not None else None
        paced = self.settings.pacer.rate > 0 or (tenant_pacer is not None and tenant_pacer.rate > 0)
        inflight: tuple[list[tuple[Delivery, Chunk]], asyncio.Task[BatchResult], Grant | None] | None = None
        try:
            while True:
                self._schedule_requests()
                if job.cancel_requested:
                    if inflight is not None:
                        last, inflight = inflight, None
                        await self._account(*last)
                    why = job.fenced or job.stopped
                    end = values.failed(why) if why else values.CANCELLED
                    trap = await self._end_all(end, tell_guest=True)
                    if trap is not None:
                        raise trap
                    return
                if job.open_streams == 0 and inflight is None:
                    return
                batch = await self._take_batch(paced, direct_only=inflight is not None)
                if batch and not paced and self._tg is not None and all(d.direct for d, _ in batch):
                    grant: Grant | None = None
                    if fs is not None:
                        if inflight is None:
                            grant = await self._turn(fs, batch)
                        else:  # share the slot of the batch in flight, or (it is done) take a free one
                            nbytes = sum(c.length for _, c in batch)
                            held = inflight[2]
                            grant = (fs.extend(held, nbytes) if held is not None else None) \
                                or fs.try_acquire(self.flow, nbytes)
                    if fs is None or grant is not None:
                        # queue it behind the batch in flight, then account for that one
                        task = self._tg.create_task(self._send(batch, fresh=inflight is None, grant=grant),
                                                    name=f"chunkd:batch:{job.id}")
                        previous, inflight = inflight, (batch, task, grant)
                        if previous is not None:
                            await self._account(*previous)
                        continue
                    # others wait for a slot: no pipelining; this batch takes its turn below
                if inflight is not None:
                    previous, inflight = inflight, None
                    await self._account(*previous)
                if batch:
                    await self._account(batch, self._send(batch, fresh=True))
                    continue
                if job.open_streams == 0 or job.cancel_requested:
                    continue
                if not job.inbox.ready_streams:
                    job.inbox.ready.clear()
                    if job.inbox.ready_streams or job.inbox.requests:
                        continue
                    await job.inbox.ready.wait()
        finally:
            if inflight is not None:  # leaving early (a trap, a cancel, a bug): the batch still
                batch, task, held = inflight  # runs on the thread; wait for it, give its chunks back
                try:
                    await asyncio.wait([task])
                finally:
                    if held is not None:
                        held.release()  # (its task released it, unless it never started)
                    for d, c in batch:
                        d.dropped(c)
                    if task.done() and not task.cancelled():
                        task.exception()  # seen: its result is not accounted for

    async def _turn(self, fs: FairShare, batch: list[tuple[Delivery, Chunk]]) -> Grant:
        """Wait for a delivery slot for `batch` (its streams are charged the wait). On a
        cancel while waiting, the batch's chunks are given back and nothing is held."""
        try:
            grant = await fs.acquire(self.flow, sum(c.length for _, c in batch))
        except BaseException:
            for d, c in batch:
                d.dropped(c)
            raise
        if grant.waited_s:
            charge_wait(batch, "share_wait_s", grant.waited_s)
        return grant

    async def _take_batch(self, paced: bool, direct_only: bool) -> list[tuple[Delivery, Chunk]]:
        """The next batch from the ready streams, round-robin. A stream read directly gives
        its share of the batch as one run of consecutive chunks (the batch's chunks over
        the streams ready when it starts), so the loop's work per batch is O(streams).
        Read-ahead chunks (bytes) fill a batch up to BATCH_CHUNKS / BATCH_BYTES, direct
        runs up to DIRECT_BATCH_CHUNKS / DIRECT_BATCH_BYTES.
        `direct_only`: stop at the first stream that is not read directly (only direct
        batches are pipelined)."""
        job = self.job
        batch: list[tuple[Delivery, Chunk]] = []
        nbytes = 0
        nchunks = 0
        ready = job.inbox.ready_streams
        limit, max_bytes = (1, BATCH_BYTES) if paced else (DIRECT_BATCH_CHUNKS, DIRECT_BATCH_BYTES)
        share = max(1, limit // max(1, len(ready)))
        while ready and nchunks < limit and nbytes < max_bytes:
            d = ready[0]
            if d.outcome is not None or not d.has_next():
                ready.popleft()
                d.in_ready = False
                continue
            if d.direct_fd is not None:
                item = d.take_direct(min(share, limit - nchunks), max_bytes - nbytes)
            else:
                if direct_only or nchunks >= min(limit, BATCH_CHUNKS) or nbytes >= BATCH_BYTES:
                    break
                head = d.queue[0]
                if isinstance(head, End):
                    if batch:
                        break  # ends are told after the chunks before them
                    ready.popleft()
                    d.in_ready = False
                    d.queue.popleft()
                    await self._end(d, head.end, tell_guest=True)
                    break
                d.queue.popleft()
                d.handed(head)
                item = head
            ready.popleft()
            d.in_ready = False
            if d.has_next():  # more ready: back of the line, after the other streams
                job.inbox.mark_ready(d)
            batch.append((d, item))
            nbytes += item.length
            nchunks += item.count
        return batch

    async def _send(self, batch: list[tuple[Delivery, Chunk]], fresh: bool,
                    grant: Grant | None = None) -> BatchResult:
        """Pace (the component's pacer, then the tenant's), take a turn unless `grant` is
        one already, send the batch; the turn is released when the trip is over."""
        fs = self.settings.fairshare
        try:
            pacer = self.settings.pacer
            tenant_pacer = fs.pacer(self.flow) if fs is not None else None
            if pacer.rate > 0 or tenant_pacer is not None:
                nbytes = sum(c.length for _, c in batch)
                paced = await pacer.take(nbytes)
                if tenant_pacer is not None:
                    paced += await tenant_pacer.take(nbytes)
                if paced:
                    charge_wait(batch, "paced_s", paced)
            if grant is None and fs is not None:
                grant = await fs.acquire(self.flow, sum(c.length for _, c in batch))
                if grant.waited_s:
                    charge_wait(batch, "share_wait_s", grant.waited_s)
            calls: list[HandleCall] = [(d.stream.handle, d.correlation_id, c.index, d.total_chunks, c.data)
                                       for d, c in batch]
            return await self.inst.handle_chunks(calls, fresh)
        finally:
            if grant is not None:
                grant.release()

    async def _account(self, batch: list[tuple[Delivery, Chunk]],
                       sent: "asyncio.Task[BatchResult] | Coroutine[Any, Any, BatchResult]",
                       grant: Grant | None = None) -> None:
        try:
            result = await sent
        except BaseException:
            for d, c in batch:  # not delivered (cancelled mid-trip): give the room back
                d.dropped(c)
            raise
        finally:
            if grant is not None:
                grant.release()  # (the trip released it; a task cancelled before it began did not)
        m_seconds, m_chunks, m_bytes = self.settings.meters
        ends: list[tuple[Delivery, values.StreamEnd]] = []
        # account for every chunk of the batch first: an end told to the guest may trap
        delivered = nbytes = 0
        self._batch_no = seq = self._batch_no + 1
        for i, (d, c) in enumerate(batch):
            o = result.outcome(i)
            st = d.stats
            st.guest_s += o.seconds
            if st.last_batch != seq:
                st.batches += 1
                st.last_batch = seq
            n, got = c.delivered(o.made)
            if n:
                d.account(c, n, got)
                observe_many(m_seconds, o.seconds, n)
                delivered += n
                nbytes += got
            else:
                d.account(c, 0, 0)
            if o.source_error is not None:  # a direct read failed: the guest was not called
                ends.append((d, values.failed(str(o.source_error))))
            elif o.answer is False:
                ends.append((d, values.CANCELLED))
            elif o.answer is True and d.is_last(c):
                ends.append((d, values.COMPLETED))
        m_chunks.inc(delivered)
        m_bytes.inc(nbytes)
        fs = self.settings.fairshare
        if fs is not None:
            fs.count_delivered(self.flow, nbytes)
        # the streams this batch ended: all closed first, then told in one trip
        closed = [(d, end) for d, end in ends if self._close(d, end)]
        for d, _ in closed:
            await d.close_blob()
        if result.trap is None and closed and not self.inst.broken:
            await self.inst.streams_ended([(d.correlation_id, end) for d, end in closed])
        if result.trap is not None:
            raise result.trap

    def _close(self, d: Delivery, end: values.StreamEnd) -> bool:
        """The synchronous part of an end: outcome, producer, budget, counters. False when
        the stream had already ended (an end happens once)."""
        if d.outcome is not None:
            return False
        d.outcome = end
        d.stats.ended_at = time.time()
        self.job.open_streams -= 1
        d.stop()
        self.inst.streams.end(d.stream)  # its correlation-id is free; the table lets go once the handle is dropped
        self.accounting.stream_ended(d, end)
        d.log.info("stream_ended", end=str(end), chunks=d.stats.chunks, bytes=d.stats.bytes, retries=d.stats.retries)
        if self.job.span is not None:
            trace_stream(self.job.span, d, end)
        return True

    async def _end(self, d: Delivery, end: values.StreamEnd, *, tell_guest: bool) -> None:
        if not self._close(d, end):
            return
        await d.close_blob()
        if tell_guest and not self.inst.broken:
            await self.inst.stream_ended(d.correlation_id, end)

    async def _end_all(self, end: values.StreamEnd, *, tell_guest: bool) -> GuestTrap | None:
        """End every open stream the same way, those a guest starts from stream-ended too.
        Every stream is closed (budget back) before anything is awaited; a trap while
        telling the guest stops the telling, not the ending. Returns that trap."""
        trap: GuestTrap | None = None
        while True:
            self._schedule_requests()
            open_ = [d for d in self.job.deliveries if d.outcome is None]
            if not open_:
                return trap
            closed = [d for d in open_ if self._close(d, end)]
            for d in closed:
                await d.close_blob()
            for d in closed:
                if trap is None and tell_guest and not self.inst.broken:
                    try:
                        await self.inst.stream_ended(d.correlation_id, end)
                    except GuestTrap as e:
                        trap = e
