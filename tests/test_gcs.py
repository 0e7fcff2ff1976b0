"""kind = "gcs" against a real fake-gcs-server (v1.56.1, on 127.0.0.1, one per session):
reads through real jobs (exact bytes, 404, an object replaced mid-stream, names that
escape, transient faults and a trickling body injected by a real proxy), the output
sink (chunkd/sinks/gcs.py: staged parts composed at commit; exact bytes at the sizes
that matter, overwrite, abort, no-clobber, more parts than one compose takes, recovery
after a writer killed with SIGKILL), a writing guest through the runtime, and service
account credentials against a real token endpoint that checks the JWT's signature."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Iterator
from urllib.parse import quote

import pytest
from aiohttp import web

from chunkd.config import config_from_mapping
from chunkd.errors import SourceError
from chunkd.jobs import COMPLETED
from chunkd.sinks import ABORTED, COMMITTED, SinkConflict, SinkError, WritableContainer, sink_container
from chunkd.sinks import gcs as gcs_sink
from chunkd.sinks.gcs import GcsSink, GcsSinkContainer
from chunkd.sources import build_container
from chunkd.sources.gcs import GcsContainer
from tests.conftest import GUESTS, ROOT, make_blob
from tests.emulators import fake_gcs_server
from tests.remote_support import FaultProxy
from tests.test_delivery import chunk_lines, ended
from tests.waits import until

MiB = 1024 * 1024
PART = 5 * MiB
BUCKET = "chunkd-gcs"


# --- the emulator and a plain client of it ---------------------------------------------------------


@pytest.fixture(scope="session")
def gcs_url() -> Iterator[str]:
    with fake_gcs_server(BUCKET) as url:
        yield url


def _req(method: str, url: str, data: bytes | None = None, headers: dict[str, str] | None = None
         ) -> tuple[int, bytes]:
    r = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(r, timeout=60) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def put(url: str, key: str, data: bytes) -> None:
    status, body = _req("POST", f"{url}/upload/storage/v1/b/{BUCKET}/o?uploadType=media&name={quote(key, safe='')}",
                        data, {"Content-Type": "application/octet-stream"})
    assert status == 200, body


def get(url: str, key: str) -> bytes | None:
    status, body = _req("GET", f"{url}/download/storage/v1/b/{BUCKET}/o/{quote(key, safe='')}?alt=media")
    if status == 404:
        return None
    assert status == 200, body
    return body


def meta(url: str, key: str) -> dict[str, Any] | None:
    status, body = _req("GET", f"{url}/storage/v1/b/{BUCKET}/o/{quote(key, safe='')}")
    if status == 404:
        return None
    assert status == 200, body
    m: dict[str, Any] = json.loads(body)
    return m


def names(url: str, prefix: str) -> list[str]:
    status, body = _req("GET", f"{url}/storage/v1/b/{BUCKET}/o?prefix={quote(prefix, safe='')}")
    assert status == 200, body
    return sorted(i["name"] for i in json.loads(body).get("items") or [])


def new_prefix() -> str:
    return f"t-{uuid.uuid4().hex[:10]}/"


# --- reads through real jobs (the source) ------------------------------------------------------------


def gcs_table(url: str, prefix: str = "data/", **extra: Any) -> dict[str, Any]:
    return {"kind": "gcs", "bucket": BUCKET, "prefix": prefix, "endpoint_url": url, "range_size": "1MiB",
            "timeout": "5s", **extra}


@pytest.fixture
async def proxy(gcs_url: str) -> AsyncIterator[FaultProxy]:
    p = FaultProxy(gcs_url)
    await p.start()
    yield p
    await p.stop()


async def test_digest_from_gcs_with_prefix(harness, gcs_url: str) -> None:
    p = new_prefix()
    data = os.urandom(5 * MiB + 7)
    put(gcs_url, f"{p}x/a.bin", data)
    async with harness(containers={"bkt": gcs_table(gcs_url, p)}) as h:
        job = await h.run("probe", ["open s bkt x/a.bin", "size s", "start s 262144 1"])
    assert job.state == COMPLETED, job.error
    assert f"size s {len(data)}" in h.out(job)
    assert [c[0] for c in chunk_lines(h.out(job), 1)] == list(range(21))
    assert ended(h.out(job), 1) == [f"ended 1 completed {hashlib.sha256(data).hexdigest()}"]


async def test_names_stay_under_the_prefix_and_404_fails_the_open(harness, gcs_url: str) -> None:
    p = new_prefix()
    put(gcs_url, "secret.bin", b"outside the prefix")
    put(gcs_url, f"{p}in.bin", b"inside")
    put(gcs_url, f"{p}.chunkd-out/j/1/abc/part-000001", b"staged")
    async with harness(containers={"bkt": gcs_table(gcs_url, p), "nob": {"kind": "gcs", "endpoint_url": gcs_url}}) as h:
        job = await h.run("probe", ["open a bkt ../secret.bin", "open b bkt /secret.bin", "open c bkt in.bin",
                                    "open d bkt nothing.bin", "open e nob x",
                                    "open f bkt .chunkd-out/j/1/abc/part-000001", "open g bkt a//b"])
    lines = h.out(job)
    for label in "abfg":
        assert any(line.startswith(f"open {label} err Failed") for line in lines), (label, lines)
    assert any(line.startswith("open f err Failed") and ".chunkd-out/" in line for line in lines)
    assert "open c ok" in lines
    assert any(line.startswith("open d err Failed") and "not found" in line and "bkt/nothing.bin" in line
               for line in lines), lines
    assert any(line.startswith("open e err Failed") and "no bucket" in line for line in lines)


async def test_object_replaced_mid_stream_fails(harness, gcs_url: str) -> None:
    """fake-gcs-server ignores ifGenerationMatch on downloads: this is the x-goog-generation check."""
    p = new_prefix()
    put(gcs_url, f"{p}r.bin", os.urandom(6 * MiB))
    async with harness(containers={"bkt": gcs_table(gcs_url, p)},
                       components={"probe": {"max_bytes_per_second": 2 * MiB}}) as h:
        job = h.runtime.submit("probe", ["open s bkt r.bin", "start s 65536 1"])
        await until(lambda: job.deliveries and job.deliveries[0].stats.chunks >= 1, "the first chunk")
        await asyncio.to_thread(put, gcs_url, f"{p}r.bin", os.urandom(6 * MiB))
        await asyncio.wait_for(job.done.wait(), 60)
    e = ended(h.out(job), 1)
    assert len(e) == 1 and e[0].startswith("ended 1 failed") and "changed since it was opened" in e[0], e
    n = len(chunk_lines(h.out(job), 1))
    assert 0 < n < 96 and n % 16 == 0  # whole 1 MiB ranges of the first version only


async def test_5xx_429_and_drops_are_retried(harness, gcs_url: str, proxy: FaultProxy) -> None:
    p = new_prefix()
    data = os.urandom(4 * MiB)
    put(gcs_url, f"{p}f.bin", data)
    proxy.faults.extend(["503", "drop", "429", "503", "drop"])
    async with harness(containers={"bkt": gcs_table(f"http://127.0.0.1:{proxy.port}", p)},
                       limits={"source_retries": 6, "source_retry_backoff": "5ms"}) as h:
        job = await h.run("probe", ["open s bkt f.bin", "start s 100000 1"])
    assert job.state == COMPLETED, job.error
    assert [c[0] for c in chunk_lines(h.out(job), 1)] == list(range(42))
    assert ended(h.out(job), 1) == [f"ended 1 completed {hashlib.sha256(data).hexdigest()}"]
    assert len(proxy.injected) == 5 and job.deliveries[0].stats.retries == 5


async def test_a_trickling_gcs_body_is_cut_and_retried(harness, gcs_url: str, proxy: FaultProxy) -> None:
    p = new_prefix()
    data = os.urandom(2 * MiB)
    put(gcs_url, f"{p}t.bin", data)
    proxy.faults.extend(["trickle"])
    tight = {"low_speed_time": "1s", "low_speed_limit": "1KiB"}
    async with harness(containers={"bkt": gcs_table(f"http://127.0.0.1:{proxy.port}", p, **tight)},
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


# --- the sink --------------------------------------------------------------------------------------


def sink_cfg(url: str, prefix: str, **extra: Any) -> Any:
    table = {"kind": "gcs", "bucket": BUCKET, "prefix": prefix, "endpoint_url": url, "timeout": "10s",
             "writable": True, "part_size": "5MiB", **extra}
    return config_from_mapping({"containers": {"g": table}}).containers["g"]


@pytest.fixture
async def gw(gcs_url: str) -> AsyncIterator[GcsSinkContainer]:
    cfg = sink_cfg(gcs_url, new_prefix())
    src = build_container(cfg)
    w = sink_container("g", cfg, src)
    assert isinstance(w, GcsSinkContainer)
    yield w
    await src.close()


def key(w: GcsSinkContainer, name: str) -> str:
    return w.key_for(name)


def staged(url: str, w: GcsSinkContainer) -> list[str]:
    return names(url, w.source.staging_prefix())


def everything(url: str, w: GcsSinkContainer) -> list[str]:
    """Every object under the container's prefix, relative to it."""
    prefix = w.source.prefix + "/"
    return [n[len(prefix):] for n in names(url, prefix)]


