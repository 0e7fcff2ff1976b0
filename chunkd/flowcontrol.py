"""Flow control shared by every stream: the buffer budget, pacing, source retries.

- FairQueue: weighted start-time fair queueing on bytes (pure, synchronous): the
  one rule both the delivery slots (fairshare.py) and the budget's waiters use.
- BufferBudget: all read-ahead bytes of all streams stay under
  `max_buffered_bytes`; sources wait when it is full, and the waiters are served
  by the weighted rule (per flow: a tenant, or a component's untenanted jobs),
  FIFO within a flow. That is the backpressure. A flow may also be capped
  (tenants.NAME.max_buffered_bytes).
- Pacer: `max_bytes_per_second` per component, and per tenant (0 = unpaced).
- read_with_retry: transient source errors retried from the same offset.

One chunked read (its producer and queue) is delivery.py; the per-job set of
them and the delivery loop is streamset.py.
"""
from __future__ import annotations

import asyncio
import collections
import heapq
import random
import time
from typing import TYPE_CHECKING, Callable, Generic, TypeVar

from chunkd.errors import SourceError

if TYPE_CHECKING:
    from chunkd.sources.base import Blob

T = TypeVar("T")

NO_FLOW = ""  # the flow of a budget user that names none (outputs' sinks)


class FairQueue(Generic[T]):
    """Waiters of several flows, served by weighted start-time fair queueing on bytes.

    Each flow has a virtual time: the bytes granted to it divided by its weight,
    counted from where it (re)started. A grant of n bytes to flow f starts at
    S = max(vtime[f], now) and moves vtime[f] to S + n / weight(f); the global
    virtual time `now` becomes S. The next grant goes to the waiting flow with the
    lowest start tag; within a flow, waiters are served first come, first served.
    A flow that was idle starts at `now`, so it banks no credit for its idle time,
    and it is served before any flow already past `now`, and first among those
    tied at `now` (they were served at least as recently as it was).

    The bound (start-time fair queueing, Goyal et al. 1996): between two flows f
    and g that are both waiting all along, the bytes granted over any interval
    satisfy |B_f / w_f - B_g / w_g| <= L_f / w_f + L_g / w_g, where L is the
    largest single grant of each. A flow that becomes ready behind its share is
    the next one granted (every waiting tag is >= now, and it wins the ties),
    unless other flows became ready the same way before it.

    Synchronous and O(log flows) per operation; the caller owns the waiting.
    `weight(flow)` is read at each grant, so a reload applies to the next one.
    """

    def __init__(self, weight: Callable[[str], float]) -> None:
        self.weight = weight
        self.now = 0.0
        self.vtime: dict[str, float] = {}
        self._queues: dict[str, collections.deque[T]] = {}
        # one entry per waiting flow: (start tag, 0 if it restarted at `now` else 1, arrival, flow)
        self._heap: list[tuple[float, int, int, str]] = []
        self._seq = 0
        self.waiting = 0

    def __len__(self) -> int:
        return self.waiting

    def waiting_in(self, flow: str) -> int:
        q = self._queues.get(flow)
        return len(q) if q else 0

    def flows_waiting(self) -> dict[str, int]:
        return {f: len(q) for f, q in self._queues.items() if q}

    def charge(self, flow: str, nbytes: int) -> None:
        """A grant made without queueing (nobody was waiting): count it all the same."""
        start = self.vtime.get(flow, 0.0)
        if start < self.now:
            start = self.now
        self.now = start
        self.vtime[flow] = start + nbytes / self.weight(flow)

    def push(self, flow: str, item: T) -> None:
        q = self._queues.get(flow)
        if q is None:
            q = self._queues[flow] = collections.deque()
        if not q:  # the flow starts waiting: its tag is where it left off, or now
            self._seq += 1
            left_off = self.vtime.get(flow, 0.0)
            if left_off > self.now:
                heapq.heappush(self._heap, (left_off, 1, self._seq, flow))
            else:  # behind its share (idle): it goes first among the flows tied at now
                heapq.heappush(self._heap, (self.now, 0, self._seq, flow))
        q.append(item)
        self.waiting += 1

    def heads(self) -> "list[tuple[str, T]]":
        """Every waiting flow's first waiter, lowest start tag first (for a caller that
        must skip flows it cannot serve now). O(flows log flows)."""
        return [(e[3], self._queues[e[3]][0]) for e in sorted(self._heap)]

    def peek(self) -> "tuple[str, T] | None":
        if not self._heap:
            return None
        flow = self._heap[0][3]
        return flow, self._queues[flow][0]

    def pop(self, flow: str, nbytes: int) -> T:
        """Grant `flow`'s first waiter `nbytes`: charge it, requeue the flow if it has more."""
        entry = self._heap[0] if self._heap[0][3] == flow else next(e for e in self._heap if e[3] == flow)
        q = self._queues[flow]
        item = q.popleft()
        self.waiting -= 1
        start = entry[0]
        if start < self.now:  # cannot happen for the head; a skipped flow served later starts at now
            start = self.now
        self.now = start
        self.vtime[flow] = start + nbytes / self.weight(flow)
        if q:
            self._seq += 1  # back of the line among equal tags
        if entry is self._heap[0]:
            if q:
                heapq.heapreplace(self._heap, (self.vtime[flow], 1, self._seq, flow))
            else:
                heapq.heappop(self._heap)
        else:
            self._heap.remove(entry)
            if q:
                self._heap.append((self.vtime[flow], 1, self._seq, flow))
            heapq.heapify(self._heap)
        if not q:
            del self._queues[flow]
        return item

    def remove(self, flow: str, item: T) -> bool:
        """A waiter gave up (cancelled): nothing is charged. False if it was not waiting."""
        q = self._queues.get(flow)
        if not q:
            return False
        try:
            q.remove(item)
        except ValueError:
            return False
        self.waiting -= 1
        if not q:
            del self._queues[flow]
            self._heap = [e for e in self._heap if e[3] != flow]
            heapq.heapify(self._heap)
        return True

    def forget(self, keep: "Callable[[str], bool]") -> None:
        """Drop the virtual time of flows not waiting that `keep` refuses (a reload removed
        them): memory stays bounded by the config."""
        for flow in [f for f in self.vtime if f not in self._queues and not keep(f)]:
            del self.vtime[flow]


