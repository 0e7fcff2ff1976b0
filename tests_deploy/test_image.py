"""The image, built from the Dockerfile by scripts/test-deploy, run with podman as a user would.

One container on a state volume, a blob folder mounted read-only, a token set;
everything is checked from outside through the API, podman and the logs.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.service_support import free_port
from tests_deploy.support import IMAGE, RUN_OPTS, ROOT, Api, podman, record, wait_for

TOKEN = "deploy-test-token"
MiB = 1024 * 1024
PACE = 32 * MiB


def _blob(folder: Path, name: str, size: int) -> str:
    h = hashlib.sha256()
    with open(folder / name, "wb") as f:
        for _ in range(size // MiB):
            chunk = os.urandom(MiB)
            f.write(chunk)
            h.update(chunk)
    return h.hexdigest()


class Container:
    def __init__(self, tmp: Path) -> None:
        self.name = f"chunkd-test-{uuid.uuid4().hex[:8]}"
        self.volume = f"{self.name}-state"
        self.port = free_port()
        self.blobs = tmp / "blobs"
        self.blobs.mkdir()
        # the image's own config, on a free port (the host network is shared), plus a paced twin
        cfg = (ROOT / "config" / "docker.toml").read_text().replace('"0.0.0.0:7878"', f'"0.0.0.0:{self.port}"')
        cfg += ('\n[components.sha256_paced]\npath = "/opt/chunkd/guests/sha256.wasm"\n'
                f'max_bytes_per_second = {PACE}\n')
        self.config = tmp / "docker.toml"
        self.config.write_text(cfg)
        self.api = Api(self.port, TOKEN)

    def create(self) -> None:
        podman("volume", "create", self.volume)
        podman("create", "--name", self.name, *RUN_OPTS, "-e", f"CHUNKD_AUTH_TOKEN={TOKEN}",
               "-e", f"CHUNKD_HEALTH_URL=http://127.0.0.1:{self.port}/healthz",
               "-v", f"{self.blobs}:/srv/blobs:ro", "-v", f"{self.volume}:/var/lib/chunkd",
               "-v", f"{self.config}:/opt/chunkd/config/docker.toml:ro", IMAGE)

    def start(self) -> float:
        t0 = time.monotonic()
        podman("start", self.name)
        wait_for(self.api.healthy, 90, "the container's API")
        return time.monotonic() - t0

    def logs(self) -> list[dict[str, Any]]:
        out = []
        for line in podman("logs", self.name).stdout.splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def state(self) -> dict[str, Any]:
        return dict(json.loads(podman("inspect", "--format", "{{json .State}}", self.name).stdout))

    def remove(self) -> None:
        podman("rm", "-f", "-t", "0", self.name, check=False)
        podman("volume", "rm", "-f", self.volume, check=False)


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    c = Container(tmp_path_factory.mktemp("image"))
    c.create()
    try:
        record("image: start until /healthz answers", c.start())
        yield c
    finally:
        c.remove()


def test_the_image_is_lean_and_has_no_test_tools() -> None:
    size = int(podman("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout)
    record("image size MB", size / 1e6)
    assert size <= 300e6, f"{size / 1e6:.0f} MB"
    r = podman("run", "--rm", *RUN_OPTS, "--entrypoint", "sh", IMAGE, "-c",
               "for t in pytest mypy hypothesis moto selenium componentize-py maturin cargo clang; do "
               "command -v $t; done; python3 -c 'import chunkd._native'", check=False)
    assert r.returncode == 0 and r.stdout.strip() == "", r.stdout + r.stderr


def test_without_a_token_the_image_refuses_to_start() -> None:
    r = podman("run", "--rm", *RUN_OPTS, IMAGE, check=False, timeout=60)
    assert r.returncode == 3, (r.returncode, r.stdout[-1000:], r.stderr[-1000:])
    assert "daemon.listen" in r.stderr and "no token is set" in r.stderr, r.stderr


def test_it_runs_as_non_root_and_its_healthcheck_passes(box: Container) -> None:
    assert podman("exec", box.name, "id", "-u").stdout.strip() != "0"
    t0 = time.monotonic()
    assert podman("healthcheck", "run", box.name, check=False).returncode == 0
    record("image: podman healthcheck run", time.monotonic() - t0)
    serving = [e for e in box.logs() if e.get("event") == "serving"]
    assert serving and serving[-1]["auth"] is True


def test_a_job_through_the_api_gives_the_digest_sha256sum_gives(box: Container) -> None:
    want = _blob(box.blobs, "blob.bin", 64 * MiB)
    assert box.api.request("GET", "/v1/jobs", token="wrong")[0] == 401
    t0 = time.monotonic()
    job = box.api.wait_job(box.api.submit("sha256", ["local", "blob.bin"]))
    record("image: 64 MiB sha256 job", time.monotonic() - t0)
    assert job["state"] == "completed", job
    assert job["output"] == [f"{want}  blob.bin"]


def test_sigterm_drains_within_the_grace_and_exits_0(box: Container) -> None:
    want = _blob(box.blobs, "paced.bin", 96 * MiB)  # ~3 s at the pace
    job_id = box.api.submit("sha256_paced", ["local", "paced.bin"])
    wait_for(lambda: box.api.chunks(job_id) > 0, 30, "the paced job to start")
    t0 = time.monotonic()
    podman("stop", "-t", "60", box.name)  # SIGTERM, SIGKILL only after 60 s
    took = time.monotonic() - t0
    record("image: SIGTERM until exit, a ~3 s job running", took)
    state = box.state()
    assert state["ExitCode"] == 0 and not state.get("OOMKilled"), state
    assert took < 30  # daemon.shutdown_grace
    drained = [e for e in box.logs() if e.get("event") == "drained"]
    assert drained and drained[-1]["finished_in_grace"] == 1 and drained[-1]["interrupted"] == 0, drained
    box.start()
    job = box.api.job(job_id)
    assert job["state"] == "completed" and job["output"] == [f"{want}  paced.bin"], job


def test_a_container_killed_mid_job_completes_it_after_a_restart(box: Container) -> None:
    if not box.api.healthy():
        box.start()
    want = _blob(box.blobs, "long.bin", 160 * MiB)  # ~5 s at the pace
    job_id = box.api.submit("sha256_paced", ["local", "long.bin"])
    wait_for(lambda: box.api.chunks(job_id) >= 8, 30, "the job to be well under way")
    podman("kill", "-s", "KILL", box.name)
    podman("wait", box.name, timeout=30)
    t0 = time.monotonic()
    box.start()
    job = box.api.wait_job(job_id, 120)
    record("image: restart after kill -9 until the job completed", time.monotonic() - t0)
    assert job["state"] == "completed", job
    assert job["attempts"] == 2 and job["output"] == [f"{want}  long.bin"], job
