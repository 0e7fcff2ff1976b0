"""A stream's end stops its producer for good, even when a source does not honour the cancel.

`StreamSet._close` ends a stream with `Delivery.stop()`: it cancels the producer, empties the
queue and gives back every byte the stream holds, the bytes of the read in flight included.
A cancel is not always honoured: on Python 3.11 `asyncio.wait_for` (every bounded read in
sources/bounds.py) returns its inner read's result, or raises its error, when that read
finished just before the cancel landed; an aiohttp read whose response the end releases
fails with `ClientConnectionError: Connection closed`, a transient error the retry path
retries. The producer then ran on after the end: it queued the chunk of that read (whose
bytes `stop()` had already given back), or retried the read on the closed blob, and the
ended stream kept a chunk in its queue for ever (tests/test_adversarial.py::
test_an_endless_body_is_bounded_by_max_job_duration, once, under load).

Here a source holds a read until the end comes and then hands it back anyway (its bytes,
a transient error, a permanent error): whatever it does, nothing is queued after the end,
no read is made after it, the ledger and the budget are back to 0 and the producer ends.
"""
from __future__ import annotations

import asyncio
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chunkd.delivery import Chunk, Delivery, End, ProducerStopped
from chunkd.errors import SourceError
from chunkd.flowcontrol import BufferBudget
from chunkd.host import values
from chunkd.host.instance import HostStream

Answer = Literal["bytes", "transient", "permanent"]
BOUND_S = 5.0  # the producer ends at once; this only bounds a failure


class HeldBlob:
    """A source whose read number `hold_at` waits until it is cancelled, and then does not
    honour the cancel: it returns its bytes, or fails transiently or permanently, as
    `answer` says. Every other read answers at once."""

    def __init__(self, size: int | None, *, hold_at: int, answer: Answer, read_unit: int = 0) -> None:
        self._size = size
        self.read_unit = read_unit
        self.hold_at = hold_at
        self.answer = answer
        self.reads = 0
        self.closed = 0
        self.held = asyncio.Event()  # the held read is in flight
        self.answered = asyncio.Event()  # the held read came back after its cancel

    @property
    def size(self) -> int | None:
        return self._size

    def _bytes(self, offset: int, length: int) -> bytes:
        end = offset + length if self._size is None else min(self._size, offset + length)
        return bytes(i % 251 for i in range(offset, max(offset, end)))

    async def read_at(self, offset: int, length: int) -> bytes:
        n = self.reads
        self.reads += 1
        if n != self.hold_at:
            await asyncio.sleep(0)
            return self._bytes(offset, length)
        self.held.set()
        try:
            await asyncio.Event().wait()  # until the cancel
        except asyncio.CancelledError:
            pass  # not honoured, as wait_for does when the inner read has just finished
        self.answered.set()
        if self.answer == "transient":
            raise SourceError("Connection closed", transient=True)
        if self.answer == "permanent":
            raise SourceError("gone")
        return self._bytes(offset, length)

    async def close(self) -> None:
        self.closed += 1


def queued(d: Delivery) -> list[str]:
    """What a delivery's queue holds, in short (a chunk's bytes are not worth printing)."""
    return [f"chunk {x.index} reserved={x.reserved}" if isinstance(x, Chunk) else f"end {x.end}" for x in d.queue]


def delivery(blob: HeldBlob, budget: BufferBudget, *, chunk: int, prefetch: int, retries: int,
             ready: asyncio.Event | None = None) -> Delivery:
    """`ready` is set whenever the producer queues something (the delivery loop's wake-up)."""
    stream = HostStream(1, "web", "x.bin", blob)

    def on_ready(_: Delivery) -> None:
        if ready is not None:
            ready.set()

    return Delivery(component="c", stream=stream, correlation_id=1, chunk_size=chunk, start=0, prefetch=prefetch,
                    budget=budget, retries=retries, backoff_s=0.0, on_ready=on_ready, job_id="j")


