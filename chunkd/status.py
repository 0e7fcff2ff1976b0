"""The live status page's data: one snapshot of what the daemon does now, and rates.

GET /v1/status answers one snapshot; GET /v1/status/events pushes one every
`interval` seconds as server-sent events (event: status, data: the snapshot as
JSON) over a single connection, which is what the page at GET / listens to.
A Rates object per connection turns the byte counts of two snapshots into
rates (bytes/s, smoothed) and ETAs; the snapshot itself holds only counts.

A tenant's token gets its own snapshot (docs/tenants.md): its jobs only, the
components it may use with its own running and queued counts, and no daemon-wide
byte totals (those count every tenant's bytes: null for a tenant). The budget is
shown to everyone (one number for the whole daemon, no job in it).

`shares` (the page's Shares charts): each flow's bytes per second over the last
5 minutes, one point per 2 s, from a bounded ring of samples of the fair-share
scheduler's bytes delivered per flow (ShareHistory; the daemon starts its sampler,
the runtime's background scope owns it), keyed by flow; a tenant sees its own.
"""
from __future__ import annotations

import asyncio
import copy
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from chunkd.jobs import FINAL_STATES, JobState
from chunkd.summary import JobSummary
from chunkd.tasks import ScopeClosed

if TYPE_CHECKING:
    from chunkd.runtime import Runtime

MAX_RUNNING_SHOWN = 200
MAX_QUEUED_SHOWN = 200
RECENT_SHOWN = 20
SMOOTHING = 0.5  # weight of the newest interval in a smoothed rate


def _stream_view(job: JobSummary, s: dict[str, Any]) -> dict[str, Any]:
    return {"job_id": job["job_id"], "correlation_id": s["correlation_id"], "container": s["container"],
            "blob": s["blob"], "size": s["size"], "bytes": s["bytes"], "chunks": s["chunks"],
            "total_chunks": s["total_chunks"], "chunk_size": s["chunk_size"], "started_at": s["started_at"],
            "end": s["end"], "stalled": bool(s.get("stalled", False))}


def _output_view(o: dict[str, Any]) -> dict[str, Any]:
    return {"container": o["container"], "name": o["name"], "bytes": o.get("bytes") or 0, "state": o["state"]}


async def snapshot(rt: "Runtime", tenant: str | None = None) -> dict[str, Any]:
    """Running jobs with their streams, queued jobs, the buffer budget, per-component
    totals and the most recent ended jobs: counts only, JSON-ready. `tenant`: that
    tenant's view (its jobs, its components, no daemon-wide byte totals)."""
    running = await rt.job_summaries(MAX_RUNNING_SHOWN, "running", tenant)
    queued = await rt.job_summaries(MAX_QUEUED_SHOWN, "queued", tenant)
    recent = [j for j in await rt.job_summaries(RECENT_SHOWN * 3, None, tenant) if j["state"] in FINAL_STATES]
    counts = rt.job_counts(tenant)
    tcfg = rt.config.tenants.get(tenant) if tenant is not None else None
    allowed = tcfg.components if tcfg is not None else None
    components = []
    for name, pool in sorted(rt.pools.items()):
        if tenant is not None and allowed is not None and name not in allowed:
            continue
        components.append({
            "name": name,
            "kind": pool.comp.kind,
            "instances": pool.cfg.instances,
            "bytes": None if tenant is not None else int(rt.metrics.value("chunkd_bytes_delivered_total",
                                                                          component=name)),
            "chunks": None if tenant is not None else int(rt.metrics.value("chunkd_chunks_delivered_total",
                                                                           component=name)),
            "running": counts.get((name, "running"), 0),
            "queued": counts.get((name, "queued"), 0),
        })
    return {
        "tenant": tenant,
        "shares": shares_view(rt, tenant),
        "time": time.time(),
        "node": rt.cluster.node if rt.cluster is not None else None,
        "accepting": rt.accepting,
        "budget": {"in_use": rt.budget.in_use, "limit": rt.budget.limit},
        "running": [{
            "job_id": j["job_id"], "component": j["component"], "args": j["args"], "instance": j["instance"],
            "node": j["node"], "tenant": j["tenant"], "attempts": j["attempts"], "started_at": j["started_at"],
            "streams": [_stream_view(j, dict(s)) for s in j["streams"]],
            "outputs": [_output_view(dict(o)) for o in j.get("outputs") or []],
        } for j in running],
        "queued": [{"job_id": j["job_id"], "component": j["component"], "args": j["args"],
                    "created_at": j["created_at"], "tenant": j["tenant"]} for j in queued],
        "components": components,
        "recent": [{"job_id": j["job_id"], "component": j["component"], "state": j["state"], "error": j["error"],
                    "tenant": j["tenant"],
                    "attempts": j["attempts"], "started_at": j["started_at"], "ended_at": j["ended_at"],
                    "bytes": sum(s["bytes"] for s in j["streams"]), "streams": len(j["streams"]),
                    "outputs": [_output_view(dict(o)) for o in j.get("outputs") or []]}
                   for j in recent[:RECENT_SHOWN]],
    }