class _BudgetWaiter:
    __slots__ = ("n", "fut")

    def __init__(self, n: int, fut: "asyncio.Future[int]") -> None:
        self.n = n
        self.fut = fut


class BufferBudget:
    """A byte semaphore whose waiters are served by weighted fair queueing, with peak
    accounting and optional per-flow caps.

    `acquire(n, flow)` grants min(n, limit, the flow's cap) bytes and returns what it
    granted: a request larger than the whole budget waits until the budget is empty
    and then takes all of it, so any positive limit serves any chunk size. The holder
    gives back exactly what it was granted, naming the same flow (see delivery.py's
    ledger).

    Who goes next when room comes back: the waiting flow with the lowest virtual time
    of budget bytes granted / weight (FairQueue), so a flow asking 4 MiB at a time
    cannot crowd out one asking 64 KiB: in bytes, each gets its weighted share of
    the grants. A flow at its cap (it holds `cap(flow)` bytes) is passed over
    without blocking the others. No starvation: once the chosen waiter does not fit,
    it becomes the pinned head and no other grant is made until it fits, so it waits
    at most until `n` bytes of what is held now are given back (each held chunk is
    given back when it is delivered or its stream ends). A waiter that is not the
    head is served after at most one grant to each flow with a lower tag (see
    FairQueue's bound).
    """

    def __init__(self, limit: int, *, weight: Callable[[str], float] | None = None,
                 cap: Callable[[str], int] | None = None) -> None:
        if limit < 1:
            raise ValueError(f"buffer budget must be at least 1 byte, not {limit}")
        self.limit = limit
        self.in_use = 0
        self.peak = 0
        self.waits = 0  # how often a source had to wait for room: backpressure at work
        self.held: dict[str, int] = {}  # bytes held now, per flow (flows holding none are absent)
        self.granted: dict[str, int] = {}  # bytes granted ever, per flow
        self._cap: Callable[[str], int] = cap or (lambda _flow: 0)
        self._queue: FairQueue[_BudgetWaiter] = FairQueue(weight or (lambda _flow: 1.0))
        self._pinned: tuple[str, _BudgetWaiter] | None = None  # the head that did not fit

    def set_limit(self, limit: int) -> None:
        """A reload: waiters that now fit (or that the new limit clamps) go ahead."""
        self.limit = max(1, limit)
        self._wake()

    def set_policy(self, weight: Callable[[str], float], cap: Callable[[str], int]) -> None:
        """A reload: the flows' weights and caps from now on (0 cap: none)."""
        self._queue.weight = weight
        self._cap = cap
        self._wake()

    def forget(self, keep: Callable[[str], bool]) -> None:
        """Drop the virtual time of flows `keep` refuses that hold and wait for nothing."""
        self._queue.forget(lambda f: keep(f) or f in self.held)

    def limit_for(self, flow: str) -> int:
        """The most one grant to `flow` can be: the limit, or the flow's cap if lower."""
        cap = self._cap(flow)
        return min(self.limit, cap) if cap > 0 else self.limit

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def waiting_in(self, flow: str) -> int:
        return self._queue.waiting_in(flow)

    def fits_now(self, n: int, flow: str = NO_FLOW) -> bool:
        """Would `acquire(n, flow)` be granted at once (nobody waiting, and room)?"""
        return n <= 0 or (not self._queue.waiting and self._size(flow, n) is not None)

    def _size(self, flow: str, n: int) -> int | None:
        """What a request of n bytes is granted when it fits now: clamped to the limit and
        the flow's cap; None: it does not fit (the budget) or the flow is at its cap."""
        n = min(n, self.limit)
        cap = self._cap(flow)
        if cap > 0:
            held = self.held.get(flow, 0)
            n = min(n, cap)
            if held + n > cap:
                return None
        return n if self.in_use + n <= self.limit else None

    async def acquire(self, n: int, flow: str = NO_FLOW) -> int:
        if n <= 0:
            return 0
        if not self._queue.waiting:
            size = self._size(flow, n)
            if size is not None:
                self._queue.charge(flow, size)
                return self._take(flow, size)
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.waits += 1
        w = _BudgetWaiter(n, fut)
        self._queue.push(flow, w)
        self._wake()  # it may fit now (e.g. another flow's waiter is at its cap)
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(fut.result(), flow)  # granted just as we were cancelled
            else:
                if self._pinned is not None and self._pinned[1] is w:
                    self._pinned = None
                self._queue.remove(flow, w)
                self._wake()
            raise

    def _take(self, flow: str, n: int) -> int:
        self.in_use += n
        self.held[flow] = self.held.get(flow, 0) + n
        self.granted[flow] = self.granted.get(flow, 0) + n
        if self.in_use > self.peak:
            self.peak = self.in_use
        return n

    def release(self, n: int, flow: str = NO_FLOW) -> None:
        if n <= 0:
            return
        held = self.held.get(flow, 0)
        if n > self.in_use or n > held:
            raise RuntimeError(f"buffer budget: {n} bytes given back for flow {flow!r}, only "
                               f"{min(held, self.in_use)} in use")
        self.in_use -= n
        if held == n:
            del self.held[flow]
        else:
            self.held[flow] = held - n
        if self._queue.waiting:
            self._wake()

    def _wake(self) -> None:
        q = self._queue
        while q.waiting:
            if self._pinned is not None:
                flow, w = self._pinned
                size = self._size(flow, w.n)
                if size is None:
                    return  # the pinned head waits for room; nobody passes it
                self._pinned = None
                q.pop(flow, size)
                self._grant(flow, w, size)
                continue
            head = q.peek()
            assert head is not None
            flow, w = head
            if w.fut.done():  # cancelled; its acquire removes it
                q.remove(flow, w)
                continue
            size = self._size(flow, w.n)
            if size is not None:
                q.pop(flow, size)
                self._grant(flow, w, size)
                continue
            if not self._at_cap(flow, w.n):
                self._pinned = (flow, w)  # the budget is full for it: it goes next
                return
            # the head's flow is at its cap: serve the first other flow that can go
            for other, ow in q.heads():
                if other == flow or ow.fut.done():
                    continue
                size = self._size(other, ow.n)
                if size is not None:
                    q.pop(other, size)
                    self._grant(other, ow, size)
                    break
                if not self._at_cap(other, ow.n):
                    self._pinned = (other, ow)
                    return
            else:
                return  # every waiting flow is at its cap

    def _at_cap(self, flow: str, n: int) -> bool:
        cap = self._cap(flow)
        return cap > 0 and self.held.get(flow, 0) + min(n, self.limit, cap) > cap

    def _grant(self, flow: str, w: _BudgetWaiter, size: int) -> None:
        if w.fut.done():  # cancelled between being chosen and now: give the grant back
            return
        w.fut.set_result(self._take(flow, size))


class Pacer:
    """Spaces deliveries so a component gets at most `rate` bytes per second."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._next = 0.0

    async def take(self, n: int) -> float:
        """Wait for `n` bytes' turn; returns the seconds waited (a stream's time paced)."""
        if self.rate <= 0 or n <= 0:
            return 0.0
        now = time.monotonic()
        start = max(now, self._next)
        self._next = start + n / self.rate
        if start > now:
            await asyncio.sleep(start - now)
            return start - now
        return 0.0


async def read_with_retry(blob: "Blob", offset: int, length: int, retries: int, backoff_s: float,
                          on_retry: "Callable[[int, float, SourceError], None] | None" = None) -> bytes:
    """blob.read_at, retrying transient errors with jittered exponential backoff from the same offset.
    `on_retry` is told of each retry before its backoff; an exception it raises ends the reads."""
    attempt = 0
    while True:
        try:
            return await blob.read_at(offset, length)
        except SourceError as e:
            if not e.transient or attempt >= retries:
                raise
            attempt += 1
            delay = backoff_s * (2 ** (attempt - 1)) * (0.5 + random.random())
            if on_retry is not None:
                on_retry(attempt, delay, e)
            await asyncio.sleep(delay)
