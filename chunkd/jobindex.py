"""Each cluster node's index of the job records, kept from a watch of the KV bucket.

Every read of the API and the status page is answered from here in O(limit):
- per state, the job ids sorted by creation time (bisect-insorted lists of
  (created_at, id)); a list of the newest `limit` takes the tail of one list,
  or merges the tails of all of them;
- the same lists per (tenant, state), so a tenant's list costs O(limit) too;
- counts per (tenant, component, state), kept as records change;
- the full records of unfinished jobs (few: bounded by the queue limit and the
  instances) and of the most recently changed finished ones (RECENT_RECORDS),
  so most answers need no request at all; older records are fetched by id;
- the finished jobs in order of their end, for retention.

The index is `ready` once the watch delivered every record that existed when
it started. Until then, and after the watch broke until it is rebuilt, reads
raise IndexNotReady: an answer is never silently wrong (the API says 503).
"""
from __future__ import annotations

import bisect
import collections
import heapq
import itertools
import json
from dataclasses import dataclass
from typing import Any, Iterable

from chunkd.errors import ClusterUnavailable

FINAL = frozenset({"completed", "failed", "cancelled"})
RECENT_RECORDS = 512  # finished records kept whole (the status page's recent list and more)


class IndexNotReady(ClusterUnavailable):
    """The node's job index is loading or rebuilding: no answer rather than a wrong one."""


@dataclass
class _Entry:
    state: str
    created_at: float
    component: str
    ended_at: float | None
    tenant: str | None = None

    @property
    def end_time(self) -> float:
        return float(self.ended_at) if self.ended_at is not None else self.created_at


