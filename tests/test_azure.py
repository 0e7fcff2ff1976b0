"""kind = "azure" against a real Azurite (3.37, in memory, on 127.0.0.1): reads through real
jobs (exact bytes, a missing blob, a blob replaced mid-stream, names outside the prefix,
faults injected by a real proxy), the three kinds of credentials (an account key, a
connection string, a SAS that azure-storage-blob signed) and no secret in any message,
the block-blob sink (exact bytes, overwrite, abort, no-clobber, recovery after a writer
killed with SIGKILL, at most one part in memory, retries), and a guest writing an output
through the daemon into Azure. What chunkd left is checked with azure-storage-blob."""
from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import aiohttp
import pytest

from chunkd.config import config_from_mapping
from chunkd.jobs import COMPLETED
from chunkd.logging import configure_logging
from chunkd.sinks import ABORTED, COMMITTED, SinkConflict, SinkError, sink_container
from chunkd.sinks.azure import AzureSink, AzureSinkContainer, Answer, parse_block_id
from chunkd.sources import build_container
from tests.emulators import AZURITE_ACCOUNT, AZURITE_KEY, azure_blob, azure_connection_string, azurite
from tests.remote_support import FaultProxy
from tests.test_delivery import chunk_lines, ended
from tests.waits import until

MiB = 1024 * 1024
PART = 5 * MiB
SRC = "chunkd-blobs"
OUT = "chunkd-outputs"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def azurite_url() -> Iterator[str]:
    with azurite(SRC, OUT) as url:
        yield url


@pytest.fixture(scope="session")
def service(azurite_url: str) -> Any:
    return azure_blob(azurite_url)


def put(service: Any, key: str, data: bytes, container: str = SRC) -> None:
    service.get_blob_client(container, key).upload_blob(data, overwrite=True)


def get(service: Any, key: str, container: str = OUT) -> bytes | None:
    from azure.core.exceptions import ResourceNotFoundError
    try:
        data: bytes = service.get_blob_client(container, key).download_blob().readall()
        return data
    except ResourceNotFoundError:
        return None


def visible(service: Any, prefix: str, container: str = OUT) -> list[str]:
    return sorted(b.name for b in service.get_container_client(container).list_blobs(name_starts_with=prefix))


def az(url: str, **extra: Any) -> dict[str, dict[str, Any]]:
    """The harness's `az` container: Azurite's SRC under data/, with the account key."""
    table = {"kind": "azure", "account": AZURITE_ACCOUNT, "container_name": SRC, "prefix": "data/",
             "endpoint_url": url, "account_key": AZURITE_KEY, "range_size": "1MiB", "timeout": "5s"}
    table.update(extra)
    return {"az": {k: v for k, v in table.items() if v is not None}}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- reads -----------------------------------------------------------------------------------


async def test_digest_from_azure_with_prefix(harness, service: Any, azurite_url: str) -> None:
    data = os.urandom(5 * MiB + 7)
    put(service, "data/x/a.bin", data)
    async with harness(containers=az(azurite_url)) as h:
        job = await h.run("probe", ["open s az x/a.bin", "size s", "start s 262144 1"])
    assert job.state == COMPLETED, job.error
    assert f"size s {len(data)}" in h.out(job)
    assert [c[0] for c in chunk_lines(h.out(job), 1)] == list(range(21))
    assert ended(h.out(job), 1) == [f"ended 1 completed {sha(data)}"]


async def test_missing_blobs_and_names_outside_the_prefix_are_refused(harness, service: Any,
                                                                       azurite_url: str) -> None:
    put(service, "secret.bin", b"outside the prefix")
    put(service, "data/in.bin", b"inside")
    async with harness(containers={**az(azurite_url), "noc": az(azurite_url, container_name=None)["az"]}) as h:
        job = await h.run("probe", ["open a az ../secret.bin", "open b az /secret.bin", "open c az in.bin",
                                    "open d az nothing.bin", "open e noc x", "open f az a//b"])
    lines = h.out(job)
    assert any(line.startswith("open a err Failed") for line in lines), lines
    assert any(line.startswith("open b err Failed") for line in lines)
    assert "open c ok" in lines
    assert any(line.startswith("open d err Failed") and "not found" in line and "404" in line for line in lines)
    assert any(line.startswith("open e err Failed") and "no container_name" in line for line in lines)
    assert any(line.startswith("open f err Failed") for line in lines)
    assert not any(AZURITE_KEY[:20] in line for line in lines)


