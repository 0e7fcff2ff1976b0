"""The core-module fast path: the same delivery rules (docs/wit-and-delivery.md), limits and faults, against
a hand-written C guest (tests/guests/core_probe) that speaks the canonical ABI."""
from __future__ import annotations

import asyncio
import math
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

from chunkd.cli import EXIT_CONFIG, EXIT_OK, main
from chunkd.jobs import COMPLETED, FAILED
from chunkd.streamset import DIRECT_BATCH_CHUNKS
from tests.conftest import WAT, make_blob
from tests.waits import until

CORE = {"core": {"guest": "core_probe"}}


def fnv(data: bytes, h: int = 2166136261) -> int:
    for b in data:
        h = ((h ^ b) * 16777619) & 0xFFFFFFFF
    return h


async def run_and_report(h: Any, args: list[str]) -> tuple[Any, list[str]]:
    job = await h.run("core", args)
    rep = await h.run("core", ["report"])
    assert rep.state == COMPLETED
    return job, (rep.invoke_result or "").splitlines()


@pytest.mark.parametrize("size,chunk", [(10_000, 4096), (8192, 4096), (0, 4096), (100_003, 1000)])
async def test_numbering_sizes_and_content(harness, blobs: Path, size: int, chunk: int) -> None:
    data = make_blob(blobs, "b.bin", size)
    async with harness(components=CORE) as h:
        assert h.runtime.pools["core"].comp.kind == "core"
        job, log = await run_and_report(h, ["local", "b.bin", str(chunk), "5", "-1", "log"])
    total = max(1, math.ceil(size / chunk))
    chunks = [line.split() for line in log if line.startswith("chunk ")]
    assert [int(c[2]) for c in chunks] == list(range(total))
    assert all(int(c[3]) == total for c in chunks)
    sizes = [int(c[4]) for c in chunks]
    assert sizes == ([chunk] * (total - 1) + [size - chunk * (total - 1)] if size else [0])
    # the running hash after every chunk: bytes arrived in order, exactly
    off = 0
    for c, n in zip(chunks, sizes, strict=True):
        off += n
        assert int(c[5]) == fnv(data[:off])
    assert log[0] == "start 5 ok"
    assert log[-1] == f"ended 5 0 {fnv(data)}"  # 0 = completed
    assert job.state == COMPLETED


async def test_false_cancels(harness, blobs: Path) -> None:
    make_blob(blobs, "b.bin", 1 << 20)
    async with harness(components=CORE) as h:
        job, log = await run_and_report(h, ["local", "b.bin", "65536", "3", "2", "log"])
    assert [line.split()[2] for line in log if line.startswith("chunk")] == ["0", "1", "2"]
    assert log[-1].startswith("ended 3 1 ")  # 1 = cancelled
    assert job.state == FAILED and job.deliveries[0].stats.read_bytes <= 6 * 65536


async def test_errors_cross_the_abi(harness, blobs: Path) -> None:
    data = make_blob(blobs, "a.bin", 5000)
    async with harness(components=CORE, limits={"max_chunk_size": "4KiB"}) as h:
        _, log = await run_and_report(h, ["local", "a.bin", "0", "1", "-1", "log"])
        assert log[0].startswith("start 1 err 1 ") and "chunk-size 0" in log[0]  # 1 = invalid-argument
        _, log = await run_and_report(h, ["local", "a.bin", "5000", "1", "-1", "log"])
        assert log[0].startswith("start 1 err 1 ")
        _, log = await run_and_report(h, ["local", "missing.bin", "100", "1", "-1", "log"])
        assert log[0].startswith("open err 2 ") and "missing.bin" in log[0]  # 2 = failed
        _, log = await run_and_report(h, ["read", "local", "a.bin", "3000"])
        assert log == [f"read 3000 {fnv(data[:3000])}"]
        _, log = await run_and_report(h, ["read", "local", "a.bin", "5000"])
        assert log[0].startswith("read err 1 ")
        # a second start-chunking-read on the same stream: closed (0, no message)
        await h.run("core", ["local", "a.bin", "1000", "2", "-1", "quiet"])
        _, log = await run_and_report(h, ["again", "9", "100"])
        assert log == ["start 9 err 0"]


async def test_unknown_size(harness, blobs: Path) -> None:
    fifo = blobs / "pipe"
    os.mkfifo(fifo)
    payload = os.urandom(10_000)
    t = threading.Thread(target=lambda: fifo.write_bytes(payload), daemon=True)
    t.start()
    async with harness(components=CORE) as h:
        job, log = await run_and_report(h, ["local", "pipe", "4096", "3", "-1", "log"])
    t.join(10)
    chunks = [line.split() for line in log if line.startswith("chunk ")]
    assert [c[3] for c in chunks] == ["0", "0", "0"] and log[-1] == f"ended 3 0 {fnv(payload)}"


