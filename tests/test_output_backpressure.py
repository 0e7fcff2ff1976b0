"""A slow sink slows the guest, never host memory (issue 25, "Bounded memory").

A real writing guest (examples/copy-rs in the handle-chunk world, examples/transform-rs
--mode=copy in the streams world) copies a blob of 10x `limits.max_buffered_bytes` to an
s3 container whose endpoint is a throttling TCP proxy on 127.0.0.1 in front of moto's S3
server (its own process, so its memory is not this one's). File chunks go through the
budgeted read-ahead (`buffered_files`), so the one budget carries both directions.
While the job runs, a sampler on the loop reads the runtime's budget in use and this
process's VmRSS; afterwards the test checks:
  - the budget in use never passed max_buffered_bytes (sampled, and the budget's own
    high-water mark), and the output's part did pass through it;
  - the sink was slow indeed (the job took at least the proxy's time for the bytes);
  - VmRSS grew by far less than the output over the job (bound: 4x the budget);
  - the object in the bucket is exactly the input, and no multipart upload is left open.
Every wait is bounded (the job by a timeout, moto's start by a deadline); nothing sleeps
in the hope that something happened.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from chunkd.jobs import COMPLETED
from tests.conftest import GUESTS, ROOT

MiB = 1024 * 1024
BUCKET = "chunkd-backpressure"
BUDGET = 10 * MiB  # limits.max_buffered_bytes
PART = 5 * MiB  # the s3 container's part_size (S3's smallest)
SIZE = 10 * BUDGET + 7  # the output: 10x the budget, not a whole number of parts
RATE = 40_000_000  # bytes/s the proxy lets through towards S3
PIECE = 64 * 1024  # the proxy's read size: its own memory stays this small per direction
JOB_TIMEOUT = 180.0
GUESTS_ = {"copy_rs": [], "transform_rs": ["--mode=copy"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def writers() -> dict[str, str]:
    """The two copy guests (built when missing or stale: a no-op when they are current)."""
    subprocess.run([str(ROOT / "scripts" / "build-guests"), *GUESTS_], check=True)
    return {n: str(GUESTS / f"{n}.wasm") for n in GUESTS_}


@pytest.fixture(scope="module")
def moto_port() -> Iterator[int]:
    """moto's S3 server in a process of its own on 127.0.0.1, with the bucket made."""
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, "moto's server exited"
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).close()
                break
            except urllib.error.HTTPError:
                break  # it answers
            except OSError:
                assert time.monotonic() < deadline, "moto's server did not come up within 60s"
                time.sleep(0.1)
        import boto3
        boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1").create_bucket(
            Bucket=BUCKET)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def s3(moto_port: int) -> Any:
    import boto3
    return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{moto_port}", region_name="us-east-1")


