"""`chunkd serve` as operators run it: a real daemon in a subprocess on loopback."""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.conftest import ROOT, make_blob
from tests.service_support import Server, free_port, wait_for

PACED = 2 * 1024 * 1024  # bytes/s for the paced component


@pytest.fixture
def server(tmp_path: Path, state_dir: Path, guests: dict[str, Path]) -> Iterator[Callable[..., Server]]:
    made: list[Server] = []
    blobs = tmp_path / "blobs"
    blobs.mkdir(exist_ok=True)

    def make(*, daemon: str = "", components: str = "", env: dict[str, str] | None = None,
             start: bool = True, grace: str = "20s") -> Server:
        port = free_port()
        comps = components or f"""
[components.sha256]
path = "{guests['sha256']}"
instances = 2
[components.paced]
path = "{guests['sha256']}"
max_bytes_per_second = {PACED}
"""
        cfg = tmp_path / "chunkd.toml"
        cfg.write_text(f"""
[daemon]
listen = "127.0.0.1:{port}"
state_dir = "{tmp_path / 'state'}"
cache_dir = "{state_dir / 'cache'}"
log_format = "json"
shutdown_grace = "{grace}"
{daemon}
[limits]
call_timeout = "5s"
[containers.local]
kind = "file"
root = "{blobs}"
{comps}""")
        s = Server(cfg, port, tmp_path / "daemon.log", env or {})
        made.append(s)
        return s.start() if start else s

    yield make
    for s in made:
        s.stop()


def _blob(tmp_path: Path, name: str, size: int) -> str:
    data = make_blob(tmp_path / "blobs", name, size)
    return hashlib.sha256(data).hexdigest()


def test_submit_poll_streams_cancel_metrics(server: Callable[..., Server], tmp_path: Path) -> None:
    s = server()
    big = _blob(tmp_path, "big.bin", 16 * 1024 * 1024)
    small = _blob(tmp_path, "small.bin", 3 * 1024 * 1024 + 5)
    slow = s.submit("paced", ["local", "big.bin"])
    wait_for(lambda: s.job(slow)["state"] == "running" and s.job(slow)["streams"], 30, what="paced job running")
    status, streams = s.request("GET", "/v1/streams")
    assert status == 200 and any(st["job_id"] == slow and st["blob"] == "big.bin" for st in streams["streams"])
    status, body = s.request("DELETE", f"/v1/jobs/{slow}")
    assert status == 202 and body["cancel_requested"] is True
    j = s.wait_job(slow)
    assert j["state"] == "cancelled"
    assert j["streams"][0]["end"] == "cancelled" and j["streams"][0]["bytes"] < 16 * 1024 * 1024
    assert any(line.startswith("cancelled: big.bin") for line in j["output"])
    assert s.request("DELETE", f"/v1/jobs/{slow}")[0] == 409  # already ended

    ok = s.submit("sha256", ["local", "small.bin"])
    j = s.wait_job(ok)
    assert j["state"] == "completed" and j["attempts"] == 1
    assert f"{small}  small.bin" in j["output"]
    assert big not in "".join(j["output"])
    status, text = s.request("GET", "/metrics")
    assert status == 200
    assert 'chunkd_jobs_total{outcome="completed"} 1.0' in text
    assert 'chunkd_jobs_total{outcome="cancelled"} 1.0' in text
    assert 'chunkd_streams_ended_total{end="cancelled"} 1.0' in text
    for name in ("chunkd_bytes_delivered_total", "chunkd_chunks_delivered_total", "chunkd_handle_chunk_seconds_count"):
        assert any(line.startswith(name) and float(line.split()[-1]) > 0 for line in text.splitlines()), name
    for gauge in ("chunkd_streams_active", "chunkd_streams_pending", "chunkd_buffered_bytes", "chunkd_traps_total",
                  "chunkd_timeouts_total"):
        assert gauge in text or gauge.replace("_total", "") in text
    status, listing = s.request("GET", "/v1/jobs")
    assert {j["job_id"] for j in listing["jobs"]} >= {slow, ok}


def test_kill_9_mid_stream_then_restart_completes(server: Callable[..., Server], tmp_path: Path) -> None:
    digest = _blob(tmp_path, "big.bin", 8 * 1024 * 1024)
    s = server()
    job = s.submit("paced", ["local", "big.bin"])
    wait_for(lambda: (st := s.job(job)["streams"]) and st[0]["chunks"] >= 1, 30, what="first chunks")
    assert s.proc is not None
    s.proc.kill()  # SIGKILL: no chance to persist anything more
    s.proc.wait(10)
    s.start()
    j = s.wait_job(job, 120)
    assert j["state"] == "completed", j
    assert j["attempts"] == 2
    assert f"{digest}  big.bin" in j["output"]


