"""Helpers for the deployment tests: podman as these machines need it, the API from outside."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "localhost/chunkd:test"
SYSTEMD_IMAGE = "localhost/chunkd-systemd:test"
PODMAN = shlex.split(os.environ.get("CHUNKD_PODMAN", "podman --runtime runc"))
# these machines: raising limits is refused, and only the host network works
RUN_OPTS = ["--network", "host", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
TIMINGS = ROOT / "build" / "deploy" / "timings.json"


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} -> {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return r


def record(name: str, seconds: float) -> None:
    """Keep how long a check took, for the closing note (build/deploy/timings.json)."""
    data: dict[str, float] = json.loads(TIMINGS.read_text()) if TIMINGS.exists() else {}
    data[name] = round(seconds, 2)
    TIMINGS.parent.mkdir(parents=True, exist_ok=True)
    TIMINGS.write_text(json.dumps(data, indent=2))


def wait_for(pred: Any, timeout: float, what: str, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


class Api:
    def __init__(self, port: int, token: str = "") -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.token = token

    def request(self, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        tok = self.token if token is None else token
        if tok:
            headers["Authorization"] = f"Bearer {tok}"
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def healthy(self) -> bool:
        try:
            return self.request("GET", "/healthz")[0] == 200
        except OSError:
            return False

    def submit(self, component: str, args: list[str]) -> str:
        status, body = self.request("POST", "/v1/jobs", {"component": component, "args": args})
        assert status == 202, (status, body)
        return str(body["job_id"])

    def job(self, job_id: str) -> dict[str, Any]:
        status, body = self.request("GET", f"/v1/jobs/{job_id}")
        assert status == 200, (status, body)
        return dict(body)

    def wait_job(self, job_id: str, timeout: float = 120) -> dict[str, Any]:
        def ended() -> dict[str, Any] | None:
            try:
                j = self.job(job_id)
            except OSError:
                return None
            return j if j["state"] in ("completed", "failed", "cancelled") else None
        job: dict[str, Any] = wait_for(ended, timeout, f"job {job_id} to end")
        return job

    def chunks(self, job_id: str) -> int:
        return sum(int(s.get("chunks", 0)) for s in self.job(job_id).get("streams", []))