class ThrottleProxy:
    """A TCP proxy on 127.0.0.1: bytes towards the upstream go through one token bucket of
    `rate` bytes/s shared by every connection (so the sink is slow however many
    connections the client opens); the answers come back unthrottled."""

    def __init__(self, upstream_port: int, rate: int) -> None:
        self.upstream_port = upstream_port
        self.rate = rate
        self.forwarded = 0  # bytes let through towards the upstream
        self._next_free = 0.0
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{self.port}"

    async def _throttle(self, n: int) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._next_free = max(self._next_free, now) + n / self.rate
        if self._next_free > now:
            await asyncio.sleep(self._next_free - now)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, throttled: bool) -> None:
        try:
            while data := await src.read(PIECE):
                if throttled:
                    await self._throttle(len(data))
                    self.forwarded += len(data)
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            dst.close()

    async def _accept(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        self._writers.add(cw)
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            cw.close()
            return
        self._writers.add(uw)
        pumps = [asyncio.ensure_future(self._pump(cr, uw, True)), asyncio.ensure_future(self._pump(ur, cw, False))]
        self._tasks.update(pumps)
        try:
            await asyncio.gather(*pumps)
        finally:
            self._tasks.difference_update(pumps)
            self._writers.difference_update((cw, uw))

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for t in list(self._tasks):
            t.cancel()
        for w in list(self._writers):
            w.close()
        await asyncio.wait_for(self._server.wait_closed(), 10)


@pytest.fixture
async def proxy(moto_port: int) -> Any:
    p = ThrottleProxy(moto_port, RATE)
    await p.start()
    yield p
    await p.stop()


def vm_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def write_input(path: Path, size: int) -> str:
    """Random bytes in 1 MiB pieces (the test's own memory stays small); their sha256."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            piece = os.urandom(min(MiB, left))
            h.update(piece)
            f.write(piece)
            left -= len(piece)
    return h.hexdigest()


def object_sha256(s3: Any, key: str) -> tuple[int, str]:
    body = s3.get_object(Bucket=BUCKET, Key=key)["Body"]
    h, n = hashlib.sha256(), 0
    while piece := body.read(MiB):
        h.update(piece)
        n += len(piece)
    return n, h.hexdigest()


@pytest.mark.usefixtures("buffered_files")
@pytest.mark.parametrize("guest", list(GUESTS_))
async def test_a_slow_sink_keeps_the_budget_and_rss_flat_and_the_output_exact(
        harness, blobs: Path, s3: Any, proxy: ThrottleProxy, writers: dict[str, str], guest: str) -> None:
    digest = write_input(blobs / "big.bin", SIZE)
    write_input(blobs / "warm.bin", PART + 3)
    containers = {"bkt": {"kind": "s3", "bucket": BUCKET, "endpoint_url": f"http://127.0.0.1:{proxy.port}",
                          "region": "us-east-1", "writable": True, "part_size": PART, "timeout": "30s"}}
    limits = {"max_buffered_bytes": BUDGET, "max_chunk_size": "1MiB", "call_timeout": "30s"}
    args = [*GUESTS_[guest], "--chunk-size=1048576", "local"]
    async with harness(components={guest: {"path": writers[guest], "prefetch_chunks": 2}},
                       containers=containers, limits=limits) as h:
        rt = h.runtime
        # warm-up: the component compiled, the client's connections open (not measured)
        warm = await h.run(guest, [*args, "warm.bin", "bkt", f"{guest}-warm.bin"], timeout=JOB_TIMEOUT)
        assert warm.state == COMPLETED, warm.error
        rss_before = vm_rss()
        forwarded_before = proxy.forwarded
        in_use_max, rss_max, samples = 0, rss_before, 0
        t = time.monotonic()
        job = rt.submit(guest, [*args, "big.bin", "bkt", f"{guest}.bin"])
        deadline = t + JOB_TIMEOUT
        while not job.done.is_set():  # the sampler: bounded by the job's deadline
            assert time.monotonic() < deadline, f"the job did not end within {JOB_TIMEOUT:g}s"
            in_use_max = max(in_use_max, rt.budget.in_use)
            rss_max = max(rss_max, vm_rss())
            samples += 1
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(job.done.wait(), 0.005)
        elapsed = time.monotonic() - t
        assert job.state == COMPLETED, job.error
        budget_peak = rt.budget.peak
    sent = proxy.forwarded - forwarded_before
    print(f"\n{guest}: {SIZE} bytes in {elapsed:.2f}s ({SIZE / elapsed / 1e6:.1f} MB/s through a {RATE / 1e6:g} MB/s "
          f"proxy), budget in use max {in_use_max} (peak {budget_peak}) of {BUDGET}, VmRSS {rss_before // MiB} MiB "
          f"-> max {rss_max // MiB} MiB (+{(rss_max - rss_before) / MiB:.1f} MiB), {samples} samples")
    # the budget: never past the limit, and the output's bytes were in it (a part at a time)
    assert samples >= 50, samples
    assert in_use_max <= BUDGET and budget_peak <= BUDGET, (in_use_max, budget_peak)
    assert budget_peak >= PART, f"the output's part never held budget: peak {budget_peak}"
    # the sink was slow: every byte went through the proxy, at its pace
    assert sent >= SIZE, sent
    assert elapsed >= 0.9 * SIZE / RATE, elapsed
    # RSS flat: the growth over the job is far below the output (and only a few budgets)
    assert rss_max - rss_before < 4 * BUDGET, f"VmRSS grew {(rss_max - rss_before) / MiB:.1f} MiB"
    # the output is exact, committed, and nothing is left open
    assert object_sha256(s3, f"{guest}.bin") == (SIZE, digest)
    assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
    for key in (f"{guest}.bin", f"{guest}-warm.bin"):
        s3.delete_object(Bucket=BUCKET, Key=key)
