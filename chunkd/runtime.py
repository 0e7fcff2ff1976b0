"""The host runtime: engine, instance pools, containers, and the job runner.

One Runtime owns all chunkd state for a config. `chunkd run` uses it
in-process; the server wraps it. Delivery rules are SPEC section 2.
"""
from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import structlog
from wasmtime import Engine
from wasmtime.component import Variant

from chunkd.config import ComponentConfig, Config
from chunkd.errors import ChunkdError, GuestTrap, SourceError
from chunkd.host import values
from chunkd.host.component import LoadedComponent, load_component
from chunkd.host.engine import EpochClock, make_engine
from chunkd.host.instance import GuestInstance, HostStream
from chunkd.jobs import CANCELLED, COMPLETED, FAILED, RUNNING, Job, StreamRequest
from chunkd.scheduler import BufferBudget, Chunk, Delivery, End, Pacer, read_with_retry
from chunkd.sources import Container, build_container
from chunkd.sources.base import Blob

log = structlog.get_logger("chunkd.runtime")

OutputListener = Callable[[Job | None, str, str, str], None]  # job, component, fd, line


class UnknownComponent(ChunkdError):
    pass


class QueueFull(ChunkdError):
    pass


class InstancePool:
    """`instances` live instances of one component; jobs take the next free one (FIFO)."""

    def __init__(self, runtime: "Runtime", comp: LoadedComponent, cfg: ComponentConfig) -> None:
        self.runtime = runtime
        self.comp = comp
        self.cfg = cfg
        self.pacer = Pacer(cfg.max_bytes_per_second)
        self.idle: asyncio.Queue[GuestInstance] = asyncio.Queue(maxsize=cfg.instances)
        self.waiting = 0
        self._next_index = 0
        self.replaced = 0

    def _new_instance(self) -> GuestInstance:
        lim = self.runtime.config.limits
        inst = GuestInstance(self.comp, self._next_index, self.runtime, self.runtime.clock,
                             call_timeout_s=lim.call_timeout_s, memory_bytes=lim.instance_memory_bytes,
                             max_chunk_size=lim.max_chunk_size_bytes)
        self._next_index += 1
        return inst

    async def start(self) -> None:
        insts = [self._new_instance() for _ in range(self.cfg.instances)]
        await asyncio.gather(*(i.start() for i in insts))
        for i in insts:
            self.idle.put_nowait(i)

    async def acquire(self) -> GuestInstance:
        self.waiting += 1
        try:
            return await self.idle.get()
        finally:
            self.waiting -= 1

    def release(self, inst: GuestInstance) -> None:
        self.idle.put_nowait(inst)

    async def replace(self, broken: GuestInstance) -> None:
        """Discard a trapped or timed-out instance and start a fresh one in its place."""
        self.replaced += 1
        log.warning("instance_replaced", component=self.comp.name, instance=broken.label, reason=broken.broken)
        for s in list(broken.streams.values()):
            await _close_quietly(s.blob)
        await broken.close()
        delay = 0.0
        while True:
            inst = self._new_instance()
            try:
                await inst.start()
            except Exception as e:
                await inst.close()
                delay = min(max(delay * 2, 0.5), 30.0)
                log.error("instance_start_failed", component=self.comp.name, error=str(e), retry_in_s=delay)
                await asyncio.sleep(delay)
                continue
            self.idle.put_nowait(inst)
            return

    async def close(self) -> None:
        while not self.idle.empty():
            await self.idle.get_nowait().close()


async def _close_quietly(blob: Blob) -> None:
    try:
        await blob.close()
    except Exception as e:
        log.warning("blob_close_failed", error=str(e))


