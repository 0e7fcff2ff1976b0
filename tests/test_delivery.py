"""The delivery rules (docs/wit-and-delivery.md), rule by rule, against the real probe
components: each test runs against the Python probe and against its JavaScript twin,
which speak the same commands and print the same lines."""
from __future__ import annotations

import hashlib
import math
import os
import threading
from pathlib import Path

import pytest

from chunkd.summary import job_summary
from chunkd.jobs import COMPLETED, FAILED
from tests.conftest import make_blob


@pytest.fixture(params=["probe", "probe_js"])
def probe_guest(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def chunk_lines(lines: list[str], cid: int) -> list[tuple[int, int, int]]:
    out = []
    for line in lines:
        w = line.split()
        if w[0] == "chunk" and int(w[1]) == cid:
            out.append((int(w[2]), int(w[3]), int(w[4])))
    return out


def ended(lines: list[str], cid: int) -> list[str]:
    return [line for line in lines if line.startswith(f"ended {cid} ")]


@pytest.mark.parametrize("size,chunk", [(10_000, 4096), (8192, 4096), (1, 1), (5, 4096), (100_003, 1000)])
async def test_numbering_sizes_and_digest(harness, blobs: Path, size: int, chunk: int) -> None:
    data = make_blob(blobs, "b.bin", size)
    async with harness() as h:
        job = await h.run("probe", ["open s local b.bin", f"start s {chunk} 5"])
    lines = h.out(job)
    total = math.ceil(size / chunk)
    got = chunk_lines(lines, 5)
    assert [c[0] for c in got] == list(range(total))
    assert all(c[1] == total for c in got)
    assert [c[2] for c in got] == [chunk] * (total - 1) + [size - chunk * (total - 1)]
    assert ended(lines, 5) == [f"ended 5 completed {hashlib.sha256(data).hexdigest()}"]
    assert job.state == COMPLETED
    assert job_summary(job)["streams"][0]["bytes"] == size


async def test_empty_blob_is_one_empty_call(harness, blobs: Path) -> None:
    make_blob(blobs, "empty.bin", 0)
    async with harness() as h:
        job = await h.run("probe", ["open s local empty.bin", "start s 4096 1"])
    assert chunk_lines(h.out(job), 1) == [(0, 1, 0)]
    assert ended(h.out(job), 1) == [f"ended 1 completed {hashlib.sha256(b'').hexdigest()}"]
    assert job.state == COMPLETED


async def test_unknown_size_source_sends_total_zero(harness, blobs: Path) -> None:
    fifo = blobs / "pipe"
    os.mkfifo(fifo)
    payload = os.urandom(10_000)

    def writer() -> None:
        with open(fifo, "wb") as f:
            f.write(payload)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    async with harness() as h:
        job = await h.run("probe", ["open s local pipe", "size s", "start s 4096 3"])
    t.join(timeout=10)
    lines = h.out(job)
    assert "size s None" in lines
    got = chunk_lines(lines, 3)
    assert [c[0] for c in got] == [0, 1, 2]
    assert all(c[1] == 0 for c in got)
    assert sum(c[2] for c in got) == 10_000
    assert ended(lines, 3) == [f"ended 3 completed {hashlib.sha256(payload).hexdigest()}"]
    assert job.state == COMPLETED


async def test_false_cancels_and_stops_the_source(harness, blobs: Path) -> None:
    make_blob(blobs, "big.bin", 4 * 1024 * 1024)
    async with harness(components={"probe": {"prefetch_chunks": 2}}) as h:
        job = await h.run("probe", ["open s local big.bin", "start s 65536 9", "stop 9 2"])
    lines = h.out(job)
    assert [c[0] for c in chunk_lines(lines, 9)] == [0, 1, 2]
    assert len(ended(lines, 9)) == 1 and ended(lines, 9)[0].startswith("ended 9 cancelled")
    d = job.deliveries[0]
    # 64 chunks exist; the reader stopped within read-ahead of the cancel point
    assert d.stats.read_bytes <= (3 + 2 + 1) * 65536
    assert job.state == FAILED  # a job completes only when every stream completed
    assert h.runtime.budget.in_use == 0


async def test_start_chunking_errors(harness, blobs: Path) -> None:
    make_blob(blobs, "a.bin", 1000)
    async with harness(limits={"max_chunk_size": "64KiB"}) as h:
        job = await h.run("probe", [
            "open a local a.bin", "open b local a.bin", "open c local a.bin",
            "start a 0 1",               # chunk-size 0
            "start a 65537 1",           # above max_chunk_size
            "start a 100 1",             # ok
            "start a 100 2",             # same stream again: closed
            "start b 100 1",             # correlation-id 1 already active
            "start c 100 2",             # ok
        ])
    lines = h.out(job)
    starts = [line for line in lines if line.startswith("start")]
    assert starts[0].startswith("start 1 err InvalidArgument")
    assert starts[1].startswith("start 1 err InvalidArgument")
    assert starts[2] == "start 1 ok"
    assert starts[3] == "start 2 err Closed"
    assert starts[4].startswith("start 1 err InvalidArgument") and "already active" in starts[4]
    assert starts[5] == "start 2 ok"
    assert job.state == COMPLETED  # the two accepted streams completed


async def test_pending_queue_full_is_failed(harness, blobs: Path) -> None:
    make_blob(blobs, "a.bin", 1000)
    async with harness(limits={"max_pending_streams": 1}) as h:
        job = await h.run("probe", ["open a local a.bin", "open b local a.bin", "start a 100 1", "start b 100 2"])
        assert h.runtime.active_streams == 0
    starts = [line for line in h.out(job) if line.startswith("start")]
    assert starts == ["start 1 ok", starts[1]]
    assert starts[1].startswith("start 2 err Failed") and "full" in starts[1]


async def test_read_then_chunk_covers_the_rest_and_read_is_closed_after(harness, blobs: Path) -> None:
    data = make_blob(blobs, "a.bin", 10_000)
    async with harness(limits={"max_chunk_size": "4KiB"}) as h:
        job = await h.run("probe", [
            "open s local a.bin", "read s 100", "read s 5000", "size s",
            "start s 4096 4", "read s 10", "readin 4 0",
        ])
    lines = h.out(job)
    assert f"read s 100 {hashlib.sha256(data[:100]).hexdigest()[:16]}" in lines
    assert any(line.startswith("read s err InvalidArgument") for line in lines)  # 5000 > max
    assert "size s 10000" in lines
    assert "read s err Closed" in lines  # read after start-chunking-read
    assert "readin 4 err Closed" in lines  # read on the borrowed handle inside handle-chunk
    got = chunk_lines(lines, 4)
    assert [c[2] for c in got] == [4096, 4096, 10_000 - 100 - 8192]
    assert all(c[1] == 3 for c in got)
    assert ended(lines, 4) == [f"ended 4 completed {hashlib.sha256(data[100:]).hexdigest()}"]


async def test_dropped_handle_keeps_delivering(harness, blobs: Path) -> None:
    data = make_blob(blobs, "a.bin", 50_000)
    async with harness() as h:
        job = await h.run("probe", ["open s local a.bin", "start s 8192 2", "drop s"])
    lines = h.out(job)
    assert "drop s ok" in lines
    assert len(chunk_lines(lines, 2)) == 7
    assert ended(lines, 2) == [f"ended 2 completed {hashlib.sha256(data).hexdigest()}"]
    assert job.state == COMPLETED


async def test_invoke_error_cancels_started_streams(harness, blobs: Path) -> None:
    make_blob(blobs, "a.bin", 50_000)
    async with harness() as h:
        job = await h.run("probe", ["open s local a.bin", "start s 8192 2", "fail"])
    lines = h.out(job)
    assert chunk_lines(lines, 2) == []
    assert [line.split()[:3] for line in ended(lines, 2)] == [["ended", "2", "cancelled"]]
    assert job.state == FAILED and job.invoke_ok is False
    assert "asked to fail" in (job.error or "")


async def test_stream_started_inside_handle_chunk_belongs_to_the_job(harness, blobs: Path) -> None:
    a = make_blob(blobs, "a.bin", 20_000)
    b = make_blob(blobs, "b.bin", 30_000, seed=1)
    async with harness() as h:
        job = await h.run("probe", ["open s local a.bin", "start s 4096 1", "nested 1 1 local b.bin 5000 2"])
    lines = h.out(job)
    assert "start 2 ok" in lines
    assert ended(lines, 1) == [f"ended 1 completed {hashlib.sha256(a).hexdigest()}"]
    assert ended(lines, 2) == [f"ended 2 completed {hashlib.sha256(b).hexdigest()}"]
    assert job.state == COMPLETED and len(job.deliveries) == 2


async def test_calls_for_one_cid_are_in_order_and_streams_interleave_fairly(harness, blobs: Path) -> None:
    make_blob(blobs, "big.bin", 2 * 1024 * 1024)
    for i in range(3):
        make_blob(blobs, f"small{i}.bin", 3 * 4096, seed=i + 10)
    async with harness() as h:
        job = await h.run("probe", [
            "open big local big.bin", "start big 4096 100",
            *[f"open s{i} local small{i}.bin" for i in range(3)],
            *[f"start s{i} 4096 {i}" for i in range(3)],
        ])
    lines = h.out(job)
    for cid in (100, 0, 1, 2):
        idx = [c[0] for c in chunk_lines(lines, cid)]
        assert idx == sorted(idx) == list(range(len(idx)))
    end_order = [int(line.split()[1]) for line in lines if line.startswith("ended")]
    # the small streams are not starved behind the 512-chunk one
    assert end_order[-1] == 100
    assert job.state == COMPLETED


async def test_path_traversal_is_refused(harness, blobs: Path, tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("secret")
    (blobs / "sub").mkdir()
    make_blob(blobs, "sub/in.bin", 10)
    os.symlink(tmp_path / "secret.txt", blobs / "escape")
    os.symlink(blobs / "sub" / "in.bin", blobs / "inside")
    async with harness() as h:
        job = await h.run("probe", [
            "open a local ../secret.txt", f"open b local {tmp_path}/secret.txt", "open c local escape",
            "open d local sub/../../secret.txt", "open e local inside", "open f local sub/in.bin",
            "open g local missing.bin", "open h nosuch x",
        ])
    lines = h.out(job)
    for slot in "abcdg":
        assert any(line.startswith(f"open {slot} err Failed") for line in lines), slot
    assert "open e ok" in lines and "open f ok" in lines
    assert any(line.startswith("open h err Failed") and "no container" in line for line in lines)
