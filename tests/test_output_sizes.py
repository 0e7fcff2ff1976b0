"""Exact output bytes at the sizes that matter to a sink, through both worlds and both sinks:
0, 1, one s3 part - 1, one part + 1 and several parts (part_size 5 MiB), written by a real
copy guest of each world (examples/copy-rs: handle-chunk world, create/write/finish;
examples/transform-rs --mode=copy: streams world, write-blob with a stream<u8>) into a
file container and an s3 container (moto's server). Nothing else is left beside the
output: no temp file, no open multipart upload."""
from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest

from chunkd.jobs import COMPLETED
from tests.remote_support import moto_server, s3_client
from tests.conftest import GUESTS, ROOT, make_blob

PART = 5 * 1048576
BUCKET = "sizes"
GUESTS_ = {"copy_rs": [], "transform_rs": ["--mode=copy"]}
SIZES = {"0": 0, "1": 1, "part-1": PART - 1, "part+1": PART + 1, "3parts+5": 3 * PART + 5}


@pytest.fixture(scope="module")
def copiers() -> dict[str, dict[str, Any]]:
    subprocess.run([str(ROOT / "scripts" / "build-guests"), *GUESTS_], check=True)
    return {n: {"path": str(GUESTS / f"{n}.wasm")} for n in GUESTS_}


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with moto_server(BUCKET) as url:
        yield url


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("guest", list(GUESTS_))
async def test_exact_bytes_through_both_worlds_and_both_sinks(harness, blobs: Path, tmp_path: Path, moto_url: str,
                                                              copiers: dict[str, Any], guest: str, size: str) -> None:
    import boto3
    s3 = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1")
    n = SIZES[size]
    data = make_blob(blobs, "a.bin", n)
    out = tmp_path / "out"
    out.mkdir()
    prefix = f"{guest}-{size}/"
    containers = {"out": {"kind": "file", "root": str(out), "writable": True},
                  "bkt": {"kind": "s3", "bucket": BUCKET, "prefix": prefix, "endpoint_url": moto_url,
                          "region": "us-east-1", "timeout": "10s", "writable": True, "part_size": "5MiB"}}
    async with harness(components={guest: copiers[guest]}, containers=containers,
                       limits={"call_timeout": "30s"}) as h:
        for container in ("out", "bkt"):
            job = await h.run(guest, [*GUESTS_[guest], "--chunk-size=1048576", "local", "a.bin", container, "c.bin"],
                              timeout=120)
            assert job.state == COMPLETED, (container, job.error)
            (o,) = job.output_summaries()
            assert (o["container"], o["name"], o["state"], o["bytes"]) == (container, "c.bin", "committed", n)
        assert h.runtime.budget.in_use == 0
    assert sorted(p.name for p in out.iterdir()) == ["c.bin"]
    assert hashlib.sha256((out / "c.bin").read_bytes()).digest() == hashlib.sha256(data).digest()
    got = s3.get_object(Bucket=BUCKET, Key=f"{prefix}c.bin")["Body"].read()
    assert len(got) == n and hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    assert s3.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix).get("Uploads", []) == []
