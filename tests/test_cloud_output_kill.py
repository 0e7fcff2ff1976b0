"""kill -9 of a real daemon while its jobs write to the clouds' emulators: `chunkd serve`
runs two paced copy jobs (examples/copy-rs), one into a gcs container (fake-gcs-server),
one into an azure container (Azurite), and is killed once both are mid-upload (gcs: a
part staged under .chunkd-out/; azure: an uncommitted block on the blob). After the
restart both jobs complete at attempt 2, both outputs are exact and exist once, nothing
staged is left (no gcs staging object; no uncommitted azure block, no other blob), and
the job store shows attempt 1's outputs aborted and attempt 2's committed."""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.emulators import AZURITE_ACCOUNT, AZURITE_KEY, azure_blob, azurite, fake_gcs_server
from tests.service_support import Server, free_port, wait_for

MiB = 1024 * 1024
BUCKET = "killed-cloud"
SIZE = 24 * MiB  # paced at 4 MiB/s: ~6 s a job, time enough to be killed mid-upload


@pytest.fixture(scope="module")
def stores() -> Iterator[tuple[str, str]]:
    with fake_gcs_server(BUCKET) as gcs, azurite(BUCKET) as az:
        yield gcs, az


def gcs_names(url: str, prefix: str) -> list[str]:
    q = urllib.parse.urlencode({"prefix": prefix})
    with urllib.request.urlopen(f"{url}/storage/v1/b/{BUCKET}/o?{q}", timeout=10) as r:
        return sorted(o["name"] for o in json.loads(r.read()).get("items", []))


def gcs_get(url: str, key: str) -> bytes:
    with urllib.request.urlopen(f"{url}/download/storage/v1/b/{BUCKET}/o/{urllib.parse.quote(key, safe='')}"
                                "?alt=media", timeout=30) as r:
        data: bytes = r.read()
        return data


def azure_uncommitted(az: Any, key: str) -> int:
    try:
        _, uncommitted = az.get_blob_client(BUCKET, key).get_block_list("uncommitted")
    except Exception as e:  # noqa: BLE001 - no such blob yet: no blocks
        if "BlobNotFound" in str(e) or "404" in str(e):
            return 0
        raise
    return len(uncommitted)


def test_kill_9_mid_upload_then_restart_commits_each_cloud_output_once(
        tmp_path: Path, state_dir: Path, stores: tuple[str, str], guests: dict[str, Path]) -> None:
    gcs_url, az_url = stores
    az = azure_blob(az_url)
    blobs = tmp_path / "blobs"
    blobs.mkdir()
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
[containers.g]
kind = "gcs"
bucket = "{BUCKET}"
prefix = "k/"
endpoint_url = "{gcs_url}"
timeout = "10s"
writable = true
part_size = "5MiB"
[containers.a]
kind = "azure"
account = "{AZURITE_ACCOUNT}"
account_key = "${{CHUNKD_TEST_AZURE_KEY}}"
container_name = "{BUCKET}"
prefix = "k/"
endpoint_url = "{az_url}"
timeout = "10s"
writable = true
part_size = "5MiB"
[components.copy]
path = "{guests['copy_rs']}"
instances = 2
max_bytes_per_second = "4MiB"
""")
    os.environ["CHUNKD_TEST_AZURE_KEY"] = AZURITE_KEY
    s = Server(cfg, port, tmp_path / "daemon.log").start()
    try:
        to_gcs = s.submit("copy", ["--chunk-size=1048576", "local", "big.bin", "g", "copy.bin"])
        to_az = s.submit("copy", ["--chunk-size=1048576", "local", "big.bin", "a", "copy.bin"])
        wait_for(lambda: bool(gcs_names(gcs_url, "k/.chunkd-out/")) and azure_uncommitted(az, "k/copy.bin") >= 1,
                 60, 0.05, "both outputs mid-upload")
        assert s.proc is not None
        s.proc.kill()  # SIGKILL: nothing more is persisted, nothing cleaned
        s.proc.wait(10)
        assert gcs_names(gcs_url, "k/.chunkd-out/") and azure_uncommitted(az, "k/copy.bin") >= 1
        assert gcs_names(gcs_url, "k/copy.bin") == []  # nothing visible under the output's name
        assert not az.get_blob_client(BUCKET, "k/copy.bin").exists()
        s.start()
        for job_id in (to_gcs, to_az):
            j = s.wait_job(job_id, 120)
            assert j["state"] == "completed", j
            assert j["attempts"] == 2, j
            (o,) = [o for o in j["outputs"] if o["state"] == "committed"]
            assert o["bytes"] == SIZE and o["name"] == "copy.bin"
    finally:
        s.stop()
        os.environ.pop("CHUNKD_TEST_AZURE_KEY", None)
    digest = hashlib.sha256(data).digest()
    assert hashlib.sha256(gcs_get(gcs_url, "k/copy.bin")).digest() == digest
    assert gcs_names(gcs_url, "k/") == ["k/copy.bin"]  # no staging object left
    assert hashlib.sha256(az.get_blob_client(BUCKET, "k/copy.bin").download_blob().readall()).digest() == digest
    assert [b.name for b in az.get_container_client(BUCKET).list_blobs(name_starts_with="k/")] == ["k/copy.bin"]
    assert azure_uncommitted(az, "k/copy.bin") == 0  # the commit discarded attempt 1's blocks
    log = (tmp_path / "daemon.log").read_text()
    assert AZURITE_KEY not in log
    db = sqlite3.connect(tmp_path / "state" / "jobs.sqlite3")
    try:
        rows = db.execute("SELECT job_id, attempt, container, state FROM outputs ORDER BY job_id, attempt").fetchall()
    finally:
        db.close()
    for job_id, container in ((to_gcs, "g"), (to_az, "a")):
        mine = [(a, st) for j, a, c, st in rows if j == job_id and c == container]
        assert mine == [(1, "aborted"), (2, "committed")], rows