def test_max_attempts_bounds_reruns(server: Callable[..., Server], tmp_path: Path) -> None:
    _blob(tmp_path, "big.bin", 16 * 1024 * 1024)
    s = server(daemon="max_attempts = 1")
    job = s.submit("paced", ["local", "big.bin"])
    # chunks flowing: the attempt was persisted before the guest was first called
    wait_for(lambda: (st := s.job(job)["streams"]) and st[0]["chunks"] >= 1, 30, what="first chunks")
    assert s.proc is not None
    s.proc.kill()
    s.proc.wait(10)
    s.start()
    j = s.wait_job(job)
    assert j["state"] == "failed" and "gave up after 1 attempt" in j["error"]


def test_sigterm_drains_and_exits_zero(server: Callable[..., Server], tmp_path: Path) -> None:
    digest = _blob(tmp_path, "mid.bin", 2 * 1024 * 1024)
    s = server()
    job = s.submit("paced", ["local", "mid.bin"])
    wait_for(lambda: s.job(job)["state"] == "running", 30, what="running")
    s.signal(signal.SIGTERM)
    assert s.wait_exit(60) == 0
    events = [e["event"] for e in s.log_events()]
    assert "shutting_down" in events and "drained" in events and "stopped" in events
    drained = next(e for e in s.log_events() if e["event"] == "drained")
    assert drained["finished_in_grace"] == 1 and drained["interrupted"] == 0
    s.start()
    j = s.job(job)
    assert j["state"] == "completed" and j["attempts"] == 1 and f"{digest}  mid.bin" in j["output"]


def test_sigterm_past_grace_persists_the_rest(server: Callable[..., Server], tmp_path: Path) -> None:
    digest = _blob(tmp_path, "big.bin", 6 * 1024 * 1024)
    s = server(grace="300ms")
    job = s.submit("paced", ["local", "big.bin"])
    wait_for(lambda: (st := s.job(job)["streams"]) and st[0]["chunks"] >= 1, 30, what="first chunks")
    s.signal(signal.SIGTERM)
    assert s.wait_exit(60) == 0
    drained = next(e for e in s.log_events() if e["event"] == "drained")
    assert drained["interrupted"] == 1
    s.start()
    j = s.wait_job(job, 120)
    assert j["state"] == "completed" and j["attempts"] == 2 and f"{digest}  big.bin" in j["output"]


def test_sighup_reloads_changed_component_without_dropping_streams(
        server: Callable[..., Server], tmp_path: Path, guests: dict[str, Path]) -> None:
    comp = tmp_path / "comp.wasm"
    shutil.copy(guests["cancel_after"], comp)
    digest = _blob(tmp_path, "big.bin", 4 * 1024 * 1024)
    s = server(components=f"""
[components.c]
path = "{comp}"
[components.paced]
path = "{guests['sha256']}"
max_bytes_per_second = {PACED}
""")
    running = s.submit("paced", ["local", "big.bin"])
    wait_for(lambda: s.job(running)["state"] == "running", 30, what="running")
    before = s.wait_job(s.submit("c", ["local", "big.bin", "1000", "2"]))
    assert before["output"][:2] == ["chunk 0/4195 1000 bytes", "chunk 1/4195 1000 bytes"]
    tmp = tmp_path / "comp.wasm.new"
    shutil.copy(guests["sha256"], tmp)
    os.replace(tmp, comp)
    s.signal(signal.SIGHUP)
    wait_for(lambda: any(e["event"] == "config_reloaded" for e in s.log_events()), 60, what="reload")
    reloaded = next(e for e in s.log_events() if e["event"] == "config_reloaded")
    assert reloaded["components_changed"] == ["c"]
    after = s.wait_job(s.submit("c", ["local", "big.bin"]))
    assert after["state"] == "completed" and f"{digest}  big.bin" in after["output"]
    j = s.wait_job(running, 60)
    assert j["state"] == "completed" and f"{digest}  big.bin" in j["output"]
    # a broken config on SIGHUP is refused and the old one keeps serving
    s.config.write_text(s.config.read_text() + "\n[bogus]\n")
    s.signal(signal.SIGHUP)
    wait_for(lambda: any(e["event"] == "reload_failed" for e in s.log_events()), 60, what="reload_failed")
    assert s.wait_job(s.submit("c", ["local", "big.bin"]))["state"] == "completed"


