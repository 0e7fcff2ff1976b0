"""Outputs in cluster mode (issue 25): a node killed (SIGKILL) while its job writes a
blob; the job completes on the other node with exactly one committed output, exact
bytes; the killed node, restarted, undoes what its dead attempt left (its node-local
ledger, state_dir/outputs.sqlite3) and sweeps only its own temp files.

Real parts: nats-server (JetStream), `chunkd serve` nodes as subprocesses, the Python
gzip guest (examples/gzip), a file container, moto's S3 server, SIGKILL."""
from __future__ import annotations

import gzip
import os
import sqlite3
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import pytest

from chunkd.config import config_from_mapping
from chunkd.flowcontrol import BufferBudget
from chunkd.outputs import JobOutputs
from chunkd.sinks import COMMITTED, WritableContainer, sink_container
from chunkd.sinks.file import XATTR, FileSinkContainer
from chunkd.sinks.s3 import JOB_META, S3SinkContainer
from chunkd.sources import build_container
from chunkd.sources.file import FileContainer
from tests.remote_support import moto_server, s3_client
from tests.cluster_support import NatsServer, events, start_node
from tests.conftest import GUESTS, ROOT, make_blob
from tests.service_support import Server, wait_for

MiB = 1024 * 1024
BUCKET = "chunkd-cluster-outputs"
BLOB = 8 * MiB  # at 1 MiB/s: ~8 s per attempt, so the kill lands mid-job


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[NatsServer]:
    n = NatsServer(tmp_path / "nats-store", tmp_path / "nats.log").start()
    yield n
    n.stop()


@pytest.fixture
def nodes() -> Iterator[list[Server]]:
    made: list[Server] = []
    yield made
    for s in made:
        s.stop()


@pytest.fixture(scope="module")
def gzip_guest() -> Path:
    wasm = GUESTS / "gzip.wasm"
    if not wasm.exists():
        import subprocess
        subprocess.run([str(ROOT / "scripts" / "build-guests"), "gzip"], check=True)
    return wasm


def writing_component(gzip_wasm: Path, out: Path) -> str:
    """TOML for the paced gzip component and the writable file container `out`."""
    return f"""
[components.gzip]
path = "{gzip_wasm}"
instances = 1
max_bytes_per_second = "1MiB"
[containers.out]
kind = "file"
root = "{out}"
writable = true
"""


def temps_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".chunkd-out.*"))


def open_rows(ledger: Path) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(ledger)
    try:
        return db.execute("SELECT job_id, attempt, name, state FROM outputs "
                          "WHERE state IN ('writing', 'sealed', 'committing')").fetchall()
    finally:
        db.close()


def _writing_on(server: Server, jid: str) -> str | None:
    """The node running `jid` once its output has bytes in it (the record, or live)."""
    j = server.job(jid)
    outs = j.get("outputs") or []
    if j["state"] == "running" and outs and outs[0]["state"] == "writing" and outs[0]["bytes"] > 0:
        return str(j["node"])
    return None