async def test_blob_replaced_mid_stream_fails(harness, service: Any, azurite_url: str) -> None:
    put(service, "data/r.bin", os.urandom(6 * MiB))
    async with harness(containers=az(azurite_url), components={"probe": {"max_bytes_per_second": 2 * MiB}}) as h:
        job = h.runtime.submit("probe", ["open s az r.bin", "start s 65536 1"])
        await until(lambda: job.deliveries and job.deliveries[0].stats.chunks >= 1, "the first chunk")
        await asyncio.to_thread(put, service, "data/r.bin", os.urandom(6 * MiB))
        await asyncio.wait_for(job.done.wait(), 60)
    e = ended(h.out(job), 1)
    assert len(e) == 1 and e[0].startswith("ended 1 failed") and "changed since it was opened" in e[0], e
    n = len(chunk_lines(h.out(job), 1))
    assert 0 < n < 96 and n % 16 == 0  # whole 1 MiB ranges of the first version only


@pytest.fixture
async def proxy(azurite_url: str) -> AsyncIterator[FaultProxy]:
    p = FaultProxy(azurite_url.rsplit("/", 1)[0])  # the proxy forwards the path: /devstoreaccount1/...
    await p.start()
    yield p
    await p.stop()


def through(p: FaultProxy) -> str:
    return f"http://127.0.0.1:{p.port}/{AZURITE_ACCOUNT}"


async def test_throttling_5xx_and_drops_are_retried(harness, service: Any, proxy: FaultProxy) -> None:
    data = os.urandom(4 * MiB)
    put(service, "data/f.bin", data)
    proxy.faults.extend(["503", "drop", "429", "503", "drop"])
    async with harness(containers=az(through(proxy)),
                       limits={"source_retries": 6, "source_retry_backoff": "5ms"}) as h:
        job = await h.run("probe", ["open s az f.bin", "start s 100000 1"])
    assert job.state == COMPLETED, job.error
    assert [c[0] for c in chunk_lines(h.out(job), 1)] == list(range(42))
    assert ended(h.out(job), 1) == [f"ended 1 completed {sha(data)}"]
    assert proxy.injected == ["503", "drop", "429", "503", "drop"] and job.deliveries[0].stats.retries == 5


async def test_a_trickling_azure_body_is_cut_and_retried(harness, service: Any, proxy: FaultProxy) -> None:
    data = os.urandom(2 * MiB)
    put(service, "data/t.bin", data)
    proxy.faults.extend(["trickle"])
    tight = {"low_speed_time": "1s", "low_speed_limit": "1KiB"}
    async with harness(containers=az(through(proxy), **tight),
                       limits={"source_retries": 2, "source_retry_backoff": "1ms"}) as h:
        job = await h.run("probe", ["open s az t.bin", "start s 262144 1"], timeout=60)
        assert job.state == COMPLETED, job.error
        assert ended(h.out(job), 1) == [f"ended 1 completed {sha(data)}"]
        assert job.deliveries[0].stats.retries == 1 and proxy.injected == ["trickle"]
        proxy.faults.extend(["trickle"] * 3)
        t0 = time.monotonic()
        job = await h.run("probe", ["open s az t.bin", "start s 262144 2"], timeout=60)
        assert job.state != COMPLETED and "slower than 1024 bytes/s" in str(job.deliveries[0].outcome)
        assert time.monotonic() - t0 < 15


# --- credentials -----------------------------------------------------------------------------


def account_sas() -> str:
    """An account SAS signed by azure-storage-blob (not chunkd) with the well-known key."""
    from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas
    sas: str = generate_account_sas(
        AZURITE_ACCOUNT, AZURITE_KEY, resource_types=ResourceTypes(service=True, container=True, object=True),
        permission=AccountSasPermissions(read=True, list=True, write=True, create=True, add=True),
        expiry=datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1))
    return sas


def secrets_of(sas: str) -> list[str]:
    """What must never be printed: the key (and its first 20 characters), the SAS signature."""
    sig = dict(p.split("=", 1) for p in sas.split("&"))["sig"]
    from urllib.parse import unquote
    return [AZURITE_KEY, AZURITE_KEY[:20], sig, unquote(sig)]


