"""Traps, timeouts, memory bombs: the instance is replaced, its streams fail,
everyone else keeps being served."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from chunkd.jobs import COMPLETED, FAILED
from tests.conftest import make_blob
from tests.test_delivery import chunk_lines, ended


@pytest.mark.parametrize("probe_guest", ["probe", "probe_js"])  # the Python probe and its JS twin
async def test_trap_fails_job_and_instance_is_replaced(harness, blobs: Path) -> None:
    make_blob(blobs, "a.bin", 100_000)
    async with harness() as h:
        job = await h.run("probe", ["open s local a.bin", "start s 10000 1", "trap 1 3"])
        assert job.state == FAILED
        assert "trapped" in (job.error or "")
        assert job.deliveries[0].outcome is not None and job.deliveries[0].outcome.kind == "failed"
        assert [c[0] for c in chunk_lines(h.out(job), 1)] == [0, 1, 2, 3]
        assert ended(h.out(job), 1) == []  # the dead instance is not called again
        assert h.runtime.metrics.value("chunkd_traps_total", component="probe") == 1
        # the next job gets a fresh instance and works
        job2 = await h.run("probe", ["open s local a.bin", "start s 50000 1"])
        assert job2.state == COMPLETED
        assert job2.instance != job.instance
        assert h.runtime.budget.in_use == 0


@pytest.mark.parametrize("probe_guest", ["probe", "probe_js"])  # the Python probe and its JS twin
async def test_timeout_in_handle_chunk_while_other_job_flows(harness, blobs: Path, probe_guest: str) -> None:
    make_blob(blobs, "a.bin", 100_000)
    # the flowing job must end well within call_timeout: the JS probe hashes ~1 MB/s
    chunks = 128 if probe_guest == "probe" else 16
    make_blob(blobs, "b.bin", chunks * 16384, seed=3)
    async with harness(limits={"call_timeout": "1s"}, components={"probe": {"instances": 2}}) as h:
        looping = h.runtime.submit("probe", ["open s local a.bin", "start s 10000 1", "loop 1 0"])
        flowing = h.runtime.submit("probe", ["open s local b.bin", "start s 16384 2"])
        await asyncio.wait_for(asyncio.gather(looping.done.wait(), flowing.done.wait()), 60)
    assert looping.state == FAILED and "call_timeout" in (looping.error or "")
    assert h.runtime.metrics.value("chunkd_timeouts_total", component="probe") == 1
    assert flowing.state == COMPLETED
    assert len(chunk_lines(h.out(flowing), 2)) == chunks
    assert flowing.instance != looping.instance
    # the other job's stream kept flowing while the first instance was stuck
    assert flowing.ended_at is not None and looping.ended_at is not None
    assert flowing.ended_at < looping.ended_at


@pytest.mark.parametrize("probe_guest", ["probe", "probe_js"])  # the Python probe and its JS twin
async def test_timeout_in_invoke(harness, blobs: Path) -> None:
    async with harness(limits={"call_timeout": "500ms"}) as h:
        job = await h.run("probe", ["loop-invoke"])
        assert job.state == FAILED and "invoke ran past call_timeout" in (job.error or "")
        again = await h.run("probe", [])
        assert again.state == COMPLETED


async def test_waiting_on_the_source_does_not_count_against_call_timeout(harness, blobs: Path) -> None:
    # a pipe whose writer only shows up after call_timeout: open blocks in the host, not the guest
    import os
    import threading
    import time
    fifo = blobs / "slow"
    os.mkfifo(fifo)

    def writer() -> None:
        time.sleep(1.5)  # the slow source itself: it shows up 1.5 s after the job starts
        with open(fifo, "wb") as f:
            f.write(b"x" * 100)

    async with harness(limits={"call_timeout": "1s"}) as h:
        job = h.runtime.submit("probe", ["open s local slow", "read s 100"])
        threading.Thread(target=writer, daemon=True).start()  # timed from the job, not the harness
        await asyncio.wait_for(job.done.wait(), 60)
    assert job.state == COMPLETED, job.error
    assert "open s ok" in h.out(job)


@pytest.mark.parametrize("probe_guest", ["probe", "probe_js"])  # the Python probe and its JS twin
async def test_memory_bomb_is_contained(harness, blobs: Path) -> None:
    make_blob(blobs, "a.bin", 10_000)
    async with harness(limits={"instance_memory": "64MiB"}) as h:
        job = await h.run("probe", ["open s local a.bin", "start s 1000 1", "bomb 1 2"])
        assert job.state == FAILED
        again = await h.run("probe", ["open s local a.bin", "start s 1000 1"])
        assert again.state == COMPLETED


async def test_two_jobs_run_on_two_instances_at_once(harness, blobs: Path) -> None:
    make_blob(blobs, "a.bin", 4 * 1024 * 1024)
    async with harness(components={"probe": {"instances": 2}}) as h:
        j1 = h.runtime.submit("probe", ["open s local a.bin", "start s 65536 1"])
        j2 = h.runtime.submit("probe", ["open s local a.bin", "start s 65536 1"])
        await asyncio.wait_for(asyncio.gather(j1.done.wait(), j2.done.wait()), 60)
    assert j1.state == j2.state == COMPLETED
    assert {j1.instance, j2.instance} == {"probe#0", "probe#1"}
    # they overlapped: each started before the other ended
    assert j1.started_at < j2.ended_at and j2.started_at < j1.ended_at


async def test_jobs_queue_for_a_single_instance(harness, blobs: Path) -> None:
    make_blob(blobs, "a.bin", 300_000)
    async with harness() as h:
        jobs = [h.runtime.submit("probe", ["open s local a.bin", "start s 65536 1"]) for _ in range(3)]
        await asyncio.wait_for(asyncio.gather(*(j.done.wait() for j in jobs)), 60)
    assert all(j.state == COMPLETED for j in jobs)
    # one instance: one job at a time, the deliveries of a job before the next job's invoke
    spans = sorted((j.started_at, j.ended_at) for j in jobs)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))


async def test_backpressure_keeps_buffered_bytes_under_budget(harness, blobs: Path, buffered_files: None) -> None:
    for i in range(4):
        make_blob(blobs, f"b{i}.bin", 3 * 1024 * 1024, seed=i)
    budget = 256 * 1024
    async with harness(limits={"max_buffered_bytes": budget, "max_chunk_size": "64KiB"},
                       components={"probe": {"instances": 2, "prefetch_chunks": 4}}) as h:
        jobs = [h.runtime.submit("probe", [f"open s{i} local b{i}.bin", f"start s{i} 65536 {i}",
                                           f"open t{i} local b{(i + 1) % 4}.bin", f"start t{i} 65536 {i + 10}"])
                for i in range(2)]
        await asyncio.wait_for(asyncio.gather(*(j.done.wait() for j in jobs)), 120)
        b = h.runtime.budget
        assert all(j.state == COMPLETED for j in jobs)
        assert b.peak <= budget
        assert b.peak >= 3 * 65536  # the budget was really used ...
        assert b.waits > 0  # ... and sources had to wait for room
        assert b.in_use == 0


async def test_pacing_spreads_delivery(harness, blobs: Path) -> None:
    import time
    make_blob(blobs, "a.bin", 400_000)
    rate = 400_000  # bytes/s: 400 kB after the first 100 kB chunk takes >= 0.75 s
    async with harness(components={"probe": {"max_bytes_per_second": rate}}) as h:
        t0 = time.monotonic()
        job = await h.run("probe", ["open s local a.bin", "start s 100000 1"])
        elapsed = time.monotonic() - t0
    assert job.state == COMPLETED
    assert elapsed >= 0.75 * 0.95  # a lower bound only: pacing never lets it go faster


async def test_component_without_stream_ended_export(harness, blobs: Path) -> None:
    make_blob(blobs, "a.bin", 100_000)
    async with harness(components={"cancel_after": {}}) as h:
        pool = h.runtime.pools["cancel_after"]
        assert pool.comp.info.world == "consumer"
        job = await h.run("cancel_after", ["local", "a.bin", "10000", "3"])
        assert [line.split()[1] for line in h.out(job)] == ["0/10", "1/10", "2/10"]
        assert job.deliveries[0].outcome is not None and job.deliveries[0].outcome.kind == "cancelled"
        full = await h.run("cancel_after", ["local", "a.bin", "10000", "100"])
        assert full.state == COMPLETED


async def test_trap_in_stream_ended_loses_no_budget(harness, blobs: Path) -> None:
    make_blob(blobs, "small.bin", 3000)
    make_blob(blobs, "big.bin", 4 * 1024 * 1024, seed=4)
    async with harness(limits={"max_buffered_bytes": "1MiB"}) as h:
        job = await h.run("probe", ["open a local small.bin", "start a 1000 1", "trapend 1",
                                    "open b local big.bin", "start b 65536 2"])
        assert job.state == FAILED and "stream-ended trapped" in (job.error or "")
        assert all(d.outcome is not None for d in job.deliveries)
        assert h.runtime.budget.in_use == 0 and h.runtime.active_streams == 0
        again = await h.run("probe", ["open b local big.bin", "start b 65536 2"])
        assert again.state == COMPLETED


async def test_a_traps_reason_carries_the_guests_last_stderr_lines(harness, blobs: Path) -> None:
    """The probe raises RuntimeError("probe trap") in handle-chunk: componentize-py prints the
    traceback to stderr and traps. The job's error says where it trapped, says "wasm trap"
    at most once, and ends with the traceback's last lines, so the reason is in the error."""
    make_blob(blobs, "a.bin", 50_000)
    async with harness() as h:
        job = await h.run("probe", ["open s local a.bin", "start s 10000 1", "trap 1 2"])
        assert job.state == FAILED
        err = job.error or ""
        assert "trapped in probe#0" in err and err.count("wasm trap") <= 1, err
        assert "the guest's last stderr lines:" in err and "RuntimeError: probe trap" in err, err
        assert len(err) < 2500
        # the next job on a fresh instance does not inherit this job's stderr
        make_blob(blobs, "b.bin", 1000)
        ok = await h.run("probe", ["open s local b.bin", "start s 1000 2"])
        assert ok.state == COMPLETED, ok.error
