"""Jobs: intake, running each on an instance, resume, cancel, drain, prune.

Every job runs as one task in the runner's TaskScope. `_run_job` takes an
instance, hands the attempt to a StreamSet, gives the instance back (or has
it replaced), and ends the job in one place, `_finish`, which records the
outcome, persists it under `asyncio.shield`, counts it and sets `done`,
exactly once. A job interrupted by shutdown is not finished: it stays
queued/running in the store and runs again at the next start.
"""
from __future__ import annotations

import asyncio
import collections
import time
from typing import TYPE_CHECKING, Mapping, Protocol

import structlog

from chunkd.errors import ChunkdError, NotAccepting, QueueFull, QuotaExceeded, UnknownComponent
from chunkd.jobs import Job, JobState
from chunkd.jobstore import JobStore
from chunkd.streamset import Outcome, StreamSet, StreamSettings
from chunkd.tasks import TaskScope

if TYPE_CHECKING:
    from chunkd.config import Config
    from chunkd.host.instance import InstanceBase
    from chunkd.hostservices import RuntimeServices
    from chunkd.metrics import Metrics
    from chunkd.outputs import JobOutputs
    from chunkd.pool import InstancePool
    from chunkd.fairshare import FairShare
    from chunkd.flowcontrol import BufferBudget
    from chunkd.tracing import Tracing


class RunnerHost(Protocol):
    """The few things the job runner uses of the runtime that owns it."""

    @property
    def config(self) -> "Config": ...

    @property
    def metrics(self) -> "Metrics": ...

    @property
    def budget(self) -> "BufferBudget": ...

    @property
    def fairshare(self) -> "FairShare": ...

    @property
    def pools(self) -> "Mapping[str, InstancePool]": ...

    @property
    def services(self) -> "RuntimeServices": ...

    @property
    def tracing(self) -> "Tracing": ...

    async def job_outputs(self, job_id: str, component: str, attempt: int) -> "JobOutputs": ...

log = structlog.get_logger("chunkd.jobrunner")

# Finished jobs kept in memory: with a store (or in cluster mode, where the records are in
# NATS) only the newest few, so memory does not grow with the jobs ever run; without a
# store this is all the history there is.
FINISHED_IN_MEMORY_STORED = 64
FINISHED_IN_MEMORY_ALONE = 1000



