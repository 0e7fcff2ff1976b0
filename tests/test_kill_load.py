"""kill -9 under load: a real `chunkd serve` killed at random moments while jobs are
queued and running, restarted on the same state dir each time. Every job the API
accepted (202) must end, completed with the right digest, none lost."""
from __future__ import annotations

import hashlib
import json
import random
import time
from pathlib import Path

from tests.conftest import make_blob
from tests.service_support import Server, free_port

ROUNDS = 20
SEED = 20261124


def test_kill_9_under_load_loses_no_accepted_job(tmp_path: Path, state_dir: Path,
                                                 guests: dict[str, Path]) -> None:
    rng = random.Random(SEED)
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    digests = {}
    for name, size in (("small.bin", 300_000), ("mid.bin", 1_500_000), ("big.bin", 3_000_000)):
        digests[name] = hashlib.sha256(make_blob(blobs, name, size, seed=size)).hexdigest()
    port = free_port()
    cfg = tmp_path / "chunkd.toml"
    cfg.write_text(f"""
[daemon]
listen = "127.0.0.1:{port}"
state_dir = "{tmp_path / 'state'}"
cache_dir = "{state_dir / 'cache'}"
log_format = "json"
max_attempts = {ROUNDS + 5}
watchdog = false
[limits]
call_timeout = "5s"
[containers.local]
kind = "file"
root = "{blobs}"
[components.sha256]
path = "{guests['sha256']}"
instances = 2
[components.paced]
path = "{guests['sha256']}"
instances = 1
max_bytes_per_second = "3MiB"
""")
    accepted: dict[str, str] = {}  # job id -> blob
    t0 = time.monotonic()
    server = Server(cfg, port, tmp_path / "daemon.log")
    try:
        for _ in range(ROUNDS):
            server.start()
            for _ in range(rng.randint(2, 5)):
                comp = rng.choice(["sha256", "sha256", "paced"])
                blob = rng.choice(list(digests))
                accepted[server.submit(comp, ["--chunk-size=65536", "local", blob])] = blob
            time.sleep(rng.uniform(0.05, 1.2))  # some queued, some running, some done
            assert server.proc is not None
            server.proc.kill()
            server.proc.wait(10)
        server.start()
        jobs = {jid: server.wait_job(jid, 240) for jid in accepted}
    finally:
        server.stop()
    ended = {jid: j for jid, j in jobs.items() if j["state"] in ("completed", "failed", "cancelled")}
    completed = [jid for jid, j in ended.items() if j["state"] == "completed"]
    max_attempts = max(j["attempts"] for j in jobs.values())
    figures = {"rounds": ROUNDS, "seed": SEED, "accepted": len(accepted), "ended": len(ended),
               "lost": len(accepted) - len(ended), "completed": len(completed), "max_attempts": max_attempts,
               "seconds": round(time.monotonic() - t0, 1)}
    print(f"kill -9 under load: {figures}")
    (tmp_path / "kill_load.json").write_text(json.dumps(figures))
    assert figures["lost"] == 0
    for jid, j in jobs.items():
        assert j["state"] == "completed", (jid, j["state"], j["error"])
        assert f"{digests[accepted[jid]]}  {accepted[jid]}" in j["output"], (jid, j["output"])
        assert 1 <= j["attempts"] <= ROUNDS + 1
    assert max_attempts >= 2, "some job must have been interrupted and run again"