def pieces(data: bytes, seed: int) -> Iterator[bytes]:
    rng = random.Random(seed)
    pos = 0
    while pos < len(data):
        n = rng.choice([1, 7, 4096, 65537, MiB + 3, 3 * MiB, PART + 11])
        yield data[pos:pos + n]
        pos += n


async def write_all(sink: Any, data: bytes, seed: int = 1) -> None:
    for p in pieces(data, seed):
        await sink.write(p)
    assert sink.written == len(data)


@pytest.mark.parametrize("size", [0, 1, PART - 1, PART, 2 * PART + 1],
                         ids=["0", "1", "part-1", "part", "2parts+1"])
async def test_sink_exact_bytes(gw: GcsSinkContainer, gcs_url: str, size: int) -> None:
    data = os.urandom(size)
    sink = await gw.create("dir/sub/out.bin", job_id="job-1", attempt=1, overwrite=True)
    assert isinstance(sink, GcsSink)
    await write_all(sink, data, seed=size)
    await sink.seal()
    assert len(staged(gcs_url, gw)) == size // PART + (1 if size > PART and size % PART else 0)
    assert get(gcs_url, key(gw, "dir/sub/out.bin")) is None  # not visible before the commit
    version = await sink.commit()
    assert get(gcs_url, key(gw, "dir/sub/out.bin")) == data
    m = meta(gcs_url, key(gw, "dir/sub/out.bin"))
    assert m is not None and m["metadata"] == {"chunkd-job": "job-1"} and version == str(m["generation"])
    assert everything(gcs_url, gw) == ["dir/sub/out.bin"]  # nothing staged is left
    assert await sink.commit() == version  # a second commit answers the same
    await sink.abort()  # and an abort after the commit removes nothing
    assert get(gcs_url, key(gw, "dir/sub/out.bin")) == data