class JobRunner:
    def __init__(self, runtime: RunnerHost, store: JobStore | None) -> None:
        self.rt = runtime
        self.store = store
        self.accepting = True
        self.jobs: dict[str, Job] = {}
        self._finished: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._task_of: dict[str, asyncio.Task[None]] = {}
        self._inst_of: dict[str, "InstanceBase"] = {}  # running jobs' instances
        self._scope = TaskScope("jobs")
        self._waiting: set[str] = set()  # jobs with a task, waiting for an instance
        self._intake: collections.Counter[str] = collections.Counter()  # per tenant: accepts being written
        self.jobs_finished = 0
        self.jobs_interrupted = 0

    # --- intake -------------------------------------------------------------------

    @property
    def queued(self) -> int:
        """Jobs waiting for an instance (counted from the set that holds them)."""
        return len(self._waiting)

    @property
    def running(self) -> int:
        """Jobs on an instance now."""
        return len(self._inst_of)

    def tenant_jobs(self, tenant: str) -> int:
        """A tenant's jobs queued and running on this node, and its submissions being
        written (counted from the map that holds every unfinished job)."""
        return self._intake[tenant] + sum(1 for j in self.jobs.values() if j.tenant == tenant and not j.finished)

    def check_quota(self, tenant: str | None) -> None:
        """tenants.NAME.max_jobs: QuotaExceeded (429) when the tenant is at it."""
        cfg = self.rt.config.tenants.get(tenant) if tenant is not None else None
        if cfg is not None and cfg.max_jobs and self.tenant_jobs(cfg.name) >= cfg.max_jobs:
            raise QuotaExceeded(f"tenant {cfg.name!r} is at its quota tenants.{cfg.name}.max_jobs = {cfg.max_jobs} "
                                f"(queued and running)")

    def check_submit(self, component: str) -> None:
        if not self.accepting:
            raise NotAccepting("chunkd is shutting down and takes no new jobs")
        pools = self.rt.pools
        if component not in pools:
            raise UnknownComponent(f"no component named {component!r} (configured: {', '.join(sorted(pools)) or 'none'})")
        limit = self.rt.config.limits.max_queued_jobs
        if self.queued >= limit:
            raise QueueFull(f"job queue is full ({limit} queued)")

    def submit(self, component: str, args: list[str], tenant: str | None = None) -> Job:
        """Queue a job in memory only (chunkd run, tests)."""
        self.check_submit(component)
        self.check_quota(tenant)
        job = Job(component=component, args=list(args), tenant=tenant)
        self._schedule(job)
        return job

    async def accept(self, component: str, args: list[str], tenant: str | None = None) -> Job:
        """Queue a job durably: it is in the job store before this returns. A tenant's
        place under its max_jobs is held from the check until the job is scheduled, so
        submissions at once never pass its quota."""
        self.check_submit(component)
        self.check_quota(tenant)
        job = Job(component=component, args=list(args), tenant=tenant)
        if tenant is not None:
            self._intake[tenant] += 1
        try:
            await self._persist(job)
            self.check_submit(component)  # the world may have changed while we wrote
            self._schedule(job)
        finally:
            if tenant is not None:
                self._intake[tenant] -= 1
                if self._intake[tenant] <= 0:
                    del self._intake[tenant]
        return job

    def _schedule(self, job: Job) -> None:
        self.jobs[job.id] = job
        self._waiting.add(job.id)
        self._task_of[job.id] = self._scope.spawn(self._run_job(job), name=f"job-{job.id}")
        log.info("job_submitted", job_id=job.id, component=job.component, args=job.args, attempts=job.attempts)

    async def resume(self) -> tuple[int, int]:
        """Run again every job the store says was queued or running: (resumed, given up)."""
        if self.store is None:
            return 0, 0
        resumed = gave_up = 0
        for rec in await self.store.unfinished():
            job = Job.from_record(rec)
            if job.attempts >= self.rt.config.daemon.max_attempts:
                await self._finish(job, Outcome(JobState.FAILED, f"gave up after {job.attempts} attempt(s): "
                                                                 "the daemon stopped during each"))
                gave_up += 1
                continue
            if job.component not in self.rt.pools:
                await self._finish(job, Outcome(JobState.FAILED,
                                                f"component {job.component!r} is no longer configured"))
                gave_up += 1
                continue
            job.state = JobState.QUEUED
            job.invoke_ok = job.invoke_result = job.error = None
            job.output.clear()
            job.past_streams = []
            self._schedule(job)
            resumed += 1
        return resumed, gave_up

    # --- operator ------------------------------------------------------------------

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
        job.inbox.ready.set()
        inst = self._inst_of.get(job_id)
        if inst is not None:
            inst.halt = True  # the batch in flight stops at its next chunk, not at its end
        if job.state == JobState.QUEUED:
            task = self._task_of.get(job_id)
            if task is not None:
                task.cancel()
        log.info("job_cancel_requested", job_id=job_id, state=job.state)
        return job

    async def drain(self, grace_s: float) -> tuple[int, int]:
        """Stop intake, give jobs `grace_s` to finish, then interrupt the rest (they stay
        queued/running in the store and run again at the next start).

        Returns (finished in grace, interrupted)."""
        self.accepting = False
        before = len(self._scope)
        left = await self._scope.wait(grace_s)
        if left:
            await self._scope.close()
        return before - left, left

    async def close(self) -> None:
        self.accepting = False
        await self._scope.close()

    async def prune(self, retention_s: float) -> int:
        cutoff = time.time() - retention_s
        for jid in [j for j in self._finished if (self.jobs[j].ended_at or 0) < cutoff]:
            self._finished.pop(jid, None)
            self.jobs.pop(jid, None)
        return await self.store.prune(cutoff) if self.store is not None else 0

    # --- one job ----------------------------------------------------------------------

    async def run_claimed(self, job: Job, inst: "InstanceBase", pool: "InstancePool") -> None:
        """Cluster mode: run `job` now on `inst`, which its caller took from `pool` before
        fetching the job's message; the caller owns (awaits) this run."""
        self.jobs[job.id] = job
        await self._run_job(job, (inst, pool))

    def fence(self, job_id: str, reason: str) -> bool:
        """Cluster mode: stop delivering a running job at once (its lease may be gone): its
        streams end failed(reason), the guest's calls in flight are the last, and the job
        is not ended here (another node runs it again)."""
        job = self.jobs.get(job_id)
        inst = self._inst_of.get(job_id)
        if job is None or job.finished:
            return False
        job.fenced = reason
        job.cancel_requested = True
        job.inbox.ready.set()
        if inst is not None:
            inst.halt = True  # the instance thread skips the rest of its batch
        log.warning("job_fenced", job_id=job_id, reason=reason)
        return True

    def _stop(self, job: Job, inst: "InstanceBase", limit: float) -> None:
        """limits.max_job_duration passed: every stream ends failed, the job fails."""
        if job.finished or job.cancel_requested:
            return
        job.stopped = f"ran past limits.max_job_duration ({limit:g}s)"
        job.cancel_requested = True
        job.inbox.ready.set()
        inst.halt = True  # the instance thread skips the rest of its batch
        log.warning("job_stopped", job_id=job.id, reason=job.stopped)

    async def _run_job(self, job: Job, claimed: "tuple[InstanceBase, InstancePool] | None" = None) -> None:
        with structlog.contextvars.bound_contextvars(job_id=job.id, component=job.component):
            job.span = self.rt.tracing.job(job.id, job.component, job.tenant, job.attempts + 1, job.trace)
            try:
                await self._attempt(job, claimed)
            except asyncio.CancelledError:
                await self._abort_outputs(job)
                if job.cancel_requested:
                    before = " before it started" if job.state == JobState.QUEUED else ""
                    await self._finish(job, Outcome(JobState.CANCELLED, f"cancelled by operator{before}"))
                else:
                    self._interrupted(job)
                raise
            except Exception as e:  # a bug outside the StreamSet: this job fails, the daemon goes on
                log.exception("job_internal_error")
                await self._abort_outputs(job)
                await self._finish(job, Outcome(JobState.FAILED, f"internal error: {e!r}"))
            finally:
                self._task_of.pop(job.id, None)
                self._waiting.discard(job.id)
                if job.span is not None:  # this attempt's span ends with it, whatever the end
                    span, job.span = job.span, None
                    span.end(str(job.state), job.error, job.attempts, job.node)

    async def _attempt(self, job: Job, claimed: "tuple[InstanceBase, InstancePool] | None" = None) -> None:
        if claimed is not None:
            inst, pool = claimed
        else:
            maybe = self.rt.pools.get(job.component)
            if maybe is None:
                self._waiting.discard(job.id)
                await self._finish(job, Outcome(JobState.FAILED,
                                                f"component {job.component!r} is no longer configured"))
                return
            pool = maybe
            try:
                inst = await pool.acquire()
            finally:
                self._waiting.discard(job.id)
            if job.span is not None:
                job.span.queued_until_now()
        self._inst_of[job.id] = inst
        try:
            job.state = JobState.RUNNING
            job.started_at = time.time()
            job.instance = inst.label
            job.attempts += 1
            # this attempt's outputs, reachable from the instance thread through the inbox
            job.live_outputs = job.inbox.outputs = await self.rt.job_outputs(job.id, job.component, job.attempts)
            inst.job = job.inbox
            inst.begin_job()  # a trap's reason quotes this job's stderr and errors, not an earlier one's
            log.info("job_started", instance=inst.label, attempt=job.attempts)
            await self._persist(job)  # attempts counted before any guest code runs
            limit = self.rt.config.limits.max_job_duration_s
            timer = asyncio.get_running_loop().call_later(limit, self._stop, job, inst, limit) if limit > 0 else None
            try:
                outcome = await StreamSet(job, inst, self.rt.budget, self._settings(pool), self.rt.services).run()
            finally:
                if timer is not None:
                    timer.cancel()
        finally:
            inst.job = None
            inst.halt = False
            self._inst_of.pop(job.id, None)
            pool.give_back(inst)
        if outcome.trap is not None:
            self._count_trap(inst, outcome)
        outcome = await self._end_outputs(job, outcome)
        await self._finish(job, outcome)

    async def _end_outputs(self, job: Job, outcome: Outcome) -> Outcome:
        """Outputs end with the attempt: committed (before the job is persisted completed)
        when it completed, else aborted. A failure of the outputs fails the job."""
        outputs = job.live_outputs
        job.inbox.outputs = None
        if outputs is None:
            return outcome
        if outcome.state != JobState.COMPLETED or job.fenced:
            await outputs.abort()
            return outcome
        if outputs.failure is not None:  # the guest may have gone on after the error it was given
            await outputs.abort()
            return Outcome(JobState.FAILED, outputs.failure, outcome.trap)
        try:
            await outputs.commit()
        except ChunkdError as e:
            return Outcome(JobState.FAILED, f"outputs not committed: {e}", outcome.trap)
        return outcome

    async def _abort_outputs(self, job: Job) -> None:
        """Any end but a completion (cancelled, interrupted, an internal error)."""
        job.inbox.outputs = None
        if job.live_outputs is not None:
            try:
                await job.live_outputs.abort()
            except Exception:  # the rows stay open: the next start settles them
                log.exception("outputs_abort_failed")

    def _settings(self, pool: "InstancePool") -> StreamSettings:
        lim = self.rt.config.limits
        return StreamSettings(prefetch=pool.cfg.prefetch_chunks, retries=lim.source_retries,
                              backoff_s=lim.source_retry_backoff_s, pacer=pool.pacer, meters=pool.meters,
                              fairshare=self.rt.fairshare)

    def _count_trap(self, inst: "InstanceBase", outcome: Outcome) -> None:
        assert outcome.trap is not None
        m = self.rt.metrics
        (m.timeouts if outcome.trap.timeout else m.traps).labels(inst.comp.name).inc()
        log.error("guest_trapped", instance=inst.label, error=str(outcome.trap), timeout=outcome.trap.timeout)

    async def _finish(self, job: Job, outcome: Outcome) -> None:
        """The one place a job ends: state, error, persisted (shielded), counted, done."""
        if job.ends:
            log.error("job_ended_twice", job_id=job.id, state=job.state, outcome=outcome.state)
            return
        if job.fenced:  # not ended: the lease is gone, another node runs it again
            job.error = job.fenced
            self._interrupted(job)
            return
        job.ends += 1
        job.state = outcome.state
        job.error = outcome.error
        job.ended_at = time.time()
        self.jobs_finished += 1
        self.rt.metrics.jobs.labels(job.state).inc()
        self.rt.metrics.tenant_jobs_ended.labels(job.tenant or "", job.state).inc()
        self._remember_finished(job)
        log.info("job_ended", state=job.state, error=job.error, attempt=job.attempts, streams=len(job.deliveries),
                 duration_s=round(job.ended_at - (job.started_at or job.ended_at), 3))
        try:
            await asyncio.shield(self._persist(job))
        finally:
            job.done.set()

    def _interrupted(self, job: Job) -> None:
        """Shutdown: the job stays queued/running in the store and runs again at the next start."""
        self.jobs_interrupted += 1
        if job.state == JobState.RUNNING:
            job.error = "interrupted by shutdown; runs again at the next start"
        log.info("job_interrupted", state=job.state, attempt=job.attempts)
        job.done.set()

    async def _persist(self, job: Job) -> None:
        if self.store is not None:
            await self.store.save(job.record())

    def _remember_finished(self, job: Job) -> None:
        self.jobs[job.id] = job
        self._finished[job.id] = None
        keep = FINISHED_IN_MEMORY_STORED if (self.store is not None or self.rt.config.cluster is not None) else FINISHED_IN_MEMORY_ALONE
        while len(self._finished) > keep:
            old, _ = self._finished.popitem(last=False)
            self.jobs.pop(old, None)
