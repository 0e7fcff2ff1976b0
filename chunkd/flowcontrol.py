"""Flow control shared by every stream: the buffer budget, pacing, source retries.

- BufferBudget: all read-ahead bytes of all streams stay under
  `max_buffered_bytes`; sources wait (FIFO, so no stream starves) when it is
  full. That is the backpressure.
- Pacer: `max_bytes_per_second` per component (0 = unpaced).
- read_with_retry: transient source errors retried from the same offset.

One chunked read (its producer and queue) is delivery.py; the per-job set of
them and the delivery loop is streamset.py.
"""
from __future__ import annotations

import asyncio
import collections
import random
import time
from typing import TYPE_CHECKING, Callable

from chunkd.errors import SourceError

if TYPE_CHECKING:
    from chunkd.sources.base import Blob


class BufferBudget:
    """A byte semaphore with FIFO waiters and peak accounting.

    `acquire(n)` grants min(n, limit) bytes and returns what it granted: a
    request larger than the whole budget waits until the budget is empty and
    then takes all of it, so any positive limit serves any chunk size. The
    holder gives back exactly what it was granted (see delivery.py's ledger).
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"buffer budget must be at least 1 byte, not {limit}")
        self.limit = limit
        self.in_use = 0
        self.peak = 0
        self.waits = 0  # how often a source had to wait for room: backpressure at work
        self._waiters: collections.deque[tuple[int, asyncio.Future[int]]] = collections.deque()

    def set_limit(self, limit: int) -> None:
        """A reload: waiters that now fit (or that the new limit clamps) go ahead."""
        self.limit = max(1, limit)
        self._wake()

    async def acquire(self, n: int) -> int:
        if n <= 0:
            return 0
        if not self._waiters and self.in_use + min(n, self.limit) <= self.limit:
            return self._take(min(n, self.limit))
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.waits += 1
        self._waiters.append((n, fut))
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(fut.result())  # granted just as we were cancelled
            else:
                self._waiters = collections.deque(w for w in self._waiters if w[1] is not fut)
                self._wake()
            raise

    def _take(self, n: int) -> int:
        self.in_use += n
        if self.in_use > self.peak:
            self.peak = self.in_use
        return n

    def release(self, n: int) -> None:
        if n <= 0:
            return
        if n > self.in_use:
            raise RuntimeError(f"buffer budget: {n} bytes given back, only {self.in_use} in use")
        self.in_use -= n
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            n, fut = self._waiters[0]
            if fut.done():
                self._waiters.popleft()
                continue
            n = min(n, self.limit)
            if self.in_use + n > self.limit:
                return
            self._waiters.popleft()
            fut.set_result(self._take(n))


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
