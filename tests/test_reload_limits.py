"""A reload's [limits] reach kept instances as they reach new ones (chunkd/limits.py; the
rule per key: docs/cli-and-api.md, "What a reload does to [limits]").

Each test runs a real Runtime with the Python probe guest (tests/guests/probe) and
reloads it in-process (Runtime.reload, what SIGHUP calls). A kept instance is the same
instance object of the same pool before and after the reload; every wait is bounded,
and a wait shorter than the old bound is what shows that the new one applied.
"""
from __future__ import annotations

import asyncio
import errno
import os
import time
from pathlib import Path
from typing import Any

import pytest

from chunkd.errors import ChunkdError
from chunkd.jobs import COMPLETED, FAILED, Job, JobState
from chunkd.runtime import Runtime
from tests.conftest import config_for, make_blob

# the bound before the reload: far longer than any wait below, so a job stopped within
# the wait was stopped by the new bound
OLD_TIMEOUT = "60s"
WAIT_S = 30.0


async def wait_until_running(job: Job, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while job.state != JobState.RUNNING:
        assert not job.done.is_set(), f"job ended before it ran: {job.state} {job.error}"
        assert time.monotonic() < deadline, "the job never started"
        await asyncio.sleep(0.01)


async def release_fifo(path: Path, timeout: float = WAIT_S) -> None:
    """Be the writer of the pipe `path` once its reader (a guest's open, blocked in the
    host) is there: its open returns. Polls for the reader with a deadline."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError as e:
            if e.errno != errno.ENXIO:  # ENXIO: no reader yet
                raise
        assert time.monotonic() < deadline, "the guest never opened the pipe"
        await asyncio.sleep(0.01)
    try:
        os.write(fd, b"x" * 100)
    finally:
        os.close(fd)


async def reload_limits(rt: Runtime, state_dir: Path, blobs: Path, guests: dict[str, Path],
                        **limits: Any) -> list[str]:
    return await rt.reload(config_for(state_dir, blobs, guests, limits=limits))


async def test_a_lowered_call_timeout_stops_a_slow_guest_on_a_kept_instance(
        harness, state_dir: Path, blobs: Path, guests: dict[str, Path]) -> None:
    async with harness(limits={"call_timeout": OLD_TIMEOUT}) as h:
        rt = h.runtime
        first = await h.run("probe", [])
        assert first.state == COMPLETED, first.error
        pool = rt.pools["probe"]
        kept = await pool.acquire()  # the pool's one instance, handed straight back
        pool.give_back(kept)
        assert kept.call_timeout_s == 60

        assert await reload_limits(rt, state_dir, blobs, guests, call_timeout="500ms") == []
        assert rt.pools["probe"] is pool  # not rebuilt: its instances are kept

        # loops for ever inside invoke; the old bound would outlast the wait (TimeoutError)
        job = await h.run("probe", ["loop-invoke"], timeout=WAIT_S)
        assert job.state == FAILED
        assert job.instance == kept.label == "probe#0"
        assert job.error == "invoke ran past call_timeout (0.5s) in probe#0"
        assert kept.broken == job.error  # the kept instance object is the one that ran it
        assert kept.call_timeout_s == 0.5
        assert rt.metrics.value("chunkd_timeouts_total", component="probe") == 1


async def test_a_running_job_s_next_call_takes_the_lowered_call_timeout(
        harness, state_dir: Path, blobs: Path, guests: dict[str, Path]) -> None:
    """The job runs when the reload comes (its invoke waits in the host for a pipe's
    writer); its first handle-chunk batch begins after the reload and loops: stopped at
    the new bound, on the instance the job had."""
    make_blob(blobs, "a.bin", 50_000)
    os.mkfifo(blobs / "gate")
    async with harness(limits={"call_timeout": OLD_TIMEOUT}) as h:
        rt = h.runtime
        pool = rt.pools["probe"]
        job = rt.submit("probe", ["open g local gate", "open s local a.bin", "start s 10000 1", "loop 1 0"])
        await wait_until_running(job)
        assert await reload_limits(rt, state_dir, blobs, guests, call_timeout="500ms") == []
        assert rt.pools["probe"] is pool
        assert job.state == JobState.RUNNING
        await release_fifo(blobs / "gate")
        await asyncio.wait_for(job.done.wait(), WAIT_S)
    assert job.state == FAILED
    assert job.instance == "probe#0"
    assert job.error is not None and "handle-chunk ran past call_timeout (0.5s) in probe#0" in job.error
    assert "open g ok" in h.out(job) and "start 1 ok" in h.out(job)


def bound_probe(limit: int) -> list[str]:
    """`read` and `start-chunking-read`, each asked for one byte above `limit`, then for
    `limit` itself (a refused start leaves the stream free to start again)."""
    return ["open r local a.bin", f"read r {limit + 1}", f"read r {limit}",
            "open c local a.bin", f"start c {limit + 1} 1", f"start c {limit} 1"]


def read_and_start_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith(("read", "start"))]


def refused_and_accepted(limit: int) -> list[str]:
    return [f"read r err InvalidArgument len {limit + 1} is above max-chunk-size {limit}",
            f"read r {limit}",
            f"start 1 err InvalidArgument chunk-size {limit + 1} must be between 1 and max-chunk-size {limit}",
            "start 1 ok"]


async def test_a_reloaded_max_chunk_size_is_enforced_alike_by_read_and_start_chunking_read(
        harness, state_dir: Path, blobs: Path, guests: dict[str, Path]) -> None:
    make_blob(blobs, "a.bin", 300_000)
    (blobs / "bad.wasm").write_bytes(b"not wasm")
    async with harness(limits={"max_chunk_size": "1MiB"}) as h:
        rt = h.runtime
        pool = rt.pools["probe"]
        kept = await pool.acquire()
        pool.give_back(kept)

        # a reload that fails (a component that does not load) changes no limit
        with pytest.raises(ChunkdError):
            await rt.reload(config_for(state_dir, blobs, guests, limits={"max_chunk_size": "100KiB"},
                                       components={"probe": {}, "bad": {"path": str(blobs / "bad.wasm")}}))
        assert rt.limits.current.max_chunk_size_bytes == 1 << 20

        # before: 150,000 bytes (above the bound to come) is fine for both
        before = await h.run("probe", ["open r local a.bin", "read r 150000", "open c local a.bin", "start c 150000 1"])
        assert before.state == COMPLETED, before.error
        lines = read_and_start_lines(h.out(before))
        assert [line.rsplit(" ", 1)[0] for line in lines] == ["read r 150000", "start 1"], lines
        assert lines[1] == "start 1 ok"

        for size, limit in (("100KiB", 100 * 1024), ("200KiB", 200 * 1024)):  # lowered, then raised
            assert await reload_limits(rt, state_dir, blobs, guests, max_chunk_size=size) == []
            assert rt.pools["probe"] is pool
            job = await h.run("probe", bound_probe(limit), timeout=WAIT_S)
            assert job.state == COMPLETED, job.error
            assert job.instance == kept.label == "probe#0" and not kept.broken
            lines = read_and_start_lines(h.out(job))
            # `read r LIMIT` prints its length and a digest: compare up to the digest
            assert [lines[0], lines[1].rsplit(" ", 1)[0], *lines[2:]] == refused_and_accepted(limit), lines
            assert job.deliveries[0].chunk_size == limit


async def test_a_changed_instance_memory_rebuilds_the_pool(
        harness, state_dir: Path, blobs: Path, guests: dict[str, Path]) -> None:
    """A store's memory limit is fixed when it is made: a reload that changes
    instance_memory gives every component new instances."""
    async with harness(limits={"instance_memory": "128MiB"}) as h:
        rt = h.runtime
        old = rt.pools["probe"]
        assert old.memory_bytes == 128 << 20
        assert await reload_limits(rt, state_dir, blobs, guests, instance_memory="192MiB") == ["probe"]
        new = rt.pools["probe"]
        assert new is not old and old.retired and new.memory_bytes == 192 << 20
        job = await h.run("probe", [], timeout=WAIT_S)
        assert job.state == COMPLETED, job.error
        new_inst = await new.acquire()
        new.give_back(new_inst)
        assert new_inst.memory_bytes == 192 << 20 and new_inst.limits is rt.limits