class SharedSnapshot:
    """One snapshot per tick for every reader of one scope (the admin's view, or one
    tenant's): GET /v1/status and each status-page listener get a copy of the same
    snapshot while it is younger than `max_age`, so N listeners cost one snapshot per
    tick and scope, not N. Concurrent misses wait for one build. Scopes are the
    configured tenants: the map stays as small as the config."""

    def __init__(self) -> None:
        self._snaps: dict[str | None, tuple[float, dict[str, Any]]] = {}
        self._lock = asyncio.Lock()
        self.builds = 0

    def _fresh(self, tenant: str | None, max_age: float) -> dict[str, Any] | None:
        got = self._snaps.get(tenant)
        return got[1] if got is not None and time.monotonic() - got[0] < max_age else None

    async def get(self, rt: "Runtime", max_age: float, tenant: str | None = None) -> dict[str, Any]:
        snap = self._fresh(tenant, max_age)
        if snap is None:
            async with self._lock:
                snap = self._fresh(tenant, max_age)
                if snap is None:
                    # tenants a reload removed: their views go
                    self._snaps = {k: v for k, v in self._snaps.items() if k is None or k in rt.config.tenants}
                    snap = await snapshot(rt, tenant)
                    self._snaps[tenant] = (time.monotonic(), snap)
                    self.builds += 1
        return copy.deepcopy(snap)  # Rates.annotate writes into its copy


@dataclass
class _Seen:
    bytes: int
    at: float
    rate: float | None


@dataclass
class Rates:
    """Per connection: adds `rate` (bytes/s) and `eta_s` to each open stream and `rate` to
    each component, from the change since the previous snapshot (smoothed)."""

    streams: dict[tuple[str, int], _Seen] = field(default_factory=dict)
    components: dict[str, _Seen] = field(default_factory=dict)

    @staticmethod
    def _rate(seen: _Seen | None, count: int, now: float, since: float | None) -> float | None:
        if seen is None:  # first sight: the average since the stream started, when known
            if since is None or now - since <= 0:
                return None
            return count / (now - since)
        dt = now - seen.at
        if dt <= 0:
            return seen.rate
        r = max(0.0, (count - seen.bytes) / dt)
        return r if seen.rate is None else SMOOTHING * r + (1 - SMOOTHING) * seen.rate

    def annotate(self, snap: dict[str, Any]) -> dict[str, Any]:
        now = float(snap["time"])
        live: dict[tuple[str, int], _Seen] = {}
        for job in snap["running"]:
            for s in job["streams"]:
                key = (s["job_id"], int(s["correlation_id"]))
                rate = self._rate(self.streams.get(key), s["bytes"], now, s["started_at"])
                s["rate"] = rate
                left = None if s["size"] is None else max(0, s["size"] - s["bytes"])
                s["eta_s"] = None if s["end"] is not None or left is None or not rate else left / rate
                if s["end"] is None:
                    live[key] = _Seen(s["bytes"], now, rate)
        self.streams = live  # ended streams are forgotten: the map stays as small as the page
        comps: dict[str, _Seen] = {}
        for c in snap["components"]:
            prev = self.components.get(c["name"])
            if c["bytes"] is None:  # a tenant's view: no daemon-wide totals
                c["rate"] = None
                continue
            rate = 0.0 if prev is None else self._rate(prev, c["bytes"], now, None)
            c["rate"] = rate
            comps[c["name"]] = _Seen(c["bytes"], now, rate)
        self.components = comps
        return snap


# --- shares: each flow's bytes per second over the last minutes (the page's charts) ------

SHARE_STEP_S = 2.0  # one sample of every flow's delivered bytes per step
SHARE_SPAN_S = 300.0  # the samples kept: the charts' last 5 minutes
MAX_FLOWS_SHOWN = 100
COMPONENT_FLOW = "component/"  # a job with no tenant counts against its component's flow


def delivered_by_flow(rt: "Runtime") -> dict[str, int]:
    """Bytes delivered so far per flow: the fair-share scheduler's own count
    (runtime.fairshare.delivered, chunkd/fairshare.py), or, in code without it, the
    components' delivered-bytes counters as flows "component/NAME"."""
    fair = getattr(rt, "fairshare", None)
    got = getattr(fair, "delivered", None)
    if isinstance(got, dict):
        return {str(k): int(v) for k, v in got.items()}
    return {COMPONENT_FLOW + name: int(rt.metrics.value("chunkd_bytes_delivered_total", component=name))
            for name in rt.pools}