def test_notify_protocol(server: Callable[..., Server], tmp_path: Path) -> None:
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(60)
    try:
        s = server(env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "300000"}, start=False)
        s.start(wait=False)
        got: list[str] = []

        def until(word: str) -> None:
            while not any(word in m for m in got):
                got.append(sock.recv(4096).decode())
        until("READY=1")
        assert s.healthy()  # READY is only sent once the API answers
        until("WATCHDOG=1")
        n = sum("WATCHDOG=1" in m for m in got)
        while sum("WATCHDOG=1" in m for m in got) < n + 2:  # it keeps pinging
            got.append(sock.recv(4096).decode())
        s.signal(signal.SIGTERM)
        until("STOPPING=1")
        assert s.wait_exit(60) == 0
        ready = next(m for m in got if "READY=1" in m)
        assert "MAINPID=" in ready
    finally:
        sock.close()


def test_bad_requests_get_json_errors_and_jobs_keep_flowing(server: Callable[..., Server], tmp_path: Path) -> None:
    digest = _blob(tmp_path, "mid.bin", 2 * 1024 * 1024)
    s = server(daemon='max_request_bytes = "4KiB"')
    job = s.submit("paced", ["local", "mid.bin"])
    cases: list[tuple[str, str, dict[str, Any], int]] = [
        ("POST", "/v1/jobs", {"raw": b"{not json"}, 400),
        ("POST", "/v1/jobs", {"raw": b"[1, 2]"}, 400),
        ("POST", "/v1/jobs", {"body": {"component": "sha256", "args": "x"}}, 400),
        ("POST", "/v1/jobs", {"body": {"component": 5}}, 400),
        ("POST", "/v1/jobs", {"body": {"component": "sha256", "extra": 1}}, 400),
        ("POST", "/v1/jobs", {"body": {"component": "nope", "args": []}}, 404),
        ("POST", "/v1/jobs", {"raw": b"x" * 10000}, 413),
        ("POST", "/v1/jobs", {"raw": b"component=x", "headers": {"Content-Type": "text/plain"}}, 415),
        ("GET", "/v1/jobs/doesnotexist", {}, 404),
        ("DELETE", "/v1/jobs/doesnotexist", {}, 404),
        ("GET", "/v1/nothing", {}, 404),
        ("PUT", "/v1/jobs", {}, 405),
        ("GET", "/v1/jobs?limit=zero", {}, 400),
    ]
    for method, path, kw, want in cases:
        status, body = s.request(method, path, kw.get("body"), raw=kw.get("raw"), headers=kw.get("headers"))
        assert status == want, (method, path, kw, status, body)
        assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], body
    j = s.wait_job(job)
    assert j["state"] == "completed" and f"{digest}  mid.bin" in j["output"]
    assert s.healthy()


def test_bearer_token_on_tcp(server: Callable[..., Server], tmp_path: Path) -> None:
    s = server(daemon='auth_token = "from-config"', env={"CHUNKD_AUTH_TOKEN": "s3cret"})
    assert s.request("GET", "/healthz")[0] == 200  # health checks need no token
    status, body = s.request("GET", "/v1/jobs")
    assert status == 401 and "token" in body["error"]
    assert s.request("GET", "/v1/jobs", headers={"Authorization": "Bearer from-config"})[0] == 401  # env wins
    assert s.request("GET", "/v1/jobs", headers={"Authorization": "Bearer s3cret"})[0] == 200
    assert s.request("GET", "/metrics")[0] == 401


def test_client_commands(server: Callable[..., Server], tmp_path: Path) -> None:
    digest = _blob(tmp_path, "a.bin", 3 * 1024 * 1024)
    s = server()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "chunkd", *args], capture_output=True, text=True, timeout=120,
                              cwd=ROOT)

    r = cli("submit", "-c", str(s.config), "sha256", "local", "a.bin", "--wait")  # the documented order
    assert r.returncode == 0, r.stderr
    assert f"{digest}  a.bin" in r.stdout and "completed" in r.stdout
    assert "100.0%" in r.stderr  # plain progress lines when not on a terminal
    r = cli("submit", "--url", s.url, "sha256", "local", "missing.bin")
    job_id = r.stdout.strip()
    assert r.returncode == 0 and len(job_id) == 16
    s.wait_job(job_id)
    r = cli("status", "--url", s.url, job_id)
    assert r.returncode == 0 and "failed" in r.stdout
    r = cli("status", "--url", s.url)
    assert r.returncode == 0 and job_id in r.stdout
    r = cli("submit", "--url", s.url, "--wait", "sha256", "local", "missing.bin")
    assert r.returncode == 1
    r = cli("cancel", "--url", s.url, "nope")
    assert r.returncode == 1 and "no job" in r.stderr
    r = cli("status", "--url", f"127.0.0.1:{free_port()}")
    assert r.returncode == 5 and "cannot reach" in r.stderr