def test_killed_writer_node_job_completes_elsewhere_with_one_output(
        tmp_path: Path, state_dir: Path, guests: dict[str, Path], gzip_guest: Path, nats: NatsServer,
        nodes: list[Server]) -> None:
    blobs, out = tmp_path / "blobs", tmp_path / "out"
    blobs.mkdir()
    out.mkdir()
    data = make_blob(blobs, "big.bin", BLOB, seed=25)
    extra = writing_component(gzip_guest, out)
    for name in ("n1", "n2"):  # one after the other: n2 finds gzip compiled in the shared cache
        nodes.append(start_node(tmp_path, name, nats.url, guests, blobs, state_dir / "cache",
                                extra_components=extra))
    jid = nodes[0].submit("gzip", ["--chunk-size=262144", "local", "big.bin", "out", "big.bin.gz"])
    owner = wait_for(lambda: _writing_on(nodes[0], jid), 120, 0.1, "the gzip job to be writing its output")
    victim, other = (nodes[0], nodes[1]) if owner == "n1" else (nodes[1], nodes[0])
    wait_for(lambda: temps_in(out), 30, 0.05, "the output's temp file")
    orphan = temps_in(out)
    assert len(orphan) == 1 and f".{owner}." in orphan[0], orphan  # the node's name is in its temp name
    assert victim.proc is not None
    victim.proc.kill()  # SIGKILL, mid-job
    victim.proc.wait(10)

    j = other.wait_job(jid, 120)
    assert j["state"] == "completed", j
    assert j["node"] == ("n2" if owner == "n1" else "n1") and j["attempts"] == 2, j
    # exactly one committed output, exact bytes
    assert [(o["container"], o["name"], o["state"]) for o in j["outputs"]] == [("out", "big.bin.gz", "committed")], j
    got = (out / "big.bin.gz").read_bytes()
    assert j["outputs"][0]["bytes"] == len(got) and j["outputs"][0]["version"]
    assert gzip.decompress(got) == data
    # the dead attempt's temp file is still there: only its node knows it (its ledger)
    assert temps_in(out) == orphan
    assert sorted(p.name for p in out.iterdir()) == sorted(["big.bin.gz", *orphan])
    ledger = tmp_path / str(owner) / "outputs.sqlite3"
    assert [(r[0], r[1], r[3]) for r in open_rows(ledger)] == [(jid, 1, "writing")]

    # the killed node comes back: before it takes a job it undoes its dead attempt's output
    victim.start()
    recovered = wait_for(lambda: events(victim, "outputs_recovered"), 30, 0.1, "the restarted node's recovery")
    # its temp is removed; the row settles `committed` because the name now carries this job's
    # id (attempt 2's commit: recover reports the job's output as visible), `aborted` without xattrs
    settled = (1, 0) if _xattrs_here(out) else (0, 1)
    assert (recovered[-1]["committed"], recovered[-1]["aborted"], recovered[-1]["left"]) == (*settled, 0), recovered
    assert temps_in(out) == [] and sorted(p.name for p in out.iterdir()) == ["big.bin.gz"]
    assert open_rows(ledger) == []
    assert (out / "big.bin.gz").read_bytes() == got  # the committed output untouched
    # and the record still says one committed output, read through the restarted node
    again = victim.job(jid)
    assert [(o["name"], o["state"], o["bytes"]) for o in again["outputs"]] == [("big.bin.gz", "committed", len(got))]


# --- the pieces, in-process ---------------------------------------------------------------------


def _xattrs_here(folder: Path) -> bool:
    probe = folder / "xattr-probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, XATTR, b"x")
        return True
    except OSError:
        return False
    finally:
        probe.unlink()


def _file_sinks(root: Path, node: str | None = None) -> FileSinkContainer:
    cfg = config_from_mapping({"containers": {"out": {"kind": "file", "root": str(root), "writable": True}}},
                              file="t.toml").containers["out"]
    w = sink_container("out", cfg, FileContainer("out", root), node=node)
    assert isinstance(w, FileSinkContainer)
    return w


async def test_sweep_of_a_node_removes_only_its_own_temps(tmp_path: Path) -> None:
    root = tmp_path / "out"
    root.mkdir()
    mine, theirs = _file_sinks(root, node="n1"), _file_sinks(root, node="n2")
    stale = await mine.create("a.bin", job_id="j1", attempt=1, overwrite=True)
    live_other = await theirs.create("b.bin", job_id="j2", attempt=1, overwrite=True)
    await stale.write(b"stale")
    await live_other.write(b"live")
    from chunkd.sinks import file as file_sink
    file_sink._IN_USE.discard(stale.temp)  # as if its process had died
    file_sink._IN_USE.discard(live_other.temp)  # another process's: not in this one's set either
    legacy = root / ".chunkd-out.j3.1.abcdef012345.tmp"  # a single daemon's temp name
    legacy.write_bytes(b"x")
    assert await mine.sweep() == 1
    assert not Path(stale.temp).exists() and Path(live_other.temp).exists() and legacy.exists()
    await live_other.seal()
    await live_other.commit()
    assert (root / "b.bin").read_bytes() == b"live"
    assert await _file_sinks(root).sweep() == 1  # a single daemon (no node) sweeps every temp name
    assert not legacy.exists()