async def test_invoke_error_trap_timeout_memory(harness, blobs: Path) -> None:
    make_blob(blobs, "a.bin", 4 * 1024 * 1024)
    async with harness(components=CORE, limits={"call_timeout": "500ms", "instance_memory": "1MiB",
                                                 "max_chunk_size": "4MiB"}) as h:
        j = await h.run("core", ["fail"])
        assert j.state == FAILED and j.invoke_ok is False and "asked to fail" in (j.error or "")
        j = await h.run("core", ["trap"])
        assert j.state == FAILED and "trapped" in (j.error or "")
        j = await h.run("core", ["loop"])
        assert j.state == FAILED and "call_timeout" in (j.error or "")
        j = await h.run("core", ["local", "a.bin", str(2 * 1024 * 1024), "1", "-1", "quiet"])  # > 1 MiB memory
        assert j.state == FAILED and j.deliveries[0].outcome is not None
        assert j.deliveries[0].outcome.kind == "failed"
        ok = await h.run("core", ["local", "a.bin", "65536", "1", "-1", "quiet"])
        assert ok.state == COMPLETED
        assert h.runtime.metrics.value("chunkd_timeouts_total", component="core") == 1


async def test_bad_guest_pointer_is_a_clear_trap(harness, blobs: Path, tmp_path: Path, guests: dict[str, Path]) -> None:
    guests = dict(guests)
    guests["bad"] = WAT / "core-bad-pointer.wat"
    from chunkd.runtime import Runtime
    from tests.conftest import config_for
    cfg = config_for(tmp_path / "state", blobs, guests, components={"bad": {}})
    rt = Runtime(cfg)
    await rt.start()
    try:
        job = await rt.run("bad", [])
    finally:
        await rt.close()
    assert job.state == FAILED and "outside its memory" in (job.error or "")


