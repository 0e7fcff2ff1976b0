"""Scale: what reads cost as finished jobs accumulate, local (SQLite) and cluster (2 nodes,
one nats-server), at N finished jobs (default 1k, 10k, 100k).

The N finished jobs are seeded straight into the store (SQLite rows; KV records), with
the same shape chunkd writes; then, at each N:
  status    GET /v1/status on node A, median of 5
  list      GET /v1/jobs?limit=50 on node A, median of 5
  get       GET /v1/jobs/{id} of an old job on node A, median of 5
  accept/s  --jobs real small jobs (sha256 of 64 KiB) submitted: 202s per second
  done/s    and completed per second
  RSS       of each node (MiB)
At the end (cluster), the nodes restart with a retention shorter than the seeds' age: the
bucket's size before and after shows retention bounding it.
Prints a table and writes JSON (--json, default bench/results/scale.json).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chunkd.jobstore import SqliteJobStore  # noqa: E402
from tests.cluster_support import NatsServer, node_config  # noqa: E402
from tests.service_support import Server, free_port, wait_for  # noqa: E402

GUESTS = {"sha256": ROOT / "build" / "guests" / "sha256.wasm"}
BUCKET = "chunkd_jobs"
AGE_S = 2 * 86400.0  # seeded jobs ended this long ago


def record(i: int, now: float) -> dict[str, Any]:
    t = now - AGE_S - 1000 + i * 1e-3
    return {"id": f"seed{i:07d}{uuid.uuid4().hex[:8]}", "component": "sha256", "args": ["local", "small.bin"],
            "state": "completed", "attempts": 1, "created_at": t, "started_at": t, "ended_at": t + 0.01,
            "invoke_ok": True, "invoke_result": "", "error": None,
            "streams": [{"correlation_id": 1, "container": "local", "blob": "small.bin", "size": 65536,
                         "bytes": 65536, "chunks": 1, "total_chunks": 1, "chunk_size": 1048576,
                         "started_at": t, "end": "completed"}],
            "output": ["0" * 64 + "  small.bin"]}


def seed_sqlite(path: Path, start: int, end: int) -> None:
    from chunkd.jobstore import _COLUMNS, _JSON
    store = SqliteJobStore(path)
    asyncio.run(store.open())
    asyncio.run(store.close())
    now = time.time()
    db = sqlite3.connect(path)
    try:
        rows = []
        for i in range(start, end):
            r = record(i, now)
            rows.append(tuple(json.dumps(r[c]) if c in _JSON else r.get(c) for c in _COLUMNS))
        db.executemany(f"INSERT INTO jobs ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})", rows)
        db.commit()
    finally:
        db.close()


async def seed_kv(url: str, start: int, end: int) -> None:
    import nats
    nc = await nats.connect(url)
    try:
        kv = await nc.jetstream(timeout=30).key_value(BUCKET)
        now = time.time()
        for at in range(start, end, 512):
            recs = [record(i, now) for i in range(at, min(end, at + 512))]
            await asyncio.gather(*(kv.put(r["id"], json.dumps(r).encode()) for r in recs))
    finally:
        await nc.close()


async def bucket_keys(url: str) -> int:
    import nats
    from nats.js.errors import NoKeysError
    nc = await nats.connect(url)
    try:
        try:
            return len(await (await nc.jetstream(timeout=60).key_value(BUCKET)).keys())
        except NoKeysError:
            return 0
    finally:
        await nc.close()


async def bucket_size(url: str) -> dict[str, int]:
    import nats
    nc = await nats.connect(url)
    try:
        st = await (await nc.jetstream().key_value(BUCKET)).status()
        state = st.stream_info.state
        return {"messages": int(state.messages), "bytes": int(state.bytes)}
    finally:
        await nc.close()


def rss_mib(s: Server) -> float:
    assert s.proc is not None
    for line in Path(f"/proc/{s.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def median_ms(s: Server, path: str, n: int = 5) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        status, _ = s.request("GET", path)
        times.append((time.perf_counter() - t) * 1000)
        assert status == 200, (path, status)
    return round(statistics.median(times), 2)


def throughput(nodes: list[Server], jobs: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    ids = [nodes[i % len(nodes)].submit("sha256", ["local", "small.bin"]) for i in range(jobs)]
    accepted = time.perf_counter() - t0
    for jid in ids:
        j = nodes[0].wait_job(jid, 600)
        assert j["state"] == "completed", j
    done = time.perf_counter() - t0
    return round(jobs / accepted, 1), round(jobs / done, 1)


def measure(nodes: list[Server], old_id: str, jobs: int) -> dict[str, Any]:
    row: dict[str, Any] = {
        "status_ms": median_ms(nodes[0], "/v1/status"),
        "list_ms": median_ms(nodes[0], "/v1/jobs?limit=50"),
        "get_ms": median_ms(nodes[0], f"/v1/jobs/{old_id}"),
    }
    row["accept_per_s"], row["done_per_s"] = throughput(nodes, jobs)
    row["rss_mib"] = [rss_mib(s) for s in nodes]
    return row


def local_config(tmp: Path, blobs: Path, retention: str = "7d") -> tuple[Path, int]:
    port = free_port()
    cfg = tmp / "local.toml"
    cfg.write_text(f"""
