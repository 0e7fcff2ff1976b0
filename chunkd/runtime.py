"""The host runtime: one object that owns all chunkd state for a config.

It builds the engine, the containers and the instance pools (pool.py), and
composes the job runner (jobrunner.py), the host services instances call
(hostservices.py) and the shared buffer budget. `chunkd run` uses it
in-process; the daemon wraps it. The delivery rules are docs/wit-and-delivery.md.

    Runtime
      +- JobRunner         intake, resume, cancel, drain, prune; one task per job
      |    +- StreamSet    one job's streams on one instance (TaskGroup of producers)
      |         +- Delivery   one chunked read: producer, queue, budget ledger
      +- InstancePool      per component; replaces broken instances
      +- RuntimeServices   what instance threads call: open, read, start-chunking-read
"""
from __future__ import annotations

import asyncio
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import structlog
from chunkd import _native

from chunkd.config import Config
from chunkd.host import values
from chunkd.host.component import load_component
from chunkd.host.engine import EpochClock, make_engine
from chunkd.hostservices import OutputListener, RuntimeServices
from chunkd.backend import ClusterJobs, JobBackend, LocalJobs
from chunkd.errors import NotAccepting, QueueFull, UnknownComponent
from chunkd.jobrunner import JobRunner
from chunkd.jobs import Job, JobState
from chunkd.jobstore import JobStore, SqliteOutputLedger, committed_outputs
from chunkd.limits import LiveLimits
from chunkd.metrics import Metrics
from chunkd.pool import InstancePool, fingerprint
from chunkd.fairshare import FairShare
from chunkd.flowcontrol import BufferBudget
from chunkd.outputs import JobOutputs, RecoveryLedger, recover_outputs
from chunkd.sinks import SinkError, WritableContainer, sink_container
from chunkd.sources import Container, build_container
from chunkd.streamview import stream_summary
from chunkd.summary import JobSummary, job_summary, summary_from_record
from chunkd.tasks import TaskScope
from chunkd.tracing import Tracing

if TYPE_CHECKING:
    from chunkd.cluster import Cluster

__all__ = ["Runtime", "UnknownComponent", "QueueFull", "NotAccepting"]

log = structlog.get_logger("chunkd.runtime")


