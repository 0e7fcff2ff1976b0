"""The host runtime: engine, instance pools, containers, and the job runner.

One Runtime owns all chunkd state for a config. `chunkd run` uses it
in-process; the server wraps it. Delivery rules are SPEC section 2.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import structlog
from wasmtime import Engine

from chunkd.config import ComponentConfig, Config
from chunkd.errors import ChunkdError, GuestTrap, SourceError
from chunkd.host import values
from chunkd.host.component import LoadedComponent, load_component
from chunkd.host.engine import EpochClock, make_engine
from chunkd.host.fastcall import tune_allocator
from chunkd.host.instance import GuestInstance, HostStream
from chunkd.jobs import CANCELLED, COMPLETED, FAILED, QUEUED, RUNNING, Job, StreamRequest
from chunkd.jobstore import JobStore
from chunkd.metrics import Metrics
from chunkd.scheduler import BufferBudget, Chunk, Delivery, End, Pacer, read_with_retry
from chunkd.sources import Container, build_container
from chunkd.sources.base import Blob

log = structlog.get_logger("chunkd.runtime")

OutputListener = Callable[[Job | None, str, str, str], None]  # job, component, fd, line


class UnknownComponent(ChunkdError):
    pass


class QueueFull(ChunkdError):
    pass


class NotAccepting(ChunkdError):
    """The daemon is draining: no new jobs."""


MAX_FINISHED_IN_MEMORY = 1000
BATCH_CHUNKS = 64  # handle-chunk calls per trip to the instance thread
BATCH_BYTES = 8 * 1024 * 1024


def _fingerprint(cfg: ComponentConfig) -> tuple[Any, ...]:
    try:
        st = cfg.path.stat()
        return (cfg, st.st_mtime_ns, st.st_size, st.st_ino)
    except OSError:
        return (cfg, None)


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
        self.fingerprint = _fingerprint(cfg)
        m = runtime.metrics  # this component's labelled series, looked up once
        self.meters = (m.handle_seconds.labels(comp.name), m.chunks.labels(comp.name), m.bytes.labels(comp.name))
        self.retired = False
        self._closing: set[asyncio.Task[None]] = set()

    def _new_instance(self) -> GuestInstance:
        lim = self.runtime.config.limits
        inst = self.comp.instance_class(self.comp, self._next_index, self.runtime, self.runtime.clock,
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
        if self.retired and self.waiting == 0:
            t = asyncio.create_task(inst.close())
            self._closing.add(t)
            t.add_done_callback(self._closing.discard)
            return
        self.idle.put_nowait(inst)

    async def retire(self) -> None:
        """Replaced by a reload: serve the jobs already waiting, then close."""
        self.retired = True
        if self.waiting == 0:
            await self.close()

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
            self.release(inst)
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

    def __init__(self, config: Config, store: JobStore | None = None, *, only: set[str] | None = None) -> None:
        self.config = config
        self.only = only  # load just these components (a one-shot `chunkd run` needs one)
        self.store = store
        self.metrics = Metrics()
        self.accepting = True
        self._task_of: dict[str, asyncio.Task[Any]] = {}
        self._finished: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set in start()
        self.engine: Engine | None = None
        self.clock: EpochClock = None  # type: ignore[assignment]
        self.containers: dict[str, Container] = {}
        self._retired_containers: list[Container] = []
        self.pools: dict[str, InstancePool] = {}
        self.jobs: dict[str, Job] = {}
        self.budget = BufferBudget(config.limits.max_buffered_bytes)
        self.io_executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="chunkd-io")
        self.output_listeners: list[OutputListener] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._active_streams = 0
        self._active_lock = threading.Lock()
        self._queued = 0
        self._running = 0

    # --- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.metrics.bind(self)
        values.install_fast_bytes()
        tune_allocator()
        cache_dir = self.config.daemon.cache_dir or self.config.daemon.state_dir / "cache"
        self.engine = await self.loop.run_in_executor(None, make_engine, cache_dir)
        self.clock = EpochClock(self.engine)
        self.clock.start()
        for name, ccfg in self.config.containers.items():
            self.containers[name] = build_container(ccfg, self.io_executor, file=self.config.file)
        self.pools = await self._build_pools(self.config, {})

    async def _build_pools(self, config: Config, keep: dict[str, InstancePool]) -> dict[str, InstancePool]:
        """Pools for `config`, reusing those in `keep` whose config and file are unchanged."""
        engine = self.engine
        assert engine is not None
        wanted = {n: c for n, c in config.components.items() if self.only is None or n in self.only}
        todo = {n: c for n, c in wanted.items()
                if n not in keep or keep[n].fingerprint != _fingerprint(c) or keep[n].retired}
        # one at a time: compiling a large component takes hundreds of MB while it runs
        comps = [await self.loop.run_in_executor(None, load_component, engine, name, c.path)
                 for name, c in todo.items()]
        pools = {n: keep[n] for n in wanted if n not in todo}
        started: list[InstancePool] = []
        try:
            for comp in comps:
                pool = InstancePool(self, comp, config.components[comp.name])
                await pool.start()
                started.append(pool)
                pools[comp.name] = pool
                log.info("component_ready", component=comp.name, world=comp.info.world,
                         instances=pool.cfg.instances, path=str(comp.path))
        except BaseException:
            for p in started:
                await p.close()
            raise
        return pools

    async def reload(self, config: Config) -> list[str]:
        """SIGHUP: new config and changed components serve new jobs; running streams go on.

        Raises ChunkdError (and changes nothing) when the new config cannot be served."""
        containers: dict[str, Container] = {}
        for name, c in config.containers.items():
            same = self.config.containers.get(name) == c and name in self.containers
            containers[name] = self.containers[name] if same else build_container(c, self.io_executor, file=config.file)
        pools = await self._build_pools(config, self.pools)
        changed = [n for n in pools if self.pools.get(n) is not pools[n]]
        old = self.pools
        # streams in flight may still read through a replaced container: close those at exit
        self._retired_containers.extend(c for n, c in self.containers.items() if containers.get(n) is not c)
        self.config = config
        self.containers = containers
        self.budget.limit = max(config.limits.max_buffered_bytes, 1)
        self.budget.release(0)  # wake waiters that now fit
        self.pools = pools
        for name, pool in old.items():
            if pools.get(name) is not pool:
                await pool.retire()
        log.info("config_reloaded", file=config.file, components_changed=changed,
                 components_removed=[n for n in old if n not in pools])
        return changed

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for pool in self.pools.values():
            await pool.close()
        for c in [*self.containers.values(), *self._retired_containers]:
            await c.close()
        if self.clock is not None:
            self.clock.stop()
        self.io_executor.shutdown(wait=False)

    # --- jobs -------------------------------------------------------------------

    def _check_submit(self, component: str) -> None:
        if not self.accepting:
            raise NotAccepting("chunkd is shutting down and takes no new jobs")
        if component not in self.pools:
            raise UnknownComponent(f"no component named {component!r} (configured: {', '.join(sorted(self.pools)) or 'none'})")
        if self._queued >= self.config.limits.max_queued_jobs:
            raise QueueFull(f"job queue is full ({self.config.limits.max_queued_jobs} queued)")

    def submit(self, component: str, args: list[str]) -> Job:
        """Queue a job in memory only (chunkd run, tests)."""
        self._check_submit(component)
        job = Job(component=component, args=list(args))
        self._schedule(job)
        return job

    async def accept(self, component: str, args: list[str]) -> Job:
        """Queue a job durably: it is in the job store before this returns."""
        self._check_submit(component)
        job = Job(component=component, args=list(args))
        await self._persist(job)
        self._check_submit(component)  # the world may have changed while we wrote
        self._schedule(job)
        return job

    def _schedule(self, job: Job) -> None:
        self.jobs[job.id] = job
        self._queued += 1
        task = asyncio.create_task(self._run_job(job), name=f"job-{job.id}")
        self._tasks.add(task)
        self._task_of[job.id] = task
        task.add_done_callback(self._job_task_done)
        log.info("job_submitted", job_id=job.id, component=job.component, args=job.args, attempts=job.attempts)

    async def resume(self) -> tuple[int, int]:
        """Run again every job the store says was queued or running: (resumed, given up)."""
        if self.store is None:
            return 0, 0
        resumed = gave_up = 0
        for rec in await self.store.unfinished():
            job = Job.from_record(rec)
            if job.attempts >= self.config.daemon.max_attempts:
                job.state = FAILED
                job.error = f"gave up after {job.attempts} attempt(s): the daemon stopped during each"
                job.ended_at = time.time()
                self.metrics.jobs.labels(FAILED).inc()
                await self._persist(job)
                self._remember_finished(job)
                gave_up += 1
                log.warning("job_given_up", job_id=job.id, attempts=job.attempts)
                continue
            if job.component not in self.pools:
                job.state = FAILED
                job.error = f"component {job.component!r} is no longer configured"
                job.ended_at = time.time()
                await self._persist(job)
                self._remember_finished(job)
                gave_up += 1
                continue
            job.state = QUEUED
            job.invoke_ok = job.invoke_result = job.error = None
            job.output.clear()
            job.past_streams = []
            self._schedule(job)
            resumed += 1
        return resumed, gave_up

    def _job_task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("job_task_crashed", error=repr(task.exception()))

    async def run(self, component: str, args: list[str]) -> Job:
        job = self.submit(component, args)
        await job.done.wait()
        return job

    async def get_job(self, job_id: str) -> Job | None:
        job = self.jobs.get(job_id)
        if job is None and self.store is not None:
            rec = await self.store.get(job_id)
            if rec is not None:
                job = Job.from_record(rec)
        return job

    def cancel(self, job_id: str) -> Job | None:
        """Operator cancel: a queued job never starts; a running one cancels its streams."""
        job = self.jobs.get(job_id)
        if job is None or job.finished:
            return job
        job.cancel_requested = True
        job.ready.set()
        if job.state == QUEUED:
            task = self._task_of.get(job_id)
            if task is not None:
                task.cancel()
        log.info("job_cancel_requested", job_id=job_id, state=job.state)
        return job

    async def drain(self, grace_s: float) -> tuple[int, int]:
        """Stop intake, give running jobs `grace_s` to finish, then stop the rest.

        Returns (finished in grace, interrupted). Interrupted jobs stay queued/running
        in the job store and run again at the next start."""
        self.accepting = False
        pending = [t for t in self._tasks if not t.done()]
        if not pending:
            return 0, 0
        done, rest = await asyncio.wait(pending, timeout=grace_s)
        for t in rest:
            t.cancel()
        if rest:
            await asyncio.wait(rest, timeout=max(self.config.limits.call_timeout_s * 2, 1.0))
        return len(done), len(rest)

    async def _persist(self, job: Job) -> None:
        if self.store is not None:
            await self.store.save(job.record())

    def _remember_finished(self, job: Job) -> None:
        self.jobs[job.id] = job
        self._finished[job.id] = None
        while len(self._finished) > MAX_FINISHED_IN_MEMORY:
            old, _ = self._finished.popitem(last=False)
            self.jobs.pop(old, None)

    async def prune(self, retention_s: float) -> int:
        cutoff = time.time() - retention_s
        for jid in [j for j in self._finished if (self.jobs[j].ended_at or 0) < cutoff]:
            self._finished.pop(jid, None)
            self.jobs.pop(jid, None)
        return await self.store.prune(cutoff) if self.store is not None else 0

    async def _run_job(self, job: Job) -> None:
        with structlog.contextvars.bound_contextvars(job_id=job.id, component=job.component):
            pool = self.pools[job.component]
            try:
                inst = await pool.acquire()
            except asyncio.CancelledError:
                self._queued -= 1
                self._task_of.pop(job.id, None)
                if job.cancel_requested:  # operator cancel before it started
                    job.state = CANCELLED
                    job.error = "cancelled by operator before it started"
                    job.ended_at = time.time()
                    self.metrics.jobs.labels(CANCELLED).inc()
                    await self._persist(job)
                    self._remember_finished(job)
                job.done.set()
                raise
            self._queued -= 1
            self._running += 1
            job.state = RUNNING
            job.started_at = time.time()
            job.instance = inst.label
            job.attempts += 1
            inst.job = job
            interrupted = False
            log.info("job_started", instance=inst.label, attempt=job.attempts)
            try:
                await self._persist(job)  # attempts counted before any guest code runs
                await self._drive(job, inst, pool)
            except GuestTrap as e:
                await self._instance_lost(job, inst, e)
            except asyncio.CancelledError:
                interrupted = not job.cancel_requested
                if interrupted:
                    await self._end_all(job, inst, values.failed("daemon shutting down"), tell_guest=False)
                    job.error = "interrupted by shutdown; runs again at the next start"
                else:
                    await self._end_all(job, inst, values.CANCELLED, tell_guest=False)
                    job.state = CANCELLED
                    job.error = "cancelled by operator"
                raise
            finally:
                self._running -= 1
                self._task_of.pop(job.id, None)
                inst.job = None
                job.ended_at = time.time()
                if inst.broken:
                    t = asyncio.create_task(pool.replace(inst), name=f"replace-{inst.label}")
                    self._tasks.add(t)
                    t.add_done_callback(self._job_task_done)
                else:
                    pool.release(inst)
                log.info("job_ended", state=job.state, error=job.error, attempt=job.attempts,
                         streams=len(job.deliveries), duration_s=round(job.ended_at - (job.started_at or job.ended_at), 3))
                if not interrupted:
                    self.metrics.jobs.labels(job.state).inc()
                    await self._persist(job)
                    self._remember_finished(job)
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
                         on_ready=job.mark_ready, job_id=job.id)
            job.deliveries.append(d)
            job.open_streams += 1
            d.log.info("stream_started", chunk_size=d.chunk_size, size=d.size, total_chunks=d.total_chunks,
                       start_offset=d.start)
            d.begin()

    async def _deliver(self, job: Job, inst: GuestInstance, pool: InstancePool) -> None:
        """Round-robin over the job's streams that have a chunk ready (O(1) per chunk).

        Chunks already read ahead go to the instance thread in small batches, one
        handle-chunk call after another, so a thread hop is paid per batch rather than
        per chunk; a paced component gets one chunk per hop."""
        while True:
            self._schedule_requests(job)
            if job.cancel_requested:
                await self._end_all(job, inst, values.CANCELLED, tell_guest=True)
                return
            if job.open_streams == 0:
                return
            if not job.ready_streams:
                job.ready.clear()
                if job.ready_streams or job.requests:
                    continue
                await job.ready.wait()
                continue
            batch: list[tuple[Delivery, Chunk]] = []
            nbytes = 0
            limit = 1 if pool.pacer.rate > 0 else BATCH_CHUNKS
            while job.ready_streams and len(batch) < limit and nbytes < BATCH_BYTES:
                d = job.ready_streams[0]
                if d.outcome is not None or not d.queue:
                    job.ready_streams.popleft()
                    d.in_ready = False
                    continue
                if isinstance(d.queue[0], End):
                    if batch:
                        break  # ends are told after the chunks before them
                    job.ready_streams.popleft()
                    d.in_ready = False
                    end = d.queue.popleft()
                    assert isinstance(end, End)
                    await self._end(inst, d, end.end, tell_guest=True)
                    break
                job.ready_streams.popleft()
                d.in_ready = False
                item = d.queue.popleft()
                assert isinstance(item, Chunk)
                if d.queue:  # more ready: back of the line, after the other streams
                    job.mark_ready(d)
                batch.append((d, item))
                nbytes += len(item.data)
            if batch:
                await self._deliver_batch(inst, pool, batch)

    async def _deliver_batch(self, inst: GuestInstance, pool: InstancePool,
                             batch: list[tuple[Delivery, Chunk]]) -> None:
        if pool.pacer.rate > 0:
            await pool.pacer.take(sum(len(c.data) for _, c in batch))
        calls = [(d.stream.handle, d.correlation_id, c.index, d.total_chunks, c.data) for d, c in batch]
        answers, seconds, error = await inst.handle_chunks(calls)
        m_seconds, m_chunks, m_bytes = pool.meters
        ends: list[tuple[Delivery, values.StreamEnd]] = []
        # account for every chunk of the batch first: an end told to the guest may trap
        for (d, c), more, took in zip(batch, answers + [None] * (len(batch) - len(answers)),
                                      seconds + [0.0] * (len(batch) - len(seconds)), strict=True):
            if more is None:  # not delivered: the stream ended earlier in the batch, or the guest trapped
                d.discard(c)
                continue
            d.consumed(c)
            m_seconds.observe(took)
            m_chunks.inc()
            m_bytes.inc(len(c.data))
            if not more:
                ends.append((d, values.CANCELLED))
            elif d.is_last(c):
                ends.append((d, values.COMPLETED))
        for d, end in ends:
            await self._end(inst, d, end, tell_guest=error is None)
        if error is not None:
            raise error

    async def _end(self, inst: GuestInstance, d: Delivery, end: values.StreamEnd, *, tell_guest: bool) -> None:
        if d.outcome is not None:
            return
        d.outcome = end
        d.stats.ended_at = time.time()
        job = inst.job
        if job is not None and d.job_id == job.id:
            job.open_streams -= 1
        await d.stop()
        inst.active_cids.discard(d.correlation_id)
        inst.forget_stream(d.stream)
        with self._active_lock:
            self._active_streams -= 1
        self.metrics.streams_ended.labels(end.kind).inc()
        if d.stats.retries:
            self.metrics.source_retries.inc(d.stats.retries)
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
        (self.metrics.timeouts if e.timeout else self.metrics.traps).labels(inst.comp.name).inc()
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
                       correlation_id: int) -> values.StreamErr | None:
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
        if job is not None and fd == "stdout":
            job.output.append(line)
        log.info("guest_output", component=inst.comp.name, instance=inst.label, fd=fd, line=line,
                 job_id=job.id if job else None)
        for listener in self.output_listeners:
            with contextlib.suppress(Exception):
                listener(job, inst.comp.name, fd, line)

    # --- introspection ----------------------------------------------------------------

    @property
    def active_streams(self) -> int:
        return self._active_streams

    def pending_streams(self) -> int:
        n = 0
        for job in self.jobs.values():
            if job.state == RUNNING:
                n += len(job.requests) + sum(1 for d in job.deliveries if d.outcome is None and d.stats.chunks == 0)
        return n

    @property
    def queued_jobs(self) -> int:
        return self._queued

    @property
    def running_jobs(self) -> int:
        return self._running

    def live_streams(self) -> list[dict[str, Any]]:
        out = []
        for job in self.jobs.values():
            if job.state != RUNNING:
                continue
            for d in job.deliveries:
                if d.outcome is None:
                    out.append({"job_id": job.id, "component": job.component, "instance": job.instance,
                                "correlation_id": d.correlation_id, "container": d.stream.container,
                                "blob": d.stream.name, "chunk_size": d.chunk_size, "size": d.size,
                                "total_chunks": d.total_chunks, "chunks": d.stats.chunks, "bytes": d.stats.bytes,
                                "buffered_chunks": len(d.queue), "started_at": d.stats.started_at})
        return out