async def test_retry_treats_a_blob_carrying_its_job_id_as_committed_file(tmp_path: Path) -> None:
    """A node killed between its commit and the record update: the retry (overwrite = true)
    finds the blob with this job's id, drops its bytes and commits nothing."""
    root = tmp_path / "out"
    root.mkdir()
    if not _xattrs_here(root):
        pytest.skip("no user xattrs on this filesystem: a retry there writes the output again")
    w = _file_sinks(root, node="n1")
    first = await w.create("r.bin", job_id="job-x", attempt=1, overwrite=True)
    await first.write(b"first attempt")
    await first.commit()
    before = os.stat(root / "r.bin")
    await _replayed(w, "job-x", "r.bin")
    assert (root / "r.bin").read_bytes() == b"first attempt"
    assert os.stat(root / "r.bin").st_mtime_ns == before.st_mtime_ns and temps_in(root) == []
    # another job's blob of that name is replaced (overwrite = true), as before
    other = await w.create("r.bin", job_id="job-y", attempt=1, overwrite=True)
    await other.write(b"other job")
    await other.commit()
    assert (root / "r.bin").read_bytes() == b"other job"


async def _replayed(w: WritableContainer, job_id: str, name: str) -> None:
    cfg = config_from_mapping({"containers": {"out": {"kind": "file", "root": "/", "writable": True}}},
                              file="t.toml").containers
    outs = JobOutputs(job_id, 2, "comp", sinks={"out": w}, containers=cfg, grants=None, budget=BufferBudget(MiB))
    h = await outs.create("out", name)
    await outs.write(h, b"second attempt, dropped")
    await outs.finish(h)
    await outs.commit()
    assert outs.failure is None and outs.held == 0
    assert [(o["name"], o["state"]) for o in outs.view()] == [(name, COMMITTED)]


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with moto_server(BUCKET) as url:
        yield url


@pytest.fixture
async def bucket(tmp_path: Path, moto_url: str) -> AsyncIterator[WritableContainer]:
    cfg = config_from_mapping({"containers": {"bkt": {
        "kind": "s3", "bucket": BUCKET, "prefix": f"t-{uuid.uuid4().hex[:8]}/", "endpoint_url": moto_url,
        "timeout": "10s", "writable": True}}}, file="t.toml", base=tmp_path).containers["bkt"]
    src = build_container(cfg)
    yield sink_container("bkt", cfg, src)
    await src.close()


async def test_retry_treats_an_object_carrying_its_job_id_as_committed_s3(bucket: WritableContainer,
                                                                          moto_url: str) -> None:
    import boto3
    s3 = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1")
    first = await bucket.create("o.bin", job_id="job-s", attempt=1, overwrite=True)
    await first.write(b"first attempt")
    etag = await first.commit()
    cfg = config_from_mapping({"containers": {"bkt": {"kind": "s3", "bucket": BUCKET, "writable": True}}},
                              file="t.toml").containers
    outs = JobOutputs("job-s", 2, "comp", sinks={"bkt": bucket}, containers=cfg, grants=None,
                      budget=BufferBudget(16 * MiB))
    h = await outs.create("bkt", "o.bin")
    await outs.write(h, b"second attempt, dropped")
    await outs.finish(h)
    await outs.commit()
    assert outs.failure is None and [(o["name"], o["state"]) for o in outs.view()] == [("o.bin", COMMITTED)]
    assert isinstance(bucket, S3SinkContainer)
    key = bucket.key_for("o.bin")
    head = s3.head_object(Bucket=BUCKET, Key=key)
    assert head["ETag"] == etag and head["Metadata"][JOB_META] == "job-s"
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"first attempt"
    assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
