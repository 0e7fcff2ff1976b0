"""Outputs on every failure path, with a real guest (tests/guests/probe's output commands)
and real sinks: a file container and moto's S3 server. A guest that writes and then traps,
runs past call_timeout, answers false, has its job cancelled by the operator, or finishes
its output but fails its job leaves nothing visible: no blob, no temp file, no open
multipart upload. The same guest's job that completes commits exactly what it wrote.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from chunkd.jobs import COMPLETED, FAILED
from tests.remote_support import moto_server, s3_client
from tests.conftest import make_blob

CHUNK = 65536
BUCKET = "outs"


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with moto_server(BUCKET) as url:
        yield url


@pytest.fixture
def s3(moto_url: str) -> Any:
    return s3_client(moto_url)


def sinks(out: Path, moto_url: str, prefix: str) -> dict[str, dict[str, Any]]:
    return {"out": {"kind": "file", "root": str(out), "writable": True},
            "bkt": {"kind": "s3", "bucket": BUCKET, "prefix": prefix, "endpoint_url": moto_url,
                    "region": "us-east-1", "timeout": "10s", "writable": True, "part_size": "5MiB"}}


def left_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def keys(s3: Any, prefix: str) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])]


def uploads(s3: Any, prefix: str) -> list[str]:
    return [u["Key"] for u in s3.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix).get("Uploads", [])]


def tee_args(container: str, chunk: int = CHUNK) -> list[str]:
    """The probe reads local/a.bin in chunks and writes each chunk to container/o.bin,
    finishing the output when the stream completes (dropping it otherwise)."""
    return ["open s local a.bin", f"create o {container} o.bin", f"start s {chunk} 1", "tee 1 o", "finishon 1 o"]


@pytest.fixture
def out(tmp_path: Path) -> Path:
    d = tmp_path / "out"
    d.mkdir()
    return d


# 6 MiB + 3: more than one 5 MiB part, so an s3 output has a multipart upload open
SIZE = 6 * 1048576 + 3


@pytest.mark.parametrize("container", ["out", "bkt"])
async def test_a_completed_job_commits_exactly_what_it_wrote(harness, blobs: Path, out: Path, s3: Any,
                                                              moto_url: str, container: str) -> None:
    data = make_blob(blobs, "a.bin", SIZE)
    prefix = f"ok-{container}/"
    async with harness(containers=sinks(out, moto_url, prefix)) as h:
        job = await h.run("probe", tee_args(container))
        assert job.state == COMPLETED, job.error
        assert "finish o ok" in h.out(job)
    got = (out / "o.bin").read_bytes() if container == "out" else \
        s3.get_object(Bucket=BUCKET, Key=f"{prefix}o.bin")["Body"].read()
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    assert uploads(s3, prefix) == []


# (the probe's command making the job fail at chunk 90 of ~97, what the job's error says)
FAULTS = {
    "trap": (["trap 1 90"], "trapped"),
    "timeout": (["loop 1 90"], "ran past call_timeout"),
    "false": (["stop 1 90"], "cancelled"),
    "invoke-error": (["fail"], "asked to fail"),
}


@pytest.mark.parametrize("container", ["out", "bkt"])
@pytest.mark.parametrize("fault", list(FAULTS))
async def test_a_failed_job_leaves_nothing(harness, blobs: Path, out: Path, s3: Any, moto_url: str,
                                           container: str, fault: str) -> None:
    """The guest wrote ~90 chunks (an s3 output has parts uploaded), then its job fails:
    nothing is visible, no temp file is left, no multipart upload stays open."""
    make_blob(blobs, "a.bin", SIZE)
    prefix = f"{fault}-{container}/"
    cmds, why = FAULTS[fault]
    args = tee_args(container) + cmds
    if fault == "invoke-error":  # the output was written whole and finished, then invoke fails
        args = ["open s local a.bin", f"create o {container} o.bin", "write o hello", "finish o", "fail"]
    async with harness(containers=sinks(out, moto_url, prefix), limits={"call_timeout": "2s"}) as h:
        job = await h.run("probe", args)
        assert job.state == FAILED, job.state
        assert why in (job.error or ""), job.error
        view = [o["state"] for o in job.output_summaries()]
        assert view == ["aborted"], view  # seen by operators as aborted
        m = h.runtime.metrics
        assert m.value("chunkd_outputs_committed_total", component="probe") == 0
        assert m.value("chunkd_outputs_aborted_total", component="probe") == 1
        assert h.runtime.budget.in_use == 0
    assert left_in(out) == []
    assert keys(s3, prefix) == []
    assert uploads(s3, prefix) == []


@pytest.mark.parametrize("container", ["out", "bkt"])
async def test_an_operator_cancel_leaves_nothing(harness, blobs: Path, out: Path, s3: Any, moto_url: str,
                                                 container: str) -> None:
    """A paced job is cancelled once its output has bytes (parts uploaded for s3)."""
    make_blob(blobs, "a.bin", SIZE)
    prefix = f"cancel-{container}/"
    comps = {"probe": {"max_bytes_per_second": "4MiB"}}
    async with harness(components=comps, containers=sinks(out, moto_url, prefix)) as h:
        rt = h.runtime
        job = rt.submit("probe", tee_args(container))
        deadline = time.monotonic() + 30
        while sum(d.stats.bytes for d in job.deliveries) < 5 * 1048576 + CHUNK:  # a part's worth written
            assert time.monotonic() < deadline, "the paced job never got going"
            assert not job.done.is_set(), job.error
            await asyncio.sleep(0.02)
        await rt.cancel_job(job.id)
        await asyncio.wait_for(job.done.wait(), 30)
        assert job.state != COMPLETED
        assert rt.budget.in_use == 0
    assert left_in(out) == []
    assert keys(s3, prefix) == []
    assert uploads(s3, prefix) == []