@pytest.mark.parametrize("how", ["account_key", "connection_string", "sas_token", "env"])
async def test_credentials(harness, service: Any, azurite_url: str, monkeypatch: pytest.MonkeyPatch,
                           how: str) -> None:
    data = os.urandom(MiB + 5)
    put(service, f"data/cred-{how}.bin", data)
    sas = account_sas()
    creds: dict[str, Any] = {"account_key": None}
    if how == "account_key":
        creds["account_key"] = AZURITE_KEY
    elif how == "connection_string":
        creds.update(connection_string=azure_connection_string(azurite_url), account=None)
    elif how == "sas_token":
        creds["sas_token"] = "?" + sas
    else:
        monkeypatch.setenv("CHUNKD_TEST_AZ_CONN", azure_connection_string(azurite_url))
        creds.update(connection_string="${CHUNKD_TEST_AZ_CONN}", account=None, endpoint_url=None)
    log = io.StringIO()
    configure_logging("json", "debug", stream=log)
    async with harness(containers=az(azurite_url, **creds)) as h:
        job = await h.run("probe", [f"open s az cred-{how}.bin", "start s 262144 1"])
    assert job.state == COMPLETED, job.error
    assert ended(h.out(job), 1) == [f"ended 1 completed {sha(data)}"]
    text = log.getvalue() + "\n".join(h.out(job)) + str(job.error)
    assert "open s ok" in text
    assert not any(s in text for s in secrets_of(sas))


@pytest.mark.parametrize("how", ["account_key", "sas_token"])
async def test_a_wrong_credential_is_a_clear_403_without_secrets(harness, service: Any, azurite_url: str,
                                                                 how: str) -> None:
    put(service, "data/w.bin", b"guarded")
    wrong_key = AZURITE_KEY[:-8] + "AAAAAAA="
    sas = account_sas()
    sig = dict(p.split("=", 1) for p in sas.split("&"))["sig"]
    bad_sas = sas.replace(sig, "A" * (len(sig) - 3) + "%3D")
    creds = {"account_key": wrong_key} if how == "account_key" else {"account_key": None, "sas_token": bad_sas}
    log = io.StringIO()
    configure_logging("json", "debug", stream=log)
    async with harness(containers=az(azurite_url, **creds)) as h:
        job = await h.run("probe", ["open s az w.bin", "start s 262144 1"])
    lines = h.out(job)
    err = [line for line in lines if line.startswith("open s err")]
    assert len(err) == 1 and "403" in err[0] and "az/w.bin" in err[0], lines
    text = log.getvalue() + "\n".join(lines) + str(job.error)
    assert not any(s in text for s in [wrong_key, wrong_key[:20], *secrets_of(sas), bad_sas, "A" * 20, "sig="])


# --- the sink --------------------------------------------------------------------------------


def sink_cfg(url: str, prefix: str, **extra: Any) -> Any:
    cfg = config_from_mapping({"containers": {"azw": {
        "kind": "azure", "account": AZURITE_ACCOUNT, "container_name": OUT, "prefix": prefix, "endpoint_url": url,
        "account_key": AZURITE_KEY, "timeout": "10s", "writable": True, "part_size": "5MiB", **extra}}})
    return cfg.containers["azw"]


@pytest.fixture
async def azw(azurite_url: str) -> AsyncIterator[AzureSinkContainer]:
    cfg = sink_cfg(azurite_url, f"t-{uuid.uuid4().hex[:8]}/")
    src = build_container(cfg)
    w = sink_container("azw", cfg, src)
    assert isinstance(w, AzureSinkContainer)
    yield w
    await src.close()


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


def props(service: Any, w: AzureSinkContainer, name: str) -> Any:
    return service.get_blob_client(OUT, w.key_for(name)).get_blob_properties()


def prefix_of(w: AzureSinkContainer) -> str:
    return w.source.prefix + "/"