class Runtime:
    """Implements HostServices for instances and runs jobs."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set in start()
        self.engine: Engine | None = None
        self.clock: EpochClock = None  # type: ignore[assignment]
        self.containers: dict[str, Container] = {}
        self.pools: dict[str, InstancePool] = {}
        self.jobs: dict[str, Job] = {}
        self.budget = BufferBudget(config.limits.max_buffered_bytes)
        self.io_executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="chunkd-io")
        self.output_listeners: list[OutputListener] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._active_streams = 0
        self._active_lock = threading.Lock()
        self._queued = 0
        self.counters = {"traps": 0, "timeouts": 0, "chunks": 0, "bytes": 0}

    # --- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        values.install_fast_bytes()
        cache_dir = self.config.daemon.state_dir / "cache"
        self.engine = await self.loop.run_in_executor(None, make_engine, cache_dir)
        self.clock = EpochClock(self.engine)
        self.clock.start()
        for name, ccfg in self.config.containers.items():
            self.containers[name] = build_container(ccfg, self.io_executor)
        engine = self.engine
        comps = await asyncio.gather(*(
            self.loop.run_in_executor(None, load_component, engine, name, c.path)
            for name, c in self.config.components.items()))
        for comp in comps:
            pool = InstancePool(self, comp, self.config.components[comp.name])
            await pool.start()
            self.pools[comp.name] = pool
            log.info("component_ready", component=comp.name, world=comp.info.world,
                     instances=pool.cfg.instances, path=str(comp.path))

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for pool in self.pools.values():
            await pool.close()
        for c in self.containers.values():
            await c.close()
        if self.clock is not None:
            self.clock.stop()
        self.io_executor.shutdown(wait=False)

    # --- jobs -------------------------------------------------------------------

    def submit(self, component: str, args: list[str]) -> Job:
        if component not in self.pools:
            raise UnknownComponent(f"no component named {component!r} (configured: {', '.join(sorted(self.pools)) or 'none'})")
        if self._queued >= self.config.limits.max_queued_jobs:
            raise QueueFull(f"job queue is full ({self.config.limits.max_queued_jobs} queued)")
        job = Job(component=component, args=list(args))
        self.jobs[job.id] = job
        self._queued += 1
        task = asyncio.create_task(self._run_job(job), name=f"job-{job.id}")
        self._tasks.add(task)
        task.add_done_callback(self._job_task_done)
        log.info("job_submitted", job_id=job.id, component=component, args=args)
        return job

    def _job_task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("job_task_crashed", error=repr(task.exception()))

    async def run(self, component: str, args: list[str]) -> Job:
        job = self.submit(component, args)
        await job.done.wait()
        return job

    def cancel(self, job_id: str) -> bool:
        job = self.jobs.get(job_id)
        if job is None or job.finished:
            return False
        job.cancel_requested = True
        job.ready.set()
        return True

    async def _run_job(self, job: Job) -> None:
        pool = self.pools[job.component]
        with structlog.contextvars.bound_contextvars(job_id=job.id, component=job.component):
            try:
                inst = await pool.acquire()
            except BaseException:
                self._queued -= 1
                job.state = CANCELLED
                job.done.set()
                raise
            self._queued -= 1
            job.state = RUNNING
            job.started_at = time.time()
            job.instance = inst.label
            inst.job = job
            log.info("job_started", instance=inst.label)
            try:
                await self._drive(job, inst, pool)
            except GuestTrap as e:
                await self._instance_lost(job, inst, e)
            except asyncio.CancelledError:
                await self._end_all(job, inst, values.failed("daemon shutting down"), tell_guest=False)
                job.state = CANCELLED
                raise
            finally:
                inst.job = None
                job.ended_at = time.time()
                if inst.broken:
                    t = asyncio.create_task(pool.replace(inst), name=f"replace-{inst.label}")
                    self._tasks.add(t)
                    t.add_done_callback(self._job_task_done)
                else:
                    pool.release(inst)
                log.info("job_ended", state=job.state, error=job.error,
                         streams=len(job.deliveries), duration_s=round(job.ended_at - (job.started_at or job.ended_at), 3))
                job.done.set()

    async def _drive(self, job: Job, inst: GuestInstance, pool: InstancePool) -> None:
        ok, text = await inst.invoke(job.args)
        job.invoke_ok, job.invoke_result = ok, text
        self._schedule_requests(job)
        if not ok:
            job.error = f"invoke returned error: {text}"
            await self._end_all(job, inst, values.CANCELLED, tell_guest=True)
            job.state = FAILED
            return
        await self._deliver(job, inst, pool)
        if job.cancel_requested:
            job.state = CANCELLED
            job.error = job.error or "cancelled by operator"
        elif all(d.outcome == values.COMPLETED for d in job.deliveries):
            job.state = COMPLETED
        else:
            job.state = FAILED
            bad = [d for d in job.deliveries if d.outcome != values.COMPLETED]
            job.error = f"{len(bad)} stream(s) did not complete: " + "; ".join(
                f"{d.name} (correlation-id {d.correlation_id}): {d.outcome}" for d in bad[:5])

    def _schedule_requests(self, job: Job) -> None:
        lim = self.config.limits
        for req in job.take_requests():
            d = Delivery(inst=req.inst, stream=req.stream, correlation_id=req.correlation_id,
                         chunk_size=req.chunk_size, start=req.start,
                         prefetch=self.pools[job.component].cfg.prefetch_chunks, budget=self.budget,
                         retries=lim.source_retries, backoff_s=lim.source_retry_backoff_s,
                         ready=job.ready, job_id=job.id)
            job.deliveries.append(d)
            d.log.info("stream_started", chunk_size=d.chunk_size, size=d.size, total_chunks=d.total_chunks,
                       start_offset=d.start)
            d.begin()

    async def _deliver(self, job: Job, inst: GuestInstance, pool: InstancePool) -> None:
        """Round-robin over the job's streams, one handle-chunk at a time."""
        turn = 0
        while True:
            self._schedule_requests(job)
            if job.cancel_requested:
                await self._end_all(job, inst, values.CANCELLED, tell_guest=True)
                return
            active = [d for d in job.deliveries if d.outcome is None]
            if not active:
                return
            picked: Delivery | None = None
            for k in range(len(active)):
                d = active[(turn + k) % len(active)]
                if d.queue:
                    picked, turn = d, turn + k + 1
                    break
            if picked is None:
                job.ready.clear()
                if any(d.queue for d in active) or job.requests:
                    continue
                await job.ready.wait()
                continue
            item = picked.queue.popleft()
            if isinstance(item, End):
                await self._end(inst, picked, item.end, tell_guest=True)
                continue
            await self._deliver_chunk(inst, pool, picked, item)

    async def _deliver_chunk(self, inst: GuestInstance, pool: InstancePool, d: Delivery, chunk: Chunk) -> None:
        await pool.pacer.take(len(chunk.data))
        try:
            more = await inst.handle_chunk(d.stream, d.correlation_id, chunk.index, d.total_chunks, chunk.data)
        finally:
            d.consumed(chunk)
        self.counters["chunks"] += 1
        self.counters["bytes"] += len(chunk.data)
        if not more:
            await self._end(inst, d, values.CANCELLED, tell_guest=True)
        elif d.is_last(chunk):
            await self._end(inst, d, values.COMPLETED, tell_guest=True)

    async def _end(self, inst: GuestInstance, d: Delivery, end: values.StreamEnd, *, tell_guest: bool) -> None:
        if d.outcome is not None:
            return
        d.outcome = end
        d.stats.ended_at = time.time()
        await d.stop()
        inst.active_cids.discard(d.correlation_id)
        inst.forget_stream(d.stream)
        with self._active_lock:
            self._active_streams -= 1
        d.log.info("stream_ended", end=str(end), chunks=d.stats.chunks, bytes=d.stats.bytes, retries=d.stats.retries)
        if tell_guest:
            await inst.stream_ended(d.correlation_id, end)

    async def _end_all(self, job: Job, inst: GuestInstance, end: values.StreamEnd, *, tell_guest: bool) -> None:
        # a guest may start more streams from stream-ended; those end the same way
        while True:
            self._schedule_requests(job)
            open_ = [d for d in job.deliveries if d.outcome is None]
            if not open_:
                return
            for d in open_:
                await self._end(inst, d, end, tell_guest=tell_guest)

    async def _instance_lost(self, job: Job, inst: GuestInstance, e: GuestTrap) -> None:
        self.counters["timeouts" if e.timeout else "traps"] += 1
        log.error("guest_trapped", instance=inst.label, error=str(e), timeout=e.timeout)
        job.state = FAILED
        job.error = str(e)
        await self._end_all(job, inst, values.failed(str(e)), tell_guest=False)

    # --- HostServices (called from instance threads unless async) ---------------------

    async def open_blob(self, container: str, name: str) -> Blob:
        c = self.containers.get(container)
        if c is None:
            raise SourceError(f"no container named {container!r}")
        return await c.open(name)

    async def read_blob(self, blob: Blob, offset: int, length: int) -> bytes:
        lim = self.config.limits
        return await read_with_retry(blob, offset, length, lim.source_retries, lim.source_retry_backoff_s)

    def start_chunking(self, inst: GuestInstance, stream: HostStream, chunk_size: int,
                       correlation_id: int) -> Variant | None:
        max_chunk = self.config.limits.max_chunk_size_bytes
        with stream.lock:
            if stream.chunking or stream.ended:
                return values.err_closed()
            if chunk_size == 0 or chunk_size > max_chunk:
                return values.err_invalid(f"chunk-size {chunk_size} must be between 1 and max-chunk-size {max_chunk}")
            if correlation_id in inst.active_cids:
                return values.err_invalid(f"correlation-id {correlation_id} is already active in this instance")
            job = inst.job
            if job is None:
                return values.err_failed("no job is running on this instance")
            with self._active_lock:
                if self._active_streams >= self.config.limits.max_pending_streams:
                    return values.err_failed(
                        f"pending stream queue is full ({self.config.limits.max_pending_streams} streams)")
                self._active_streams += 1
            stream.chunking = True
            inst.active_cids.add(correlation_id)
            job.add_request(StreamRequest(inst, stream, chunk_size, correlation_id, stream.position))
        self.loop.call_soon_threadsafe(job.ready.set)
        return None

    def stream_released(self, inst: GuestInstance, stream: HostStream) -> None:
        fut = asyncio.run_coroutine_threadsafe(_close_quietly(stream.blob), self.loop)
        fut.add_done_callback(lambda f: f.exception())

    def guest_output(self, inst: GuestInstance, fd: str, line: str) -> None:
        job: Job | None = inst.job
        log.info("guest_output", component=inst.comp.name, instance=inst.label, fd=fd, line=line,
                 job_id=job.id if job else None)
        for listener in self.output_listeners:
            with contextlib.suppress(Exception):
                listener(job, inst.comp.name, fd, line)

    # --- introspection ----------------------------------------------------------------

    @property
    def active_streams(self) -> int:
        return self._active_streams
