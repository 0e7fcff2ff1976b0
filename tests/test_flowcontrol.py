"""Retries from the failed offset, the buffer budget, the pacer."""
from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from chunkd.errors import SourceError
from chunkd.jobs import COMPLETED, FAILED
from chunkd.flowcontrol import BufferBudget, Pacer
from chunkd.sources.base import Blob, Container
from tests.conftest import make_blob
from tests.test_delivery import chunk_lines, ended


class FlakyBlob:
    """Wraps a real file blob; fails `fails` times at each offset listed (fault injection)."""

    def __init__(self, inner: Blob, bad_offsets: set[int], fails: int, log: list[int]) -> None:
        self.inner = inner
        self.left = {o: fails for o in bad_offsets}
        self.log = log

    @property
    def size(self) -> int | None:
        return self.inner.size

    async def read_at(self, offset: int, length: int) -> bytes:
        self.log.append(offset)
        if self.left.get(offset, 0) > 0:
            self.left[offset] -= 1
            raise SourceError(f"connection reset at {offset}", transient=True)
        return await self.inner.read_at(offset, length)

    async def close(self) -> None:
        await self.inner.close()


class FlakyContainer:
    def __init__(self, inner: Container, bad_offsets: set[int], fails: int) -> None:
        self.inner = inner
        self.name = inner.name
        self.kind = inner.kind
        self.bad = bad_offsets
        self.fails = fails
        self.reads: list[int] = []

    async def open(self, name: str) -> Blob:
        return FlakyBlob(await self.inner.open(name), self.bad, self.fails, self.reads)

    async def close(self) -> None:
        await self.inner.close()


async def test_transient_errors_are_retried_from_the_failed_offset(harness, blobs: Path) -> None:
    data = make_blob(blobs, "a.bin", 100_000)
    async with harness(limits={"source_retries": 3, "source_retry_backoff": "1ms"}) as h:
        flaky = FlakyContainer(h.runtime.containers["local"], {30_000, 60_000}, fails=2)
        h.runtime.containers["local"] = flaky
        job = await h.run("probe", ["open s local a.bin", "start s 10000 1"])
    assert job.state == COMPLETED
    assert ended(h.out(job), 1) == [f"ended 1 completed {hashlib.sha256(data).hexdigest()}"]
    assert [c[0] for c in chunk_lines(h.out(job), 1)] == list(range(10))  # nothing twice, nothing skipped
    assert job.deliveries[0].stats.retries == 4
    assert flaky.reads.count(30_000) == 3 and flaky.reads.count(60_000) == 3


async def test_spent_retries_end_the_stream_failed(harness, blobs: Path) -> None:
    make_blob(blobs, "a.bin", 100_000)
    async with harness(limits={"source_retries": 2, "source_retry_backoff": "1ms"}) as h:
        h.runtime.containers["local"] = FlakyContainer(h.runtime.containers["local"], {50_000}, fails=10)
        job = await h.run("probe", ["open s local a.bin", "start s 10000 1"])
        assert h.runtime.budget.in_use == 0
    got = [c[0] for c in chunk_lines(h.out(job), 1)]
    assert got == [0, 1, 2, 3, 4]
    e = ended(h.out(job), 1)
    assert len(e) == 1 and e[0].startswith("ended 1 failed") and "connection reset at 50000" in e[0]
    assert job.state == FAILED


async def test_read_pull_is_retried_too(harness, blobs: Path) -> None:
    data = make_blob(blobs, "a.bin", 1000)
    async with harness(limits={"source_retries": 2, "source_retry_backoff": "1ms"}) as h:
        h.runtime.containers["local"] = FlakyContainer(h.runtime.containers["local"], {0}, fails=2)
        job = await h.run("probe", ["open s local a.bin", "read s 1000"])
    assert f"read s 1000 {hashlib.sha256(data).hexdigest()[:16]}" in h.out(job)


async def test_budget_is_fifo_and_bounded() -> None:
    b = BufferBudget(100)
    await b.acquire(60)
    order: list[str] = []

    async def take(name: str, n: int) -> None:
        await b.acquire(n)
        order.append(name)

    t1 = asyncio.create_task(take("big", 80))
    await asyncio.sleep(0)
    t2 = asyncio.create_task(take("small", 10))  # would fit now, but must not overtake "big"
    await asyncio.sleep(0)
    assert order == [] and b.waits == 2
    b.release(60)
    await asyncio.gather(t1, t2)
    assert order == ["big", "small"]
    assert b.in_use == 90 and b.peak == 90 <= b.limit


async def test_budget_cancelled_waiter_gives_way() -> None:
    b = BufferBudget(10)
    await b.acquire(10)
    t = asyncio.create_task(b.acquire(5))
    await asyncio.sleep(0)
    t.cancel()
    with pytest.raises(asyncio.CancelledError):
        await t
    b.release(10)
    assert b.in_use == 0
    await asyncio.wait_for(b.acquire(10), 1)


async def test_pacer_schedules_bytes_at_the_rate() -> None:
    p = Pacer(1_000_000)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for _ in range(5):
        await p.take(50_000)
    # 5 x 50 kB at 1 MB/s: the first goes at once, the rest are spaced 50 ms apart
    assert loop.time() - t0 >= 0.2 * 0.95
    assert Pacer(0)._next == 0.0