async def test_sink_overwrite_true_replaces(gw: GcsSinkContainer, gcs_url: str) -> None:
    for content in (os.urandom(PART + 3), b"second"):
        sink = await gw.create("same.bin", job_id=f"job-{len(content)}", attempt=1, overwrite=True)
        await sink.write(content)
        await sink.commit()  # commit seals a sink that was not sealed
    assert get(gcs_url, key(gw, "same.bin")) == b"second"
    assert everything(gcs_url, gw) == ["same.bin"]
    with pytest.raises(SinkConflict) as e:  # this job's own commit: not written twice
        await gw.create("same.bin", job_id="job-6", attempt=2, overwrite=True)
    assert e.value.by_this_job


@pytest.mark.parametrize("sealed", [False, True])
async def test_sink_abort_leaves_nothing_and_twice_is_fine(gw: GcsSinkContainer, gcs_url: str,
                                                            sealed: bool) -> None:
    sink = await gw.create("a/b.bin", job_id="job-2", attempt=1, overwrite=True)
    await write_all(sink, os.urandom(2 * PART + 3))
    if sealed:
        await sink.seal()
    assert len(staged(gcs_url, gw)) == (3 if sealed else 2)
    await sink.abort()
    assert everything(gcs_url, gw) == []
    await sink.abort()
    assert everything(gcs_url, gw) == []
    with pytest.raises(SinkError, match="aborted"):
        await sink.write(b"x")
    with pytest.raises(SinkError, match="aborted"):
        await sink.commit()