class JobIndex:
    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._by_state: dict[str, list[tuple[float, str]]] = collections.defaultdict(list)
        self._by_tenant: dict[tuple[str, str], list[tuple[float, str]]] = collections.defaultdict(list)
        # (tenant or "", component, state): few keys (tenants and components come from the config)
        self._counts: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self._records: dict[str, dict[str, Any]] = {}  # unfinished jobs' records
        # the finished records with the newest created_at (what lists and the page show first)
        self._recent: dict[str, dict[str, Any]] = {}
        self._recent_heap: list[tuple[float, str]] = []  # min-heap of (created_at, id) of _recent
        self._ended: list[tuple[float, str]] = []  # a heap of (ended_at, id) of finished jobs
        self.ready = False
        self.broken: str | None = "loading"

    # --- maintenance (the watch) -----------------------------------------------------
    def clear(self, why: str) -> None:
        self.__init__()  # type: ignore[misc]
        self.broken = why

    def mark_ready(self) -> None:
        self.ready = True
        self.broken = None

    def _drop(self, job_id: str) -> None:
        e = self._entries.pop(job_id, None)
        if e is None:
            return
        lists = [self._by_state[e.state]]
        if e.tenant is not None:
            lists.append(self._by_tenant[(e.tenant, e.state)])
        for lst in lists:
            i = bisect.bisect_left(lst, (e.created_at, job_id))
            if i < len(lst) and lst[i] == (e.created_at, job_id):
                del lst[i]
        key = (e.tenant or "", e.component, e.state)
        self._counts[key] -= 1
        if self._counts[key] <= 0:
            del self._counts[key]
        self._records.pop(job_id, None)
        self._recent.pop(job_id, None)

    def put(self, job_id: str, rec: dict[str, Any]) -> None:
        """A record was written (the watch saw a PUT)."""
        self._drop(job_id)
        state = str(rec.get("state"))
        tenant = rec.get("tenant")
        e = _Entry(state=state, created_at=float(rec.get("created_at") or 0.0), component=str(rec.get("component")),
                   ended_at=rec.get("ended_at"), tenant=tenant if isinstance(tenant, str) else None)
        self._entries[job_id] = e
        bisect.insort(self._by_state[state], (e.created_at, job_id))
        if e.tenant is not None:
            bisect.insort(self._by_tenant[(e.tenant, state)], (e.created_at, job_id))
        self._counts[(e.tenant or "", e.component, state)] += 1
        if state in FINAL:
            self._keep_recent(job_id, e.created_at, rec)
            heapq.heappush(self._ended, (e.end_time, job_id))
        else:
            self._records[job_id] = rec

    def _keep_recent(self, job_id: str, created_at: float, rec: dict[str, Any]) -> None:
        """Keep the record whole if it is among the RECENT_RECORDS newest finished ones."""
        heap = self._recent_heap
        while heap and heap[0][1] not in self._recent:  # entries of records dropped since
            heapq.heappop(heap)
        if len(self._recent) >= RECENT_RECORDS:
            if heap and created_at <= heap[0][0]:
                return  # older than every record kept: fetched by id when asked
            while len(self._recent) >= RECENT_RECORDS and heap:
                _, old = heapq.heappop(heap)
                self._recent.pop(old, None)
        self._recent[job_id] = rec
        heapq.heappush(heap, (created_at, job_id))

    def put_raw(self, job_id: str, value: bytes | None) -> None:
        if not value:
            self.remove(job_id)
            return
        try:
            rec = json.loads(value)
        except ValueError:
            return  # not one of ours: not indexed
        if isinstance(rec, dict):
            self.put(job_id, rec)

    def remove(self, job_id: str) -> None:
        """A record was deleted or purged."""
        self._drop(job_id)

    # --- reads ---------------------------------------------------------------------------
    def _check(self) -> None:
        if not self.ready:
            raise IndexNotReady(f"this node's job index is not ready ({self.broken or 'loading'}): try again")

    def newest(self, limit: int, state: str | None, tenant: str | None = None) -> list[str]:
        """The ids of the newest `limit` jobs (of `state`; of `tenant`, None: anyone's),
        newest first: O(limit)."""
        self._check()
        if limit <= 0:
            return []
        if tenant is None:
            by = self._by_state
        else:
            by = {s: lst for (t, s), lst in self._by_tenant.items() if t == tenant}
        if state is not None:
            lst = by.get(state, [])
            return [jid for _, jid in reversed(lst[-limit:])]
        tails: Iterable[Iterable[tuple[float, str]]] = [reversed(lst[-limit:]) for lst in by.values()]
        merged = heapq.merge(*tails, reverse=True)
        return [jid for _, jid in itertools.islice(merged, limit)]

    def cached(self, job_id: str) -> dict[str, Any] | None:
        """The record when this index holds it whole (unfinished, or recently finished)."""
        return self._records.get(job_id) or self._recent.get(job_id)

    def state_of(self, job_id: str) -> str | None:
        e = self._entries.get(job_id)
        return None if e is None else e.state

    def count(self, state: str | None = None, component: str | None = None, tenant: str | None = None) -> int:
        self._check()
        return sum(n for (t, c, s), n in self._counts.items()
                   if (state is None or s == state) and (component is None or c == component)
                   and (tenant is None or t == tenant))

    def unfinished(self, state: str) -> list[dict[str, Any]]:
        """The records of every job in an unfinished state (running or queued)."""
        self._check()
        return [self._records[jid] for _, jid in self._by_state.get(state, []) if jid in self._records]

    def expired(self, ended_before: float, most: int) -> list[str]:
        """Finished jobs that ended before `ended_before` (at most `most`), oldest first.
        Stale heap entries (a job since rewritten or removed) are dropped on the way."""
        out: list[str] = []
        seen: set[str] = set()
        while self._ended and len(out) < most:
            ended, jid = self._ended[0]
            e = self._entries.get(jid)
            if e is None or e.state not in FINAL or e.end_time != ended or jid in seen:
                heapq.heappop(self._ended)  # stale, or a second entry of a record written twice
                continue
            seen.add(jid)
            if ended >= ended_before:
                break
            heapq.heappop(self._ended)
            out.append(jid)
        for jid in out:  # kept until the watch sees the purge (a purge that failed is retried)
            heapq.heappush(self._ended, (self._entries[jid].end_time, jid))
        return out

    def __len__(self) -> int:
        return len(self._entries)
