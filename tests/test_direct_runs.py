"""Direct runs (pure logic, a fast fake blob): how a stream read directly is cut into
runs, and where its read-ahead hints go."""
from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from chunkd.delivery import Delivery
from chunkd.host.instance import DirectRun, HostStream
from chunkd.flowcontrol import BufferBudget


class SizedBlob:
    def __init__(self, size: int) -> None:
        self.size = size

    async def close(self) -> None:
        pass


def direct_delivery(size: int, chunk: int, start: int, prefetch: int) -> Delivery:
    stream = HostStream(1, "local", "b.bin", SizedBlob(size))  # type: ignore[arg-type]
    return Delivery(component="c", stream=stream, correlation_id=7, chunk_size=chunk, start=start,
                    prefetch=prefetch, budget=BufferBudget(1 << 20), retries=0, backoff_s=0.0,
                    on_ready=lambda d: None, job_id="j", direct_fd=3)


@settings(max_examples=300, deadline=None)
@given(size=st.integers(0, 5000), chunk=st.integers(1, 700), start_frac=st.floats(0, 1),
       prefetch=st.integers(1, 6), takes=st.lists(st.tuples(st.integers(1, 9), st.integers(1, 4000)), min_size=1))
def test_runs_cover_the_blob_in_order_and_every_chunk_is_hinted_before_it_is_read(
        size: int, chunk: int, start_frac: float, prefetch: int, takes: list[tuple[int, int]]) -> None:
    start = int(size * start_frac)
    d = direct_delivery(size, chunk, start, prefetch)
    runs: list[DirectRun] = []
    firsts: list[int] = []
    hinted: list[tuple[int, int]] = []
    i = 0
    while d.has_next():
        max_chunks, max_bytes = takes[i % len(takes)]
        i += 1
        c = d.take_direct(max_chunks, max_bytes)
        run = c.data
        assert isinstance(run, DirectRun) and c.count == run.count >= 1
        assert run.count <= max(1, min(max_chunks, max_bytes // chunk))  # within the batch's room
        if run.hint_length:
            hinted.append((run.hint_offset, run.hint_offset + run.hint_length))
        end = run.offset + run.length
        # everything this run reads is hinted by now, and nothing beyond prefetch chunks after it
        covered = sorted(hinted)
        assert not run.length or any(a <= run.offset and end <= b for a, b in _merge(covered)), (covered, run)
        assert max((b for _, b in hinted), default=0) <= min(size, end + prefetch * chunk)
        runs.append(run)
        firsts.append(c.index)
    # consecutive chunks, numbered from 0, ending exactly at the blob's end
    expect_total = max(1, -(-(size - start) // chunk))
    assert d.total_chunks == expect_total
    assert firsts == [sum(r.count for r in runs[:k]) for k in range(len(runs))]
    assert sum(r.count for r in runs) == expect_total
    pos = start
    for r in runs:
        assert r.offset == pos and r.chunk_size == chunk
        for j in range(r.count):  # the chunks the instance reads: chunk_size each, but the last
            length = chunk if j < r.count - 1 else r.last_length
            assert r.offset + j * chunk == pos and (length == chunk or pos + length == size)
            pos += length
    assert pos == size
    assert all(b > a for a, b in hinted)
    assert [a for a, _ in hinted] == sorted(a for a, _ in hinted) and all(  # no range hinted twice
        hinted[k][1] <= hinted[k + 1][0] for k in range(len(hinted) - 1))


def test_single_chunk_runs_hint_once_per_prefetch_window() -> None:
    d = direct_delivery(100 * 4096, 4096, 0, 2)
    hints = sum(1 for _ in range(100) if _take(d).hint_length)
    assert 49 <= hints <= 51  # one fadvise per two chunks, not one per chunk


def _take(d: Delivery) -> Any:
    return d.take_direct(1, 1 << 30).data


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in ranges:
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


async def test_stream_requests_wake_the_loop_once_per_burst_and_none_is_lost() -> None:
    """start-chunking-read from instance threads: a burst of requests schedules one wake
    of the loop, and a consumer that drains and waits as the delivery loop does sees every
    request (two threads adding 2,000 each while it drains)."""
    import asyncio
    import threading

    from chunkd.jobs import Job, StreamRequest

    loop = asyncio.get_running_loop()
    job = Job("c", [])
    wakes = [0]

    def producer(base: int) -> None:
        for i in range(2000):
            req = StreamRequest(None, None, 1, base + i, 0)  # type: ignore[arg-type]
            if job.inbox.add_request(req):
                wakes[0] += 1
                loop.call_soon_threadsafe(job.inbox.wake)

    seen: set[int] = set()
    threads = [threading.Thread(target=producer, args=(base,)) for base in (0, 10_000)]
    for t in threads:
        t.start()

    async def consume() -> None:
        while True:
            seen.update(r.correlation_id for r in job.inbox.take_requests())
            if len(seen) == 4000:
                return
            job.inbox.ready.clear()
            if job.inbox.requests:
                continue
            await job.inbox.ready.wait()

    await asyncio.wait_for(consume(), 30)
    for t in threads:
        t.join()
    assert seen == set(range(2000)) | set(range(10_000, 12_000))
    assert 1 <= wakes[0] < 4000  # coalesced
