"""The sinks layer (chunkd/sinks/): outputs written to real files and to moto's S3
server on 127.0.0.1, committed whole or removed without a trace; crash recovery
against a writer process killed with SIGKILL; the start-up sweep; config keys."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

import pytest

from chunkd.config import ContainerConfig, config_from_mapping
from chunkd.errors import ConfigError, NameRefused
from chunkd.sinks import ABORTED, COMMITTED, Sink, SinkConflict, SinkError, WritableContainer, sink_container
from chunkd.sinks.file import FileSink, FileSinkContainer
from chunkd.sinks.s3 import S3Sink, S3SinkContainer
from chunkd.sources import build_container
from chunkd.sources.file import FileContainer
from tests.remote_support import moto_server, s3_client

MiB = 1024 * 1024
PART = 5 * MiB
BUCKET = "chunkd-outputs"
ROOT = Path(__file__).resolve().parent.parent
SIZES = [0, 1, PART - 1, PART + 1, 3 * PART + 5]


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with moto_server(BUCKET) as url:
        yield url


@pytest.fixture
def s3(moto_url: str) -> Any:
    return s3_client(moto_url)


def containers_cfg(tmp_path: Path, moto_url: str, **extra: Any) -> dict[str, ContainerConfig]:
    prefix = f"t-{uuid.uuid4().hex[:8]}/"
    cfg = config_from_mapping({"containers": {
        "out": {"kind": "file", "root": str(tmp_path / "root"), "writable": True, **extra},
        "bkt": {"kind": "s3", "bucket": BUCKET, "prefix": prefix, "endpoint_url": moto_url, "timeout": "10s",
                "writable": True, "part_size": "5MiB", **extra},
    }}, base=tmp_path)
    (tmp_path / "root").mkdir(exist_ok=True)
    return dict(cfg.containers)


@pytest.fixture
async def sinks(tmp_path: Path, moto_url: str) -> AsyncIterator[dict[str, WritableContainer]]:
    cfgs = containers_cfg(tmp_path, moto_url)
    sources = {n: build_container(c) for n, c in cfgs.items()}
    yield {n: sink_container(n, cfgs[n], sources[n]) for n in cfgs}
    for s in sources.values():
        await s.close()


def s3c(w: WritableContainer) -> S3SinkContainer:
    assert isinstance(w, S3SinkContainer)
    return w


def filec(w: WritableContainer) -> FileSinkContainer:
    assert isinstance(w, FileSinkContainer)
    return w


def pieces(data: bytes, seed: int) -> Iterator[bytes]:
    """`data` in pieces of varying size: single bytes, small, ~1 MiB, larger than a part."""
    rng = random.Random(seed)
    pos = 0
    while pos < len(data):
        n = rng.choice([1, 7, 4096, 65537, MiB + 3, 3 * MiB, PART + 11])
        yield data[pos:pos + n]
        pos += n


async def write_all(sink: Sink, data: bytes, seed: int = 1) -> None:
    for p in pieces(data, seed):
        await sink.write(p)
    assert sink.written == len(data)


def read_back(w: WritableContainer, s3: Any, name: str) -> bytes | None:
    if isinstance(w, FileSinkContainer):
        p = Path(w.root) / name
        return p.read_bytes() if p.exists() else None
    try:
        body: bytes = s3.get_object(Bucket=BUCKET, Key=s3c(w).key_for(name))["Body"].read()
        return body
    except s3.exceptions.NoSuchKey:
        return None


def temps(w: WritableContainer) -> list[Path]:
    return sorted(Path(filec(w).root).rglob(".chunkd-out.*")) if isinstance(w, FileSinkContainer) else []


def uploads(s3: Any, w: WritableContainer) -> list[dict[str, Any]]:
    if not isinstance(w, S3SinkContainer):
        return []
    r: list[dict[str, Any]] = s3.list_multipart_uploads(Bucket=BUCKET, Prefix=w.source.prefix).get("Uploads", [])
    return r


def nothing_partial(s3: Any, w: WritableContainer) -> None:
    assert temps(w) == [] and uploads(s3, w) == []


KINDS = ["out", "bkt"]


# --- exact bytes -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", SIZES)
async def test_exact_bytes(sinks: dict[str, WritableContainer], s3: Any, kind: str, size: int) -> None:
    w = sinks[kind]
    data = os.urandom(size)
    sink = await w.create("dir/sub/out.bin", job_id="job-1", attempt=1, overwrite=True)
    await write_all(sink, data, seed=size)
    await sink.seal()
    if kind == "out":
        assert len(temps(w)) == 1  # not visible yet: only the temp file
    assert read_back(w, s3, "dir/sub/out.bin") is None
    version = await sink.commit()
    assert read_back(w, s3, "dir/sub/out.bin") == data
    nothing_partial(s3, w)
    if isinstance(w, S3SinkContainer):
        head = s3.head_object(Bucket=BUCKET, Key=w.key_for("dir/sub/out.bin"))
        assert version == head["ETag"] and head["Metadata"] == {"chunkd-job": "job-1"}
        assert isinstance(sink, S3Sink)
        assert (sink.upload_id is not None) == (size >= PART)  # smaller than a part: one PutObject
    else:
        st = os.stat(Path(filec(w).root) / "dir/sub/out.bin")
        assert version == f"{st.st_size}:{st.st_mtime_ns}"
    assert await sink.commit() == version  # a second commit answers the same
    await sink.abort()  # and an abort after the commit removes nothing
    assert read_back(w, s3, "dir/sub/out.bin") == data


@pytest.mark.parametrize("kind", KINDS)
async def test_overwrite_true_replaces(sinks: dict[str, WritableContainer], s3: Any, kind: str) -> None:
    w = sinks[kind]
    for content in (b"first version", b"second"):
        sink = await w.create("same.txt", job_id=f"job-{len(content)}", attempt=1, overwrite=True)
        await sink.write(content)
        await sink.commit()  # commit seals a sink that was not sealed
    assert read_back(w, s3, "same.txt") == b"second"
    nothing_partial(s3, w)


# --- abort -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("sealed", [False, True])
async def test_abort_leaves_nothing_and_twice_is_fine(sinks: dict[str, WritableContainer], s3: Any,
                                                      kind: str, sealed: bool) -> None:
    w = sinks[kind]
    sink = await w.create("a/b.bin", job_id="job-2", attempt=1, overwrite=True)
    await write_all(sink, os.urandom(2 * PART + 3))
    if sealed:
        await sink.seal()
    assert temps(w) or uploads(s3, w)  # something partial exists before the abort
    await sink.abort()
    nothing_partial(s3, w)
    assert read_back(w, s3, "a/b.bin") is None
    await sink.abort()
    nothing_partial(s3, w)
    with pytest.raises(SinkError, match="aborted"):
        await sink.write(b"x")
    with pytest.raises(SinkError, match="aborted"):
        await sink.commit()


# --- overwrite = false -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_no_clobber_existing_name_refused_at_create(sinks: dict[str, WritableContainer], s3: Any,
                                                          kind: str) -> None:
    w = sinks[kind]
    first = await w.create("x.bin", job_id="job-a", attempt=1, overwrite=False)
    await first.write(b"theirs")
    await first.commit()
    with pytest.raises(SinkConflict, match="exists already") as e:
        await w.create("x.bin", job_id="job-b", attempt=1, overwrite=False)
    assert "x.bin" in str(e.value) and w.name in str(e.value) and not e.value.by_this_job
    with pytest.raises(SinkConflict) as e2:  # the same job, retried: told it was its own commit
        await w.create("x.bin", job_id="job-a", attempt=2, overwrite=False)
    assert e2.value.by_this_job or (kind == "out" and not xattrs(filec(w).root))
    assert read_back(w, s3, "x.bin") == b"theirs"
    nothing_partial(s3, w)


def xattrs(folder: str) -> bool:
    """Whether this filesystem keeps user.* extended attributes (files record their job there)."""
    probe = Path(folder) / "xattr-probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.probe", b"1")
        return True
    except OSError:
        return False
    finally:
        probe.unlink()


def put_other(w: WritableContainer, s3: Any, name: str, data: bytes) -> None:
    if isinstance(w, FileSinkContainer):
        (Path(w.root) / name).write_bytes(data)
    else:
        s3.put_object(Bucket=BUCKET, Key=s3c(w).key_for(name), Body=data)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", [10, 2 * PART + 1])
@pytest.mark.parametrize("precheck", [True, False])
async def test_no_clobber_name_created_meanwhile_refused_at_commit(
        sinks: dict[str, WritableContainer], s3: Any, monkeypatch: pytest.MonkeyPatch,
        kind: str, size: int, precheck: bool) -> None:
    """Created between create and commit: SinkConflict, the other blob intact, nothing partial.
    Without the HeadObject pre-check, the conditional write itself (If-None-Match: * on
    PutObject / CompleteMultipartUpload; link on files) is what refuses."""
    w = sinks[kind]
    if not precheck:
        if kind == "out":
            pytest.skip("files have no pre-check: link is the only check")

        async def no_check(*_: Any) -> None:
            return None
        monkeypatch.setattr(S3SinkContainer, "check_absent", no_check)
    sink = await w.create("race.bin", job_id="job-c", attempt=1, overwrite=False)
    await write_all(sink, os.urandom(size))
    await sink.seal()
    put_other(w, s3, "race.bin", b"the other writer")
    with pytest.raises(SinkConflict, match="race.bin"):
        await sink.commit()
    assert read_back(w, s3, "race.bin") == b"the other writer"
    nothing_partial(s3, w)
    await sink.abort()  # fine after a conflict


# --- names -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", ["../x", "a/../../x", "/etc/passwd", "", "a//b", ".chunkd-out.x.tmp",
                                  "d/.chunkd-out.j.1.abc.tmp"])
async def test_a_name_that_escapes_is_refused(sinks: dict[str, WritableContainer], s3: Any,
                                              kind: str, name: str) -> None:
    w = sinks[kind]
    if kind == "bkt" and ".chunkd-out." in name:
        pytest.skip("s3 keys have no temp files: the prefix is a plain key there, as for reads")
    if kind == "out" and name == "a//b":
        pytest.skip("a file path's empty segment is the same folder, as for reads")
    with pytest.raises(SinkError, match="escapes") as e:
        await w.create(name, job_id="job-d", attempt=1, overwrite=True)
    assert not isinstance(e.value, SinkConflict)
    nothing_partial(s3, w)


async def test_file_symlink_out_of_root_refused_and_temp_names_unreadable(tmp_path: Path,
                                                                           sinks: dict[str, WritableContainer]) -> None:
    w = filec(sinks["out"])
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, Path(w.root) / "link")
    with pytest.raises(SinkError, match="escapes"):
        await w.create("link/x.bin", job_id="job-e", attempt=1, overwrite=True)
    assert list(outside.iterdir()) == []
    sink = await w.create("r.bin", job_id="job-e", attempt=1, overwrite=True)
    assert isinstance(sink, FileSink)
    with pytest.raises(NameRefused, match="temp"):  # reads refuse a temp file's name too
        await w.source.open(os.path.basename(sink.temp))
    await sink.abort()


# --- recover after a crash -------------------------------------------------------------------

WRITER = r"""
import asyncio, json, os, signal, sys
from chunkd.config import ContainerConfig
from chunkd.sinks import sink_container
from chunkd.sources.file import FileContainer
from pathlib import Path

