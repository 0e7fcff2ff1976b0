"""Cluster mode: many chunkd nodes sharing one job queue on NATS JetStream.

- The queue is a work-queue stream (subjects `chunkd.jobs.<component>`); each
  job is one message whose `Nats-Msg-Id` is the job id, so a duplicate publish
  inside the stream's duplicate window is dropped.
- The job records live in a JetStream key-value bucket (key = job id). Every
  write after the first is a compare-and-set on the entry's revision.
- Each node pulls with one durable consumer per component it has configured,
  shared by all nodes, and fetches a message only after it has taken a free
  instance: a busy node never hoards work.
- While a job runs, its node sends `in_progress` and renews the record's
  lease (owner node, lease deadline, progress) every `heartbeat`. It acks the
  message only after the final state is written.
- Fencing: a node that could not renew the lease for `ack_wait - heartbeat -
  call_timeout` stops the job's deliveries (`stream-ended(failed("node lost
  its lease"))`) and does not ack. JetStream redelivers after `ack_wait`, so
  the old node has stopped before another can start.
- Cancel from any node: the record is marked (`cancel_requested`, or
  `cancelled` for a job still queued) and `chunkd.cancel` is published; the
  running node cancels at once (and sees the mark at its next heartbeat too).
- Reads never scan the bucket: each node keeps a JobIndex (jobindex.py) from a
  watch of the KV bucket, and answers lists, counts and the status page from
  it in O(limit). Until the index is loaded (or while it is rebuilt after the
  watch or NATS broke) reads answer 503, never an empty or partial list.
- Retention: the reaper purges finished records older than
  `daemon.job_retention` (oldest first, from the index), and removes the purge
  markers after MARKER_KEEP_S: the bucket holds the jobs of one retention
  window, plus a few minutes of markers.
- The end of a job is one shielded step, final record then ack; a redelivered
  message whose record is already final is acked without running again.
"""
from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import ssl
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Mapping, Protocol

import structlog
from nats.aio.client import Client as NATS
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    KeyValueConfig,
    RetentionPolicy,
    StreamConfig,
)
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError

from chunkd.config import ClusterConfig
from chunkd.errors import ChunkdError, ClusterUnavailable, QueueFull, QuotaExceeded
from chunkd.jobindex import IndexNotReady, JobIndex
from chunkd.jobs import FINAL_STATES, Job, JobState
from chunkd.summary import JobSummary, job_summary, summary_from_record
from chunkd.tracing import carrier_from_headers
from chunkd.tasks import TaskScope

if TYPE_CHECKING:
    from chunkd.config import Config
    from chunkd.jobrunner import JobRunner
    from chunkd.metrics import Metrics


class ClusterHost(Protocol):
    """The few things cluster mode uses of the runtime that owns it."""

    @property
    def config(self) -> "Config": ...

    @property
    def metrics(self) -> "Metrics": ...

    @property
    def pools(self) -> Mapping[str, Any]: ...

    @property
    def runner(self) -> "JobRunner": ...

    async def settle_outputs(self, roll_forward: Callable[[dict[str, Any]], Awaitable[bool]] | None = None) -> None:
        """Recover this node's dead attempts' outputs from its ledger, then sweep its temps."""
        ...

log = structlog.get_logger("chunkd.cluster")

CANCEL_SUBJECT = "chunkd.cancel"
LEASE_LOST = "node lost its lease"
PROGRESS_EVERY_S = 1.0
FETCH_WAIT_S = 1.0
REQUEST_TIMEOUT_S = 2.0



CONNECT_DEADLINE_S = 15.0  # the first connection to NATS, every server and retry included
PURGES_PER_ROUND = 5000  # expired records purged per reaper round, at most
MARKER_KEEP_S = 30.0  # a purge marker stays this long (live watchers see it at once), then it is removed
FINISH_WAIT_S = 3 * REQUEST_TIMEOUT_S  # drain and close wait this long for final writes under way
# Test-only fault points (docs/testing.md): "kill-after-final-write" makes the node SIGKILL
# itself between a job's final record and its ack; "slow-final-write" waits 3 s before the
# final record (time for a drain to interrupt it).
FAULT = os.environ.get("CHUNKD_FAULT", "")