async def end_mid_read(*, size: int | None, chunk: int, read_unit: int, prefetch: int, hold_at: int,
                       answer: Answer, retries: int) -> None:
    """Start the producer, let a consumer take its chunks (handed, then delivered, as the
    delivery loop does) until read number `hold_at` is in flight, end the stream while read number `hold_at` is in flight, as
    `StreamSet._close` does, and check that nothing is left behind."""
    budget = BufferBudget(1 << 20)
    blob = HeldBlob(size, hold_at=hold_at, answer=answer, read_unit=read_unit)
    ready = asyncio.Event()
    d = delivery(blob, budget, chunk=chunk, prefetch=prefetch, retries=retries, ready=ready)
    d.task = task = asyncio.create_task(d.produce())
    held = asyncio.create_task(blob.held.wait())
    try:
        while not blob.held.is_set():  # consume until the held read is in flight
            while d.queue:
                item = d.queue.popleft()
                assert isinstance(item, Chunk), item  # the producer reaches the held read first
                d.handed(item)
                d.account(item, 1, item.length)
            ready.clear()
            woken = asyncio.create_task(ready.wait())
            await asyncio.wait({held, task, woken}, timeout=BOUND_S, return_when=asyncio.FIRST_COMPLETED)
            woken.cancel()
            assert not task.done(), task
            assert blob.held.is_set() or d.queue, "the producer neither queued a chunk nor read on"
        assert d.held > 0  # the read in flight holds its room
        reads = blob.reads

        d.stop()  # the end: StreamSet._close
        assert d.held == 0 and budget.in_use == 0 and queued(d) == []

        await asyncio.wait_for(blob.answered.wait(), BOUND_S)
        assert queued(d) == [], "queued after the end"
        await asyncio.wait({task}, timeout=BOUND_S)
        assert task.done(), "the producer ran on after the end"
        assert task.cancelled() or task.exception() is None
        assert queued(d) == [], "queued after the end"
        assert blob.reads == reads, "read the blob again after the end"
        assert d.held == 0 and budget.in_use == 0, (d.held, budget.in_use)
    finally:
        held.cancel()
        if not task.done():
            task.cancel()
        await asyncio.gather(task, held, return_exceptions=True)


@pytest.mark.parametrize("answer", ["bytes", "transient", "permanent"])
@pytest.mark.parametrize("size", [None, 10 * 4096])
async def test_a_read_that_comes_back_after_the_end_leaves_nothing_behind(answer: Answer, size: int | None) -> None:
    """The failed run's case: an endless (size unknown) http body, 4 chunks per read unit,
    one read-ahead slot; the end lands while the second unit is being read."""
    await end_mid_read(size=size, chunk=4096, read_unit=4 * 4096, prefetch=2, hold_at=1, answer=answer,
                       retries=1)


async def test_after_the_end_the_ledger_and_the_queue_are_closed() -> None:
    """What a producer that outlived its end could still do is refused in one place each:
    a grant goes straight back to the budget, nothing is queued, no retry is made; the
    producer ends there, quietly."""
    budget = BufferBudget(1 << 20)
    d = delivery(HeldBlob(None, hold_at=-1, answer="bytes"), budget, chunk=4096, prefetch=1, retries=0)
    d.stop()
    with pytest.raises(ProducerStopped):
        await d._take(4096)
    assert d.held == 0 and budget.in_use == 0
    for item in (Chunk.buffered(0, b"x", 1), End(values.COMPLETED)):
        with pytest.raises(ProducerStopped):
            d._push(item)
    assert not d.queue and d.held == 0 and budget.in_use == 0
    d.task = asyncio.create_task(d.produce())
    await asyncio.wait_for(d.task, BOUND_S)  # returns: the end is no failure of the producer
    assert not d.queue and d.held == 0 and budget.in_use == 0


@settings(max_examples=150, deadline=None, derandomize=True)
@given(size=st.one_of(st.none(), st.integers(0, 40_000)), chunk=st.integers(1, 4096),
       read_unit=st.integers(0, 20_000), prefetch=st.integers(1, 4), hold_at=st.integers(0, 6),
       answer=st.sampled_from(["bytes", "transient", "permanent"]), retries=st.integers(0, 3))
def test_an_end_at_any_read_leaves_nothing_behind(size: int | None, chunk: int, read_unit: int, prefetch: int,
                                                 hold_at: int, answer: Answer, retries: int) -> None:
    async def main() -> None:
        if size is not None:  # the producer must still be reading at read number `hold_at`
            unit = delivery(HeldBlob(size, hold_at=-1, answer=answer, read_unit=read_unit), BufferBudget(1 << 20),
                            chunk=chunk, prefetch=prefetch, retries=retries).unit
            if hold_at >= -(-size // unit):
                return
        await end_mid_read(size=size, chunk=chunk, read_unit=read_unit, prefetch=prefetch, hold_at=hold_at,
                           answer=answer, retries=retries)

    asyncio.run(main())
