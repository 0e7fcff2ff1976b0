"""Weighted, byte-fair delivery across all jobs (issue 28; docs/tenants.md, "Fair shares").

A *flow* is who a batch of chunks is delivered for: a job's tenant, or, for a job
with no tenant (the admin token's, or a daemon without tenants), its component
("component/NAME"). Each flow has a weight: the tenant's `weight`, else the
component's `weight`, else `daemon.default_weight`.

`FairShare` (one per Runtime, `runtime.fairshare`) bounds the handle-chunk
batches that run at once, of all jobs and both worlds, to
`daemon.delivery_workers` (0: the core count). When more batches are ready than
that, the next slot goes to the flow furthest behind its weighted share of
bytes: start-time fair queueing on bytes (flowcontrol.FairQueue), each grant
charged batch bytes / weight. A flow that becomes ready starts at the current
virtual time, so an idle flow banks no credit. The same rule serves the buffer
budget's waiters (flowcontrol.BufferBudget), with the tenants' caps
(`max_buffered_bytes`); a tenant's `max_bytes_per_second` is one Pacer shared
by all its jobs (`pacer(flow)`).

Bounds: a ready batch waits for at most one running batch to end per slot
taken ahead of it, and a flow that becomes ready while others saturate every
slot is admitted at the first slot that frees (its start tag is the current
virtual time, no waiting flow's is lower), so within one batch time.

Cancellation-safe: a waiter cancelled while waiting leaves the queue uncharged;
one cancelled just as it was granted gives the slot straight back. A Grant is
released exactly once, whatever path calls `release()` (idempotent).
"""
from __future__ import annotations

import asyncio
import os
import time
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, AsyncIterator, Iterator, Protocol

from chunkd.flowcontrol import NO_FLOW, FairQueue, Pacer

if TYPE_CHECKING:
    from chunkd.config import Config
    from chunkd.flowcontrol import BufferBudget

COMPONENT_FLOW = "component/"
OTHER_FLOW = "other"  # /metrics: flows the config no longer names, summed


class _JobLike(Protocol):
    @property
    def tenant(self) -> str | None: ...

    @property
    def component(self) -> str: ...


def flow_of(job: _JobLike) -> str:
    """The flow a job's deliveries count against: its tenant, or "component/NAME"."""
    return job.tenant if job.tenant is not None else COMPONENT_FLOW + job.component


def workers_for(config: "Config") -> int:
    return config.daemon.delivery_workers or os.cpu_count() or 1


@dataclass(slots=True)
class FlowRow:
    """One flow's counters, as /metrics shows them."""

    flow: str
    weight: int
    delivered: int = 0
    waits: int = 0
    wait_seconds: float = 0.0
    waiting: int = 0
    buffered: int = 0  # budget bytes held now ("" is the outputs' sinks, which name no flow)


class _Slot:
    """One of the `workers` delivery slots, shared by the batches a job pipelines into it."""

    __slots__ = ("users",)

    def __init__(self) -> None:
        self.users = 1


class Grant:
    """A batch's turn: holds (a share of) one delivery slot until `release()`."""

    __slots__ = ("flow", "waited_s", "_share", "_slot")

    def __init__(self, share: "FairShare", flow: str, waited_s: float, slot: _Slot) -> None:
        self.flow = flow
        self.waited_s = waited_s  # seconds this batch waited for its turn (0.0: at once)
        self._share = share
        self._slot: _Slot | None = slot

    @property
    def released(self) -> bool:
        return self._slot is None

    def release(self) -> None:
        """Give the slot back (when the last batch sharing it is done). Idempotent."""
        slot, self._slot = self._slot, None
        if slot is None:
            return
        slot.users -= 1
        if slot.users == 0:
            self._share._free()


class _Waiter:
    __slots__ = ("nbytes", "fut")

    def __init__(self, nbytes: int, fut: "asyncio.Future[None]") -> None:
        self.nbytes = nbytes
        self.fut = fut


