"""Soak: a real `chunkd serve` on loopback fed a mix of jobs for N minutes, sampled for
growth of RSS, open fds, threads and asyncio tasks. All four should stay flat.

The mix: sha256 over blobs of several sizes, paced jobs cancelled mid-stream
(DELETE /v1/jobs/{id}), jobs naming a missing container (they fail), probe jobs
that trap in handle-chunk (the instance is replaced), cancel_after jobs (the
guest answers false). Not run in CI.

Usage: bench/soak [--minutes M] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.service_support import Server, free_port  # noqa: E402

GUESTS = ROOT / "build" / "guests"
SAMPLE_EVERY_S = 5.0
IN_FLIGHT = 4


def proc_status(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, val = line.partition(":")
        if key in ("VmRSS", "Threads"):
            out[key] = int(val.split()[0])
    return out


def sample(server: Server, t0: float) -> dict[str, float]:
    assert server.proc is not None
    pid = server.proc.pid
    st = proc_status(pid)
    _, metrics = server.request("GET", "/metrics")
    m = re.search(r"^chunkd_asyncio_tasks (\S+)$", str(metrics), re.M)
    return {"t_s": round(time.monotonic() - t0, 1), "rss_mb": round(st["VmRSS"] / 1024, 1),
            "fds": len(os.listdir(f"/proc/{pid}/fd")), "threads": st["Threads"],
            "tasks": float(m.group(1)) if m else float("nan")}


def slope_per_minute(xs: list[float], ys: list[float]) -> float:
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    den = sum((x - mx) ** 2 for x in xs)
    return 0.0 if den == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den * 60


def make_blobs(folder: Path) -> dict[str, int]:
    sizes = {"tiny.bin": 10_000, "small.bin": 500_000, "mid.bin": 4_000_000, "big.bin": 16_000_000}
    for name, size in sizes.items():
        with open(folder / name, "wb") as f:
            f.write(os.urandom(size))
    return sizes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "soak.json"))
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    tmp = Path(tempfile.mkdtemp(prefix="chunkd-soak-"))
    blobs = tmp / "blobs"
    blobs.mkdir()
    make_blobs(blobs)
    port = free_port()
    cfg = tmp / "chunkd.toml"
    cfg.write_text(f"""
[daemon]
listen = "127.0.0.1:{port}"
state_dir = "{tmp / 'state'}"
cache_dir = "{ROOT / 'state' / 'cache'}"
log_format = "json"
log_level = "warning"
job_retention = "1m"
[limits]
call_timeout = "2s"
[containers.local]
kind = "file"
root = "{blobs}"
[components.sha256]
path = "{GUESTS / 'sha256.wasm'}"
instances = 2
[components.paced]
path = "{GUESTS / 'sha256.wasm'}"
max_bytes_per_second = "8MiB"
[components.cancel_after]
path = "{GUESTS / 'cancel_after.wasm'}"
[components.probe]
path = "{GUESTS / 'probe.wasm'}"
""")
    server = Server(cfg, port, tmp / "daemon.log").start()
    t0 = time.monotonic()
    end = t0 + a.minutes * 60
    warm_until = t0 + max(10.0, a.minutes * 60 * 0.2)
    samples: list[dict[str, float]] = [sample(server, t0)]
    next_sample = t0 + SAMPLE_EVERY_S
    inflight: dict[str, dict[str, Any]] = {}
    counts: dict[str, int] = {}
    try:
        while time.monotonic() < end:
            while len(inflight) < IN_FLIGHT:
                kind = rng.choice(["sha256", "sha256", "paced-cancel", "missing", "trap", "cancel_after"])
                blob = rng.choice(["tiny.bin", "small.bin", "mid.bin", "big.bin"])
                if kind == "sha256":
                    jid = server.submit("sha256", ["local", blob])
                elif kind == "paced-cancel":
                    jid = server.submit("paced", ["local", "big.bin"])
                elif kind == "missing":
                    jid = server.submit("sha256", ["nowhere", blob])
                elif kind == "trap":
                    jid = server.submit("probe", ["open s local small.bin", "start s 65536 1", "trap 1 2"])
                else:
                    jid = server.submit("cancel_after", ["local", blob, "65536", "3"])
                inflight[jid] = {"kind": kind, "at": time.monotonic()}
            for jid, info in list(inflight.items()):
                j = server.job(jid)
                if info["kind"] == "paced-cancel" and j["state"] == "running" and \
                        time.monotonic() - info["at"] > 0.5 and not info.get("cancelled"):
                    server.request("DELETE", f"/v1/jobs/{jid}")
                    info["cancelled"] = True
                if j["state"] in ("completed", "failed", "cancelled"):
                    key = f"{info['kind']}:{j['state']}"
                    counts[key] = counts.get(key, 0) + 1
                    del inflight[jid]
            if time.monotonic() >= next_sample:
                samples.append(sample(server, t0))
                next_sample += SAMPLE_EVERY_S
            time.sleep(0.05)
        samples.append(sample(server, t0))
    finally:
        server.stop()
    warm_t = warm_until - t0
    after = [s for s in samples if s["t_s"] >= warm_t] or samples[-1:]
    growth = {k: round(samples[-1][k] - after[0][k], 2) for k in ("rss_mb", "fds", "threads", "tasks")}
    slopes = {k: round(slope_per_minute([s["t_s"] for s in after], [s[k] for s in after]), 3)
              for k in ("rss_mb", "fds", "threads", "tasks")}
    result = {"minutes": a.minutes, "jobs": counts, "jobs_total": sum(counts.values()), "samples": samples,
              "warm_up_s": round(warm_t, 1), "growth_after_warm_up": growth, "slope_per_minute": slopes}
    print(f"\nchunkd soak: {a.minutes} min, {result['jobs_total']} jobs ended: {counts}")
    print(f"{'when':<16}{'t (s)':>8}{'RSS MB':>10}{'fds':>6}{'threads':>9}{'tasks':>7}")
    for label, s in (("start", samples[0]), ("after warm-up", after[0]), ("end", samples[-1])):
        print(f"{label:<16}{s['t_s']:>8}{s['rss_mb']:>10}{s['fds']:>6}{s['threads']:>9}{s['tasks']:>7.0f}")
    print(f"growth after warm-up: {growth}")
    print(f"slope per minute (least squares, after warm-up): {slopes}")
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(result, indent=2))
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