def test_check_names_the_path_and_refuses_bad_core_modules(tmp_path: Path, state_dir: Path, blobs: Path,
                                                           guests: dict[str, Path],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from tests.test_cli import write_config
    good = write_config(tmp_path, state_dir, blobs, {"fast": guests["core_probe"], "slow": guests["sha256"]})
    assert main(["check", "-c", str(good)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "component fast: ok: exports consumer-with-events (core-module path: handle-chunk calls, native host core)" in out
    assert "component slow: ok: exports consumer-with-events (component path: handle-chunk calls, native host core)" in out
    wasi = tmp_path / "wasi.wat"
    shutil.copy(WAT / "core-wants-wasi.wat", wasi)
    bad = write_config(tmp_path, state_dir, blobs, {"wasi": wasi})
    assert main(["check", "-c", str(bad)]) == EXIT_CONFIG
    out = capsys.readouterr().out
    assert "component wasi: FAIL" in out and "wasi_snapshot_preview1/path_open" in out


async def test_core_guest_prints_through_fd_write(harness, tmp_path: Path) -> None:
    """fd_write to fds 1 and 2 becomes guest output lines, as a component's stdout and
    stderr do; any other fd gets errno badf (the guest checks it and answers ok)."""
    wat = tmp_path / "fdw.wat"
    shutil.copy(WAT / "core-fd-write.wat", wat)
    seen: list[tuple[str, str]] = []
    async with harness(components={"fdw": {"path": str(wat)}}) as h:
        h.runtime.output_listeners.append(lambda job, comp, fd, line: seen.append((fd, line)))
        job = await h.run("fdw", [])
    assert job.state == COMPLETED and job.invoke_result == "badf"
    assert ("stdout", "hello from core") in seen and ("stderr", "to stderr") in seen
    assert h.out(job) == ["hello from core"]


async def test_file_chunks_go_straight_into_guest_memory(harness, blobs: Path) -> None:
    # direct mode: the instance thread preadv()s each chunk into the guest's buffer, so
    # chunkd buffers nothing for a file stream and the bytes still arrive exactly
    data = make_blob(blobs, "d.bin", 3_000_001)
    async with harness(components=CORE) as h:
        job, log = await run_and_report(h, ["local", "d.bin", "65536", "5", "-1", "log"])
        assert job.state == COMPLETED and job.deliveries[0].direct
        assert h.runtime.budget.peak == 0
    assert log[-1] == f"ended 5 0 {fnv(data)}"


async def test_direct_read_of_a_file_that_shrinks_ends_failed(harness, blobs: Path) -> None:
    make_blob(blobs, "s.bin", 1 << 20)
    async with harness(components={"core": {"guest": "core_probe", "max_bytes_per_second": "512KiB"}}) as h:
        job = h.runtime.submit("core", ["local", "s.bin", "65536", "5", "-1", "log"])
        # paced at 512 KiB/s (no catch-up), one 64 KiB chunk per 125 ms: the cut comes
        # ~375 ms before the read of the chunk that crosses 200_000
        await until(lambda: job.deliveries and job.deliveries[0].stats.chunks >= 1, "the first chunk")
        os.truncate(blobs / "s.bin", 200_000)
        await asyncio.wait_for(job.done.wait(), 30)
    assert job.state == FAILED
    assert "changed size" in str(job.deliveries[0].outcome), job.deliveries[0].outcome
    assert job.deliveries[0].stats.bytes <= 200_000


async def test_trap_and_timeout_inside_a_batch_break_only_that_instance(harness, blobs: Path) -> None:
    """A trap or a timeout in handle-chunk in the middle of a native batch: the chunks
    before it were delivered, the job fails with the reason, the instance is replaced
    and the next job completes."""
    data = make_blob(blobs, "a.bin", 1 << 20)
    async with harness(components={"core": {"guest": "core_probe", "prefetch_chunks": 8}},
                       limits={"call_timeout": "1s"}) as h:
        trapped = await h.run("core", ["local", "a.bin", "65536", "1", "5", "trapat"])
        assert trapped.state == FAILED and "trapped" in (trapped.error or ""), trapped.error
        assert trapped.deliveries[0].stats.chunks == 5  # 0..4 answered, the 6th call trapped
        looped = await h.run("core", ["local", "a.bin", "65536", "2", "3", "loopat"])
        assert looped.state == FAILED and "call_timeout" in (looped.error or ""), looped.error
        assert looped.deliveries[0].stats.chunks == 3
        job, log = await run_and_report(h, ["local", "a.bin", "65536", "3", "-1", "log"])
        assert job.state == COMPLETED and log[-1] == f"ended 3 0 {fnv(data)}"
        assert h.runtime.metrics.value("chunkd_traps_total", component="core") == 1
        assert h.runtime.metrics.value("chunkd_timeouts_total", component="core") == 1


@pytest.mark.parametrize("stop_at", [7, DIRECT_BATCH_CHUNKS + 44, DIRECT_BATCH_CHUNKS - 1, DIRECT_BATCH_CHUNKS])
async def test_false_stops_the_stream_across_pipelined_batches(harness, blobs: Path, stop_at: int) -> None:
    """Direct batches are pipelined (DIRECT_BATCH_CHUNKS chunks each, here one run of the
    one stream): when a chunk answers false, the next batch is already queued on the
    instance thread with more chunks of the same stream. None of them may reach the
    guest (stops in a batch's middle, at its last chunk and at the next one's first)."""
    assert 1001 > 3 * DIRECT_BATCH_CHUNKS  # the 1,001-chunk stream spans several batches
    data = make_blob(blobs, "a.bin", 1_000_003)
    async with harness(components=CORE) as h:
        job, log = await run_and_report(h, ["local", "a.bin", "1000", "4", str(stop_at), "log"])
    chunks = [int(line.split()[2]) for line in log if line.startswith("chunk 4 ")]
    assert chunks == list(range(stop_at + 1))
    assert log[-1] == f"ended 4 1 {fnv(data[:1000 * (stop_at + 1)])}"  # 1 = cancelled
    assert job.deliveries[0].stats.chunks == stop_at + 1
    assert str(job.deliveries[0].outcome) == "cancelled"


def test_a_handle_chunk_of_the_wrong_type_is_refused_with_a_clear_error(tmp_path: Path, capsys) -> None:
    """The native core checks every export's type when it loads a guest: a core
    handle-chunk whose list pointer is an i64 is refused by `chunkd check` (and at start)
    with the export, its type and the expected one, before any call is made."""
    cfg = tmp_path / "chunkd.toml"
    cfg.write_text(f"""
[daemon]
state_dir = "{tmp_path / 'state'}"
[containers.local]
kind = "file"
root = "{tmp_path}"
[components.wrong]
path = "{WAT / 'core-handle-wrong-type.wat'}"
""")
    assert main(["check", "-c", str(cfg)]) == EXIT_CONFIG
    out = capsys.readouterr().out
    assert "component wrong: FAIL" in out
    assert "handle-chunk has type (i32, i64, i64, i64, i64, i32) -> (i32)" in out, out
    assert "expected (i32, i64, i64, i64, i32, i32) -> (i32)" in out