def subject(component: str) -> str:
    return f"chunkd.jobs.{component}"


class Cluster:
    def __init__(self, cfg: ClusterConfig, runtime: ClusterHost, max_attempts: int) -> None:
        self.cfg = cfg
        self.rt = runtime
        self.max_attempts = max_attempts
        self.node = cfg.node
        self.nc: Any = None
        self.js: Any = None
        self.kv: Any = None
        self.connected = False
        self.pulling = True
        self._scope = TaskScope("cluster")  # pullers, job runs, final writes, the reaper, the watch
        self._intake = asyncio.Lock()  # one submission at a time checks the queue and publishes
        self.index = JobIndex()
        self._rewatch = asyncio.Event()  # set on reconnect: the watch starts over
        self._index_loaded = asyncio.Event()  # the first full load of the index
        self._markers: collections.deque[tuple[float, str]] = collections.deque()  # (seen at, key) of purges

    # --- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        c = self.cfg
        tls = None
        if c.tls_ca or c.tls_cert:
            tls = ssl.create_default_context(cafile=str(c.tls_ca) if c.tls_ca else None)
            if c.tls_cert and c.tls_key:
                tls.load_cert_chain(str(c.tls_cert), str(c.tls_key))

        async def disconnected() -> None:
            self.connected = False
            self.index.clear("NATS disconnected")
            log.warning("nats_disconnected", node=self.node)

        async def reconnected() -> None:
            self.connected = True
            self._rewatch.set()
            log.info("nats_reconnected", node=self.node)

        errors: list[str] = []

        async def error(e: Exception) -> None:
            errors.append(str(e) or type(e).__name__)
            log.warning("nats_error", node=self.node, error=str(e))

        where = ", ".join(u.split("@")[-1] for u in c.nats_urls)  # never the credentials
        nc = NATS()
        try:
            # a wrong password or certificate makes the client retry for ever: bounded here
            await asyncio.wait_for(nc.connect(
                servers=list(c.nats_urls), name=f"chunkd-{self.node}", tls=tls,
                user_credentials=str(c.creds_file) if c.creds_file else None,
                allow_reconnect=True, max_reconnect_attempts=-1, reconnect_time_wait=0.5,  # type: ignore[arg-type]
                connect_timeout=5, disconnected_cb=disconnected, reconnected_cb=reconnected, error_cb=error),
                CONNECT_DEADLINE_S)
        except BaseException as e:
            try:
                await asyncio.wait_for(nc.close(), 5)
            except Exception:
                pass
            if not isinstance(e, Exception):
                raise
            why = errors[-1] if errors else (str(e) or type(e).__name__)
            raise ClusterUnavailable(f"cannot reach NATS at {where}: {why}") from None
        self.nc = nc
        self.connected = True
        self.js = self.nc.jetstream(timeout=REQUEST_TIMEOUT_S)
        try:
            await self.js.add_stream(StreamConfig(name=c.stream, subjects=["chunkd.jobs.>"],
                                                  retention=RetentionPolicy.WORK_QUEUE, duplicate_window=120.0))
            try:
                self.kv = await self.js.key_value(c.kv_bucket)
            except NotFoundError:
                # one revision per job: compare-and-set needs the revision, not the history
                self.kv = await self.js.create_key_value(KeyValueConfig(bucket=c.kv_bucket, history=1))
            await self.nc.subscribe(CANCEL_SUBJECT, cb=self._on_cancel)
        except Exception as e:
            await self.nc.close()
            raise ClusterUnavailable(f"JetStream at {', '.join(u.split('@')[-1] for u in c.nats_urls)} "
                                     f"is not usable (started with -js?): {e}") from None
        # before this node takes a job: settle what its own dead attempts left (its ledger),
        # rolling a commit forward only while the job's record still has that attempt as latest
        await self.rt.settle_outputs(self._may_roll_forward)
        self._scope.spawn(self._watch(), name="watch")
        try:  # answer reads from a loaded index (until then they are 503s, never partial)
            await asyncio.wait_for(self._index_loaded.wait(), CONNECT_DEADLINE_S)
        except asyncio.TimeoutError:
            log.warning("job_index_not_loaded", node=self.node, waited_s=CONNECT_DEADLINE_S)
        for name in self.rt.pools:
            self._scope.spawn(self._pull(name), name=f"pull-{name}")
        self._scope.spawn(self._reaper(), name="reaper")
        log.info("cluster_joined", node=self.node, stream=c.stream, kv_bucket=c.kv_bucket,
                 components=sorted(self.rt.pools))

    async def drain(self, grace_s: float) -> tuple[int, int]:
        """Stop fetching; give running jobs `grace_s`; interrupt the rest (not acked:
        JetStream redelivers them)."""
        self.pulling = False
        for t in self._scope.tasks:
            if t.get_name().startswith("chunkd:pull-"):
                t.cancel()
        runs = [t for t in self._scope.tasks if t.get_name().startswith("chunkd:run-")]
        before = len(runs)
        left = 0
        if runs:
            _, pending = await asyncio.wait(runs, timeout=grace_s)
            left = len(pending)
        await self._finishes()
        await self._scope.close()
        return before - left, left

    async def _finishes(self) -> None:
        """Let final writes under way end (each is two bounded requests): a job that ended is
        recorded and acked, even when its run is interrupted by a drain."""
        fins = [t for t in self._scope.tasks if t.get_name().startswith("chunkd:finish-")]
        if fins:
            await asyncio.wait(fins, timeout=FINISH_WAIT_S)

    async def close(self) -> None:
        await self._finishes()
        await self._scope.close()
        if self.nc is not None and not self.nc.is_closed:
            try:
                await asyncio.wait_for(self.nc.close(), 5)
            except Exception as e:
                log.warning("nats_close_failed", error=str(e))

    async def _may_roll_forward(self, row: dict[str, Any]) -> bool:
        """A `committing` output row of this node's dead attempt may be rolled forward at its
        restart only while the job's record still shows that attempt running here: once the
        job ended or another attempt started (on any node), the dead attempt's leftovers are
        undone instead, so they never replace what a later attempt committed."""
        try:
            got = await self._get(str(row["job_id"]))
        except Exception as e:  # NATS away: undo (the job runs again and writes again)
            log.warning("output_roll_forward_unknown", job_id=row["job_id"], error=str(e))
            return False
        if got is None:
            return False
        rec = got[0]
        return (rec.get("state") == str(JobState.RUNNING) and rec.get("node") == self.node
                and int(rec.get("attempts") or 0) == int(row["attempt"]))

    # --- records ----------------------------------------------------------------------

    async def _get(self, job_id: str) -> tuple[dict[str, Any], int] | None:
        try:
            entry = await self.kv.get(job_id)
        except KeyNotFoundError:
            return None
        if entry.value is None:
            return None
        return json.loads(entry.value), entry.revision

    async def _cas(self, job_id: str, rec: dict[str, Any], rev: int) -> int:
        return int(await self.kv.update(job_id, json.dumps(rec).encode(), last=rev))

    async def _merge(self, job_id: str, change: Any, tries: int = 5) -> dict[str, Any] | None:
        """Read, change, compare-and-set; again on a concurrent write. `change(rec)` returns
        False to leave the record as it is."""
        for _ in range(tries):
            got = await self._get(job_id)
            if got is None:
                return None
            rec, rev = got
            if change(rec) is False:
                return rec
            try:
                await self._cas(job_id, rec, rev)
                return rec
            except KeyWrongLastSequenceError:
                continue
        raise ChunkdError(f"job {job_id}: record changed under {tries} writes in a row")

    # --- API side -----------------------------------------------------------------------

    async def queued(self) -> int:
        """Jobs in the shared queue not yet handed to any node: the consumers' pending counts."""
        infos = await self.js.consumers_info(self.cfg.stream)
        return sum(int(i.num_pending or 0) for i in infos)

    async def accept(self, job: Job) -> None:
        """The record, then the message; both acknowledged before the API answers 202.
        `limits.max_queued_jobs` bounds the shared queue (the consumers' pending counts):
        this node checks and publishes one submission at a time, so a burst to one node
        never overshoots; bursts to several nodes at once may overshoot by one per node."""
        if not self.connected:
            raise ClusterUnavailable("NATS is not reachable: no job accepted")
        limit = self.rt.config.limits.max_queued_jobs
        async with self._intake:
            try:
                waiting = await self.queued()
            except Exception as e:
                raise ClusterUnavailable(f"NATS did not tell the queue's length: {e}") from None
            if waiting >= limit:
                raise QueueFull(f"job queue is full ({limit} queued in the cluster)")
            self._check_quota(job.tenant)
            rec = job.record()
            try:
                await self.kv.create(job.id, json.dumps(rec).encode())
                await self.js.publish(subject(job.component), job.id.encode(),
                                      headers={"Nats-Msg-Id": job.id, **(job.trace or {})})  # W3C trace context
            except Exception as e:
                raise ClusterUnavailable(f"NATS did not acknowledge the job: {e}") from None
            if job.tenant is not None and self.index.state_of(job.id) is None:
                # counted at once for the next submission's quota check, not when the watch brings it
                self.index.put(job.id, rec)
        log.info("job_submitted", job_id=job.id, component=job.component, args=job.args, node=self.node)

    def _check_quota(self, tenant: str | None) -> None:
        """tenants.NAME.max_jobs over the cluster: the tenant's queued and running records in
        this node's index (one node's submissions are checked one at a time; submissions to
        several nodes at once may pass it by one per node, like the queue's bound)."""
        cfg = self.rt.config.tenants.get(tenant) if tenant is not None else None
        if cfg is None or not cfg.max_jobs:
            return
        have = self.index.count(str(JobState.QUEUED), tenant=cfg.name) + self.index.count(str(JobState.RUNNING),
                                                                                           tenant=cfg.name)
        if have >= cfg.max_jobs:
            raise QuotaExceeded(f"tenant {cfg.name!r} is at its quota tenants.{cfg.name}.max_jobs = {cfg.max_jobs} "
                                f"(queued and running)")

    async def _read(self, job_id: str) -> dict[str, Any] | None:
        """A record by id: the index's copy when it holds one whole, else a KV GET.
        NATS failing is ClusterUnavailable (the API says 503), never "no such job"."""
        rec = self.index.cached(job_id) if self.index.ready else None
        if rec is not None:
            return rec
        try:
            got = await self._get(job_id)
        except Exception as e:
            raise ClusterUnavailable(f"NATS did not answer for job {job_id}: {e or type(e).__name__}") from None
        return None if got is None else got[0]

    async def summary(self, job_id: str) -> JobSummary | None:
        local = self.rt.runner.jobs.get(job_id)
        if local is not None and local.state == JobState.RUNNING and not local.fenced:
            return job_summary(local)  # live, not a second old
        rec = await self._read(job_id)
        return None if rec is None else summary_from_record(rec)

    async def summaries(self, limit: int, state: str | None, tenant: str | None = None) -> list[JobSummary]:
        """The newest `limit` jobs (of `state`, of `tenant`), from this node's index: O(limit) reads,
        at most `limit` GETs for records the index does not hold whole. Raises
        ClusterUnavailable (IndexNotReady) rather than answer from a partial index."""
        ids = self.index.newest(limit, state, tenant)
        out: list[JobSummary] = []
        sem = asyncio.Semaphore(16)

        async def one(jid: str) -> JobSummary | None:
            async with sem:
                return await self.summary(jid)
        for s in await asyncio.gather(*(one(j) for j in ids)):
            if s is not None and (state is None or s["state"] == state) and (tenant is None or s["tenant"] == tenant):
                out.append(s)
        out.sort(key=lambda j: j["created_at"], reverse=True)
        return out[:limit]

    def counts(self, tenant: str | None = None) -> dict[tuple[str, str], int]:
        """Jobs per (component, state) for the unfinished states (of `tenant`), from the index."""
        out: dict[tuple[str, str], int] = {}
        for comp in self.rt.pools:
            for st in (str(JobState.RUNNING), str(JobState.QUEUED)):
                out[(comp, st)] = self.index.count(st, comp, tenant)
        return out

    async def cancel(self, job_id: str) -> JobSummary | None:
        def mark(rec: dict[str, Any]) -> bool:
            if rec["state"] in FINAL_STATES:
                return False
            if rec["state"] == JobState.QUEUED:
                rec.update(state=str(JobState.CANCELLED), error="cancelled by operator before it started",
                           ended_at=time.time())
            rec["cancel_requested"] = True
            return True
        rec = await self._merge(job_id, mark)
        if rec is None:
            return None
        await self.nc.publish(CANCEL_SUBJECT, job_id.encode())
        log.info("job_cancel_requested", job_id=job_id, state=rec["state"], node=self.node)
        return summary_from_record(rec)

    async def _on_cancel(self, msg: Any) -> None:
        job_id = msg.data.decode(errors="replace")
        if job_id in self.rt.runner.jobs:
            self.rt.runner.cancel(job_id)

    # --- worker side ----------------------------------------------------------------------

    async def _pull(self, component: str) -> None:
        """Take a free instance, then fetch one job for it: never more than we can run."""
        pool = self.rt.pools[component]
        cfg = ConsumerConfig(durable_name=f"chunkd-{component}", ack_policy=AckPolicy.EXPLICIT,
                             ack_wait=self.cfg.ack_wait_s, max_deliver=self.max_attempts,
                             filter_subject=subject(component))
        psub = None
        delay = 0.5
        while self.pulling:
            inst = await pool.acquire()
            handed = False
            try:
                if psub is None:
                    psub = await self.js.pull_subscribe(subject(component), durable=f"chunkd-{component}",
                                                        stream=self.cfg.stream, config=cfg)
                msgs = await psub.fetch(1, timeout=FETCH_WAIT_S)
                delay = 0.5
                self._scope.spawn(self._run(msgs[0], inst, pool), name=f"run-{component}")
                handed = True
            except asyncio.TimeoutError:
                pass
            except asyncio.CancelledError:
                raise
            except Exception as e:  # NATS away or the consumer not there yet: try again soon
                log.warning("fetch_failed", component=component, error=str(e), retry_in_s=delay)
                psub = None if not self.connected else psub
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            finally:
                if not handed:
                    pool.give_back(inst)

    async def _run(self, msg: Any, inst: Any, pool: Any) -> None:
        job_id = msg.data.decode(errors="replace")
        attempt = int(msg.metadata.num_delivered)
        with structlog.contextvars.bound_contextvars(job_id=job_id, node=self.node):
            try:
                claimed = await self._claim(job_id, attempt)
            except BaseException as e:  # NATS went away mid-claim: not acked, it comes back
                pool.give_back(inst)
                if not isinstance(e, Exception):
                    raise
                log.warning("claim_failed", error=str(e))
                return
            if claimed is None:  # gone, finished, or cancelled while queued: acked, not run
                pool.give_back(inst)
                await self._ack(msg)
                log.info("job_message_acked_unrun", attempt=attempt)
                return
            job, rev = claimed
            job.trace = carrier_from_headers(msg.headers) or job.trace  # the message's trace context
            hb = asyncio.get_running_loop().create_task(self._heartbeat(msg, job, rev), name=f"chunkd:hb-{job_id}")
            try:
                await self.rt.runner.run_claimed(job, inst, pool)
            finally:
                hb.cancel()
                await asyncio.gather(hb, return_exceptions=True)
            if job.fenced or not job.finished:
                return  # not acked: JetStream runs it again, here or elsewhere
            # the final record and the ack are one step: a cancel (a drain) cannot split them
            await asyncio.shield(self._scope.spawn(self._finish(msg, job), name=f"finish-{job_id}"))

    async def _finish(self, msg: Any, job: Job) -> None:
        with structlog.contextvars.bound_contextvars(job_id=job.id, node=self.node):
            if FAULT == "slow-final-write":
                log.info("final_write_delayed")
                await asyncio.sleep(3.0)
            try:
                await self._merge(job.id, lambda rec: rec.update(job.record(), node=self.node,
                                                                 lease_until=None) or True)
            except Exception as e:  # not acked: it runs again (at least once)
                log.error("final_state_not_written", error=str(e))
                return
            if FAULT == "kill-after-final-write":
                os.kill(os.getpid(), signal.SIGKILL)
            await self._ack(msg)

    async def _reaper(self) -> None:
        """Every node, every 2 heartbeats: end the records no node will ever finish, purge
        the records past retention, remove old purge markers. Each costs what it touches
        (the running jobs; the expired ones), never a scan of the bucket."""
        while self.pulling:
            await asyncio.sleep(2 * self.cfg.heartbeat_s)
            if not self.connected or not self.index.ready:
                continue
            try:
                await self.reap()
                await self.expire(self.rt.config.daemon.job_retention_s)
            except Exception as e:  # NATS away for a moment: next round
                log.warning("reap_failed", error=str(e))

    async def reap(self) -> int:
        """A record still `running` whose lease expired more than a heartbeat ago, on its
        last allowed delivery (attempts >= daemon.max_attempts), will never be redelivered
        by JetStream (max_deliver) nor finished by its node (which fenced itself when its
        lease ran out): it ends `failed` with the reason. Earlier attempts are left to
        JetStream's redelivery. Compare-and-set, so nodes reaping at once agree."""
        now = time.time()
        reaped = 0
        for seen in self.index.unfinished(str(JobState.RUNNING)):
            lease = seen.get("lease_until")
            if lease is None or lease + self.cfg.heartbeat_s > now or int(seen.get("attempts") or 0) < self.max_attempts:
                continue
            key = str(seen["id"])
            got = await self._get(key)
            if got is None:
                continue
            rec, rev = got
            lease = rec.get("lease_until")
            attempts = int(rec.get("attempts") or 0)
            if rec.get("state") != str(JobState.RUNNING) or lease is None or lease + self.cfg.heartbeat_s > now:
                continue
            if attempts < self.max_attempts:
                continue
            reason = (f"gave up: its last allowed attempt ({attempts} of daemon.max_attempts {self.max_attempts}) "
                      f"was lost with node {rec.get('node')!r} (lease expired {now - float(lease):.0f}s ago)")
            rec.update(state=str(JobState.FAILED), error=reason, ended_at=now, lease_until=None)
            try:
                await self._cas(key, rec, rev)
            except KeyWrongLastSequenceError:
                continue  # renewed or reaped by someone else meanwhile
            reaped += 1
            self.rt.metrics.jobs.labels(str(JobState.FAILED)).inc()
            log.warning("job_reaped", job_id=key, reason=reason, reaped_by=self.node)
        return reaped

    async def expire(self, retention_s: float) -> int:
        """Retention: purge finished records that ended more than `retention_s` ago (oldest
        first, PURGES_PER_ROUND at most), and remove purge markers older than
        MARKER_KEEP_S. Running and queued records are never touched. Every node may do
        it; a purge is idempotent."""
        purged = 0
        keys = self.index.expired(time.time() - retention_s, PURGES_PER_ROUND)
        for at in range(0, len(keys), 64):  # 64 purges in flight at a time
            await asyncio.gather(*(self.kv.purge(k) for k in keys[at:at + 64]))
            purged += len(keys[at:at + 64])
        cutoff = time.monotonic() - MARKER_KEEP_S
        while self._markers and self._markers[0][0] < cutoff:
            _, key = self._markers.popleft()
            if self.index.state_of(key) is None:  # still gone (not written again since)
                await self.js.purge_stream(self.kv._stream, subject=f"$KV.{self.cfg.kv_bucket}.{key}")
        if purged:
            log.info("jobs_expired", count=purged, node=self.node)
        return purged

    async def _watch(self) -> None:
        """Keep self.index in step with the bucket: a watch of every key, loaded whole
        before the index answers; started over after NATS reconnects or the watch fails."""
        delay = 0.5
        while True:
            self._rewatch.clear()
            self.index.clear("loading")
            watcher = None
            try:
                watcher = await self.kv.watchall()
                async for entry in self._updates(watcher):
                    if entry is None:
                        self.index.mark_ready()
                        self._index_loaded.set()
                        delay = 0.5
                        log.info("job_index_ready", jobs=len(self.index), node=self.node)
                        continue
                    if entry.operation in ("DEL", "PURGE"):
                        self.index.remove(entry.key)
                        self._markers.append((time.monotonic(), entry.key))
                    else:
                        self.index.put_raw(entry.key, entry.value)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.index.clear(f"the watch failed: {e or type(e).__name__}")
                log.warning("job_index_watch_failed", error=str(e), retry_in_s=delay)
            finally:
                if watcher is not None:
                    try:
                        await asyncio.wait_for(watcher.stop(), REQUEST_TIMEOUT_S)
                    except Exception:
                        pass
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _updates(self, watcher: Any) -> Any:
        """The watcher's entries until a reconnect asks for a new watch."""
        while not self._rewatch.is_set():
            try:
                entry = await watcher.updates(timeout=1.0)
            except Exception as e:
                if type(e).__name__ == "TimeoutError":  # nats.errors.TimeoutError: nothing new
                    continue
                raise
            yield entry

    async def _ack(self, msg: Any) -> None:
        try:
            await msg.ack_sync(timeout=REQUEST_TIMEOUT_S)
        except Exception as e:
            log.warning("ack_failed", error=str(e))

    async def _claim(self, job_id: str, attempt: int) -> tuple[Job, int] | None:
        for _ in range(5):
            got = await self._get(job_id)
            if got is None:
                log.warning("job_record_missing")
                return None
            rec, rev = got
            if rec["state"] in FINAL_STATES or rec.get("cancel_requested"):
                if rec["state"] not in FINAL_STATES:
                    rec.update(state=str(JobState.CANCELLED), error="cancelled by operator before it started",
                               ended_at=time.time())
                    try:
                        await self._cas(job_id, rec, rev)
                    except KeyWrongLastSequenceError:
                        continue
                return None
            job = Job.from_record(rec)
            job.state = JobState.QUEUED
            job.attempts = attempt - 1  # the runner counts this start
            job.invoke_ok = job.invoke_result = job.error = None
            job.output.clear()
            job.past_streams = []
            job.node = self.node
            rec.update(state=str(JobState.RUNNING), node=self.node, attempts=attempt, started_at=time.time(),
                       lease_until=time.time() + self.cfg.ack_wait_s)
            try:
                rev = await self._cas(job_id, rec, rev)
            except KeyWrongLastSequenceError:
                continue
            return job, rev
        return None

    async def _heartbeat(self, msg: Any, job: Job, rev: int) -> None:
        """in_progress + lease renewal by compare-and-set; fence when renewal keeps failing."""
        c = self.cfg
        # the deadline by which a renewal must have succeeded, on this node's own clock
        fence_after = c.ack_wait_s - c.heartbeat_s - self.rt.config.limits.call_timeout_s
        deadline = time.monotonic() + fence_after

        def left() -> float:
            return deadline - time.monotonic()

        while True:
            await asyncio.sleep(max(0.0, min(c.heartbeat_s, left())))
            if left() <= 0:
                self.rt.runner.fence(job.id, LEASE_LOST)
                return
            try:
                await asyncio.wait_for(msg.in_progress(), max(0.01, min(REQUEST_TIMEOUT_S, left())))
                got = await asyncio.wait_for(self._get(job.id), max(0.01, min(REQUEST_TIMEOUT_S, left())))
                if got is None:
                    continue
                rec, rev = got
                if rec.get("node") != self.node:  # someone else owns it now: stop
                    self.rt.runner.fence(job.id, LEASE_LOST)
                    return
                if rec.get("cancel_requested") and not job.cancel_requested:
                    self.rt.runner.cancel(job.id)
                rec.update(job.record(), node=self.node, cancel_requested=rec.get("cancel_requested", False),
                           lease_until=time.time() + c.ack_wait_s)
                await asyncio.wait_for(self._cas(job.id, rec, rev), max(0.01, min(REQUEST_TIMEOUT_S, left())))
                deadline = time.monotonic() + fence_after
            except (asyncio.TimeoutError, KeyWrongLastSequenceError):
                continue
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("heartbeat_failed", error=str(e))
