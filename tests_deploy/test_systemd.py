"""config/chunkd.service under a real systemd, booted in a container (podman --systemd=always).

chunkd is installed as docs/operations.md says: the venv in /opt/chunkd/venv (here from
the image build), the unit in /etc/systemd/system, the config in /etc/chunkd/chunkd.toml,
the token in /etc/chunkd/chunkd.env.
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
from tests_deploy.support import RUN_OPTS, ROOT, SYSTEMD_IMAGE, Api, podman, record, wait_for

TOKEN = "unit-test-token"
MiB = 1024 * 1024
PACE = 32 * MiB


def _config(port: int) -> str:
    return f"""
[daemon]
listen = "127.0.0.1:{port}"
state_dir = "/var/lib/chunkd"
cache_dir = "/opt/chunkd/cache"
log_format = "json"
shutdown_grace = "30s"
[containers.local]
kind = "file"
root = "/srv/blobs"
[components.sha256]
path = "/opt/chunkd/guests/sha256.wasm"
[components.sha256_paced]
path = "/opt/chunkd/guests/sha256.wasm"
max_bytes_per_second = {PACE}
"""


class Machine:
    def __init__(self, tmp: Path) -> None:
        self.name = f"chunkd-sd-{uuid.uuid4().hex[:8]}"
        self.port = free_port()
        self.blobs = tmp / "blobs"
        self.blobs.mkdir()
        self.api = Api(self.port, TOKEN)
        self.tmp = tmp

    def sh(self, cmd: str, check: bool = True, timeout: float = 120) -> str:
        return podman("exec", self.name, "sh", "-c", cmd, check=check, timeout=timeout).stdout

    def boot(self) -> None:
        podman("run", "-d", "--name", self.name, *RUN_OPTS, "--systemd=always", "--user", "root",
               "-v", f"{self.blobs}:/srv/blobs:ro", "--entrypoint", "/sbin/init", SYSTEMD_IMAGE)
        wait_for(lambda: self.sh("systemctl is-system-running", check=False).strip() in ("running", "degraded"),
                 90, "systemd to boot")

    def install(self) -> None:
        podman("cp", str(ROOT / "config" / "chunkd.service"), f"{self.name}:/etc/systemd/system/chunkd.service")
        (self.tmp / "chunkd.toml").write_text(_config(self.port))
        (self.tmp / "chunkd.env").write_text(f"CHUNKD_AUTH_TOKEN={TOKEN}\n")
        self.sh("mkdir -p /etc/chunkd && id chunkd")
        podman("cp", str(self.tmp / "chunkd.toml"), f"{self.name}:/etc/chunkd/chunkd.toml")
        podman("cp", str(self.tmp / "chunkd.env"), f"{self.name}:/etc/chunkd/chunkd.env")
        self.sh("chmod 600 /etc/chunkd/chunkd.env && systemctl daemon-reload")

    def main_pid(self) -> int:
        return int(self.sh("systemctl show -p MainPID --value chunkd").strip() or 0)

    def journal(self) -> list[str]:
        return self.sh("journalctl -u chunkd -o cat --no-pager").splitlines()

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.journal() if line.startswith("{")]

    def remove(self) -> None:
        podman("rm", "-f", "-t", "0", self.name, check=False)


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machine]:
    m = Machine(tmp_path_factory.mktemp("systemd"))
    t0 = time.monotonic()
    m.boot()
    record("systemd: boot the container", time.monotonic() - t0)
    m.install()
    try:
        yield m
    finally:
        m.remove()


def _blob(folder: Path, name: str, size: int) -> str:
    data = os.urandom(size)
    (folder / name).write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def test_start_returns_only_once_the_api_answers(machine: Machine) -> None:
    t0 = time.monotonic()
    machine.sh("systemctl start chunkd")
    record("systemd: systemctl start (returns after READY=1)", time.monotonic() - t0)
    assert machine.api.healthy()  # no wait: READY=1 is sent once the API answers
    assert machine.sh("systemctl is-active chunkd").strip() == "active"
    assert machine.sh("ps -o user= -p $(systemctl show -p MainPID --value chunkd)").strip() == "chunkd"
    want = _blob(machine.blobs, "a.bin", 8 * MiB)
    job = machine.api.wait_job(machine.api.submit("sha256", ["local", "a.bin"]))
    assert job["state"] == "completed" and job["output"] == [f"{want}  a.bin"], job


def test_reload_rereads_the_config_and_a_broken_one_is_refused(machine: Machine) -> None:
    t0 = time.monotonic()
    machine.sh("systemctl reload chunkd")
    wait_for(lambda: any(e.get("event") == "config_reloaded" for e in machine.events()), 30, "config_reloaded")
    record("systemd: systemctl reload until config_reloaded", time.monotonic() - t0)
    pid = machine.main_pid()
    machine.sh("cp /etc/chunkd/chunkd.toml /etc/chunkd/good.toml && echo '[daemon' >> /etc/chunkd/chunkd.toml")
    t0 = time.monotonic()
    machine.sh("systemctl reload chunkd")
    failed = wait_for(lambda: [e for e in machine.events() if e.get("event") == "reload_failed"], 30, "reload_failed")
    record("systemd: a broken reload until reload_failed", time.monotonic() - t0)
    assert "chunkd.toml" in failed[-1]["error"] and failed[-1]["keeping"] == "previous config"
    assert machine.api.healthy() and machine.main_pid() == pid  # still serving, same process
    machine.sh("cp /etc/chunkd/good.toml /etc/chunkd/chunkd.toml")


def test_a_stopped_daemon_is_restarted_by_the_watchdog(machine: Machine) -> None:
    pid = machine.main_pid()
    assert pid > 0
    t0 = time.monotonic()
    machine.sh(f"kill -STOP {pid}")
    new = wait_for(lambda: (p := machine.main_pid()) not in (0, pid) and p, 90, "the watchdog restart")
    wait_for(machine.api.healthy, 60, "the restarted daemon")
    took = time.monotonic() - t0
    record("systemd: SIGSTOP until the watchdog's restart answers (WatchdogSec=30)", took)
    assert new != pid and took >= 25
    assert "watchdog timeout" in machine.sh("journalctl -u chunkd --no-pager -o cat -t systemd", check=False) or \
        "Watchdog timeout" in machine.sh("journalctl --no-pager -o cat", check=False)


def test_stop_lets_a_running_job_finish_within_the_grace(machine: Machine) -> None:
    want = _blob(machine.blobs, "paced.bin", 96 * MiB)  # ~3 s at the pace
    job_id = machine.api.submit("sha256_paced", ["local", "paced.bin"])
    wait_for(lambda: machine.api.chunks(job_id) > 0, 30, "the paced job to start")
    t0 = time.monotonic()
    machine.sh("systemctl stop chunkd")
    took = time.monotonic() - t0
    record("systemd: systemctl stop with a ~3 s job running", took)
    assert took < 30
    show = machine.sh("systemctl show -p Result -p ExecMainStatus chunkd")
    assert "Result=success" in show and "ExecMainStatus=0" in show, show
    drained = [e for e in machine.events() if e.get("event") == "drained"]
    assert drained and drained[-1]["finished_in_grace"] == 1, drained
    machine.sh("systemctl start chunkd")
    job = machine.api.job(job_id)
    assert job["state"] == "completed" and job["output"] == [f"{want}  paced.bin"], job


def test_the_journal_holds_json_lines(machine: Machine) -> None:
    lines = [line for line in machine.journal() if line.startswith("{")]
    assert len(lines) > 10
    events = [json.loads(line) for line in lines]  # each one parses
    assert all("event" in e and "level" in e and "timestamp" in e for e in events)
    assert {"serving", "config_reloaded", "reload_failed", "drained", "stopped"} <= {e["event"] for e in events}