@pytest.mark.parametrize("size", [0, 1, PART - 1, PART, 2 * PART + 1])
async def test_sink_exact_bytes(azw: AzureSinkContainer, service: Any, size: int) -> None:
    data = os.urandom(size)
    sink = await azw.create("dir/sub/out.bin", job_id="job-1", attempt=1, overwrite=True)
    assert isinstance(sink, AzureSink)
    token = sink.token()
    await write_all(sink, data, seed=size)
    await sink.seal()
    assert sink.token() == token  # an azure token never changes after create
    assert sink.blocks == (0 if size < PART else -(-size // PART))  # smaller than a part: one Put Blob at commit
    assert visible(service, prefix_of(azw)) == []  # staged blocks are not a blob
    version = await sink.commit()
    assert get(service, azw.key_for("dir/sub/out.bin")) == data
    p = props(service, azw, "dir/sub/out.bin")
    assert version == p.etag and p.metadata == {"chunkdjob": "job-1", "chunkdattempt": "1"} and p.size == size
    assert visible(service, prefix_of(azw)) == [azw.key_for("dir/sub/out.bin")]
    assert await sink.commit() == version  # a second commit answers the same
    await sink.abort()  # and an abort after the commit removes nothing
    assert get(service, azw.key_for("dir/sub/out.bin")) == data
    assert token == {"kind": "azure", "container": "azw", "name": "dir/sub/out.bin", "key": azw.key_for("dir/sub/out.bin"),
                     "prefix": sink.prefix, "job": "job-1", "attempt": "1", "overwrite": "1"}


async def test_sink_overwrite_true_replaces(azw: AzureSinkContainer, service: Any) -> None:
    big = os.urandom(PART + 3)
    for job, content in (("job-a", b"first version"), ("job-b", big), ("job-c", b"second")):
        sink = await azw.create("same.txt", job_id=job, attempt=1, overwrite=True)
        await sink.write(content)
        await sink.commit()  # commit seals a sink that was not sealed
        assert get(service, azw.key_for("same.txt")) == content
    assert props(service, azw, "same.txt").metadata["chunkdjob"] == "job-c"
    # the same job again: told that an earlier attempt committed it
    with pytest.raises(SinkConflict, match="earlier attempt") as e:
        await azw.create("same.txt", job_id="job-c", attempt=2, overwrite=True)
    assert e.value.by_this_job


@pytest.mark.parametrize("sealed", [False, True])
async def test_sink_abort_leaves_nothing_visible_and_twice_is_fine(azw: AzureSinkContainer, service: Any,
                                                                  sealed: bool) -> None:
    sink = await azw.create("a/b.bin", job_id="job-2", attempt=1, overwrite=True)
    assert isinstance(sink, AzureSink)
    await write_all(sink, os.urandom(2 * PART + 3))
    if sealed:
        await sink.seal()
    assert sink.blocks == (3 if sealed else 2)
    await sink.abort()
    assert sink.buffered == 0
    assert visible(service, prefix_of(azw)) == [] and get(service, azw.key_for("a/b.bin")) is None
    await sink.abort()
    assert visible(service, prefix_of(azw)) == []
    with pytest.raises(SinkError, match="aborted"):
        await sink.write(b"x")
    with pytest.raises(SinkError, match="aborted"):
        await sink.commit()
    # the aborted sink's staged blocks never become part of a later commit of the name
    again = await azw.create("a/b.bin", job_id="job-2", attempt=2, overwrite=False)
    await again.write(b"clean")
    asked: list[tuple[str, int]] = []
    real = AzureSinkContainer.request

    async def recording(self: AzureSinkContainer, what: str, *a: Any, **kw: Any) -> Answer:
        ans = await real(self, what, *a, **kw)
        asked.append((what.split(": ", 1)[1], ans.status))
        return ans
    with pytest.MonkeyPatch.context() as m:
        m.setattr(AzureSinkContainer, "request", recording)
        await again.commit()
    assert get(service, azw.key_for("a/b.bin")) == b"clean"
    # Azurite refuses a conditional Put Blob on a name with uncommitted blocks (Azure judges the
    # committed blob): the sink stages the bytes as one block and commits that instead
    assert asked == [("Get Blob Properties", 404), ("Put Blob", 409), ("Get Blob Properties", 404),
                     ("Put Block 1", 201), ("Put Block List", 201)], asked


@pytest.mark.parametrize("name", ["dir with space/ünï+code;=&.bin", "a%20b", "x'y(z)*!~", "deep/a/b/c/d.bin"])
async def test_sink_and_source_agree_on_odd_names(azw: AzureSinkContainer, service: Any, name: str) -> None:
    """Percent-encoding and Shared Key signing of names with spaces, non-ASCII, '+', '%' and
    reserved characters: written by the sink (both paths), seen by azure-storage-blob under
    the same name, read back by the source."""
    for size in (3, PART + 1):
        data = os.urandom(size)
        job = f"job é {size}"
        sink = await azw.create(name, job_id=job, attempt=1, overwrite=True)
        await sink.write(data)
        await sink.commit()
        assert get(service, azw.key_for(name)) == data
        assert props(service, azw, name).metadata["chunkdjob"] == f"job%20%C3%A9%20{size}"  # quoted: headers are ASCII
        assert await azw.recover(sink.token(), job_id=job, committing=False) == COMMITTED
        blob = await azw.source.open(name)
        assert blob.size == size and await blob.read_at(0, size) == data


async def test_sink_no_clobber_existing_name_refused_at_create(azw: AzureSinkContainer, service: Any) -> None:
    first = await azw.create("x.bin", job_id="job-a", attempt=1, overwrite=False)
    await first.write(b"theirs")
    await first.commit()
    with pytest.raises(SinkConflict, match="exists already") as e:
        await azw.create("x.bin", job_id="job-b", attempt=1, overwrite=False)
    assert "azw/x.bin" in str(e.value) and not e.value.by_this_job
    with pytest.raises(SinkConflict) as e2:  # the same job, retried: told it was its own commit
        await azw.create("x.bin", job_id="job-a", attempt=2, overwrite=False)
    assert e2.value.by_this_job
    assert get(service, azw.key_for("x.bin")) == b"theirs"


@pytest.mark.parametrize("size", [10, 2 * PART + 1])
@pytest.mark.parametrize("precheck", [True, False])
async def test_sink_no_clobber_name_created_meanwhile_refused_at_commit(
        azw: AzureSinkContainer, service: Any, monkeypatch: pytest.MonkeyPatch, size: int, precheck: bool) -> None:
    """Created between create and commit: SinkConflict, the other blob intact, nothing else
    visible. Without the Get Blob Properties pre-check, `If-None-Match: *` on the Put Blob /
    Put Block List itself is what refuses (Azurite honours it)."""
    if not precheck:
        async def no_check(*_: Any) -> None:
            return None
        monkeypatch.setattr(AzureSinkContainer, "check_absent", no_check)
    sink = await azw.create("race.bin", job_id="job-c", attempt=1, overwrite=False)
    await write_all(sink, os.urandom(size))
    await sink.seal()
    put(service, azw.key_for("race.bin"), b"the other writer", container=OUT)
    with pytest.raises(SinkConflict, match="azw/race.bin") as e:
        await sink.commit()
    assert not e.value.by_this_job
    assert get(service, azw.key_for("race.bin")) == b"the other writer"
    assert visible(service, prefix_of(azw)) == [azw.key_for("race.bin")]
    await sink.abort()  # fine after a conflict
    with pytest.raises(SinkError, match="aborted"):
        await sink.commit()


async def test_if_none_match_closes_the_race_between_two_sinks(azw: AzureSinkContainer, service: Any,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Two sinks of one name, both past their pre-check: exactly one commit wins, whatever the
    sizes (Put Blob and Put Block List, both with If-None-Match: *)."""
    async def no_check(*_: Any) -> None:
        return None
    monkeypatch.setattr(AzureSinkContainer, "check_absent", no_check)
    for n, (a_size, b_size) in enumerate([(5, 7), (PART + 1, 9), (9, PART + 1), (PART + 2, PART + 3)]):
        name = f"two-{n}.bin"
        a = await azw.create(name, job_id="job-x", attempt=1, overwrite=False)
        b = await azw.create(name, job_id="job-y", attempt=1, overwrite=False)
        da, db = os.urandom(a_size), os.urandom(b_size)
        await a.write(da)
        await b.write(db)
        await a.commit()
        with pytest.raises(SinkConflict):
            await b.commit()
        assert get(service, azw.key_for(name)) == da


@pytest.mark.parametrize("name", ["../x", "a/../../x", "/etc/passwd", "", "a//b", "a/./b", "x\\y", "q?x"])
async def test_sink_a_name_that_escapes_is_refused(azw: AzureSinkContainer, service: Any, name: str) -> None:
    with pytest.raises(SinkError, match="escapes") as e:
        await azw.create(name, job_id="job-d", attempt=1, overwrite=True)
    assert not isinstance(e.value, SinkConflict)
    assert visible(service, prefix_of(azw)) == []


async def test_sink_without_container_name_is_refused(azurite_url: str) -> None:
    cfg = sink_cfg(azurite_url, "p/")
    cfg = type(cfg)(**{**cfg.__dict__, "options": {k: v for k, v in cfg.options.items() if k != "container_name"}})
    src = build_container(cfg)
    try:
        with pytest.raises(SinkError, match="no container_name"):
            await sink_container("azw", cfg, src).create("x", job_id="j", attempt=1, overwrite=True)
    finally:
        await src.close()


async def test_sink_holds_at_most_one_part(azw: AzureSinkContainer, service: Any,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """`buffered` never exceeds part_size, sampled after every write and during every request."""
    sink = await azw.create("ten.bin", job_id="job-m", attempt=1, overwrite=True)
    seen: list[int] = []
    real = AzureSinkContainer.request

    async def sampling(self: AzureSinkContainer, *a: Any, **kw: Any) -> Answer:
        seen.append(sink.buffered)
        return await real(self, *a, **kw)
    monkeypatch.setattr(AzureSinkContainer, "request", sampling)
    data = os.urandom(10 * PART + 123)
    for p in pieces(data, seed=10):
        await sink.write(p)
        seen.append(sink.buffered)
    await sink.commit()
    assert max(seen) <= PART and PART in seen  # a full part is held while it uploads, never more
    assert sink.buffered == 0
    assert get(service, azw.key_for("ten.bin")) == data
    blocks = service.get_blob_client(OUT, azw.key_for("ten.bin")).get_block_list("committed")[0]
    assert [b.size for b in blocks] == [PART] * 10 + [123]


async def test_sink_transient_errors_are_retried_and_then_named(azw: AzureSinkContainer, service: Any,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """503s, 429s and dropped connections on Put Block / Put Block List / Put Blob are retried (a
    block is re-sent whole); past the retries the error names the output and the request, and
    no secret."""
    import chunkd.sinks.azure as mod
    monkeypatch.setattr(mod, "BACKOFF_S", 0.001)
    faults: list[str] = []
    hits: list[str] = []
    real = AzureSinkContainer._once

    async def flaky(self: AzureSinkContainer, method: str, url: str, headers: Any, data: Any) -> Answer:
        if method == "PUT" and faults and faults[0] != "ok":
            f = faults.pop(0)
            hits.append(f)
            if f == "drop":
                raise aiohttp.ServerDisconnectedError()
            return Answer(int(f), {}, b"", "ServerBusy")
        if method == "PUT" and faults:
            faults.pop(0)  # "ok": this one goes through
        return await real(self, method, url, headers, data)
    monkeypatch.setattr(AzureSinkContainer, "_once", flaky)
    data = os.urandom(2 * PART + 5)
    faults.extend(["503", "drop", "429", "ok", "500", "drop"])  # 3 failures of Put Block 1, 2 of Put Block 2
    sink = await azw.create("flaky.bin", job_id="job-r", attempt=1, overwrite=False)
    await write_all(sink, data)
    await sink.commit()
    assert hits == ["503", "drop", "429", "500", "drop"] and faults == []
    assert get(service, azw.key_for("flaky.bin")) == data
    small = await azw.create("small.bin", job_id="job-r", attempt=1, overwrite=False)
    await small.write(b"small")
    faults.extend(["503", "drop"])
    await small.commit()
    assert get(service, azw.key_for("small.bin")) == b"small"
    faults.extend(["503"] * 10)
    doomed = await azw.create("doomed.bin", job_id="job-r", attempt=1, overwrite=True)
    with pytest.raises(SinkError, match=r"azw/doomed.bin: Put Block 1: HTTP 503 ServerBusy \(after 3 retries\)") as e:
        await doomed.write(os.urandom(PART))
    assert AZURITE_KEY[:20] not in str(e.value) and "sig=" not in str(e.value)
    await doomed.abort()
    assert get(service, azw.key_for("doomed.bin")) is None


async def test_a_retried_commit_whose_first_try_went_through_counts_as_done(
        azw: AzureSinkContainer, service: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The answer to a conditional Put Block List / Put Blob is lost (the connection drops after
    the store committed): the retry gets 409 BlobAlreadyExists, finds this attempt's metadata,
    and the commit succeeds."""
    import chunkd.sinks.azure as mod
    monkeypatch.setattr(mod, "BACKOFF_S", 0.001)
    real = AzureSinkContainer._once
    lose: list[bool] = []

    async def lossy(self: AzureSinkContainer, method: str, url: str, headers: Any, data: Any) -> Answer:
        ans = await real(self, method, url, headers, data)
        if method == "PUT" and (url.endswith("comp=blocklist") or "comp=" not in url) and lose:
            lose.pop()
            raise aiohttp.ServerDisconnectedError()
        return ans
    monkeypatch.setattr(AzureSinkContainer, "_once", lossy)
    for name, size in (("lost-big.bin", PART + 9), ("lost-small.bin", 9)):
        data = os.urandom(size)
        sink = await azw.create(name, job_id="job-l", attempt=1, overwrite=False)
        await sink.write(data)
        lose.append(True)
        version = await sink.commit()
        assert not lose and get(service, azw.key_for(name)) == data
        assert version == props(service, azw, name).etag


async def test_a_wrong_key_is_a_clear_403_at_create(azurite_url: str) -> None:
    wrong_key = AZURITE_KEY[:-8] + "AAAAAAA="
    cfg = sink_cfg(azurite_url, "p/", account_key=wrong_key)
    src = build_container(cfg)
    try:
        with pytest.raises(SinkError, match="azw/x.bin: Get Blob Properties: HTTP 403") as e:
            await sink_container("azw", cfg, src).create("x.bin", job_id="j", attempt=1, overwrite=True)
        assert wrong_key[:20] not in str(e.value) and "SharedKey" not in str(e.value)
    finally:
        await src.close()


# --- recover after a crash -------------------------------------------------------------------

WRITER = r"""
import asyncio, json, os, random, signal, sys
from chunkd.config import config_from_mapping
from chunkd.sinks import sink_container
from chunkd.sources import build_container

async def main(url: str, prefix: str, name: str, size: int, stage: str, overwrite: bool) -> None:
    cfg = config_from_mapping({"containers": {"azw": {
        "kind": "azure", "account": "devstoreaccount1", "container_name": "chunkd-outputs", "prefix": prefix,
        "endpoint_url": url, "account_key": os.environ["AZ_KEY"], "writable": True, "part_size": "5MiB"}}})
    c = cfg.containers["azw"]
    w = sink_container("azw", c, build_container(c))
    sink = await w.create(name, job_id="job-k", attempt=1, overwrite=overwrite)
    print(json.dumps(sink.token()), flush=True)
    await sink.write(random.Random(size).randbytes(size))
    if stage != "writing":
        await sink.seal()
    if stage == "committed":
        await sink.commit()
    print("ready", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], sys.argv[6] == "1"))
"""


def killed_writer(url: str, w: AzureSinkContainer, name: str, size: int, stage: str,
                  overwrite: bool = True) -> dict[str, str]:
    """A real process that writes an output to `stage`, then is killed with SIGKILL."""
    p = subprocess.run([sys.executable, "-c", WRITER, url, prefix_of(w), name, str(size), stage,
                        "1" if overwrite else "0"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "AZ_KEY": AZURITE_KEY})
    assert p.returncode == -signal.SIGKILL, p.stderr
    lines = p.stdout.splitlines()
    assert lines[-1] == "ready", p.stdout
    token: dict[str, str] = json.loads(lines[0])
    return token


def content(size: int) -> bytes:
    return random.Random(size).randbytes(size)


async def fresh(url: str, w: AzureSinkContainer) -> tuple[AzureSinkContainer, Any]:
    """A new container over the same Azure container and prefix: the restarted daemon's."""
    cfg = sink_cfg(url, prefix_of(w))
    src = build_container(cfg)
    w2 = sink_container("azw", cfg, src)
    assert isinstance(w2, AzureSinkContainer)
    return w2, src.close


def staged(service: Any, w: AzureSinkContainer, name: str, prefix: str) -> list[int]:
    """The numbers of the uncommitted blocks of `prefix` Azure holds for `name` (what a writer left)."""
    _, uncommitted = service.get_blob_client(OUT, w.key_for(name)).get_block_list("uncommitted")
    # azure-storage-blob gives the ids decoded from base64: chunkd's own parser takes them encoded
    ours = [parse_block_id(base64.b64encode(b.id.encode()).decode()) for b in uncommitted]
    return sorted(p[1] for p in ours if p is not None and p[0] == prefix)


@pytest.mark.parametrize("stage,size", [("writing", 2 * PART + 3), ("sealed", 2 * PART + 3), ("sealed", 10)])
async def test_recover_not_committing_aborts_a_killed_writer(azurite_url: str, azw: AzureSinkContainer,
                                                             service: Any, stage: str, size: int) -> None:
    token = killed_writer(azurite_url, azw, "k/out.bin", size, stage)
    if size > PART:  # the blocks are in Azure, uncommitted and invisible
        assert staged(service, azw, "k/out.bin", token["prefix"]) == ([1, 2] if stage == "writing" else [1, 2, 3])
    assert visible(service, prefix_of(azw)) == []
    w2, close = await fresh(azurite_url, azw)
    try:
        assert await w2.recover(token, job_id="job-k", committing=False) == ABORTED
        assert await w2.recover(token, job_id="job-k", committing=False) == ABORTED  # again: nothing to do
        assert visible(service, prefix_of(azw)) == [] and get(service, azw.key_for("k/out.bin")) is None
        if stage == "sealed" and size <= PART:  # a small output lived only in memory: cannot be rolled forward
            assert await w2.recover(token, job_id="job-k", committing=True) == ABORTED
            assert visible(service, prefix_of(azw)) == []
    finally:
        await close()


@pytest.mark.parametrize("overwrite", [True, False])
async def test_recover_while_committing_rolls_a_sealed_output_forward(
        azurite_url: str, azw: AzureSinkContainer, service: Any, overwrite: bool) -> None:
    size = 3 * PART + 5
    token = killed_writer(azurite_url, azw, "k/fwd.bin", size, "sealed", overwrite)
    w2, close = await fresh(azurite_url, azw)
    try:
        assert await w2.recover(token, job_id="job-k", committing=True) == COMMITTED
        assert await w2.recover(token, job_id="job-k", committing=True) == COMMITTED  # again: the same
        assert await w2.recover(token, job_id="job-k", committing=False) == COMMITTED
    finally:
        await close()
    assert get(service, azw.key_for("k/fwd.bin")) == content(size)
    assert props(service, azw, "k/fwd.bin").metadata["chunkdjob"] == "job-k"


async def test_recover_reports_a_commit_made_before_the_crash_and_claims_no_other(
        azurite_url: str, azw: AzureSinkContainer, service: Any) -> None:
    size = PART + 1
    token = killed_writer(azurite_url, azw, "k/done.bin", size, "committed")
    w2, close = await fresh(azurite_url, azw)
    try:
        for committing in (False, True):
            assert await w2.recover(token, job_id="job-k", committing=committing) == COMMITTED
        assert await w2.recover(token, job_id="job-other", committing=False) == ABORTED
        assert get(service, azw.key_for("k/done.bin")) == content(size)
        # a sealed writer whose name another job committed meanwhile: not claimed, not replaced
        t2 = killed_writer(azurite_url, azw, "k/theirs.bin", 2 * PART, "sealed", overwrite=False)
        other = await w2.create("k/theirs.bin", job_id="job-other", attempt=1, overwrite=True)
        await other.write(b"other")
        await other.commit()
        assert await w2.recover(t2, job_id="job-k", committing=True) == ABORTED
        assert get(service, azw.key_for("k/theirs.bin")) == b"other"
        assert await w2.sweep() == 0
        with pytest.raises(SinkError, match="not this container's key"):
            await w2.recover(dict(token, key="elsewhere/done.bin"), job_id="job-k", committing=False)
        with pytest.raises(SinkError, match="not an azure output token"):
            await w2.recover(dict(token, kind="s3"), job_id="job-k", committing=False)
    finally:
        await close()


# --- a guest writes into azure through the daemon --------------------------------------------


async def test_a_guest_copies_an_azure_blob_into_an_azure_output(harness, service: Any, azurite_url: str) -> None:
    """The probe reads az/data/in.bin (2 parts + 5 bytes) in 1 MiB chunks and writes every chunk
    to an output in a writable azure container; the job commits it: exact bytes, this job's
    metadata, nothing else there. A second output is a single Put Blob."""
    data = os.urandom(2 * PART + 5)
    put(service, "data/in.bin", data)
    prefix = f"e2e-{uuid.uuid4().hex[:8]}/"
    out = {"kind": "azure", "account": AZURITE_ACCOUNT, "container_name": OUT, "prefix": prefix,
           "endpoint_url": azurite_url, "account_key": AZURITE_KEY, "timeout": "10s", "writable": True,
           "part_size": "5MiB", "overwrite": False}
    async with harness(containers={**az(azurite_url), "azo": out}, limits={"call_timeout": "30s"}) as h:
        job = await h.run("probe", ["open s az in.bin", "create o azo copy/c.bin", "start s 1048576 1", "tee 1 o",
                                    "finishon 1 o", "create t azo note.txt", "write t hello azure", "finish t"],
                          timeout=120)
        assert job.state == COMPLETED, job.error
        assert "finish o ok" in h.out(job) and "finish t ok" in h.out(job)
        outs = {o["name"]: o for o in job.output_summaries()}
        assert {n: (o["container"], o["state"], o["bytes"]) for n, o in outs.items()} == {
            "copy/c.bin": ("azo", "committed", len(data)), "note.txt": ("azo", "committed", 11)}
        # overwrite = false: the same name again fails the job, and leaves the blob as it was
        again = await h.run("probe", ["create t azo note.txt", "write t other", "finish t"])
        assert again.state != COMPLETED and "overwrite = false" in str(again.error)
        assert h.runtime.budget.in_use == 0
    assert get(service, f"{prefix}copy/c.bin") == data
    assert get(service, f"{prefix}note.txt") == b"hello azure"
    assert visible(service, prefix) == [f"{prefix}copy/c.bin", f"{prefix}note.txt"]
    meta = service.get_blob_client(OUT, f"{prefix}copy/c.bin").get_blob_properties().metadata
    assert meta["chunkdjob"] == job.id
    assert outs["copy/c.bin"]["version"] == service.get_blob_client(OUT, f"{prefix}copy/c.bin").get_blob_properties().etag