async def test_sink_no_clobber_existing_name_refused_at_create(gw: GcsSinkContainer, gcs_url: str) -> None:
    first = await gw.create("x.bin", job_id="job-a", attempt=1, overwrite=False)
    await first.write(b"theirs")
    await first.commit()
    with pytest.raises(SinkConflict, match="exists already") as e:
        await gw.create("x.bin", job_id="job-b", attempt=1, overwrite=False)
    assert "g/x.bin" in str(e.value) and not e.value.by_this_job
    with pytest.raises(SinkConflict) as e2:  # the same job, retried: told it was its own commit
        await gw.create("x.bin", job_id="job-a", attempt=2, overwrite=False)
    assert e2.value.by_this_job
    assert get(gcs_url, key(gw, "x.bin")) == b"theirs"
    assert everything(gcs_url, gw) == ["x.bin"]


@pytest.mark.parametrize("size", [10, 2 * PART + 1], ids=["small", "3parts"])
@pytest.mark.parametrize("precheck", [True, False])
async def test_sink_no_clobber_name_created_meanwhile_refused_at_commit(
        gw: GcsSinkContainer, gcs_url: str, monkeypatch: pytest.MonkeyPatch, size: int, precheck: bool) -> None:
    """Created between create and commit: SinkConflict, the other object intact, nothing
    staged left. Without the pre-check, the conditional write itself (ifGenerationMatch=0)
    is what refuses: fake-gcs-server honours it on uploads (the small path) but ignores it
    on compose, so there the test checks that the compose asked for it."""
    sent: list[str] = []
    real_call = GcsContainer.call

    async def recording_call(self: GcsContainer, method: str, url: str, what: str, **kw: Any) -> Any:
        sent.append(f"{method} {url}")
        return await real_call(self, method, url, what, **kw)
    monkeypatch.setattr(GcsContainer, "call", recording_call)
    if not precheck:
        async def no_check(*_: Any) -> None:
            return None
        monkeypatch.setattr(GcsSinkContainer, "check_absent", no_check)
    sink = await gw.create("race.bin", job_id="job-c", attempt=1, overwrite=False)
    await write_all(sink, os.urandom(size))
    await sink.seal()
    put(gcs_url, key(gw, "race.bin"), b"the other writer")
    if precheck or size < PART:
        with pytest.raises(SinkConflict, match="g/race.bin"):
            await sink.commit()
        assert get(gcs_url, key(gw, "race.bin")) == b"the other writer"
        await sink.abort()  # fine after a conflict
    else:  # the emulator's gap: the compose carried the condition, the emulator replaced the object anyway
        await sink.commit()
    final = [s for s in sent if "/compose" in s or "uploadType=multipart" in s]
    if not precheck:
        assert final and all("ifGenerationMatch=0" in s for s in final), final
    assert everything(gcs_url, gw) == ["race.bin"]


@pytest.mark.parametrize("name", ["../x", "a/../../x", "/etc/passwd", "", "a//b", ".chunkd-out/x",
                                  ".chunkd-out/job/1/abc/part-000001", "a/./b", "a?b", "a#b"])
async def test_sink_a_name_that_escapes_is_refused(gw: GcsSinkContainer, gcs_url: str, name: str) -> None:
    with pytest.raises(SinkError, match="escapes") as e:
        await gw.create(name, job_id="job-d", attempt=1, overwrite=True)
    assert not isinstance(e.value, SinkConflict)
    assert everything(gcs_url, gw) == []


