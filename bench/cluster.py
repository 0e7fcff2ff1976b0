"""Cluster throughput: many small jobs through 1 node, then through 2 nodes, on one
nats-server (JetStream) on loopback. Prints a table and writes JSON.

Usage: bench/cluster [--jobs N] [--json PATH]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.cluster_support import NatsServer, start_node, wait_all  # noqa: E402
from tests.service_support import Server  # noqa: E402

GUESTS = {"sha256": ROOT / "build" / "guests" / "sha256.wasm"}


def run(nodes: int, jobs: int, tmp: Path, blobs: Path, digest: str) -> dict[str, Any]:
    nats = NatsServer(tmp / f"store-{nodes}", tmp / f"nats-{nodes}.log").start()
    made: list[Server] = []
    try:
        for i in range(nodes):
            made.append(start_node(tmp, f"b{nodes}n{i}", nats.url, GUESTS, blobs, ROOT / "state" / "cache",
                                   ack_wait="30s", heartbeat="5s"))
        t0 = time.perf_counter()
        ids = [made[i % nodes].submit("sha256", ["local", "small.bin"]) for i in range(jobs)]
        done = wait_all(made[0], ids, 600)
        wall = time.perf_counter() - t0
        bad = [j for j in done.values() if j["state"] != "completed" or f"{digest}  small.bin" not in j["output"]]
        assert not bad, bad[:2]
        per_node: dict[str, int] = {}
        for j in done.values():
            per_node[str(j["node"])] = per_node.get(str(j["node"]), 0) + 1
        return {"nodes": nodes, "jobs": jobs, "seconds": round(wall, 2), "jobs_per_s": round(jobs / wall, 1),
                "per_node": per_node}
    finally:
        for s in made:
            s.stop()
        nats.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "cluster.json"))
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="chunkd-cluster-bench-"))
    blobs = tmp / "blobs"
    blobs.mkdir()
    data = os.urandom(64 * 1024)
    (blobs / "small.bin").write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    rows = [run(n, a.jobs, tmp, blobs, digest) for n in (1, 2)]
    print(f"\nchunkd cluster: {a.jobs} small jobs (sha256 of 64 KiB), nodes with 1 sha256 instance each, "
          f"one nats-server, all on this {os.cpu_count()}-core machine")
    print(f"{'nodes':>6}{'seconds':>10}{'jobs/s':>9}  per node")
    for r in rows:
        print(f"{r['nodes']:>6}{r['seconds']:>10}{r['jobs_per_s']:>9}  {r['per_node']}")
    speedup = rows[1]["jobs_per_s"] / rows[0]["jobs_per_s"]
    print(f"2 nodes vs 1: {speedup:.2f}x")
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps({"runs": rows, "speedup_2_vs_1": round(speedup, 2)}, indent=2))
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
