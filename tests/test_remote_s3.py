"""kind = "s3" against moto's standalone S3 server on 127.0.0.1 (a real bucket), with
faults injected by a real proxy in front of it."""
from __future__ import annotations

import asyncio
import hashlib
import os
from typing import Any, AsyncIterator, Iterator

import pytest

from chunkd.jobs import COMPLETED
from tests.remote_support import FaultProxy, moto_server, s3_client
from tests.test_delivery import chunk_lines, ended
from tests.waits import until

MiB = 1024 * 1024
BUCKET = "chunkd-blobs"


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    with moto_server(BUCKET) as url:
        yield url


@pytest.fixture
def s3(moto_url: str) -> Any:
    return s3_client(moto_url)


@pytest.fixture
async def proxy(moto_url: str) -> AsyncIterator[FaultProxy]:
    p = FaultProxy(moto_url)
    await p.start()
    yield p
    await p.stop()


def bucket(url: str, **extra: Any) -> dict[str, dict[str, Any]]:
    return {"bkt": {"kind": "s3", "bucket": BUCKET, "prefix": "data/", "endpoint_url": url, "region": "us-east-1",
                    "range_size": "1MiB", "timeout": "5s", **extra}}


async def test_digest_from_s3_with_prefix(harness, s3: Any, moto_url: str) -> None:
    data = os.urandom(5 * MiB + 7)
    s3.put_object(Bucket=BUCKET, Key="data/x/a.bin", Body=data)
    async with harness(containers=bucket(moto_url)) as h:
        job = await h.run("probe", ["open s bkt x/a.bin", "size s", "start s 262144 1"])
    assert job.state == COMPLETED, job.error
    assert f"size s {len(data)}" in h.out(job)
    assert [c[0] for c in chunk_lines(h.out(job), 1)] == list(range(21))
    assert ended(h.out(job), 1) == [f"ended 1 completed {hashlib.sha256(data).hexdigest()}"]


async def test_throttling_5xx_and_drops_are_retried(harness, s3: Any, proxy: FaultProxy) -> None:
    data = os.urandom(4 * MiB)
    s3.put_object(Bucket=BUCKET, Key="data/f.bin", Body=data)
    proxy.faults.extend(["slowdown", "drop", "503", "slowdown", "drop"])
    async with harness(containers=bucket(f"http://127.0.0.1:{proxy.port}"),
                       limits={"source_retries": 6, "source_retry_backoff": "5ms"}) as h:
        job = await h.run("probe", ["open s bkt f.bin", "start s 100000 1"])
    assert job.state == COMPLETED, job.error
    assert [c[0] for c in chunk_lines(h.out(job), 1)] == list(range(42))
    assert ended(h.out(job), 1) == [f"ended 1 completed {hashlib.sha256(data).hexdigest()}"]
    assert len(proxy.injected) == 5 and job.deliveries[0].stats.retries == 5


async def test_a_trickling_s3_body_is_cut_and_retried(harness, s3: Any, proxy: FaultProxy) -> None:
    """The same bounds as http: a GetObject body slower than the low-speed limit is cut
    (a transient error, retried from the offset); when every try trickles, the stream
    fails in bounded time."""
    import time
    data = os.urandom(2 * MiB)
    s3.put_object(Bucket=BUCKET, Key="data/t.bin", Body=data)
    proxy.faults.extend(["trickle"])
    tight = {"low_speed_time": "1s", "low_speed_limit": "1KiB"}
    async with harness(containers=bucket(f"http://127.0.0.1:{proxy.port}", **tight),
                       limits={"source_retries": 2, "source_retry_backoff": "1ms"}) as h:
        job = await h.run("probe", ["open s bkt t.bin", "start s 262144 1"], timeout=60)
        assert job.state == COMPLETED, job.error
        assert ended(h.out(job), 1) == [f"ended 1 completed {hashlib.sha256(data).hexdigest()}"]
        assert job.deliveries[0].stats.retries == 1 and proxy.injected == ["trickle"]
        proxy.faults.extend(["trickle"] * 3)
        t0 = time.monotonic()
        job = await h.run("probe", ["open s bkt t.bin", "start s 262144 2"], timeout=60)
        assert job.state != COMPLETED and "slower than 1024 bytes/s" in str(job.deliveries[0].outcome)
        assert time.monotonic() - t0 < 15


async def test_object_replaced_mid_stream_fails(harness, s3: Any, moto_url: str) -> None:
    s3.put_object(Bucket=BUCKET, Key="data/r.bin", Body=os.urandom(6 * MiB))
    async with harness(containers=bucket(moto_url), components={"probe": {"max_bytes_per_second": 2 * MiB}}) as h:
        job = h.runtime.submit("probe", ["open s bkt r.bin", "start s 65536 1"])
        await until(lambda: job.deliveries and job.deliveries[0].stats.chunks >= 1, "the first chunk")
        await asyncio.to_thread(s3.put_object, Bucket=BUCKET, Key="data/r.bin", Body=os.urandom(6 * MiB))
        await asyncio.wait_for(job.done.wait(), 60)
    e = ended(h.out(job), 1)
    assert len(e) == 1 and e[0].startswith("ended 1 failed") and "changed" in e[0]
    n = len(chunk_lines(h.out(job), 1))
    assert 0 < n < 96 and n % 16 == 0  # whole 1 MiB ranges of the first version only


async def test_names_stay_under_the_prefix(harness, s3: Any, moto_url: str) -> None:
    s3.put_object(Bucket=BUCKET, Key="secret.bin", Body=b"outside the prefix")
    s3.put_object(Bucket=BUCKET, Key="data/in.bin", Body=b"inside")
    async with harness(containers={**bucket(moto_url), "nob": {"kind": "s3"}}) as h:
        job = await h.run("probe", ["open a bkt ../secret.bin", "open b bkt /secret.bin", "open c bkt in.bin",
                                    "open d bkt nothing.bin", "open e nob x"])
    lines = h.out(job)
    assert any(line.startswith("open a err Failed") for line in lines)
    assert any(line.startswith("open b err Failed") for line in lines)
    assert "open c ok" in lines
    assert any(line.startswith("open d err Failed") and "not found" in line for line in lines)
    assert any(line.startswith("open e err Failed") and "no bucket" in line for line in lines)
    assert not any("testing" in line for line in lines)  # no credentials in messages