class ShareHistory:
    """A bounded ring of samples (monotonic time, bytes delivered per flow), one per
    `step_s`, the last `span_s` of them; `rates()` turns consecutive samples into bytes/s."""

    def __init__(self, step_s: float = SHARE_STEP_S, span_s: float = SHARE_SPAN_S) -> None:
        self.step_s = step_s
        self.span_s = span_s
        self.samples: deque[tuple[float, dict[str, int]]] = deque(maxlen=int(span_s / step_s) + 1)

    def sample(self, now: float, delivered: dict[str, int]) -> None:
        self.samples.append((now, dict(delivered)))

    def rates(self) -> dict[str, list[float]]:
        """Per flow seen in the window: bytes/s over each step, oldest first. A flow absent
        from a sample had delivered nothing yet; a count that went down was reset (the
        flow forgotten and seen again): its new count is that step's bytes."""
        flows: set[str] = set()
        for _, counts in self.samples:
            flows.update(counts)
        out: dict[str, list[float]] = {f: [] for f in flows}
        pairs = list(self.samples)
        for (t0, a), (t1, b) in zip(pairs, pairs[1:]):
            dt = t1 - t0
            for f in flows:
                cur, prev = b.get(f, 0), a.get(f, 0)
                moved = cur - prev if cur >= prev else cur
                out[f].append(moved / dt if dt > 0 else 0.0)
        return out

    async def run(self, rt: "Runtime") -> None:
        """Sample every `step_s` until cancelled (the runtime's background scope owns it)."""
        while True:
            self.sample(time.monotonic(), delivered_by_flow(rt))
            await asyncio.sleep(self.step_s)


_HISTORIES: "weakref.WeakKeyDictionary[Runtime, ShareHistory]" = weakref.WeakKeyDictionary()


def share_history(rt: "Runtime") -> ShareHistory | None:
    """The runtime's share history, its sampler started on first use (the daemon starts it
    at startup; owned by the runtime's background scope, which ends it at close).
    None once the runtime is closing."""
    h = _HISTORIES.get(rt)
    if h is None:
        h = ShareHistory()
        try:
            rt.background.spawn(h.run(rt), name="share-history")
        except ScopeClosed:
            return None
        _HISTORIES[rt] = h
    return h


def _flow_weight(rt: "Runtime", flow: str) -> int:
    fair = getattr(rt, "fairshare", None)
    if fair is not None and hasattr(fair, "weight"):
        return int(fair.weight(flow))
    cfg = rt.config
    if flow.startswith(COMPONENT_FLOW):
        c = cfg.components.get(flow[len(COMPONENT_FLOW):])
        return (c.weight if c is not None else 0) or cfg.daemon.default_weight
    t = cfg.tenants.get(flow)
    return t.weight if t is not None else cfg.daemon.default_weight


def shares_view(rt: "Runtime", tenant: str | None = None) -> dict[str, Any] | None:
    """Per flow (keyed by flow: a tenant's name, or "component/NAME"): its weight, quota,
    unfinished jobs, bytes delivered and bytes/s per step over the window. `tenant`: that
    tenant's flow only. Flows shown: every tenant, and every component flow (all of them
    in a daemon without tenants; with tenants, those that delivered or have jobs)."""
    h = share_history(rt)
    if h is None:
        return None
    cfg = rt.config
    rates = h.rates()
    totals = delivered_by_flow(rt)
    jobs: dict[str, int] = {}
    for job in rt.jobs.values():
        if job.state in (JobState.QUEUED, JobState.RUNNING):
            f = job.tenant if job.tenant is not None else COMPONENT_FLOW + job.component
            jobs[f] = jobs.get(f, 0) + 1
    flows: list[str] = list(cfg.tenants)
    for name in sorted(rt.pools):
        f = COMPONENT_FLOW + name
        if not cfg.tenants or totals.get(f) or jobs.get(f) or any(rates.get(f, ())):
            flows.append(f)
    if tenant is not None:
        flows = [f for f in flows if f == tenant]
    out: dict[str, Any] = {}
    for f in flows[:MAX_FLOWS_SHOWN]:
        t = cfg.tenants.get(f)
        comp = cfg.components.get(f[len(COMPONENT_FLOW):]) if f.startswith(COMPONENT_FLOW) else None
        quota = {"max_bytes_per_second": t.max_bytes_per_second if t is not None else
                 (comp.max_bytes_per_second if comp is not None else 0),
                 "max_jobs": t.max_jobs if t is not None else 0,
                 "max_buffered_bytes": t.max_buffered_bytes if t is not None else 0}
        out[f] = {"tenant": f if t is not None else None,
                  "component": comp.name if comp is not None else None,
                  "weight": _flow_weight(rt, f), "quota": quota, "jobs": jobs.get(f, 0),
                  "bytes": totals.get(f, 0), "rates": [round(r) for r in rates.get(f, [])]}
    return {"step_s": h.step_s, "span_s": h.span_s, "flows": out}