[daemon]
listen = "127.0.0.1:{port}"
state_dir = "{tmp / 'local-state'}"
cache_dir = "{ROOT / 'state' / 'cache'}"
log_format = "json"
log_level = "warning"
job_retention = "{retention}"
[limits]
call_timeout = "5s"
[containers.local]
kind = "file"
root = "{blobs}"
[components.sha256]
path = "{GUESTS['sha256']}"
instances = 2
""")
    return cfg, port


def run_local(tmp: Path, blobs: Path, sizes: list[int], jobs: int) -> list[dict[str, Any]]:
    cfg, port = local_config(tmp, blobs)
    db = tmp / "local-state" / "jobs.sqlite3"
    (tmp / "local-state").mkdir(exist_ok=True)
    rows, have = [], 0
    for n in sizes:
        seed_sqlite(db, have, n)
        have = n
        old = sqlite3.connect(db).execute("SELECT id FROM jobs ORDER BY created_at LIMIT 1").fetchone()[0]
        s = Server(cfg, port, tmp / "local.log").start()
        try:
            rows.append({"mode": "local", "n": n, **measure([s], old, jobs)})
        finally:
            s.stop()
        print(f"local  {rows[-1]}", file=sys.stderr)
    return rows


def run_cluster(tmp: Path, blobs: Path, sizes: list[int], jobs: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    nats = NatsServer(tmp / "nats-store", tmp / "nats.log").start()
    made: list[Server] = []
    rows = []
    extra = 'log_level = "warning"'
    try:
        for name in ("a", "b"):
            cfg, port = node_config(tmp, name, nats.url, GUESTS, blobs, ROOT / "state" / "cache",
                                    ack_wait="30s", heartbeat="5s", daemon_extra=extra)
            made.append(Server(cfg, port, tmp / f"{name}.log").start())
        have = 0
        first_id = ""
        for n in sizes:
            asyncio.run(seed_kv(nats.url, have, n))
            have = n
            if not first_id:
                first_id = made[0].request("GET", "/v1/jobs?limit=1&state=completed")[1]["jobs"][0]["job_id"]
            # both nodes' indexes hold the N seeds (their watches brought them)
            wait_for(lambda: len(made[0].request("GET", f"/v1/jobs?limit={min(n, 10000)}&state=completed")[1]
                                 ["jobs"]) >= min(n, 10000), 600, 0.5, "the seeds in node a's index")
            rows.append({"mode": "cluster", "n": n, **measure(made, first_id, jobs)})
            print(f"cluster {rows[-1]}", file=sys.stderr)
        before = asyncio.run(bucket_size(nats.url))
        for s in made:  # retention shorter than the seeds' age: they go, the real jobs stay
            s.stop()
        for i, name in enumerate(("a", "b")):
            cfg, port = node_config(tmp, name, nats.url, GUESTS, blobs, ROOT / "state" / "cache", ack_wait="30s",
                                    heartbeat="5s", daemon_extra=f'{extra}\njob_retention = "1d"')
            made[i] = Server(cfg, port, tmp / f"{name}.log").start()
        t0 = time.perf_counter()
        real = len(sizes) * jobs
        wait_for(lambda: asyncio.run(bucket_keys(nats.url)) <= real, 1200, 1.0, "retention to purge the seeded jobs")
        purged_s = round(time.perf_counter() - t0, 1)
        last: list[int] = []

        def settled() -> bool:  # the purge markers removed too: the size stops changing
            last.append(asyncio.run(bucket_size(nats.url))["messages"])
            return len(last) >= 3 and last[-1] == last[-2] == last[-3]
        wait_for(settled, 300, 5.0, "the purge markers to be removed")
        retention = {"before": before, "after": asyncio.run(bucket_size(nats.url)), "purged_in_s": purged_s,
                     "seconds": round(time.perf_counter() - t0, 1), "rss_mib": [rss_mib(s) for s in made]}
        return rows, retention
    finally:
        for s in made:
            s.stop()
        nats.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,10000,100000", help="N finished jobs, comma-separated, ascending")
    ap.add_argument("--jobs", type=int, default=200, help="real jobs per throughput measurement")
    ap.add_argument("--modes", default="local,cluster")
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "scale.json"))
    a = ap.parse_args()
    sizes = [int(x) for x in a.sizes.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="chunkd-scale-"))
    blobs = tmp / "blobs"
    blobs.mkdir()
    (blobs / "small.bin").write_bytes(os.urandom(64 * 1024))
    rows: list[dict[str, Any]] = []
    retention: dict[str, Any] = {}
    if "local" in a.modes:
        rows += run_local(tmp, blobs, sizes, a.jobs)
    if "cluster" in a.modes:
        crow, retention = run_cluster(tmp, blobs, sizes, a.jobs)
        rows += crow
    print(f"\nchunkd at scale: N finished jobs seeded, {a.jobs} real jobs per throughput row, "
          f"on this {os.cpu_count()}-core machine (cluster: 2 nodes, 1 nats-server)")
    print(f"{'mode':<8}{'N':>8}{'status ms':>11}{'list ms':>9}{'get ms':>8}{'accept/s':>10}{'done/s':>8}  RSS MiB")
    for r in rows:
        print(f"{r['mode']:<8}{r['n']:>8}{r['status_ms']:>11}{r['list_ms']:>9}{r['get_ms']:>8}"
              f"{r['accept_per_s']:>10}{r['done_per_s']:>8}  {r['rss_mib']}")
    if retention:
        print(f"cluster bucket before retention: {retention['before']}; after (job_retention 1d, seeds 2d old): "
              f"{retention['after']}; seeds purged in {retention['purged_in_s']} s, markers gone by "
              f"{retention['seconds']} s; RSS after {retention['rss_mib']}")
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps({"rows": rows, "retention": retention}, indent=2))
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