async def main(root: str, name: str, stage: str, overwrite: bool) -> None:
    cfg = ContainerConfig(name="out", kind="file", root=Path(root), writable=True)
    w = sink_container("out", cfg, FileContainer("out", Path(root)))
    sink = await w.create(name, job_id="job-k", attempt=1, overwrite=overwrite)
    print(json.dumps(sink.token()), flush=True)
    await sink.write(b"x" * 1_000_003)
    if stage != "writing":
        await sink.seal()
    if stage == "committed":
        await sink.commit()
    if stage == "linked":
        os.link(sink.temp, sink.target)
    print("ready", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"))
"""


def killed_writer(root: str, name: str, stage: str, overwrite: bool = True) -> dict[str, str]:
    """A real process that writes an output to `stage`, then is killed with SIGKILL."""
    p = subprocess.run([sys.executable, "-c", WRITER, root, name, stage, "1" if overwrite else "0"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == -signal.SIGKILL, p.stderr
    lines = p.stdout.splitlines()
    assert lines[-1] == "ready", p.stdout
    token: dict[str, str] = json.loads(lines[0])
    return token


@pytest.mark.parametrize("stage", ["writing", "sealed"])
async def test_file_recover_aborts_what_was_not_committed(sinks: dict[str, WritableContainer], stage: str) -> None:
    w = filec(sinks["out"])
    token = killed_writer(w.root, "k/out.bin", stage)
    assert len(temps(w)) == 1
    assert await w.recover(token, job_id="job-k", committing=False) == ABORTED
    assert temps(w) == [] and not (Path(w.root) / "k/out.bin").exists()
    assert await w.recover(token, job_id="job-k", committing=False) == ABORTED  # again: nothing to do


@pytest.mark.parametrize("stage,overwrite", [("committed", True), ("committed", False), ("linked", False)])
async def test_file_recover_reports_a_commit_made_before_the_crash(
        sinks: dict[str, WritableContainer], stage: str, overwrite: bool) -> None:
    """Killed after the rename (or after link, before its unlink): the commit stands, once."""
    w = filec(sinks["out"])
    token = killed_writer(w.root, "k/out.bin", stage, overwrite)
    assert len(temps(w)) == (1 if stage == "linked" else 0)
    for committing in (False, True):
        assert await w.recover(token, job_id="job-k", committing=committing) == COMMITTED
    assert temps(w) == []
    assert (Path(w.root) / "k/out.bin").read_bytes() == b"x" * 1_000_003


async def test_file_recover_while_committing_rolls_a_sealed_output_forward(sinks: dict[str, WritableContainer]) -> None:
    w = filec(sinks["out"])
    token = killed_writer(w.root, "k/out.bin", "sealed")
    assert await w.recover(token, job_id="job-k", committing=True) == COMMITTED
    assert temps(w) == [] and (Path(w.root) / "k/out.bin").read_bytes() == b"x" * 1_000_003


async def test_file_recover_does_not_claim_another_jobs_file(sinks: dict[str, WritableContainer]) -> None:
    w = filec(sinks["out"])
    token = killed_writer(w.root, "k/out.bin", "sealed")
    other = await w.create("k/out.bin", job_id="job-other", attempt=1, overwrite=True)
    await other.write(b"other")
    await other.commit()
    assert await w.recover(token, job_id="job-k", committing=False) == ABORTED
    assert (Path(w.root) / "k/out.bin").read_bytes() == b"other" and temps(w) == []


async def test_file_recover_refuses_a_temp_in_use_and_a_foreign_path(sinks: dict[str, WritableContainer]) -> None:
    w = filec(sinks["out"])
    sink = await w.create("live.bin", job_id="job-l", attempt=1, overwrite=True)
    with pytest.raises(SinkError, match="still being written"):
        await w.recover(sink.token(), job_id="job-l", committing=False)
    bad = dict(sink.token(), temp="../../etc/passwd")
    with pytest.raises(SinkError, match="not chunkd's"):
        await w.recover(bad, job_id="job-l", committing=False)
    await sink.abort()


async def fresh(tmp_path: Path, moto_url: str, w: S3SinkContainer) -> tuple[S3SinkContainer, Callable[[], Awaitable[None]]]:
    """A new container over the same bucket and prefix: the restarted daemon's."""
    cfg = ContainerConfig(name="bkt", kind="s3", writable=True, part_size=PART,
                          options=dict(containers_cfg(tmp_path, moto_url)["bkt"].options, prefix=w.source.prefix))
    src = build_container(cfg)
    return s3c(sink_container("bkt", cfg, src)), src.close


async def test_s3_recover(tmp_path: Path, moto_url: str, sinks: dict[str, WritableContainer], s3: Any) -> None:
    w = s3c(sinks["bkt"])
    data = os.urandom(2 * PART + 9)
    # sealed, not committed: aborted
    sealed = await w.create("sealed.bin", job_id="job-s", attempt=1, overwrite=True)
    await write_all(sealed, data)
    await sealed.seal()
    # an orphan upload, one part in, never sealed
    orphan = await w.create("orphan.bin", job_id="job-s", attempt=1, overwrite=True)
    await orphan.write(os.urandom(PART + 1))
    # completed just before the crash
    done = await w.create("done.bin", job_id="job-s", attempt=1, overwrite=True)
    await write_all(done, data)
    await done.commit()
    # small, never put: nothing to undo
    small = await w.create("small.bin", job_id="job-s", attempt=1, overwrite=True)
    await small.write(b"tiny")
    await small.seal()
    tokens = {s.name: s.token() for s in (sealed, orphan, done, small)}
    assert tokens["sealed.bin"]["upload_id"] and tokens["orphan.bin"]["upload_id"]
    assert len(uploads(s3, w)) == 2

    w2, close = await fresh(tmp_path, moto_url, w)
    try:
        got = {n: await w2.recover(t, job_id="job-s", committing=False) for n, t in tokens.items()}
        assert got == {"sealed.bin": ABORTED, "orphan.bin": ABORTED, "done.bin": COMMITTED, "small.bin": ABORTED}
        nothing_partial(s3, w)
        assert read_back(w, s3, "done.bin") == data
        assert read_back(w, s3, "sealed.bin") is None and read_back(w, s3, "small.bin") is None
        # again, and by another job: nothing changes, and another job's object is not claimed
        assert await w2.recover(tokens["done.bin"], job_id="job-s", committing=False) == COMMITTED
        assert await w2.recover(tokens["done.bin"], job_id="job-t", committing=False) == ABORTED
        assert read_back(w, s3, "done.bin") == data
        assert await w2.sweep() == 0
        with pytest.raises(SinkError, match="not this container's key"):
            await w2.recover(dict(tokens["done.bin"], key="elsewhere/done.bin"), job_id="job-s", committing=False)
    finally:
        await close()


async def test_s3_recover_while_committing_completes_a_sealed_upload(
        tmp_path: Path, moto_url: str, sinks: dict[str, WritableContainer], s3: Any) -> None:
    w = s3c(sinks["bkt"])
    data = os.urandom(3 * PART + 5)
    sink = await w.create("fwd.bin", job_id="job-f", attempt=1, overwrite=False)
    await write_all(sink, data)
    await sink.seal()
    token = sink.token()
    w2, close = await fresh(tmp_path, moto_url, w)
    try:
        assert await w2.recover(token, job_id="job-f", committing=True) == COMMITTED
        assert await w2.recover(token, job_id="job-f", committing=True) == COMMITTED
    finally:
        await close()
    assert read_back(w, s3, "fwd.bin") == data
    nothing_partial(s3, w)


# --- sweep -----------------------------------------------------------------------------------


async def test_sweep_removes_stale_temp_files_and_nothing_else(sinks: dict[str, WritableContainer]) -> None:
    w = filec(sinks["out"])
    root = Path(w.root)
    killed_writer(w.root, "deep/a/b/out.bin", "sealed")
    killed_writer(w.root, "top.bin", "writing")
    (root / "deep" / ".chunkd-out.by-hand.3.ff.tmp").write_bytes(b"stale")
    keep = ["deep/a/b/x.tmp", "deep/.chunkd-out.no-suffix", "chunkd-out.a.tmp", "deep/.chunkd-out.d.tmp.keep",
            "plain.bin"]
    for k in keep:
        (root / k).write_bytes(b"keep")
    (root / "dir.chunkd").mkdir()
    (root / "deep/.chunkd-out.folder.tmp").mkdir()  # a folder, not a temp file
    live = await w.create("live.bin", job_id="job-live", attempt=1, overwrite=True)
    await live.write(b"live")
    assert len(temps(w)) == 7
    assert await w.sweep() == 3
    assert sorted(p.name for p in temps(w)) == sorted([os.path.basename(live.temp), ".chunkd-out.folder.tmp",
                                                       ".chunkd-out.no-suffix", ".chunkd-out.d.tmp.keep"])
    assert all((root / k).read_bytes() == b"keep" for k in keep)
    await live.commit()  # the sweep left the live output alone
    assert (root / "live.bin").read_bytes() == b"live"
    assert await w.sweep() == 0


# --- bounded memory --------------------------------------------------------------------------


async def test_s3_holds_at_most_one_part(sinks: dict[str, WritableContainer], s3: Any,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """`buffered` never exceeds part_size, sampled after every write and during every request."""
    w = s3c(sinks["bkt"])
    sink = await w.create("ten.bin", job_id="job-m", attempt=1, overwrite=True)
    assert isinstance(sink, S3Sink)
    seen: list[int] = []
    real_call = S3SinkContainer.call

    async def sampling_call(self: S3SinkContainer, what: str, nbytes: int, op: Any) -> Any:
        seen.append(sink.buffered)
        return await real_call(self, what, nbytes, op)
    monkeypatch.setattr(S3SinkContainer, "call", sampling_call)
    data = os.urandom(10 * PART + 123)
    for p in pieces(data, seed=10):
        await sink.write(p)
        seen.append(sink.buffered)
    await sink.commit()
    assert max(seen) <= PART and PART in seen  # a full part is held while it uploads, never more
    assert sink.buffered == 0
    assert read_back(w, s3, "ten.bin") == data
    assert s3.head_object(Bucket=BUCKET, Key=w.key_for("ten.bin"), PartNumber=1)["PartsCount"] == 11


# --- config ----------------------------------------------------------------------------------


def test_config_keys_and_defaults(tmp_path: Path) -> None:
    cfg = config_from_mapping({"containers": {
        "f": {"kind": "file", "root": "r"},
        "s": {"kind": "s3", "bucket": "b"},
        "h": {"kind": "http", "base_url": "http://x/y"},
        "fw": {"kind": "file", "root": "r", "writable": True, "overwrite": False},
        "sw": {"kind": "s3", "bucket": "b", "writable": True, "part_size": "16MiB"},
    }}, base=tmp_path)
    c = cfg.containers
    assert [c[n].writable for n in ("f", "s", "h", "fw", "sw")] == [False, False, False, True, True]
    assert c["f"].overwrite and c["s"].overwrite and not c["fw"].overwrite
    assert c["s"].part_size == 8 * MiB and c["sw"].part_size == 16 * MiB


@pytest.mark.parametrize("table,key,reason", [
    ({"kind": "http", "base_url": "http://x/y", "writable": True}, "writable", "read-only"),
    ({"kind": "s3", "bucket": "b", "part_size": "4MiB"}, "part_size", "at least 5242880"),
    ({"kind": "s3", "bucket": "b", "part_size": "6GiB"}, "part_size", "at most"),
    ({"kind": "file", "root": "r", "part_size": "8MiB"}, "part_size", "unknown key"),
    ({"kind": "http", "base_url": "http://x/y", "overwrite": False}, "overwrite", "unknown key"),
    ({"kind": "file", "root": "r", "writable": "yes"}, "writable", "true or false"),
])
def test_config_refusals(tmp_path: Path, table: dict[str, Any], key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as e:
        config_from_mapping({"containers": {"c": table}}, file="x.toml", base=tmp_path)
    assert e.value.file == "x.toml" and e.value.key == f"containers.c.{key}" and reason in e.value.reason


async def test_sink_container_refuses_read_only_containers(tmp_path: Path) -> None:
    ro = ContainerConfig(name="c", kind="file", root=tmp_path)
    with pytest.raises(SinkError, match="read-only"):
        sink_container("c", ro, FileContainer("c", tmp_path))
    http = ContainerConfig(name="h", kind="http", writable=True, options={"base_url": "http://x/y"})
    with pytest.raises(SinkError, match="cannot be written"):
        sink_container("h", http, FileContainer("h", tmp_path))