class FairShare:
    """The delivery slots of one runtime, admitted by weighted virtual time on bytes."""

    def __init__(self, config: "Config", budget: "BufferBudget | None" = None) -> None:
        self.workers = 1
        self.active = 0  # slots taken now
        # slots lent out: a batch whose guest waits on the host for budget (an output write)
        # uses no CPU, so while it waits another batch may run (see lent())
        self.lent_out = 0
        self.budget = budget
        self._default_weight = 1
        self._weights: dict[str, int] = {}
        self._caps: dict[str, int] = {}
        self._pacers: dict[str, Pacer] = {}
        self._known: set[str] = set()
        self._queue: FairQueue[_Waiter] = FairQueue(self.weight)
        # per flow, cumulative (read by metrics, the status page, traces, bench/fairness)
        self.delivered: dict[str, int] = {}  # bytes delivered (handle-chunk calls that returned)
        self.waits: dict[str, int] = {}  # batches that had to wait for a slot
        self.wait_seconds: dict[str, float] = {}  # time those batches waited
        self.configure(config)

    # --- config ---------------------------------------------------------------------

    def configure(self, config: "Config") -> None:
        """At start and on reload: workers, weights, tenant caps and pacers from `config`.
        A pacer kept across a reload keeps its schedule; waiters that now fit go ahead."""
        self.workers = workers_for(config)
        self._default_weight = config.daemon.default_weight
        weights = {COMPONENT_FLOW + n: c.weight or config.daemon.default_weight
                   for n, c in config.components.items()}
        caps: dict[str, int] = {}
        pacers: dict[str, Pacer] = {}
        for name, t in config.tenants.items():
            weights[name] = t.weight
            if t.max_buffered_bytes > 0:
                caps[name] = t.max_buffered_bytes
            if t.max_bytes_per_second > 0:
                p = self._pacers.get(name) or Pacer(t.max_bytes_per_second)
                p.rate = t.max_bytes_per_second
                pacers[name] = p
        self._weights, self._caps, self._pacers = weights, caps, pacers
        self._known = {*weights, NO_FLOW}
        self._queue.forget(self._known.__contains__)
        if self.budget is not None:
            self.budget.set_policy(self.weight, self.cap)
            self.budget.forget(self._known.__contains__)
        self._admit()

    def weight(self, flow: str) -> int:
        return self._weights.get(flow, self._default_weight)

    def cap(self, flow: str) -> int:
        """The budget bytes a flow's streams may hold at once (0: no bound but the budget's)."""
        return self._caps.get(flow, 0)

    def pacer(self, flow: str) -> Pacer | None:
        """The tenant's shared pacer (tenants.NAME.max_bytes_per_second), if it has one."""
        return self._pacers.get(flow)

    @property
    def flows(self) -> list[str]:
        """The flows the config knows (tenants and components), for metrics and pages."""
        return sorted(f for f in self._known if f)

    # --- slots ------------------------------------------------------------------------

    async def acquire(self, flow: str, nbytes: int) -> Grant:
        """Wait for a delivery slot for a batch of `nbytes` of `flow`. The fast path (a
        slot free and nobody waiting) does no heap work and reads no clock."""
        if self.active < self.workers + self.lent_out and not self._queue.waiting:
            self.active += 1
            self._queue.charge(flow, nbytes)
            return Grant(self, flow, 0.0, _Slot())
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        w = _Waiter(nbytes, fut)
        self._queue.push(flow, w)
        self.waits[flow] = self.waits.get(flow, 0) + 1
        t0 = time.monotonic()
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._free()  # granted just as we were cancelled: the slot goes back
            else:
                self._queue.remove(flow, w)
            raise
        waited = time.monotonic() - t0
        self.wait_seconds[flow] = self.wait_seconds.get(flow, 0.0) + waited
        return Grant(self, flow, waited, _Slot())

    def try_acquire(self, flow: str, nbytes: int) -> Grant | None:
        """A slot now if one is free and nobody waits (the fast path of `acquire`), else None."""
        if self.active < self.workers + self.lent_out and not self._queue.waiting:
            self.active += 1
            self._queue.charge(flow, nbytes)
            return Grant(self, flow, 0.0, _Slot())
        return None

    def extend(self, grant: Grant, nbytes: int) -> Grant | None:
        """A batch queued on the same instance thread behind `grant`'s (direct-mode
        pipelining) shares its slot, charged its own bytes, when nobody waits for a slot;
        else None, and the caller lets the slot go before asking again. So a job never
        waits for a slot while holding one, and never holds one while others wait longer
        than its batch in flight."""
        slot = grant._slot
        if slot is None or self._queue.waiting:
            return None
        slot.users += 1
        self._queue.charge(grant.flow, nbytes)
        return Grant(self, grant.flow, 0.0, slot)

    @asynccontextmanager
    async def turn(self, flow: str, nbytes: int) -> AsyncIterator[float]:
        """`async with fairshare.turn(flow, nbytes) as waited_s:` a slot for the body."""
        grant = await self.acquire(flow, nbytes)
        try:
            yield grant.waited_s
        finally:
            grant.release()

    @contextmanager
    def lent(self) -> Iterator[None]:
        """While the body waits (a guest's output write waiting for room in the buffer
        budget, inside a batch that holds a slot), one more batch may run: that batch can
        deliver read-ahead chunks and so give back the room the writer waits for. Without
        this, writers holding every slot could wait on budget that only batches waiting
        for a slot would free. When the body ends, no slot is taken away from a running
        batch: admissions simply pause until `active` is under the limit again."""
        self.lent_out += 1
        self._admit()
        try:
            yield
        finally:
            self.lent_out -= 1

    def count_delivered(self, flow: str, nbytes: int) -> None:
        if nbytes:
            self.delivered[flow] = self.delivered.get(flow, 0) + nbytes

    def _free(self) -> None:
        self.active -= 1
        self._admit()

    def _admit(self) -> None:
        q = self._queue
        while self.active < self.workers + self.lent_out and q.waiting:
            head = q.peek()
            assert head is not None
            flow, w = head
            if w.fut.done():  # cancelled while waiting: its acquire takes it out, uncharged
                q.remove(flow, w)
                continue
            q.pop(flow, w.nbytes)
            self.active += 1
            w.fut.set_result(None)

    # --- introspection -------------------------------------------------------------

    @property
    def waiting(self) -> int:
        return self._queue.waiting

    def waiting_in(self, flow: str) -> int:
        return self._queue.waiting_in(flow)

    def vtime(self, flow: str) -> float:
        return self._queue.vtime.get(flow, 0.0)

    def metric_rows(self) -> list[FlowRow]:
        """One row per flow the config names (and "other" for the rest: flows of tenants a
        reload removed, jobs resumed from an older config), for /metrics."""
        known = set(self.flows)
        rows = {f: FlowRow(f, self.weight(f)) for f in known}
        other = FlowRow(OTHER_FLOW, 0)
        held = self.budget.held if self.budget is not None else {}
        waiting = self._queue.flows_waiting()
        for f in {*self.delivered, *self.waits, *waiting, *held}:
            r = rows.get(f, other)
            r.delivered += self.delivered.get(f, 0)
            r.waits += self.waits.get(f, 0)
            r.wait_seconds += self.wait_seconds.get(f, 0.0)
            r.waiting += waiting.get(f, 0)
            r.buffered += held.get(f, 0)
        out = [rows[f] for f in sorted(rows)]
        if other.delivered or other.waits or other.waiting or other.buffered:
            out.append(other)
        return out

    def snapshot(self) -> dict[str, dict[str, float]]:
        """Per flow: weight, bytes delivered, batches waiting now, waits and seconds waited."""
        flows = {*self.delivered, *self._queue.flows_waiting(), *self.flows}
        return {f: {"weight": self.weight(f), "delivered_bytes": self.delivered.get(f, 0),
                    "waiting": self.waiting_in(f), "waits": self.waits.get(f, 0),
                    "wait_seconds": round(self.wait_seconds.get(f, 0.0), 6)} for f in sorted(flows)}
