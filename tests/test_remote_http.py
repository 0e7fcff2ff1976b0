"""kind = "http" against a real origin on 127.0.0.1, with faults injected by a real proxy."""
from __future__ import annotations

import asyncio
import hashlib
import os
from typing import Any, AsyncIterator

import pytest

from chunkd.jobs import COMPLETED, FAILED
from tests.remote_support import FaultProxy, Origin
from tests.test_delivery import chunk_lines, ended
from tests.waits import until

MiB = 1024 * 1024


@pytest.fixture
async def origin() -> AsyncIterator[Origin]:
    o = Origin()
    await o.start()
    yield o
    await o.stop()


@pytest.fixture
async def proxy(origin: Origin) -> AsyncIterator[FaultProxy]:
    p = FaultProxy(f"http://127.0.0.1:{origin.port}")
    await p.start()
    yield p
    await p.stop()


def http_container(url: str, **extra: Any) -> dict[str, dict[str, Any]]:
    return {"web": {"kind": "http", "base_url": url, "range_size": "1MiB", "timeout": "5s", **extra}}


def check_clean(lines: list[str], cid: int, data: bytes, chunk: int) -> None:
    idx = [c[0] for c in chunk_lines(lines, cid)]
    assert idx == list(range(-(-len(data) // chunk)))  # nothing twice, nothing out of order
    assert ended(lines, cid) == [f"ended {cid} completed {hashlib.sha256(data).hexdigest()}"]


async def test_ranged_delivery_coalesces_and_is_exact(harness, origin: Origin) -> None:
    data = os.urandom(5 * MiB + 123)
    origin.put("a.bin", data)
    url = f"http://127.0.0.1:{origin.port}/files"
    async with harness(containers=http_container(url)) as h:
        job = await h.run("probe", ["open s web a.bin", "size s", "start s 65536 1"])
    assert job.state == COMPLETED
    assert f"size s {len(data)}" in h.out(job)
    check_clean(h.out(job), 1, data, 65536)
    gets = [s for s in origin.served if s[0] == "a.bin"]
    # 1 MiB coalesced ranges (plus nothing else), not one request per 64 KiB chunk
    assert len(gets) == 6 and all(e - s + 1 <= MiB for _, _, s, e in gets)


async def test_transient_faults_are_retried_from_the_failed_offset(harness, origin: Origin,
                                                                   proxy: FaultProxy) -> None:
    data = os.urandom(4 * MiB)
    origin.put("a.bin", data)
    proxy.faults.extend(["503", "drop", "429", "503", "drop"])
    async with harness(containers=http_container(f"http://127.0.0.1:{proxy.port}/files"),
                       limits={"source_retries": 6, "source_retry_backoff": "5ms"}) as h:
        job = await h.run("probe", ["open s web a.bin", "start s 100000 1"])
    assert job.state == COMPLETED, job.error
    check_clean(h.out(job), 1, data, 100000)
    assert sorted(proxy.injected) == sorted(["503", "drop", "429", "503", "drop"])
    assert job.deliveries[0].stats.retries == 5


async def test_retries_spent_end_the_stream_failed(harness, origin: Origin, proxy: FaultProxy) -> None:
    origin.put("a.bin", os.urandom(3 * MiB))
    async with harness(containers=http_container(f"http://127.0.0.1:{proxy.port}/files"),
                       limits={"source_retries": 2, "source_retry_backoff": "1ms"}) as h:
        # first range fine, then a burst of 503s longer than the retries
        proxy.faults.extend(["ok", "503", "503", "503", "503"])
        job = await h.run("probe", ["open s web a.bin", "start s 65536 1"])
    e = ended(h.out(job), 1)
    assert len(e) == 1 and e[0].startswith("ended 1 failed") and "HTTP 503" in e[0]
    assert [c[0] for c in chunk_lines(h.out(job), 1)] == list(range(16))  # exactly the first 1 MiB range
    assert job.state == FAILED


async def test_blob_replaced_mid_stream_fails_never_mixes(harness, origin: Origin) -> None:
    data = os.urandom(4 * MiB)
    origin.put("a.bin", data)
    origin.replace_after["a.bin"] = (2, os.urandom(4 * MiB))  # after 2 ranged GETs, new content
    url = f"http://127.0.0.1:{origin.port}/files"
    async with harness(containers=http_container(url)) as h:
        job = await h.run("probe", ["open s web a.bin", "start s 65536 1"])
    e = ended(h.out(job), 1)
    assert len(e) == 1 and e[0].startswith("ended 1 failed") and "changed" in e[0]
    # every byte that was served came from version 1
    assert {v for name, v, _, _ in origin.served if name == "a.bin"} == {1}
    assert [c[0] for c in chunk_lines(h.out(job), 1)] == list(range(32))


@pytest.mark.parametrize("lengths", [True, False])
async def test_server_without_range_support_is_streamed(harness, origin: Origin, lengths: bool) -> None:
    origin.ranges = False
    origin.lengths = lengths
    data = os.urandom(3 * MiB + 5)
    origin.put("a.bin", data)
    url = f"http://127.0.0.1:{origin.port}/files"
    async with harness(containers=http_container(url)) as h:
        job = await h.run("probe", ["open s web a.bin", "size s", "start s 100000 1"])
    assert job.state == COMPLETED, job.error
    assert "size s None" in h.out(job)
    got = chunk_lines(h.out(job), 1)
    assert all(total == 0 for _, total, _ in got)
    assert sum(n for _, _, n in got) == len(data)
    assert ended(h.out(job), 1) == [f"ended 1 completed {hashlib.sha256(data).hexdigest()}"]


async def test_streamed_drop_resumes_by_skipping(harness, origin: Origin, proxy: FaultProxy) -> None:
    origin.ranges = False
    data = os.urandom(2 * MiB)
    origin.put("a.bin", data)
    async with harness(containers=http_container(f"http://127.0.0.1:{proxy.port}/files"),
                       limits={"source_retries": 3, "source_retry_backoff": "1ms"}) as h:
        job = await h.run("probe", ["open s web a.bin", "start s 65536 1"])
    assert job.state == COMPLETED
    assert ended(h.out(job), 1) == [f"ended 1 completed {hashlib.sha256(data).hexdigest()}"]


async def test_server_that_vanishes(harness, origin: Origin) -> None:
    origin.put("a.bin", os.urandom(8 * MiB))
    url = f"http://127.0.0.1:{origin.port}/files"
    async with harness(containers=http_container(url), limits={"source_retries": 2, "source_retry_backoff": "1ms"},
                       components={"probe": {"max_bytes_per_second": 4 * MiB}}) as h:
        job = h.runtime.submit("probe", ["open s web a.bin", "start s 65536 1"])
        await until(lambda: job.deliveries and job.deliveries[0].stats.chunks >= 2, "two chunks delivered")
        await origin.stop()
        await asyncio.wait_for(job.done.wait(), 60)
    e = ended(h.out(job), 1)
    assert len(e) == 1 and e[0].startswith("ended 1 failed")
    idx = [c[0] for c in chunk_lines(h.out(job), 1)]
    assert idx == list(range(len(idx))) and len(idx) < 128


async def test_names_cannot_escape_and_errors_are_clear(harness, origin: Origin) -> None:
    origin.put("dir/a.bin", b"x" * 10)
    url = f"http://user:secret@127.0.0.1:{origin.port}/files"
    async with harness(containers=http_container(url)) as h:
        job = await h.run("probe", ["open a web ../x", "open b web /etc/passwd", "open c web dir/../../x",
                                    "open d web missing.bin", "open e web dir/a.bin", "open f web a?b",
                                    "open g web http://evil/x"])
    lines = h.out(job)
    for slot in "abcdfg":
        assert any(line.startswith(f"open {slot} err Failed") for line in lines), (slot, lines)
    assert "open e ok" in lines
    assert any(line.startswith("open d err Failed") and "not found" in line for line in lines)
    assert not any("secret" in line for line in lines)  # credentials never leak into messages


async def test_headers_from_environment(harness, origin: Origin, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    orig = origin.handle

    async def spy(request):
        seen.append(request.headers.get("Authorization", ""))
        return await orig(request)

    origin.handle = spy  # type: ignore[method-assign]
    await origin.stop()
    await origin.start()
    origin.put("a.bin", b"hello")
    monkeypatch.setenv("ORIGIN_TOKEN", "Bearer t0k3n")
    url = f"http://127.0.0.1:{origin.port}/files"
    async with harness(containers=http_container(url, headers={"Authorization": "${ORIGIN_TOKEN}"})) as h:
        job = await h.run("probe", ["open s web a.bin", "read s 5"])
    assert job.state == COMPLETED and seen and all(v == "Bearer t0k3n" for v in seen)


@pytest.mark.parametrize("budget", ["4MiB", "1MiB", "1536KiB"])
async def test_read_unit_is_cut_to_fit_a_small_budget(harness, origin: Origin, budget: str) -> None:
    # the default 8 MiB range unit with a budget below it used to kill the producer
    # ("budget released more than acquired") and leave the job running for ever
    data = os.urandom(20 * MiB + 7)
    origin.put("big.bin", data)
    url = f"http://127.0.0.1:{origin.port}/files"
    container = {"web": {"kind": "http", "base_url": url, "timeout": "5s"}}  # range_size: the 8 MiB default
    async with harness(containers=container, limits={"max_buffered_bytes": budget}) as h:
        job = await asyncio.wait_for(h.run("probe", ["open s web big.bin", "start s 1048576 1"]), 60)
        assert job.state == COMPLETED, job.error
        check_clean(h.out(job), 1, data, MiB)
        assert h.runtime.budget.in_use == 0
        assert h.runtime.budget.peak <= h.runtime.budget.limit