class Runtime:
    def __init__(self, config: Config, store: JobStore | None = None, *, only: set[str] | None = None,
                 node: str | None = None) -> None:
        self.config = config
        self.only = only  # load just these components (a one-shot `chunkd run` needs one)
        self.store = store
        self.node = node  # cluster mode: this node's name (its temp names; outputs settled by the cluster)
        # where output rows go: the job store, or without one (cluster mode, `chunkd run`)
        # the node-local ledger state_dir/outputs.sqlite3, opened at start
        self.ledger: RecoveryLedger | None = store
        self._own_ledger: SqliteOutputLedger | None = None
        self.metrics = Metrics()
        self.engine: _native.Engine | None = None
        self.clock: EpochClock | None = None
        self.containers: dict[str, Container] = {}
        self.sinks: dict[str, WritableContainer] = {}  # the writable containers (outputs), by name
        self._retired_containers: list[Container] = []
        self.pools: dict[str, InstancePool] = {}
        self._retired_pools: list[InstancePool] = []
        # the one owner of [limits]: pools, instances and host services read it, a reload updates it
        self.limits = LiveLimits(config.limits)
        self.budget = BufferBudget(config.limits.max_buffered_bytes)
        # the delivery slots of all jobs, by weighted byte share; it also sets the budget's
        # per-flow weights and caps and owns the tenants' pacers (chunkd/fairshare.py)
        self.fairshare = FairShare(config, self.budget)
        # [telemetry]: the tracer's owner (off: no exporter); a reload keeps it (restart to change)
        self.tracing = Tracing(config.telemetry, node)
        self.io_executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="chunkd-io")
        self.background = TaskScope("runtime")
        self.runner = JobRunner(self, store)
        self.backend: JobBackend = LocalJobs(self.runner, store, self.live_streams)  # use_cluster() replaces it
        self._services: RuntimeServices | None = None
        self._output_listeners: list[OutputListener] = []
        self.closed = False
        self.cluster: Cluster | None = None  # set by the daemon in cluster mode

    @property
    def services(self) -> RuntimeServices:
        assert self._services is not None, "Runtime.start() first"
        return self._services

    @property
    def output_listeners(self) -> list[OutputListener]:
        return self._output_listeners

    # --- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._services = RuntimeServices(loop, self.limits, self.metrics, self.background)
        self._services.output_listeners = self._output_listeners
        self.metrics.bind(self)
        cache_dir = self.config.daemon.cache_dir or self.config.daemon.state_dir / "cache"
        self.engine = await loop.run_in_executor(None, make_engine, cache_dir)
        self.clock = EpochClock(self.engine)
        for name, ccfg in self.config.containers.items():
            self.containers[name] = build_container(ccfg, self.io_executor, file=self.config.file)
        self._services.containers = self.containers
        self.sinks = self._build_sinks(self.config, self.containers, self.node)
        self._services.grants = self._grants(self.config)
        if self.store is None:
            ledger = SqliteOutputLedger(self.config.daemon.state_dir / "outputs.sqlite3", lock=True)
            try:
                await ledger.open()
                self._own_ledger = self.ledger = ledger
            except (OSError, sqlite3.Error) as e:  # e.g. `chunkd run` without a writable state_dir
                await ledger.close()
                log.warning("outputs_ledger_unavailable", path=str(ledger.path), error=str(e),
                            consequence="outputs are committed or aborted with the job, not recovered after a crash")
        if self.node is None:  # before any job runs again; cluster mode: the cluster calls it once connected
            await self.settle_outputs()
        self.pools = await self._build_pools(self.config, {})

    async def settle_outputs(self, roll_forward: Callable[[dict[str, Any]], Awaitable[bool]] | None = None) -> None:
        """Settle what dead attempts left in the ledger (outputs.recover_outputs), then sweep:
        every temp file with a job store (one daemon), only this node's in cluster mode,
        none for `chunkd run` (a daemon may be writing into the same folders). Skipped when
        another live process uses the same node-local ledger (its open rows are live)."""
        if self.ledger is None:
            return
        if self._own_ledger is not None and not self._own_ledger.sole_user:
            log.warning("output_recovery_skipped", ledger=str(self._own_ledger.path),
                        reason="another live process uses this ledger: its open rows may be live")
            return
        counts = await recover_outputs(self.ledger, self.sinks, roll_forward=roll_forward,
                                       sweep=self.store is not None or self.node is not None)
        if any(counts.values()):
            log.info("outputs_recovered", **counts)

    @staticmethod
    def _build_sinks(config: Config, containers: dict[str, Container],
                     node: str | None) -> dict[str, WritableContainer]:
        sinks = {}
        for name, ccfg in config.containers.items():
            if ccfg.writable and name in containers:
                try:
                    sinks[name] = sink_container(name, ccfg, containers[name], node=node)
                except SinkError as e:  # e.g. an s3 container with no bucket: every create is refused
                    log.warning("container_not_writable", container=name, error=str(e))
        return sinks

    @staticmethod
    def _grants(config: Config) -> dict[str, frozenset[str] | None]:
        return {name: c.containers for name, c in config.components.items()}

    async def job_outputs(self, job_id: str, component: str, attempt: int) -> JobOutputs:
        """The outputs of one attempt (the job runner's): the writable containers, the grants
        and limits.max_output_bytes as they are now, and what earlier attempts committed: the
        job store's rows, or (cluster mode) the outputs view the job's record carries."""
        job = self.runner.jobs.get(job_id)
        before = committed_outputs(job.past_outputs if job is not None else [])
        if self.store is not None:
            before.update(committed_outputs(await self.store.outputs(job_id)))
        comp = self.config.components.get(component)
        return JobOutputs(job_id, attempt, component, sinks=self.sinks, containers=self.config.containers,
                          grants=comp.containers if comp is not None else frozenset(), budget=self.budget,
                          max_output_bytes=self.limits.current.max_output_bytes, ledger=self.ledger,
                          metrics=self.metrics, lend=self.fairshare.lent, committed_before=before)

    async def _build_pools(self, config: Config, keep: dict[str, InstancePool]) -> dict[str, InstancePool]:
        """Pools for `config`, reusing those in `keep` whose config, file and instance_memory
        are unchanged. New pools get the runtime's live limits (a reload updates them once
        the pools are built) and `config`'s instance_memory."""
        engine, clock = self.engine, self.clock
        assert engine is not None and clock is not None
        loop = asyncio.get_running_loop()
        wanted = {n: c for n, c in config.components.items() if self.only is None or n in self.only}
        memory = config.limits.instance_memory_bytes
        todo = {n: c for n, c in wanted.items()
                if n not in keep or keep[n].fingerprint != fingerprint(c, memory) or keep[n].retired}
        # one at a time: compiling a large component takes hundreds of MB while it runs
        comps = [await loop.run_in_executor(None, load_component, engine, name, c.path) for name, c in todo.items()]
        pools = {n: keep[n] for n in wanted if n not in todo}
        started: list[InstancePool] = []
        m = self.metrics
        try:
            for comp in comps:
                meters = (m.handle_seconds.labels(comp.name), m.chunks.labels(comp.name), m.bytes.labels(comp.name))
                pool = InstancePool(comp, config.components[comp.name], self.limits, memory, self.services, clock,
                                    meters)
                await pool.start()
                started.append(pool)
                pools[comp.name] = pool
                log.info("component_ready", component=comp.name, world=comp.info.world, kind=comp.kind,
                         instances=pool.cfg.instances, path=str(comp.path))
        except BaseException:
            for p in started:
                await p.close()
            raise
        return pools

    async def reload(self, config: Config) -> list[str]:
        """SIGHUP: new config and changed components serve new jobs; running streams go on.
        The new [limits] go into the one LiveLimits, so every instance, kept or new, and the
        host services read them from then on (the rule per key: docs/cli-and-api.md).

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
        self.services.containers = containers
        self.sinks = self._build_sinks(config, containers, self.node)
        self.services.grants = self._grants(config)
        self.limits.update(config.limits)  # kept instances, new ones and the host services alike
        self.budget.set_limit(config.limits.max_buffered_bytes)
        self.fairshare.configure(config)  # workers, weights, tenant caps and pacers
        self.pools = pools
        for name, pool in old.items():
            if pools.get(name) is not pool:
                await pool.retire()
                self._retired_pools.append(pool)
        log.info("config_reloaded", file=config.file, components_changed=changed,
                 components_removed=[n for n in old if n not in pools])
        return changed

    async def close(self) -> None:
        """Cancel what still runs (jobs, replacements, closes), await it, free everything."""
        await self.backend.close()
        await self.runner.close()
        for pool in self.all_pools:
            await pool.close()
        await self.background.close()
        for c in [*self.containers.values(), *self._retired_containers]:
            await c.close()
        if self.clock is not None:
            self.clock.stop()
        if self._own_ledger is not None:
            await self._own_ledger.close()
        self.io_executor.shutdown(wait=False)
        await self.tracing.close()  # the last spans (ended jobs') flushed within a deadline
        self.closed = True

    @property
    def all_pools(self) -> list[InstancePool]:
        return [*self.pools.values(), *self._retired_pools]

    # --- jobs (the runner's) ------------------------------------------------------

    @property
    def accepting(self) -> bool:
        return self.runner.accepting

    @property
    def jobs(self) -> dict[str, Job]:
        return self.runner.jobs

    def submit(self, component: str, args: list[str], tenant: str | None = None) -> Job:
        return self.runner.submit(component, args, tenant)

    async def accept(self, component: str, args: list[str], tenant: str | None = None) -> Job:
        """Queue a job durably for `tenant` (None: the admin token's); its quota is checked."""
        job = await self.backend.accept(component, args, tenant)
        self.metrics.jobs_submitted.labels(tenant or "").inc()
        return job

    def use_cluster(self, cluster: "Cluster") -> None:
        """Cluster mode, chosen once at startup (the daemon): jobs live in NATS JetStream."""
        self.cluster = cluster
        self.backend = ClusterJobs(cluster, self.runner)

    # --- what the API shows: this node's jobs, or the cluster's ----------------------

    async def job_summary(self, job_id: str) -> JobSummary | None:
        return await self.backend.summary(job_id)

    async def job_summaries(self, limit: int, state: str | None, tenant: str | None = None) -> list[JobSummary]:
        """The newest `limit` jobs (of `state`; of `tenant`, None: all), newest first."""
        return await self.backend.summaries(limit, state, tenant)

    def job_counts(self, tenant: str | None = None) -> dict[tuple[str, str], int]:
        """Unfinished jobs per (component, state) (of `tenant`; None: all), from the
        backend's own structure."""
        return self.backend.counts(tenant)

    async def cancel_job(self, job_id: str) -> JobSummary | None:
        """Operator cancel; the job's summary as it was asked (None: no such job)."""
        return await self.backend.cancel(job_id)

    async def streams_view(self) -> list[dict[str, Any]]:
        return await self.backend.running_streams()

    async def run(self, component: str, args: list[str]) -> Job:
        job = self.submit(component, args)
        await job.done.wait()
        return job

    async def resume(self) -> tuple[int, int]:
        return await self.runner.resume()

    def cancel(self, job_id: str) -> Job | None:
        return self.runner.cancel(job_id)

    async def drain(self, grace_s: float) -> tuple[int, int]:
        return await self.backend.drain(grace_s)

    async def prune(self, retention_s: float) -> int:
        if self._own_ledger is not None:  # settled rows: the job's record carries its outputs
            await self._own_ledger.prune_outputs(time.time() - retention_s)
        return await self.runner.prune(retention_s)

    # --- introspection ----------------------------------------------------------------

    @property
    def active_streams(self) -> int:
        return self._services.active_streams if self._services is not None else 0

    def stalled_streams(self) -> int:
        now = time.time()
        return sum(1 for job in self.jobs.values() if job.state == JobState.RUNNING
                   for d in job.deliveries if d.stalled(now))

    def pending_streams(self) -> int:
        n = 0
        for job in self.jobs.values():
            if job.state == JobState.RUNNING:
                n += len(job.inbox.requests) + sum(1 for d in job.deliveries if d.outcome is None and d.stats.chunks == 0)
        return n

    @property
    def queued_jobs(self) -> int:
        return self.runner.queued

    @property
    def running_jobs(self) -> int:
        return self.runner.running

    def live_streams(self) -> list[dict[str, Any]]:
        out = []
        for job in self.jobs.values():
            if job.state != JobState.RUNNING:
                continue
            for d in job.deliveries:
                if d.outcome is None:
                    out.append({"job_id": job.id, "component": job.component, "instance": job.instance,
                                "tenant": job.tenant, **stream_summary(d), "buffered_chunks": len(d.queue)})
        return out
