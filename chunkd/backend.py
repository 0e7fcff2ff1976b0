"""Where jobs live, chosen once at startup: on this node (the job runner and the SQLite
store) or in the cluster (NATS JetStream). The Runtime talks to one JobBackend and holds
no branch on the mode."""
from __future__ import annotations

import collections
import heapq
from typing import TYPE_CHECKING, Any, Callable, Protocol

from chunkd.jobs import Job
from chunkd.summary import JobSummary, job_summary, summary_from_record

if TYPE_CHECKING:
    from chunkd.cluster import Cluster
    from chunkd.jobrunner import JobRunner
    from chunkd.jobstore import JobStore

FINAL = ("completed", "failed", "cancelled")


class JobBackend(Protocol):
    async def accept(self, component: str, args: list[str], tenant: str | None = None) -> Job:
        """Queue a job of `tenant` (None: the admin's); QuotaExceeded past its max_jobs."""
        ...

    async def summary(self, job_id: str) -> JobSummary | None: ...

    async def summaries(self, limit: int, state: str | None, tenant: str | None = None) -> list[JobSummary]:
        """The newest `limit` jobs (of `state`; of `tenant`, None: every job's), newest first:
        costs O(limit), not O(jobs ever)."""
        ...

    def counts(self, tenant: str | None = None) -> dict[tuple[str, str], int]:
        """Unfinished jobs per (component, state) (of `tenant`; None: all): from the
        structure that holds them."""
        ...

    async def cancel(self, job_id: str) -> JobSummary | None:
        """Operator cancel; the job's summary as it was asked (None: no such job)."""
        ...

    async def running_streams(self) -> list[dict[str, Any]]: ...

    async def drain(self, grace_s: float) -> tuple[int, int]: ...

    async def close(self) -> None: ...


class LocalJobs:
    """One node: jobs in memory while they run, durable in SQLite (when there is a store)."""

    def __init__(self, runner: "JobRunner", store: "JobStore | None",
                 live_streams: Callable[[], list[dict[str, Any]]]) -> None:
        self.runner = runner
        self.store = store
        self._live_streams = live_streams

    async def accept(self, component: str, args: list[str], tenant: str | None = None) -> Job:
        return await self.runner.accept(component, args, tenant)

    async def summary(self, job_id: str) -> JobSummary | None:
        job = await self.runner.get_job(job_id)
        return None if job is None else job_summary(job)

    async def summaries(self, limit: int, state: str | None, tenant: str | None = None) -> list[JobSummary]:
        """Jobs in memory (unfinished, and the few finished ones kept) and the store's newest
        (an index on created_at, or on tenant and created_at): the top `limit` of each, merged."""
        mem = [j for j in self.runner.jobs.values()
               if (state is None or j.state == state) and (tenant is None or j.tenant == tenant)]
        live = {j.id: job_summary(j) for j in heapq.nlargest(limit, mem, key=lambda j: j.created_at)}
        if self.store is not None and (state is None or state in FINAL):
            for rec in await self.store.recent(limit, state, tenant):
                if rec["id"] not in live:
                    live[rec["id"]] = summary_from_record(rec)
        return sorted(live.values(), key=lambda j: j["created_at"], reverse=True)[:limit]

    def counts(self, tenant: str | None = None) -> dict[tuple[str, str], int]:
        out: dict[tuple[str, str], int] = collections.Counter()
        for j in self.runner.jobs.values():
            if j.state in ("running", "queued") and (tenant is None or j.tenant == tenant):
                out[(j.component, str(j.state))] += 1
        return dict(out)

    async def cancel(self, job_id: str) -> JobSummary | None:
        job = await self.runner.get_job(job_id)
        if job is None or job.finished:
            return None if job is None else job_summary(job)
        summary = job_summary(job)
        self.runner.cancel(job_id)
        return summary

    async def running_streams(self) -> list[dict[str, Any]]:
        return self._live_streams()

    async def drain(self, grace_s: float) -> tuple[int, int]:
        return await self.runner.drain(grace_s)

    async def close(self) -> None:
        pass  # the runner is the runtime's to close


class ClusterJobs:
    """Cluster mode: the shared queue and the key-value records (cluster.py)."""

    def __init__(self, cluster: "Cluster", runner: "JobRunner") -> None:
        self.cluster = cluster
        self.runner = runner

    async def accept(self, component: str, args: list[str], tenant: str | None = None) -> Job:
        self.runner.check_submit(component)  # the component exists, and this node takes jobs
        job = Job(component=component, args=list(args), tenant=tenant)
        await self.cluster.accept(job)  # checks the queue's bound and the tenant's max_jobs
        return job

    async def summary(self, job_id: str) -> JobSummary | None:
        return await self.cluster.summary(job_id)

    async def summaries(self, limit: int, state: str | None, tenant: str | None = None) -> list[JobSummary]:
        return await self.cluster.summaries(limit, state, tenant)

    def counts(self, tenant: str | None = None) -> dict[tuple[str, str], int]:
        return self.cluster.counts(tenant)

    async def cancel(self, job_id: str) -> JobSummary | None:
        got = await self.cluster.summary(job_id)
        if got is None or got["state"] in FINAL:
            return got
        await self.cluster.cancel(job_id)
        return got

    async def running_streams(self) -> list[dict[str, Any]]:
        out = []
        for j in await self.cluster.summaries(10_000, "running"):
            for s in j["streams"]:
                if s["end"] is None:
                    out.append({"job_id": j["job_id"], "component": j["component"], "instance": j["instance"],
                                "node": j["node"], "tenant": j["tenant"], **s})
        return out

    async def drain(self, grace_s: float) -> tuple[int, int]:
        self.runner.accepting = False
        return await self.cluster.drain(grace_s)

    async def close(self) -> None:
        await self.cluster.close()