async def test_sink_more_parts_than_one_compose_takes(gw: GcsSinkContainer, gcs_url: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """MAX_COMPOSE at 2 (the real limit, 32, in the next test): 6 parts compose in rounds
    (6 -> 3 -> 2 -> the object), exact bytes, no intermediate left."""
    monkeypatch.setattr(gcs_sink, "MAX_COMPOSE", 2)
    data = os.urandom(5 * PART + 3)
    sink = await gw.create("many.bin", job_id="job-m", attempt=1, overwrite=False)
    await write_all(sink, data)
    await sink.commit()
    assert isinstance(sink, GcsSink) and len(sink.parts) == 6
    assert get(gcs_url, key(gw, "many.bin")) == data
    assert everything(gcs_url, gw) == ["many.bin"]


async def test_sink_33_parts_at_the_real_compose_limit(gw: GcsSinkContainer, gcs_url: str) -> None:
    data = os.urandom(32 * PART + 1)  # 33 parts: more than one compose (32 sources) takes
    sink = await gw.create("big.bin", job_id="job-b", attempt=1, overwrite=True)
    step = 4 * MiB
    for at in range(0, len(data), step):
        await sink.write(data[at:at + step])
    await sink.commit()
    assert isinstance(sink, GcsSink) and len(sink.parts) == 33
    got = get(gcs_url, key(gw, "big.bin"))
    assert got is not None and len(got) == len(data) and hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    assert everything(gcs_url, gw) == ["big.bin"]


async def test_sink_holds_at_most_one_part(gw: GcsSinkContainer, gcs_url: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    sink = await gw.create("ten.bin", job_id="job-h", attempt=1, overwrite=True)
    assert isinstance(sink, GcsSink)
    seen: list[int] = []
    real = GcsSinkContainer.request

    async def sampling(self: GcsSinkContainer, *a: Any, **kw: Any) -> Any:
        seen.append(sink.buffered)
        return await real(self, *a, **kw)
    monkeypatch.setattr(GcsSinkContainer, "request", sampling)
    data = os.urandom(6 * PART + 123)
    for p in pieces(data, seed=10):
        await sink.write(p)
        seen.append(sink.buffered)
    await sink.commit()
    assert max(seen) <= PART and PART in seen  # a full part is held while it uploads, never more
    assert sink.buffered == 0
    assert get(gcs_url, key(gw, "ten.bin")) == data


async def test_sink_transient_errors_are_retried(gw: GcsSinkContainer, gcs_url: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A 503 on a part upload and on the compose, a reset on the final upload: retried, exact."""
    monkeypatch.setattr(gcs_sink, "BACKOFF_S", 0.001)
    real_call = GcsContainer.call
    faults = {"upload part part-000002": 1, "compose": 2, "upload": 1}
    injected: list[str] = []

    async def flaky(self: GcsContainer, method: str, url: str, what: str, **kw: Any) -> Any:
        op = what.split(": ", 1)[1]
        if faults.get(op):
            faults[op] -= 1
            injected.append(op)
            raise SourceError(f"{what}: HTTP 503 (will retry)", transient=True)
        return await real_call(self, method, url, what, **kw)
    monkeypatch.setattr(GcsContainer, "call", flaky)
    for name, data in (("r1.bin", os.urandom(2 * PART + 5)), ("r2.bin", b"small")):
        sink = await gw.create(name, job_id="job-r", attempt=1, overwrite=False)
        await write_all(sink, data)
        await sink.commit()
        assert get(gcs_url, key(gw, name)) == data
    assert sorted(injected) == ["compose", "compose", "upload", "upload part part-000002"]
    assert everything(gcs_url, gw) == ["r1.bin", "r2.bin"]
    faults["upload"] = 9  # more than RETRIES: a clear error naming the output and the operation
    sink = await gw.create("r3.bin", job_id="job-r", attempt=1, overwrite=False)
    await sink.write(b"x")
    with pytest.raises(SinkError, match=r"g/r3.bin: upload: HTTP 503 .*after 3 retries"):
        await sink.commit()
    await sink.abort()


# --- recover after a crash -----------------------------------------------------------------------

WRITER = r"""
import asyncio, json, os, random, signal, sys
from chunkd.config import config_from_mapping
from chunkd.sinks import sink_container
from chunkd.sinks.gcs import GcsSinkContainer
from chunkd.sources import build_container

async def main(url: str, bucket: str, prefix: str, name: str, size: int, stage: str) -> None:
    table = {"kind": "gcs", "bucket": bucket, "prefix": prefix, "endpoint_url": url, "timeout": "10s",
             "writable": True, "part_size": "5MiB"}
    cfg = config_from_mapping({"containers": {"g": table}}).containers["g"]
    w = sink_container("g", cfg, build_container(cfg))
    if stage == "composed":  # killed after the compose, before the staged parts were deleted
        async def keep(*_): return None
        GcsSinkContainer.clear_quietly = keep
    sink = await w.create(name, job_id="job-k", attempt=1, overwrite=False)
    await sink.write(random.Random(size).randbytes(size))
    if stage != "writing":
        await sink.seal()
    if stage in ("committed", "composed"):
        await sink.commit()
    print(json.dumps(sink.token()), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main(*sys.argv[1:5], int(sys.argv[5]), sys.argv[6]))
"""


def killed_writer(url: str, w: GcsSinkContainer, name: str, size: int, stage: str) -> dict[str, str]:
    """A real process writes an output of `size` bytes to `stage`, prints its token (what its
    row would hold), and is killed with SIGKILL."""
    p = subprocess.run([sys.executable, "-c", WRITER, url, BUCKET, w.source.prefix, name, str(size), stage],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == -signal.SIGKILL, p.stderr
    token: dict[str, str] = json.loads(p.stdout.splitlines()[-1])
    return token


def expected(size: int) -> bytes:
    return random.Random(size).randbytes(size)


async def restarted(url: str, w: GcsSinkContainer) -> tuple[GcsSinkContainer, Any]:
    """A new container over the same bucket and prefix: the restarted daemon's."""
    cfg = sink_cfg(url, w.source.prefix)
    src = build_container(cfg)
    w2 = sink_container("g", cfg, src)
    assert isinstance(w2, GcsSinkContainer)
    return w2, src.close


async def test_recover_a_killed_writer_not_committing_deletes_the_staged_parts(
        gw: GcsSinkContainer, gcs_url: str) -> None:
    tokens = {stage: killed_writer(gcs_url, gw, f"{stage}.bin", 2 * PART + 9, stage)
              for stage in ("writing", "sealed")}
    assert tokens["writing"]["parts"] == "2" and tokens["writing"]["sealed"] == "0"
    assert tokens["sealed"]["parts"] == "3" and tokens["sealed"]["sealed"] == "1"
    assert len(staged(gcs_url, gw)) == 5
    w2, close = await restarted(gcs_url, gw)
    try:
        for t in tokens.values():
            assert await w2.recover(t, job_id="job-k", committing=False) == ABORTED
        assert everything(gcs_url, gw) == []
        for t in tokens.values():  # again: nothing to do
            assert await w2.recover(t, job_id="job-k", committing=False) == ABORTED
        assert await w2.sweep() == 0
    finally:
        await close()


async def test_recover_while_committing_rolls_all_staged_parts_forward(gw: GcsSinkContainer, gcs_url: str) -> None:
    size = 2 * PART + 9
    token = killed_writer(gcs_url, gw, "fwd.bin", size, "sealed")
    w2, close = await restarted(gcs_url, gw)
    try:
        assert await w2.recover(token, job_id="job-k", committing=True) == COMMITTED
        assert await w2.recover(token, job_id="job-k", committing=True) == COMMITTED
        assert await w2.recover(token, job_id="job-k", committing=False) == COMMITTED
    finally:
        await close()
    assert get(gcs_url, key(gw, "fwd.bin")) == expected(size)
    m = meta(gcs_url, key(gw, "fwd.bin"))
    assert m is not None and m["metadata"] == {"chunkd-job": "job-k"}
    assert everything(gcs_url, gw) == ["fwd.bin"]


async def test_recover_while_committing_refuses_an_incomplete_or_unsealed_output(
        gw: GcsSinkContainer, gcs_url: str) -> None:
    size = 2 * PART + 9
    missing = killed_writer(gcs_url, gw, "missing.bin", size, "sealed")
    unsealed = killed_writer(gcs_url, gw, "unsealed.bin", size, "writing")
    small = killed_writer(gcs_url, gw, "small.bin", 100, "sealed")  # lived in memory only
    _req("DELETE", f"{gcs_url}/storage/v1/b/{BUCKET}/o/{quote(missing['staging'] + 'part-000002', safe='')}")
    w2, close = await restarted(gcs_url, gw)
    try:
        for t in (missing, unsealed, small):
            assert await w2.recover(t, job_id="job-k", committing=True) == ABORTED
    finally:
        await close()
    assert everything(gcs_url, gw) == []


@pytest.mark.parametrize("stage", ["committed", "composed"])
async def test_recover_of_a_committed_output(gw: GcsSinkContainer, gcs_url: str, stage: str) -> None:
    """Killed after the commit (or after the compose, before its parts were deleted): the
    commit stands, once, and nothing is left in staging."""
    size = PART + 1
    token = killed_writer(gcs_url, gw, "done.bin", size, stage)
    assert len(staged(gcs_url, gw)) == (2 if stage == "composed" else 0)
    w2, close = await restarted(gcs_url, gw)
    try:
        for committing in (False, True):
            assert await w2.recover(token, job_id="job-k", committing=committing) == COMMITTED
        assert everything(gcs_url, gw) == ["done.bin"]
        assert get(gcs_url, key(gw, "done.bin")) == expected(size)
        # another job's recover does not claim it, and deletes nothing visible
        assert await w2.recover(token, job_id="job-other", committing=True) == ABORTED
        assert get(gcs_url, key(gw, "done.bin")) == expected(size)
        with pytest.raises(SinkError, match="not this container's key"):
            await w2.recover(dict(token, key="elsewhere/done.bin"), job_id="job-k", committing=False)
        with pytest.raises(SinkError, match="staging folder"):
            await w2.recover(dict(token, staging=w2.source.prefix + "/"), job_id="job-k", committing=False)
        with pytest.raises(SinkError, match="not a gcs output token"):
            await w2.recover(dict(token, kind="s3"), job_id="job-k", committing=False)
    finally:
        await close()
    assert everything(gcs_url, gw) == ["done.bin"]


async def test_recover_does_not_roll_forward_over_another_writers_object(gw: GcsSinkContainer, gcs_url: str) -> None:
    token = killed_writer(gcs_url, gw, "taken.bin", PART + 1, "sealed")  # overwrite = false
    put(gcs_url, key(gw, "taken.bin"), b"another writer")
    w2, close = await restarted(gcs_url, gw)
    try:
        assert await w2.recover(token, job_id="job-k", committing=True) == ABORTED
    finally:
        await close()
    assert get(gcs_url, key(gw, "taken.bin")) == b"another writer"
    assert everything(gcs_url, gw) == ["taken.bin"]


# --- a writing guest through the runtime ---------------------------------------------------------


@pytest.fixture(scope="module")
def copier() -> dict[str, Any]:
    subprocess.run([str(ROOT / "scripts" / "build-guests"), "copy_rs"], check=True)
    return {"path": str(GUESTS / "copy_rs.wasm")}


@pytest.mark.parametrize("size", [1, 2 * PART + 1], ids=["1", "2parts+1"])
async def test_a_guest_writes_an_output_into_gcs(harness, blobs: Path, gcs_url: str, copier: dict[str, Any],
                                                 size: int) -> None:
    data = make_blob(blobs, "a.bin", size)
    p = new_prefix()
    containers = {"bkt": {"kind": "gcs", "bucket": BUCKET, "prefix": p, "endpoint_url": gcs_url, "timeout": "10s",
                          "writable": True, "part_size": "5MiB"}}
    async with harness(components={"copy_rs": copier}, containers=containers, limits={"call_timeout": "30s"}) as h:
        job = await h.run("copy_rs", ["--chunk-size=1048576", "local", "a.bin", "bkt", "out/c.bin"], timeout=120)
        assert job.state == COMPLETED, job.error
        (o,) = job.output_summaries()
        assert (o["container"], o["name"], o["state"], o["bytes"]) == ("bkt", "out/c.bin", "committed", size)
        assert h.runtime.budget.in_use == 0
    got = get(gcs_url, f"{p}out/c.bin")
    assert got is not None and hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    m = meta(gcs_url, f"{p}out/c.bin")
    assert m is not None and o["version"] == str(m["generation"]) and m["metadata"] == {"chunkd-job": job.id}
    assert names(gcs_url, p) == [f"{p}out/c.bin"]  # nothing staged beside it


# --- credentials -------------------------------------------------------------------------------------


def _b64d(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


class TokenServer:
    """A token_uri on 127.0.0.1 that verifies the service account's RS256 JWT with its
    public key and answers an access token (or `fail_with` a status)."""

    def __init__(self, public_key: Any, access_token: str) -> None:
        self.public_key = public_key
        self.access_token = access_token
        self.fail_with = 0
        self.verified: list[dict[str, Any]] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding
        if self.fail_with:
            return web.Response(status=self.fail_with, text="internal error")
        form = await request.post()
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return web.Response(status=400)
        header, claims, sig = str(form["assertion"]).split(".")
        try:
            self.public_key.verify(_b64d(sig), f"{header}.{claims}".encode(), padding.PKCS1v15(), hashes.SHA256())
        except Exception:
            return web.Response(status=401, text="bad signature")
        c = json.loads(_b64d(claims))
        if json.loads(_b64d(header))["alg"] != "RS256" or c["aud"] != self.url or c["exp"] <= time.time():
            return web.Response(status=401)
        self.verified.append(c)
        return web.json_response({"access_token": self.access_token, "expires_in": 3600, "token_type": "Bearer"})

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/token", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/token"  # type: ignore[union-attr]
        return self.url

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


class RecordingProxy(FaultProxy):
    """A FaultProxy that records the Authorization header of every request it forwards."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.auth: list[tuple[str, str | None]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.auth.append((f"{request.method} {request.path}", request.headers.get("Authorization")))
        return await super().handle(request)


async def test_service_account_credentials(gcs_url: str, tmp_path: Path) -> None:
    import structlog
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pk = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = pk.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                           serialization.NoEncryption()).decode()
    access = f"ya29.{uuid.uuid4().hex}"
    tokens = TokenServer(pk.public_key(), access)
    uri = await tokens.start()
    proxy = RecordingProxy(gcs_url)
    await proxy.start()
    sa = tmp_path / "sa.json"
    sa.write_text(json.dumps({"type": "service_account", "project_id": "p", "private_key_id": "k1",
                              "private_key": pem, "client_email": "chunkd@p.iam.gserviceaccount.com",
                              "token_uri": uri}))
    secrets = [access, pem.splitlines()[5], "BEGIN PRIVATE KEY"]
    texts: list[str] = []
    prefix = new_prefix()
    cfg = sink_cfg(f"http://127.0.0.1:{proxy.port}", prefix, credentials_file=str(sa))
    try:
        with structlog.testing.capture_logs() as logs:
            src = build_container(cfg)
            w = sink_container("g", cfg, src)
            try:
                data = os.urandom(PART + 7)
                sink = await w.create("cred.bin", job_id="job-sa", attempt=1, overwrite=False)
                await sink.write(data)
                await sink.commit()
                assert isinstance(src, GcsContainer)
                blob = await src.open("cred.bin")
                assert await blob.read_at(0, len(data)) == data
                with pytest.raises(SourceError) as nf:
                    await src.open("nothing.bin")
                texts.append(str(nf.value))
            finally:
                await src.close()
            assert len(tokens.verified) == 1  # one token, cached for every request
            assert tokens.verified[0]["iss"] == "chunkd@p.iam.gserviceaccount.com"
            assert len(proxy.auth) >= 6 and all(a == f"Bearer {access}" for _, a in proxy.auth), proxy.auth
            assert get(gcs_url, f"{prefix}cred.bin") == data

            # the token endpoint fails: an error naming the token_uri, never the key nor a token
            tokens.fail_with = 500
            src = build_container(cfg)
            w = sink_container("g", cfg, src)
            try:
                with pytest.raises(SinkError) as e:
                    await w.create("fail.bin", job_id="job-sa", attempt=1, overwrite=True)
                texts.append(str(e.value))
                assert uri in str(e.value) and "HTTP 500" in str(e.value)
                with pytest.raises(SourceError) as e2:
                    await src.open("cred.bin")
                texts.append(str(e2.value))
            finally:
                await src.close()
        texts.extend(json.dumps(entry, default=str) for entry in logs)
        texts.append(repr(cfg))
    finally:
        await proxy.stop()
        await tokens.stop()
    assert all(s not in t for s in secrets for t in texts), texts


async def test_staging_folders_are_confined_and_distinct(gw: GcsSinkContainer) -> None:
    """One folder per (job, attempt, name) under <prefix>/.chunkd-out/; a job id or attempt
    that is not a plain segment is hashed, so it cannot climb out or collide with a name."""
    base = gw.source.staging_prefix()
    assert base == gw.source.prefix + "/.chunkd-out/"
    folders = {gw.staging_for(n, j, a) for n, j, a in [("x", "j1", 1), ("x", "j1", 2), ("y", "j1", 1),
                                                       ("x", "j2", 1), ("x", "../..", 1), ("x", "a/b", 1)]}
    assert len(folders) == 6
    for f in folders:
        assert f.startswith(base) and f.endswith("/") and f.count("/") == base.count("/") + 3
        assert ".." not in f[len(base):].split("/")
    sink = await gw.create("x", job_id="../..", attempt=1, overwrite=True)
    assert isinstance(sink, GcsSink) and sink.token()["staging"] == gw.staging_for("x", "../..", 1)
    await sink.abort()
