"""The adversarial origin cases against every object-store kind: s3 (moto's server), gcs
(fake-gcs-server) and azure (Azurite), each behind a real fault proxy on loopback.

Per kind: a range whose answer never comes (hanging), a body that trickles, a body
dropped mid-way, and throttling (429, 503). One fault is retried from the failed
offset and the job completes with exact bytes; a fault on every try fails the stream
in bounded time, with the reason; and the daemon keeps serving other jobs.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator

import pytest

from chunkd.jobs import COMPLETED
from tests.conftest import make_blob
from tests.emulators import AZURITE_ACCOUNT, AZURITE_KEY, azure_blob, azurite, fake_gcs_server
from tests.remote_support import FaultProxy, moto_server, s3_client
from tests.test_delivery import chunk_lines, ended

MiB = 1024 * 1024
BUCKET = "chunkd-adversarial"
KINDS = ["s3", "gcs", "azure"]


@pytest.fixture(scope="module")
def stores() -> Iterator[dict[str, str]]:
    with moto_server(BUCKET) as s3, fake_gcs_server(BUCKET) as gcs, azurite(BUCKET) as az:
        yield {"s3": s3, "gcs": gcs, "azure": az}


def put(kind: str, url: str, key: str, data: bytes) -> None:
    """Store `data` at `key` with each store's own plain client (not chunkd's)."""
    if kind == "s3":
        s3_client(url).put_object(Bucket=BUCKET, Key=key, Body=data)
    elif kind == "gcs":
        q = urllib.parse.urlencode({"uploadType": "media", "name": key})
        req = urllib.request.Request(f"{url}/upload/storage/v1/b/{BUCKET}/o?{q}", data=data, method="POST",
                                     headers={"Content-Type": "application/octet-stream"})
        urllib.request.urlopen(req, timeout=30).close()
    else:
        azure_blob(url).get_blob_client(BUCKET, key).upload_blob(data, overwrite=True)


def container(kind: str, proxy_url: str, **extra: Any) -> dict[str, dict[str, Any]]:
    tight = {"timeout": "2s", "low_speed_time": "1s", "low_speed_limit": "1KiB", "range_size": "1MiB",
             "prefix": "adv/", **extra}
    if kind == "s3":
        return {"obj": {"kind": "s3", "bucket": BUCKET, "endpoint_url": proxy_url, "region": "us-east-1", **tight}}
    if kind == "gcs":
        return {"obj": {"kind": "gcs", "bucket": BUCKET, "endpoint_url": proxy_url, **tight}}
    return {"obj": {"kind": "azure", "account": AZURITE_ACCOUNT, "account_key": AZURITE_KEY,
                    "container_name": BUCKET, "endpoint_url": f"{proxy_url}/{AZURITE_ACCOUNT}", **tight}}


@pytest.fixture
async def proxied(stores: dict[str, str]) -> AsyncIterator[Callable[[str], Any]]:
    made: list[FaultProxy] = []

    async def make(kind: str) -> FaultProxy:
        upstream = stores[kind].rsplit(f"/{AZURITE_ACCOUNT}", 1)[0] if kind == "azure" else stores[kind]
        p = FaultProxy(upstream)
        await p.start()
        made.append(p)
        return p
    yield make
    for p in made:
        await p.stop()


async def _job(h: Any, name: str, cid: int, timeout: float = 60) -> tuple[Any, float]:
    t0 = time.monotonic()
    job = await h.run("probe", [f"open s obj {name}", f"start s 262144 {cid}"], timeout=timeout)
    return job, time.monotonic() - t0


async def _still_serves(h: Any, blobs: Path) -> None:
    data = make_blob(blobs, "ok.bin", 300_000)
    job = await h.run("probe", ["open s local ok.bin", "start s 65536 9"])
    assert job.state == COMPLETED, job.error
    assert ended(h.out(job), 9) == [f"ended 9 completed {hashlib.sha256(data).hexdigest()}"]


CASES = {
    # fault: (what the final failure says, how long one try may take at the tight bounds)
    "hang": "no answer within",
    "trickle": "slower than 1024 bytes/s",
    "drop": "",
    "503": "503",
    "429": "429",
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fault", list(CASES))
async def test_one_fault_is_retried_from_the_offset_and_every_fault_fails_in_bounded_time(
        harness, stores: dict[str, str], proxied: Callable[[str], Any], blobs: Path, kind: str, fault: str) -> None:
    data = os.urandom(3 * MiB + 12345)
    key = f"adv/{kind}-{fault}.bin"
    await asyncio.to_thread(put, kind, stores[kind], key, data)
    proxy: FaultProxy = await proxied(kind)
    retries = 2
    async with harness(containers=container(kind, f"http://127.0.0.1:{proxy.port}"),
                       limits={"source_retries": retries, "source_retry_backoff": "1ms"}) as h:
        # one fault, on the second range: retried from that range's offset, exact bytes
        proxy.faults.extend(["pass", fault])
        job, _ = await _job(h, key.removeprefix("adv/"), 1)
        assert job.state == COMPLETED, job.error
        assert ended(h.out(job), 1) == [f"ended 1 completed {hashlib.sha256(data).hexdigest()}"]
        assert [c[0] for c in chunk_lines(h.out(job), 1)] == list(range(13))
        assert proxy.injected == [fault] and job.deliveries[0].stats.retries == 1
        # the fault on every try: the stream fails with the reason, in bounded time
        proxy.faults.clear()
        proxy.faults.extend([fault] * (retries + 1))
        job, took = await _job(h, key.removeprefix("adv/"), 2)
        e = ended(h.out(job), 2)
        assert len(e) == 1 and e[0].startswith("ended 2 failed"), e
        assert CASES[fault] in e[0], e[0]
        assert took < 30, f"{kind} {fault}: the failure took {took:.1f}s"
        assert not any(AZURITE_KEY in line or "sig=" in line for line in h.out(job))
        await _still_serves(h, blobs)
