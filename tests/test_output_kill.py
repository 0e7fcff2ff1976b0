"""kill -9 of a real daemon while its jobs write: `chunkd serve` runs two paced copy jobs
(examples/copy-rs), one into a file container, one into an s3 container (moto's server),
and is killed once both outputs are mid-upload (a temp file on disk, a multipart upload
with parts). After the restart both jobs complete (attempt 2), both outputs are exact,
nothing partial is left (no temp file, no open multipart upload), each output exists once,
and the job store shows the dead attempt's outputs aborted and the retry's committed."""
from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.remote_support import moto_server, s3_client
from tests.service_support import Server, free_port, wait_for

MiB = 1024 * 1024
BUCKET = "killed"
SIZE = 24 * MiB  # paced at 4 MiB/s: ~6 s a job, time enough to be killed mid-upload


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with moto_server(BUCKET) as url:
        yield url


def temps(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".chunkd-out.*")]


def test_kill_9_mid_upload_then_restart_commits_each_output_once(tmp_path: Path, state_dir: Path, moto_url: str,
                                                                  guests: dict[str, Path]) -> None:
    blobs, out = tmp_path / "blobs", tmp_path / "out"
    blobs.mkdir()
    out.mkdir()
    data = os.urandom(SIZE)
    (blobs / "big.bin").write_bytes(data)
    port = free_port()
    cfg = tmp_path / "chunkd.toml"
    cfg.write_text(f"""
[daemon]
listen = "127.0.0.1:{port}"
state_dir = "{tmp_path / 'state'}"
cache_dir = "{state_dir / 'cache'}"
log_format = "json"
[limits]
call_timeout = "10s"
[containers.local]
kind = "file"
root = "{blobs}"
[containers.out]
kind = "file"
root = "{out}"
writable = true
[containers.bkt]
kind = "s3"
bucket = "{BUCKET}"
prefix = "k/"
endpoint_url = "{moto_url}"
region = "us-east-1"
timeout = "10s"
writable = true
part_size = "5MiB"
[components.copy]
path = "{guests['copy_rs']}"
instances = 2
max_bytes_per_second = "4MiB"
""")
    s3 = s3_client(moto_url)

    def uploads() -> list[dict[str, Any]]:
        return list(s3.list_multipart_uploads(Bucket=BUCKET, Prefix="k/").get("Uploads", []))

    def parts() -> int:
        return sum(len(s3.list_parts(Bucket=BUCKET, Key=u["Key"], UploadId=u["UploadId"]).get("Parts", []))
                   for u in uploads())

    s = Server(cfg, port, tmp_path / "daemon.log").start()
    try:
        to_file = s.submit("copy", ["--chunk-size=1048576", "local", "big.bin", "out", "copy.bin"])
        to_s3 = s.submit("copy", ["--chunk-size=1048576", "local", "big.bin", "bkt", "copy.bin"])
        # mid-upload: a temp file with bytes, and a multipart upload with a part
        wait_for(lambda: any(p.stat().st_size > MiB for p in temps(out)) and parts() >= 1, 60, 0.05,
                 "both outputs mid-upload")
        assert s.proc is not None
        s.proc.kill()  # SIGKILL: nothing more is persisted, nothing cleaned
        s.proc.wait(10)
        assert temps(out) and uploads()  # what the dead attempt left
        s.start()
        for job_id in (to_file, to_s3):
            j = s.wait_job(job_id, 120)
            assert j["state"] == "completed", j
            assert j["attempts"] == 2, j
            (o,) = [o for o in j["outputs"] if o["state"] == "committed"]
            assert o["bytes"] == SIZE and o["name"] == "copy.bin"
    finally:
        s.stop()
    digest = hashlib.sha256(data).digest()
    assert hashlib.sha256((out / "copy.bin").read_bytes()).digest() == digest
    assert temps(out) == [] and sorted(p.name for p in out.iterdir()) == ["copy.bin"]
    assert hashlib.sha256(s3.get_object(Bucket=BUCKET, Key="k/copy.bin")["Body"].read()).digest() == digest
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="k/").get("Contents", [])] == ["k/copy.bin"]
    assert uploads() == []
    # the ledger: attempt 1's outputs aborted at the restart, attempt 2's committed, once each
    db = sqlite3.connect(tmp_path / "state" / "jobs.sqlite3")
    try:
        rows = db.execute("SELECT job_id, attempt, container, state FROM outputs ORDER BY job_id, attempt").fetchall()
    finally:
        db.close()
    for job_id, container in ((to_file, "out"), (to_s3, "bkt")):
        mine = [(a, st) for j, a, c, st in rows if j == job_id and c == container]
        assert mine == [(1, "aborted"), (2, "committed")], rows
